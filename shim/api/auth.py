"""The Auth service: enable/disable/status, Authenticate, users and roles.

Every call but Authenticate carries the caller's identity to the auth store, which refuses what
only an admin may do (as etcd applies its auth requests); a token this server does not know is
refused first, as etcd refuses it before proposing the request.
"""
from __future__ import annotations

from cosmos_etcd_shim.api.callers import Callers
from cosmos_etcd_shim.api.errors import unary_rpc
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc


class AuthServicer(rpc_pb2_grpc.AuthServicer):
    def __init__(self, callers: Callers, headers: ResponseHeaders) -> None:
        self.callers = callers
        self.auth = callers.auth
        self.headers = headers

    def _answer(self, response):
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def AuthEnable(self, request, context):
        await self.auth.enable(self.callers.of(context))
        return self._answer(pb.AuthEnableResponse())

    @unary_rpc
    async def AuthDisable(self, request, context):
        await self.auth.disable(self.callers.of(context))
        return self._answer(pb.AuthDisableResponse())

    @unary_rpc
    async def AuthStatus(self, request, context):
        enabled, revision = await self.auth.status(self.callers.of(context))
        return self._answer(pb.AuthStatusResponse(enabled=enabled, authRevision=revision))

    @unary_rpc
    async def Authenticate(self, request, context):
        token = await self.auth.authenticate(request.name, request.password)
        return self._answer(pb.AuthenticateResponse(token=token))

    @unary_rpc
    async def UserAdd(self, request, context):
        no_password = request.HasField("options") and request.options.no_password
        await self.auth.user_add(self.callers.of(context), request.name, request.password, no_password)
        return self._answer(pb.AuthUserAddResponse())

    @unary_rpc
    async def UserGet(self, request, context):
        roles = await self.auth.user_get(self.callers.of(context), request.name)
        return self._answer(pb.AuthUserGetResponse(roles=roles))

    @unary_rpc
    async def UserList(self, request, context):
        users = await self.auth.user_list(self.callers.of(context))
        return self._answer(pb.AuthUserListResponse(users=users))

    @unary_rpc
    async def UserDelete(self, request, context):
        await self.auth.user_delete(self.callers.of(context), request.name)
        return self._answer(pb.AuthUserDeleteResponse())

    @unary_rpc
    async def UserChangePassword(self, request, context):
        await self.auth.user_change_password(self.callers.of(context), request.name, request.password)
        return self._answer(pb.AuthUserChangePasswordResponse())

    @unary_rpc
    async def UserGrantRole(self, request, context):
        await self.auth.user_grant_role(self.callers.of(context), request.user, request.role)
        return self._answer(pb.AuthUserGrantRoleResponse())

    @unary_rpc
    async def UserRevokeRole(self, request, context):
        await self.auth.user_revoke_role(self.callers.of(context), request.name, request.role)
        return self._answer(pb.AuthUserRevokeRoleResponse())

    @unary_rpc
    async def RoleAdd(self, request, context):
        await self.auth.role_add(self.callers.of(context), request.name)
        return self._answer(pb.AuthRoleAddResponse())

    @unary_rpc
    async def RoleGet(self, request, context):
        permissions = await self.auth.role_get(self.callers.of(context), request.role)
        return self._answer(pb.AuthRoleGetResponse(perm=permissions))

    @unary_rpc
    async def RoleList(self, request, context):
        roles = await self.auth.role_list(self.callers.of(context))
        return self._answer(pb.AuthRoleListResponse(roles=roles))

    @unary_rpc
    async def RoleDelete(self, request, context):
        await self.auth.role_delete(self.callers.of(context), request.role)
        return self._answer(pb.AuthRoleDeleteResponse())

    @unary_rpc
    async def RoleGrantPermission(self, request, context):
        permission = request.perm if request.HasField("perm") else None
        await self.auth.role_grant_permission(self.callers.of(context), request.name, permission)
        return self._answer(pb.AuthRoleGrantPermissionResponse())

    @unary_rpc
    async def RoleRevokePermission(self, request, context):
        await self.auth.role_revoke_permission(self.callers.of(context), request.role, request.key,
                                               request.range_end)
        return self._answer(pb.AuthRoleRevokePermissionResponse())
