"""The auth store: etcd's users, roles and key-range permissions, whether auth is enabled, who a
request comes from, and what it may do (etcd 3.5's ``auth/store.go`` and ``apply_auth.go``).

The auth revision
    etcd's auth revision (AuthStatus' ``authRevision``) starts at 1 and grows by one with every
    change, even one that changes nothing visible (granting a permission a role has), except
    AuthEnable, as in etcd. It is not the KV revision: auth changes leave that alone.

Durability
    The state is one record of the storage backend (``storage_pb2.AuthState``), saved with a
    compare-and-swap on the record's version: a change is made on a copy, saved, and only then
    used; a refused change saves nothing.

Several replicas on one shared log
    Every change and every call of the Auth service (Authenticate included) first reads the
    stored state, so changes through different replicas are ordered, none is lost (a lost
    compare-and-swap reads again and retries), and a user added through one replica can log in
    through any other at once. Permission checks of KV, Watch, Lease and Maintenance requests use
    the state as this replica last read it. It is read again when the log announces a newer
    version (the log's tail carries the announcement, so an idle replica pays nothing for it):
    a permission revoked through one replica is enforced by every other within about a poll of
    the log plus ``REFRESH_SECONDS``. Tokens are each replica's own (see ``tokens``); a state read
    from the store drops the tokens that the change would have dropped here.

Passwords are hashed with bcrypt (``--bcrypt-cost``, etcd's default 10) on a worker thread, so
the server keeps serving while a hash is computed; a password is never logged or returned.

One deliberate difference from etcd 3.5: operations nested in a Txn are checked like the others
(etcd checks only the top level, which lets a nested Txn read and write any key).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

import bcrypt

from cosmos_etcd_shim.mvcc import errors
from cosmos_etcd_shim.mvcc.errors import MVCCError, from_storage
from cosmos_etcd_shim.mvcc.permissions import UserPermissions
from cosmos_etcd_shim.mvcc.tokens import SimpleTokens
from cosmos_etcd_shim.proto.auth_pb2 import Permission, Role, User, UserAddOptions
from cosmos_etcd_shim.proto.rpc_pb2 import DeleteRangeRequest, PutRequest, RequestOp, TxnRequest
from cosmos_etcd_shim.proto.storage_pb2 import AuthState
from cosmos_etcd_shim.storage import AuthConflictError, AuthRecord, RevisionLog, StorageError

logger = logging.getLogger(__name__)

ROOT = "root"  # the user and the role that may do everything
INITIAL_AUTH_REVISION = 1
# bcrypt reads at most 72 bytes of a password (etcd 3.5's Go bcrypt ignores the rest too).
BCRYPT_MAX_PASSWORD_BYTES = 72
# How often tokens expire and, on a shared log, how often the stored state is read again.
REFRESH_SECONDS = 1.0
FULL_READ_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class AuthInfo:
    """Who a request comes from: the user of its token, or of its client certificate."""

    user: str


class _State:
    """A working copy of the auth state: users and roles by name."""

    def __init__(self, enabled: bool = False, revision: int = INITIAL_AUTH_REVISION,
                 users: dict[str, User] | None = None, roles: dict[str, Role] | None = None) -> None:
        self.enabled = enabled
        self.revision = revision
        self.users = users or {}
        self.roles = roles or {}

    @classmethod
    def decode(cls, record: AuthRecord | None) -> "_State":
        if record is None:
            return cls()
        state = AuthState.FromString(record.data)
        return cls(state.enabled, state.revision, {u.name.decode(): u for u in state.users},
                   {r.name.decode(): r for r in state.roles})

    def encode(self) -> bytes:
        return AuthState(enabled=self.enabled, revision=self.revision,
                         users=[self.users[n] for n in sorted(self.users)],
                         roles=[self.roles[n] for n in sorted(self.roles)]).SerializeToString()

    def copy(self) -> "_State":
        return _State.decode(AuthRecord(0, self.encode()))

    def has_role(self, user: str, role: str) -> bool:
        found = self.users.get(user)
        return found is not None and role in found.roles

    def require_admin(self, info: AuthInfo | None) -> None:
        """etcd's IsAdminPermitted: with auth enabled, only a user with the root role."""
        if not self.enabled:
            return
        if info is None or not info.user:
            raise errors.UserEmptyError()
        if info.user not in self.users:
            raise errors.UserNotFoundError()
        if not self.has_role(info.user, ROOT):
            raise errors.PermissionDeniedError()

    def user(self, name: str) -> User:
        found = self.users.get(name)
        if found is None:
            raise errors.UserNotFoundError()
        return found

    def role(self, name: str) -> Role:
        found = self.roles.get(name)
        if found is None:
            raise errors.RoleNotFoundError()
        return found


