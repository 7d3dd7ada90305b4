"""The etcd Auth API, compared with a real etcd: users, roles, permissions, every refusal (code
and message), tokens, auth enable/disable, and the auth state across a restart, on every backend.

Enabling auth changes what every other request may do, so this module has its own fresh pair of
servers (etcd and the shim, once per backend), never the session's shared ones. Each test leaves
auth disabled and no user or role behind (the `auth` fixture cleans up, the same way on both
sides), so that etcd's auth revision, which AuthStatus reports, stays comparable.

Tokens are random: `Scenario.login` authenticates on each side, checks that both answer alike (a
token of etcd's shape, or the same error) and returns each side's token; requests made as that
user pass them on (``tokens=``). Both servers hash with bcrypt cost 4 (``--bcrypt-cost``): the
cost changes only the time a hash takes.

Two deliberate differences from etcd 3.5.1 are checked on the shim alone, with etcd's answer
shown: operations nested in a Txn are permission-checked, and a "from key" watch needs read
permission on the whole range (etcd checks only its start key, so both let a user read keys it
was never granted).
"""
from __future__ import annotations

import os
import re
import time

import grpc
import pytest

from cosmos_etcd_shim.proto import auth_pb2
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness import backends, processes
from tests.harness.differential import Connection, Error, op_put, op_range, op_txn, prefix_end
from tests.harness.watch_streams import WatchStream

ORACLE_VS_ORACLE = os.environ.get("COSMOS_ETCD_TEST_ORACLE_VS_ORACLE", "") == "1"
BCRYPT = ["--bcrypt-cost", "4"]
ETCD_ARGS = ["--unsafe-no-fsync", *BCRYPT]
ROOT_PASSWORD = "rootpw"
TOKEN_SHAPE = re.compile(r"^[A-Za-z]{16}\.\d+$")  # etcd's simple token

READ, WRITE, READWRITE = auth_pb2.Permission.READ, auth_pb2.Permission.WRITE, auth_pb2.Permission.READWRITE
INVALID, FAILED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
USER_EMPTY = (INVALID, "etcdserver: user name is empty")
BAD_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
WATCH_DENIED = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"


def start_subject(backend: str, workdir, extra_args=()) -> processes.Server:
    if ORACLE_VS_ORACLE:
        return processes.start_etcd(workdir, extra_args=[*ETCD_ARGS, *extra_args])
    return backends.start_shim_on(backend, workdir, extra_args=[*BCRYPT, *extra_args])


@pytest.fixture(scope="module", params=["etcd-oracle"] if ORACLE_VS_ORACLE else backends.BACKENDS)
def servers(request, tmp_path_factory):
    """A fresh etcd and a fresh shim (on each backend) for this module alone."""
    etcd = processes.start_etcd(tmp_path_factory.mktemp("auth-etcd"), extra_args=ETCD_ARGS)
    try:
        shim = start_subject(request.param, tmp_path_factory.mktemp(f"auth-{request.param}"))
    except BaseException:
        etcd.stop()
        raise
    connection = Connection(etcd, shim)
    yield connection
    connection.close()
    connection.sides[1].server.stop_with_companions()  # the shim as restarted last
    etcd.stop()


def everyone(token: str) -> dict[str, str]:
    return {"etcd": token, "shim": token}


def perm(kind, key: bytes, range_end: bytes = b"") -> auth_pb2.Permission:
    return auth_pb2.Permission(permType=kind, key=key, range_end=range_end)


