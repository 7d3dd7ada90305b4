"""The Cluster service: MemberList. Membership changes answer UNIMPLEMENTED: there is no raft."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from cosmos_etcd_shim.api.errors import unary_rpc
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc


class ClusterServicer(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, headers: ResponseHeaders, members: Callable[[], Sequence[rpc_pb2.Member]]) -> None:
        self.headers = headers
        self.members = members

    @unary_rpc
    async def MemberList(self, request, context):
        response = rpc_pb2.MemberListResponse(members=self.members())
        self.headers.fill_identity(response.header)
        return response