Change = Callable[[_State], bool]  # changes the copy; False: nothing to save


class AuthStore:
    def __init__(self, log: RevisionLog, bcrypt_cost: int, token_ttl: float) -> None:
        self.log = log
        self.bcrypt_cost = bcrypt_cost
        self.tokens = SimpleTokens(token_ttl)
        self._state = _State()
        self._version = 0  # of the stored record the state came from
        self._permissions: dict[str, UserPermissions] = {}
        self._lock = asyncio.Lock()  # one read-change-save at a time on this server

    async def open(self) -> None:
        await self._reload()

    @property
    def enabled(self) -> bool:
        return self._state.enabled

    @property
    def revision(self) -> int:
        return self._state.revision

    # -- keeping up with the stored state -----------------------------------------------------

    async def maintain_forever(self) -> None:
        """Expire tokens; on a shared log, read the state another server saved when the log says it
        changed (and every ``FULL_READ_SECONDS`` in case an announcement was lost). Runs for the
        life of the server."""
        last_read = time.monotonic()
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            self.tokens.expire()
            if not self.log.shared:
                continue
            if self.log.auth_may_have_changed(self._version) or time.monotonic() - last_read >= FULL_READ_SECONDS:
                try:
                    await self._latest()
                except MVCCError as e:
                    logger.warning("cannot read the auth state", extra={"error": str(e)})
                else:
                    last_read = time.monotonic()

    async def _latest(self) -> _State:
        """The stored state (read again first on a shared log): what the Auth service answers from."""
        if self.log.shared:
            async with self._lock:
                await self._reload()
        return self._state

    async def _reload(self) -> None:
        try:
            record = await self.log.load_auth()
        except StorageError as e:
            raise from_storage(e) from None
        version = record.version if record is not None else 0
        if version != self._version:
            self._adopt(_State.decode(record), version)

    def _adopt(self, state: _State, version: int) -> None:
        before = self._state
        if before.enabled and not state.enabled:
            self.tokens.clear()
        for name, user in before.users.items():
            now = state.users.get(name)
            if now is None or now.password != user.password:
                self.tokens.invalidate_user(name)
        self._state, self._version = state, version
        self._permissions.clear()

    async def _change(self, change: Change) -> None:
        async with self._lock:
            while True:
                if self.log.shared:
                    await self._reload()
                state = self._state.copy()
                if not change(state):
                    return
                record = AuthRecord(self._version + 1, state.encode())
                try:
                    await self.log.save_auth(record)
                except AuthConflictError:
                    continue  # another server saved first: read its state and decide again
                except StorageError as e:
                    raise from_storage(e) from None
                self._adopt(state, record.version)
                return

    # -- who a request comes from -------------------------------------------------------------

    def identify(self, token: str | None, common_name: str | None = None) -> AuthInfo | None:
        """etcd's AuthInfoFromCtx: the user of the request's token (any token must be valid, also
        with auth disabled, as etcd 3.5 answers), else the verified client certificate's common
        name; None: nobody."""
        if token is not None:
            user = self.tokens.user_of(token)
            if user is None:
                raise errors.InvalidAuthTokenError()
            return AuthInfo(user)
        if common_name:
            return AuthInfo(common_name)
        return None

    async def authenticate(self, name: str, password: str) -> str:
        """A new token for ``name`` if the password is the user's."""
        while True:
            state = await self._latest()
            if not state.enabled:
                raise errors.AuthNotEnabledError()
            user = state.users.get(name)
            if user is None:
                raise errors.AuthFailedError()
            if user.options.no_password:
                raise errors.NoPasswordUserError()
            if not await asyncio.to_thread(_password_matches, password, user.password):
                raise errors.AuthFailedError()
            if self._state.revision == state.revision and self._state.enabled:
                return self.tokens.issue(name)
            # The state changed while the hash was checked (as etcd: check again).

    # -- what a request may do ----------------------------------------------------------------

    def check_admin(self, info: AuthInfo | None) -> None:
        self._state.require_admin(info)

    def check_read(self, info: AuthInfo | None, key: bytes, range_end: bytes = b"") -> None:
        self._check(info, key, range_end, write=False)

    def check_write(self, info: AuthInfo | None, key: bytes, range_end: bytes = b"") -> None:
        self._check(info, key, range_end, write=True)

    def _check(self, info: AuthInfo | None, key: bytes, range_end: bytes, write: bool) -> None:
        """etcd's isOpPermitted: a single key without range end, else the range [key, range_end)."""
        state = self._state
        if not state.enabled:
            return
        if info is None:
            raise errors.UserEmptyError()
        user = state.users.get(info.user)
        if user is None:
            raise errors.PermissionDeniedError()
        if ROOT in user.roles:
            return
        permissions = self._permissions.get(info.user)
        if permissions is None:
            permissions = UserPermissions.of(state.roles[r] for r in user.roles if r in state.roles)
            self._permissions[info.user] = permissions
        if not permissions.allows(key, range_end, write):
            raise errors.PermissionDeniedError()

    def check_put(self, info: AuthInfo | None, p: PutRequest, lease_keys: Iterable[bytes]) -> None:
        """Write on the key; write on every key the lease holds already (else the user could not
        revoke the lease it attaches to); read on the key for prev_kv."""
        if not self.enabled:
            return
        self.check_write(info, p.key)
        for key in lease_keys:
            self.check_write(info, key)
        if p.prev_kv:
            self.check_read(info, p.key)

    def check_delete_range(self, info: AuthInfo | None, d: DeleteRangeRequest) -> None:
        if not self.enabled:
            return
        self.check_write(info, d.key, d.range_end)
        if d.prev_kv:
            self.check_read(info, d.key, d.range_end)

    def check_txn(self, info: AuthInfo | None, t: TxnRequest) -> None:
        """Read on every compared range, then each operation of both branches (prev_kv of a Put in
        a Txn needs no read, as in etcd), nested Txns included."""
        if not self.enabled:
            return
        for c in t.compare:
            self.check_read(info, c.key, c.range_end)
        for op in (*t.success, *t.failure):
            self._check_op(info, op)

    def _check_op(self, info: AuthInfo | None, op: RequestOp) -> None:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            self.check_read(info, op.request_range.key, op.request_range.range_end)
        elif kind == "request_put":
            self.check_write(info, op.request_put.key)
        elif kind == "request_delete_range":
            d = op.request_delete_range
            if d.prev_kv:
                self.check_read(info, d.key, d.range_end)
            self.check_write(info, d.key, d.range_end)
        elif kind == "request_txn":
            self.check_txn(info, op.request_txn)

    def check_lease_revoke(self, info: AuthInfo | None, lease_keys: Iterable[bytes]) -> None:
        """Write on every key the lease holds (revoking it deletes them)."""
        for key in lease_keys:
            self.check_write(info, key)

    # -- the Auth service ---------------------------------------------------------------------

    async def enable(self, info: AuthInfo | None) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            if s.enabled:
                return False
            root = s.users.get(ROOT)
            if root is None:
                raise errors.RootUserNotExistError()
            if ROOT not in root.roles:
                raise errors.RootRoleNotExistError()
            s.enabled = True  # the one change that keeps the auth revision, as in etcd
            return True
        await self._change(change)

    async def disable(self, info: AuthInfo | None) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            if not s.enabled:
                return False
            s.enabled = False
            s.revision += 1
            return True
        await self._change(change)

    async def status(self, info: AuthInfo | None) -> tuple[bool, int]:
        state = await self._latest()
        state.require_admin(info)
        return state.enabled, state.revision

    async def user_add(self, info: AuthInfo | None, name: str, password: str, no_password: bool) -> None:
        hashed = b"" if no_password else await self._hash_for(info, password)

        def change(s: _State) -> bool:
            s.require_admin(info)
            if not name:
                raise errors.UserEmptyError()
            if name in s.users:
                raise errors.UserAlreadyExistError()
            s.users[name] = User(name=name.encode(), password=hashed,
                                 options=UserAddOptions(no_password=no_password))
            s.revision += 1
            return True
        await self._change(change)

    async def user_get(self, info: AuthInfo | None, name: str) -> list[str]:
        state = await self._latest()
        _admin_or(state, info, allowed=(info.user if info else "") == name)
        return list(state.user(name).roles)

    async def user_list(self, info: AuthInfo | None) -> list[str]:
        state = await self._latest()
        state.require_admin(info)
        return sorted(state.users, key=str.encode)

    async def user_delete(self, info: AuthInfo | None, name: str) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            if s.enabled and name == ROOT:
                raise errors.InvalidAuthMgmtError()
            s.user(name)
            del s.users[name]
            s.revision += 1
            return True
        await self._change(change)

    async def user_change_password(self, info: AuthInfo | None, name: str, password: str) -> None:
        hashed = await self._hash_for(info, password)

        def change(s: _State) -> bool:
            s.require_admin(info)
            user = s.user(name)
            if not user.options.no_password:  # a user without password stays without
                user.password = hashed
            s.revision += 1
            return True
        await self._change(change)

    async def user_grant_role(self, info: AuthInfo | None, name: str, role: str) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            user = s.user(name)
            if role != ROOT:  # the root role may be granted before it is added, as in etcd
                s.role(role)
            if role in user.roles:
                return False
            roles = sorted([*user.roles, role], key=str.encode)
            del user.roles[:]
            user.roles.extend(roles)
            s.revision += 1
            return True
        await self._change(change)

    async def user_revoke_role(self, info: AuthInfo | None, name: str, role: str) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            if s.enabled and name == ROOT and role == ROOT:
                raise errors.InvalidAuthMgmtError()
            user = s.user(name)
            if role not in user.roles:
                raise errors.RoleNotGrantedError()
            user.roles.remove(role)
            s.revision += 1
            return True
        await self._change(change)

    async def role_add(self, info: AuthInfo | None, name: str) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            if not name:
                raise errors.RoleEmptyError()
            if name in s.roles:
                raise errors.RoleAlreadyExistError()
            s.roles[name] = Role(name=name.encode())
            s.revision += 1
            return True
        await self._change(change)

    async def role_get(self, info: AuthInfo | None, name: str) -> list[Permission]:
        state = await self._latest()
        _admin_or(state, info, allowed=info is not None and state.has_role(info.user, name))
        return list(state.role(name).keyPermission)

    async def role_list(self, info: AuthInfo | None) -> list[str]:
        state = await self._latest()
        state.require_admin(info)
        return sorted(state.roles, key=str.encode)

    async def role_delete(self, info: AuthInfo | None, name: str) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            if s.enabled and name == ROOT:
                raise errors.InvalidAuthMgmtError()
            s.role(name)
            del s.roles[name]
            for user in s.users.values():
                if name in user.roles:
                    user.roles.remove(name)
            s.revision += 1
            return True
        await self._change(change)

    async def role_grant_permission(self, info: AuthInfo | None, name: str, permission: Permission | None) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            if permission is None:
                raise errors.PermissionNotGivenError()
            role = s.role(name)
            perms = [_copy(p) for p in role.keyPermission]
            # As etcd: only the first permission whose key is not below the new one's is compared
            # (so a second range with the same key is added, not updated).
            at = next((i for i, p in enumerate(perms) if p.key >= permission.key), len(perms))
            if at < len(perms) and perms[at].key == permission.key and perms[at].range_end == permission.range_end:
                perms[at].permType = permission.permType
            else:
                perms.append(_copy(permission))
                _go_sort_by_key(perms)
            del role.keyPermission[:]
            role.keyPermission.extend(perms)
            s.revision += 1
            return True
        await self._change(change)

    async def role_revoke_permission(self, info: AuthInfo | None, name: str, key: bytes, range_end: bytes) -> None:
        def change(s: _State) -> bool:
            s.require_admin(info)
            role = s.role(name)
            kept = [_copy(p) for p in role.keyPermission if p.key != key or p.range_end != range_end]
            if len(kept) == len(role.keyPermission):
                raise errors.PermissionNotGrantedError()
            del role.keyPermission[:]
            role.keyPermission.extend(kept)
            s.revision += 1
            return True
        await self._change(change)

    async def _hash_for(self, info: AuthInfo | None, password: str) -> bytes:
        """The bcrypt hash of a new password, computed only for a caller allowed to set one (a
        hash takes tens of milliseconds: nobody else may make the server compute them)."""
        (await self._latest()).require_admin(info)
        salt = bcrypt.gensalt(self.bcrypt_cost, prefix=b"2a")  # etcd's Go bcrypt writes $2a$
        return await asyncio.to_thread(bcrypt.hashpw, _bcrypt_input(password), salt)