class Scenario:
    """One test's view of the pair: Auth calls on both sides, logins, and the cleanup."""

    def __init__(self, pair):
        self.pair = pair
        self.root: dict[str, str] | None = None

    def ok(self, method: str, request, tokens=None):
        return self.pair.ok("Auth", method, request, tokens=tokens)

    def refused(self, method: str, request, error: tuple, tokens=None):
        return self.pair.expect_error("Auth", method, request, *error, tokens=tokens)

    def login(self, name: str, password: str) -> dict[str, str]:
        """Authenticate on both sides; the tokens, side name -> token."""
        outcomes = {side.name: side.invoke("Auth", "Authenticate", pb.AuthenticateRequest(name=name, password=password))
                    for side in self.pair.sides}
        for side, outcome in outcomes.items():
            assert not isinstance(outcome, Error), f"{side}: Authenticate {name}: {outcomes}"
            assert TOKEN_SHAPE.match(outcome.token), f"{side}: token {outcome.token!r} is not etcd's shape"
            assert outcome.header.revision, f"{side}: Authenticate's header has no revision"
        return {side: outcome.token for side, outcome in outcomes.items()}

    def login_refused(self, name: str, password: str, code: grpc.StatusCode, message: str) -> None:
        self.refused("Authenticate", pb.AuthenticateRequest(name=name, password=password), (code, message))

    def status(self, tokens=None) -> pb.AuthStatusResponse:
        return self.ok("AuthStatus", pb.AuthStatusRequest(), tokens)

    def add_user(self, name: str, password: str, *roles: str, tokens=None) -> None:
        self.ok("UserAdd", pb.AuthUserAddRequest(name=name, password=password), tokens)
        for role in roles:
            self.ok("UserGrantRole", pb.AuthUserGrantRoleRequest(user=name, role=role), tokens)

    def add_role(self, name: str, *permissions: auth_pb2.Permission, tokens=None) -> None:
        self.ok("RoleAdd", pb.AuthRoleAddRequest(name=name), tokens)
        for permission in permissions:
            self.ok("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name=name, perm=permission), tokens)

    def enable(self) -> dict[str, str]:
        """Add root (with the root role), enable auth; root's tokens."""
        self.add_user("root", ROOT_PASSWORD, "root")
        self.ok("AuthEnable", pb.AuthEnableRequest())
        self.root = self.login("root", ROOT_PASSWORD)
        return self.root

    def state(self, tokens) -> pb.RangeResponse:
        """The scenario's keys as the caller reads them, compared on both sides."""
        prefix = self.pair.prefix
        return self.pair.ok("KV", "Range", pb.RangeRequest(key=prefix, range_end=prefix_end(prefix)), tokens=tokens)

    def tenant(self, *permissions: auth_pb2.Permission) -> tuple[dict[str, str], dict[str, str]]:
        """Auth enabled, a role "tenant" with ``permissions`` and its user alice: root's and
        alice's tokens."""
        root = self.enable()
        self.add_role("tenant", *permissions, tokens=root)
        self.add_user("alice", "alicepw", "tenant", tokens=root)
        return root, self.login("alice", "alicepw")

    def kv(self, method: str, request, tokens=None):
        return self.pair.call("KV", method, request, tokens=tokens)

    def cleanup(self) -> None:
        """Auth disabled, every user and role deleted: the same requests on both sides."""
        if self.status_enabled():
            self.ok("AuthDisable", pb.AuthDisableRequest(), self.login("root", ROOT_PASSWORD))
        for user in self.ok("UserList", pb.AuthUserListRequest()).users:
            self.ok("UserDelete", pb.AuthUserDeleteRequest(name=user))
        for role in self.ok("RoleList", pb.AuthRoleListRequest()).roles:
            self.ok("RoleDelete", pb.AuthRoleDeleteRequest(role=role))

    def status_enabled(self) -> bool:
        outcome = self.pair.call("Auth", "AuthStatus", pb.AuthStatusRequest())
        return isinstance(outcome, Error)  # with auth enabled, an anonymous AuthStatus is refused


@pytest.fixture
def auth(servers):
    scenario = Scenario(servers.new_pair())
    yield scenario
    scenario.cleanup()


def test_users_and_roles_with_auth_disabled(auth):
    start = auth.status().authRevision
    auth.add_user("alice", "alicepw")
    auth.refused("UserAdd", pb.AuthUserAddRequest(name="alice", password="x"), (FAILED, "etcdserver: user name already exists"))
    auth.refused("UserAdd", pb.AuthUserAddRequest(name="", password="x"), (INVALID, "etcdserver: user name is empty"))
    auth.ok("UserAdd", pb.AuthUserAddRequest(name="nopw", options=auth_pb2.UserAddOptions(no_password=True)))
    auth.ok("UserAdd", pb.AuthUserAddRequest(name="emptypw"))
    auth.add_role("reader", perm(READ, b"a/", b"a0"), perm(READWRITE, b"k"), perm(WRITE, b"z", b"\0"))
    auth.refused("RoleAdd", pb.AuthRoleAddRequest(name="reader"), (FAILED, "etcdserver: role name already exists"))
    auth.refused("RoleAdd", pb.AuthRoleAddRequest(name=""), (INVALID, "etcdserver: role name is empty"))
    auth.refused("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="nosuch"),
                 (INVALID, "etcdserver: permission not given"))
    auth.refused("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="nosuch", perm=perm(READ, b"x")),
                 (FAILED, "etcdserver: role name not found"))
    # Same key, other ranges and types: etcd's order of a role's permissions, updates included.
    for permission in (perm(READ, b"k", b"l"), perm(READ, b"k", b"m"), perm(WRITE, b"k", b"l"), perm(WRITE, b"k", b"m"),
                       perm(READWRITE, b"a/", b"a0"), perm(WRITE, b"b", b"\0")):
        auth.ok("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="reader", perm=permission))
    auth.ok("RoleGet", pb.AuthRoleGetRequest(role="reader"))
    auth.refused("RoleGet", pb.AuthRoleGetRequest(role="nosuch"), (FAILED, "etcdserver: role name not found"))
    auth.ok("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="reader"))
    auth.ok("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="reader"))  # again: nothing changes
    auth.ok("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="root"))  # root needs no RoleAdd
    auth.refused("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="nosuch"),
                 (FAILED, "etcdserver: role name not found"))
    auth.refused("UserGrantRole", pb.AuthUserGrantRoleRequest(user="nosuch", role="nosuch"),
                 (FAILED, "etcdserver: user name not found"))
    assert list(auth.ok("UserGet", pb.AuthUserGetRequest(name="alice")).roles) == ["reader", "root"]
    auth.refused("UserGet", pb.AuthUserGetRequest(name="nosuch"), (FAILED, "etcdserver: user name not found"))
    assert list(auth.ok("UserList", pb.AuthUserListRequest()).users) == ["alice", "emptypw", "nopw"]
    assert list(auth.ok("RoleList", pb.AuthRoleListRequest()).roles) == ["reader"]
    auth.refused("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="nopw", role="reader"),
                 (FAILED, "etcdserver: role is not granted to the user"))
    auth.refused("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="nosuch", role="reader"),
                 (FAILED, "etcdserver: user name not found"))
    auth.ok("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="alice", role="root"))
    auth.refused("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="reader", key=b"nope"),
                 (FAILED, "etcdserver: permission is not granted to the role"))
    auth.refused("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="nosuch", key=b"k"),
                 (FAILED, "etcdserver: role name not found"))
    auth.ok("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="reader", key=b"k", range_end=b"l"))
    auth.ok("RoleGet", pb.AuthRoleGetRequest(role="reader"))
    auth.ok("UserChangePassword", pb.AuthUserChangePasswordRequest(name="nopw", password="ignored"))
    auth.refused("UserChangePassword", pb.AuthUserChangePasswordRequest(name="nosuch", password="x"),
                 (FAILED, "etcdserver: user name not found"))
    auth.refused("UserDelete", pb.AuthUserDeleteRequest(name="nosuch"), (FAILED, "etcdserver: user name not found"))
    auth.refused("RoleDelete", pb.AuthRoleDeleteRequest(role="nosuch"), (FAILED, "etcdserver: role name not found"))
    auth.ok("RoleDelete", pb.AuthRoleDeleteRequest(role="reader"))
    assert list(auth.ok("UserGet", pb.AuthUserGetRequest(name="alice")).roles) == []  # its role went with it
    auth.login_refused("alice", "alicepw", FAILED, "etcdserver: authentication is not enabled")
    status = auth.status()
    assert not status.enabled and status.authRevision > start


def test_enable_needs_root_and_protects_it(auth):
    auth.refused("AuthEnable", pb.AuthEnableRequest(), (FAILED, "etcdserver: root user does not exist"))
    auth.add_user("root", ROOT_PASSWORD)
    auth.refused("AuthEnable", pb.AuthEnableRequest(), (FAILED, "etcdserver: root user does not have root role"))
    auth.ok("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))
    auth.ok("RoleAdd", pb.AuthRoleAddRequest(name="root"))
    before = auth.status().authRevision
    auth.ok("AuthEnable", pb.AuthEnableRequest())
    root = auth.login("root", ROOT_PASSWORD)
    status = auth.status(root)
    assert status.enabled and status.authRevision == before  # enabling keeps the auth revision
    auth.ok("AuthEnable", pb.AuthEnableRequest(), root)  # again: nothing to do
    mgmt = (INVALID, "etcdserver: invalid auth management")
    auth.refused("UserDelete", pb.AuthUserDeleteRequest(name="root"), mgmt, root)
    auth.refused("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="root", role="root"), mgmt, root)
    auth.refused("RoleDelete", pb.AuthRoleDeleteRequest(role="root"), mgmt, root)
    assert not list(auth.ok("RoleGet", pb.AuthRoleGetRequest(role="root"), root).perm)
    auth.ok("AuthDisable", pb.AuthDisableRequest(), root)
    status = auth.status()
    assert not status.enabled and status.authRevision == before + 1
    auth.ok("AuthDisable", pb.AuthDisableRequest())  # already disabled: nothing to do
    auth.ok("RoleDelete", pb.AuthRoleDeleteRequest(role="root"))  # allowed once auth is off


def test_only_root_administers(auth):
    root, alice = auth.tenant(perm(READWRITE, auth.pair.k(b"t/"), prefix_end(auth.pair.k(b"t/"))))
    requests = [("AuthEnable", pb.AuthEnableRequest()), ("AuthDisable", pb.AuthDisableRequest()),
                ("AuthStatus", pb.AuthStatusRequest()), ("UserAdd", pb.AuthUserAddRequest(name="bob", password="x")),
                ("UserList", pb.AuthUserListRequest()), ("UserGet", pb.AuthUserGetRequest(name="root")),
                ("UserDelete", pb.AuthUserDeleteRequest(name="root")),
                ("UserChangePassword", pb.AuthUserChangePasswordRequest(name="alice", password="x")),
                ("UserGrantRole", pb.AuthUserGrantRoleRequest(user="alice", role="root")),
                ("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="alice", role="tenant")),
                ("RoleAdd", pb.AuthRoleAddRequest(name="r2")), ("RoleList", pb.AuthRoleListRequest()),
                ("RoleGet", pb.AuthRoleGetRequest(role="root")), ("RoleDelete", pb.AuthRoleDeleteRequest(role="tenant")),
                ("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name="tenant", perm=perm(READ, b"x"))),
                ("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="tenant", key=b"x"))]
    for method, request in requests:
        auth.refused(method, request, DENIED, alice)
        auth.refused(method, request, USER_EMPTY)
        auth.refused(method, request, BAD_TOKEN, everyone("not-a-token"))
    # A user may read itself and its own roles.
    assert list(auth.ok("UserGet", pb.AuthUserGetRequest(name="alice"), alice).roles) == ["tenant"]
    auth.ok("RoleGet", pb.AuthRoleGetRequest(role="tenant"), alice)
    auth.refused("UserGet", pb.AuthUserGetRequest(name=""), (FAILED, "etcdserver: user name not found"))
    # Maintenance: admin calls refused with the auth package's own text; Status and MemberList free.
    unknown = grpc.StatusCode.UNKNOWN
    for method, request in (("Hash", pb.HashRequest()), ("HashKV", pb.HashKVRequest()),
                            ("Defragment", pb.DefragmentRequest())):
        auth.pair.expect_error("Maintenance", method, request, unknown, "auth: user name is empty")
        auth.pair.expect_error("Maintenance", method, request, unknown, "auth: permission denied", tokens=alice)
        auth.pair.expect_error("Maintenance", method, request, unknown, "auth: invalid auth token",
                               tokens=everyone("not-a-token"))
    for side in auth.pair.sides:  # the hashes differ (cosmos-etcd's own), and so do the headers of Defragment
        for method, request in (("Hash", pb.HashRequest()), ("Defragment", pb.DefragmentRequest())):
            assert not isinstance(side.invoke("Maintenance", method, request, token=root[side.name]), Error)
        assert not isinstance(side.invoke("Maintenance", "Status", pb.StatusRequest()), Error)
        assert not isinstance(side.invoke("Cluster", "MemberList", pb.MemberListRequest(), token="bad"), Error)
        refusal = snapshot_refusal(side, alice[side.name])
        assert refusal == (unknown, "auth: permission denied"), f"{side.name}: Snapshot as alice: {refusal}"
    auth.pair.ok("Maintenance", "Alarm", pb.AlarmRequest())  # any caller, but a token must be valid
    auth.pair.expect_error("Maintenance", "Alarm", pb.AlarmRequest(), *BAD_TOKEN, tokens=everyone("not-a-token"))


def snapshot_refusal(side, token: str) -> tuple | None:
    try:
        for _ in side.stub("Maintenance").Snapshot(pb.SnapshotRequest(), metadata=[("token", token)], timeout=30):
            pass
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None


def test_authenticate(auth):
    root = auth.enable()
    auth.add_user("alice", "alicepw", tokens=root)
    auth.ok("UserAdd", pb.AuthUserAddRequest(name="nopw", options=auth_pb2.UserAddOptions(no_password=True)), root)
    auth.ok("UserAdd", pb.AuthUserAddRequest(name="emptypw"), root)
    failed = (INVALID, "etcdserver: authentication failed, invalid user ID or password")
    auth.login_refused("alice", "wrong", *failed)
    auth.login_refused("nosuch", "alicepw", *failed)
    auth.login_refused("", "", *failed)
    auth.login_refused("nopw", "", grpc.StatusCode.UNKNOWN,
                       "auth: authentication failed, password was given for no password user")
    auth.login("emptypw", "")
    tokens = [auth.login("alice", "alicepw") for _ in range(2)]
    assert tokens[0]["shim"] != tokens[1]["shim"]
    # A token in the request does not matter to Authenticate itself.
    for side in auth.pair.sides:
        outcome = side.invoke("Auth", "Authenticate", pb.AuthenticateRequest(name="alice", password="alicepw"),
                              token="not-a-token")
        assert not isinstance(outcome, Error), f"{side.name}: {outcome}"


def test_key_permissions(auth):
    pair = auth.pair
    k = pair.k
    pair.put(k(b"r/1"), b"v")
    pair.put(k(b"w/1"), b"v")
    root, alice = auth.tenant(perm(READ, k(b"r/"), prefix_end(k(b"r/"))), perm(READWRITE, k(b"w/"), prefix_end(k(b"w/"))),
                              perm(WRITE, k(b"o/"), prefix_end(k(b"o/"))), perm(READ, k(b"p")), perm(READ, k(b"s"), b"\0"))

    def allowed(method, request):
        outcome = auth.kv(method, request, alice)
        assert not isinstance(outcome, Error), f"{method} refused: {outcome}"

    def denied(method, request, error=DENIED, tokens=alice):
        assert auth.kv(method, request, tokens) == Error(*error), f"{method} not refused with {error}"

    denied("Range", pb.RangeRequest(key=k(b"r/1")), USER_EMPTY, tokens=None)
    denied("Put", pb.PutRequest(key=k(b"w/1")), USER_EMPTY, tokens=None)
    denied("Range", pb.RangeRequest(key=k(b"r/1")), BAD_TOKEN, tokens=everyone("not-a-token"))
    denied("Put", pb.PutRequest(key=b""), (INVALID, "etcdserver: key is not provided"),
           tokens=everyone("not-a-token"))  # request checks first
    allowed("Range", pb.RangeRequest(key=k(b"r/1")))
    allowed("Range", pb.RangeRequest(key=k(b"r/"), range_end=prefix_end(k(b"r/")), serializable=True))
    allowed("Range", pb.RangeRequest(key=k(b"r/a"), range_end=k(b"r/z")))
    denied("Range", pb.RangeRequest(key=k(b"r"), range_end=prefix_end(k(b"r"))))  # wider than granted
    denied("Range", pb.RangeRequest(key=k(b"r/"), range_end=b"\0"))
    allowed("Range", pb.RangeRequest(key=k(b"p")))
    denied("Range", pb.RangeRequest(key=k(b"p"), range_end=k(b"q")))
    allowed("Range", pb.RangeRequest(key=k(b"s"), range_end=b"\0"))
    allowed("Range", pb.RangeRequest(key=k(b"t")))
    denied("Range", pb.RangeRequest(key=k(b"o/1")))  # write only
    denied("Put", pb.PutRequest(key=k(b"r/1"), value=b"x"))
    allowed("Put", pb.PutRequest(key=k(b"o/1"), value=b"x"))
    denied("Put", pb.PutRequest(key=k(b"o/1"), prev_kv=True))
    allowed("Put", pb.PutRequest(key=k(b"w/1"), value=b"x", prev_kv=True))
    denied("Put", pb.PutRequest(key=k(b"r/2"), lease=999999))  # permission before the lease's existence
    denied("Put", pb.PutRequest(key=k(b"w/2"), lease=999999), (grpc.StatusCode.NOT_FOUND,
                                                                 "etcdserver: requested lease not found"))
    denied("DeleteRange", pb.DeleteRangeRequest(key=k(b"r/1")))
    denied("DeleteRange", pb.DeleteRangeRequest(key=k(b"o/1"), prev_kv=True))
    allowed("DeleteRange", pb.DeleteRangeRequest(key=k(b"o/"), range_end=prefix_end(k(b"o/"))))
    allowed("DeleteRange", pb.DeleteRangeRequest(key=k(b"w/1"), prev_kv=True))
    # Txn: compared keys need read, every operation of both branches its own permission.
    c = pb.Compare(key=k(b"w/1"), target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
    allowed("Txn", pb.TxnRequest(compare=[c], success=[op_put(k(b"w/1"), b"t")], failure=[op_range(k(b"r/1"))]))
    denied("Txn", pb.TxnRequest(compare=[pb.Compare(key=k(b"o/1"), target=pb.Compare.VERSION, version=0)]))
    denied("Txn", pb.TxnRequest(compare=[c], failure=[op_put(k(b"r/1"), b"t")]))
    denied("Txn", pb.TxnRequest(success=[op_range(k(b"o/1"))]))
    denied("Txn", pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
        key=k(b"o/1"), prev_kv=True))]))
    allowed("Txn", pb.TxnRequest(success=[op_put(k(b"o/2"), b"t", prev_kv=True)]))  # no read needed, as etcd
    allowed("Txn", pb.TxnRequest())
    auth.state(root)  # root sees what alice did, the same on both sides
    # A permission revoked or a role taken away applies to the next request.
    auth.ok("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(role="tenant", key=k(b"p")), root)
    denied("Range", pb.RangeRequest(key=k(b"p")))
    auth.ok("UserRevokeRole", pb.AuthUserRevokeRoleRequest(name="alice", role="tenant"), root)
    denied("Range", pb.RangeRequest(key=k(b"r/1")))
    # Compact needs no permission, only a valid token (as etcd 3.5).
    revision = auth.state(root).header.revision
    pair.ok("KV", "Compact", pb.CompactionRequest(revision=pair.rev(revision)), tokens=alice)
    pair.expect_error("KV", "Compact", pb.CompactionRequest(revision=pair.rev(revision)), *BAD_TOKEN,
                      tokens=everyone("not-a-token"))


@pytest.mark.skipif(ORACLE_VS_ORACLE, reason="a difference of the shim's from etcd")
def test_nested_txn_and_from_key_watch_are_checked_whole(auth):
    """The two deliberate differences: etcd 3.5.1 lets both through."""
    pair = auth.pair
    k = pair.k
    root, alice = auth.tenant(perm(READWRITE, k(b"w/"), prefix_end(k(b"w/"))), perm(READ, k(b"p")))
    nested = pb.TxnRequest(success=[op_txn(success=[op_put(k(b"elsewhere"), b"x")])])
    assert not isinstance(pair.call_side("etcd", "KV", "Txn", nested, tokens=alice), Error)
    assert pair.call_side("shim", "KV", "Txn", nested, tokens=alice) == Error(*DENIED)
    assert not isinstance(pair.call_side("shim", "KV", "Txn", pb.TxnRequest(success=[op_txn(
        success=[op_put(k(b"w/1"), b"x")])]), tokens=alice), Error)
    answers = {}
    for side in pair.sides:
        with WatchStream(side.channel, side.name, metadata=[("token", alice[side.name])]) as stream:
            answers[side.name] = stream.create(key=k(b"p"), range_end=b"\0")
    assert not answers["etcd"].canceled
    assert answers["shim"].canceled and answers["shim"].cancel_reason == WATCH_DENIED


def test_watch_permissions(auth):
    pair = auth.pair
    k = pair.k
    root, alice = auth.tenant(perm(READ, k(b"r/"), prefix_end(k(b"r/"))))
    # One stream per watch: etcd 3.5.1 stops sending the events of watch 0 on a stream where it
    # refused a later watch (the refusal carries watch id 0).
    watches = [("alice", {"key": k(b"r/"), "range_end": prefix_end(k(b"r/"))}), ("alice", {"key": k(b"w/1")}),
               ("alice", {"key": b""}), ("alice", {"key": k(b"r/"), "range_end": prefix_end(k(b"r"))}),
               ("nobody", {"key": k(b"r/1")}), ("bad token", {"key": k(b"r/1")})]
    answers: dict[str, list] = {}
    for side in pair.sides:
        tokens = {"alice": alice[side.name], "nobody": None, "bad token": "not-a-token"}
        answers[side.name] = []
        for caller, create in watches:
            metadata = [("token", tokens[caller])] if tokens[caller] else None
            with WatchStream(side.channel, f"{side.name} {caller}", metadata=metadata) as stream:
                created = stream.create(**create)
                answers[side.name].append((created.watch_id, created.canceled, created.cancel_reason))
                if not created.canceled:
                    put = side.invoke("KV", "Put", pb.PutRequest(key=k(b"r/1"), value=b"seen"), token=root[side.name])
                    events = stream.wait_events_through(created.watch_id, put.header.revision)
                    answers[side.name].append([(e.kv.key, e.kv.value) for e in events])
    assert answers["etcd"] == answers["shim"]
    assert [answer[1] for answer in answers["shim"] if isinstance(answer, tuple)] == [False] + [True] * 5


def test_lease_permissions(auth):
    pair = auth.pair
    k = pair.k
    root, alice = auth.tenant(perm(READWRITE, k(b"w/"), prefix_end(k(b"w/"))))
    lease, other = 0x5EA5E_A000000 + pair.number * 10, 0x5EA5E_A000001 + pair.number * 10
    pair.ok("Lease", "LeaseGrant", pb.LeaseGrantRequest(ID=lease, TTL=100), tokens=alice)
    pair.ok("Lease", "LeaseGrant", pb.LeaseGrantRequest(ID=other, TTL=100))  # anyone may grant
    pair.expect_error("Lease", "LeaseGrant", pb.LeaseGrantRequest(ID=lease + 5, TTL=100), *BAD_TOKEN,
                      tokens=everyone("not-a-token"))
    pair.ok("KV", "Put", pb.PutRequest(key=k(b"w/1"), lease=lease), tokens=alice)
    pair.ok("KV", "Put", pb.PutRequest(key=k(b"elsewhere"), lease=other), tokens=root)
    # A lease holding a key alice may not write: she may neither attach to it nor revoke it.
    pair.expect_error("KV", "Put", pb.PutRequest(key=k(b"w/2"), lease=other), *DENIED, tokens=alice)
    pair.expect_error("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=other), *DENIED, tokens=alice)
    pair.expect_error("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=other), *USER_EMPTY)
    for side in pair.sides:  # keep-alive, time-to-live and the lease list check nothing
        ttl = side.invoke("Lease", "LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=other, keys=True), token="bad")
        assert not isinstance(ttl, Error) and list(ttl.keys) == [k(b"elsewhere")], f"{side.name}: {ttl}"
        assert not isinstance(side.invoke("Lease", "LeaseLeases", pb.LeaseLeasesRequest(), token="bad"), Error)
    pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease), tokens=alice)
    pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=other), tokens=root)
    auth.state(root)


def test_tokens_end_with_password_change_user_delete_and_disable(auth):
    pair = auth.pair
    k = pair.k
    root = auth.enable()
    auth.add_role("tenant", perm(READ, k(b"r/"), prefix_end(k(b"r/"))), tokens=root)
    auth.add_user("alice", "alicepw", "tenant", tokens=root)
    auth.add_user("bob", "bobpw", "tenant", tokens=root)
    alice, bob = auth.login("alice", "alicepw"), auth.login("bob", "bobpw")
    read = pb.RangeRequest(key=k(b"r/1"))
    auth.ok("UserChangePassword", pb.AuthUserChangePasswordRequest(name="alice", password="newpw"), root)
    pair.expect_error("KV", "Range", read, *BAD_TOKEN, tokens=alice)
    auth.login_refused("alice", "alicepw", INVALID, "etcdserver: authentication failed, invalid user ID or password")
    pair.ok("KV", "Range", read, tokens=auth.login("alice", "newpw"))
    pair.ok("KV", "Range", read, tokens=bob)
    auth.ok("UserDelete", pb.AuthUserDeleteRequest(name="bob"), root)
    pair.expect_error("KV", "Range", read, *BAD_TOKEN, tokens=bob)
    auth.ok("AuthDisable", pb.AuthDisableRequest(), root)
    # With auth disabled every token is invalid (etcd 3.5 still checks one that is sent).
    pair.expect_error("KV", "Range", read, *BAD_TOKEN, tokens=root)
    pair.ok("KV", "Range", read)
    auth.ok("AuthEnable", pb.AuthEnableRequest())
    pair.expect_error("KV", "Range", read, *BAD_TOKEN, tokens=root)  # a re-enable issues new ones only


def restart(server: processes.Server) -> processes.Server:
    """The same shim again: same data directory, port, flags, environment (and Cosmos server)."""
    server.stop()
    backend_at = server.argv.index("--backend")
    env = backends.LOCAL_COSMOS_KEY if server.argv[backend_at + 1] == "cosmos" else None
    again = processes.start_shim(server.log_path.parent, backend=server.argv[backend_at + 1],
                                 extra_args=server.argv[backend_at + 2:], data_dir=server.data_dir,
                                 port=int(server.endpoint.rsplit(":", 1)[1]), env=env)
    again.companions = server.companions
    return again


@pytest.mark.skipif(ORACLE_VS_ORACLE, reason="restarts the shim process")
def test_auth_state_survives_a_restart(auth, servers):
    pair = auth.pair
    k = pair.k
    root = auth.enable()
    auth.add_role("tenant", perm(READWRITE, k(b"w/"), prefix_end(k(b"w/"))), perm(READ, k(b"x")), tokens=root)
    auth.add_user("alice", "alicepw", "tenant", tokens=root)
    reads = (("AuthStatus", pb.AuthStatusRequest()), ("UserList", pb.AuthUserListRequest()),
             ("UserGet", pb.AuthUserGetRequest(name="alice")), ("RoleGet", pb.AuthRoleGetRequest(role="tenant")))
    before = [auth.ok(method, request, root) for method, request in reads]
    shim = pair.side("shim")
    shim.server = restart(shim.server)
    # Tokens live in memory: the restarted shim knows none; etcd's stay valid.
    assert pair.call_side("shim", "Auth", "AuthStatus", pb.AuthStatusRequest(), tokens=root) == Error(*BAD_TOKEN)
    root = auth.login("root", ROOT_PASSWORD)
    assert [auth.ok(method, request, root) for method, request in reads] == before
    alice = auth.login("alice", "alicepw")
    pair.ok("KV", "Put", pb.PutRequest(key=k(b"w/1"), value=b"after restart"), tokens=alice)
    pair.expect_error("KV", "Put", pb.PutRequest(key=k(b"x"), value=b"no"), *DENIED, tokens=alice)


@pytest.fixture
def short_tokens(tmp_path):
    """etcd and the shim with 2-second tokens (tokens never touch storage: one backend is enough)."""
    etcd = processes.start_etcd(tmp_path / "etcd", extra_args=[*ETCD_ARGS, "--auth-token-ttl", "2"])
    try:
        shim = start_subject("embedded", tmp_path / "shim", extra_args=["--auth-token-ttl", "2"])
    except BaseException:
        etcd.stop()
        raise
    connection = Connection(etcd, shim)
    yield Scenario(connection.new_pair())
    connection.close()
    shim.stop()
    etcd.stop()


def test_a_token_lives_while_used_and_expires_when_idle(short_tokens):
    auth = short_tokens
    root = auth.enable()
    status = pb.AuthStatusRequest()
    # Used every half TTL for three TTLs: each use renews it.
    renewed_until = time.monotonic() + 6
    while time.monotonic() < renewed_until:
        auth.ok("AuthStatus", status, root)
        time.sleep(1)
    # Left alone, it expires. Nothing can be awaited here: any look at the token would renew it,
    # so the test stays away for the TTL plus etcd's one-second expiry sweep, with a margin.
    time.sleep(2 + 3)
    auth.refused("AuthStatus", status, BAD_TOKEN, root)