def _admin_or(state: _State, info: AuthInfo | None, allowed: bool) -> None:
    """UserGet and RoleGet: an admin, or the user asking about itself or one of its roles."""
    try:
        state.require_admin(info)
    except errors.AuthError:
        if not allowed:
            raise


def _copy(permission: Permission) -> Permission:
    return Permission(permType=permission.permType, key=permission.key, range_end=permission.range_end)


def _bcrypt_input(password: str) -> bytes:
    return password.encode()[:BCRYPT_MAX_PASSWORD_BYTES]


def _password_matches(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(_bcrypt_input(password), hashed)
    except ValueError:  # not a bcrypt hash (etcd stores the empty hash for some users): no match
        return False


def _go_sort_by_key(perms: list[Permission]) -> None:
    """Go's sort.Sort (as etcd 3.5 was built with) on permissions by key, for up to 12 of them: a
    gap-6 pass, then insertion sort. It decides the order of permissions with equal keys exactly
    as etcd leaves it; a longer list is sorted stably (etcd's quicksort may order ties otherwise)."""
    if len(perms) > 12:
        perms.sort(key=lambda p: p.key)
        return
    for i in range(6, len(perms)):
        if perms[i].key < perms[i - 6].key:
            perms[i], perms[i - 6] = perms[i - 6], perms[i]
    for i in range(1, len(perms)):
        j = i
        while j > 0 and perms[j].key < perms[j - 1].key:
            perms[j], perms[j - 1] = perms[j - 1], perms[j]
            j -= 1
