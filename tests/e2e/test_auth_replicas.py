"""Two shim replicas on one Cosmos DB container share one auth state (users, roles, enabled).

Each change goes through a compare-and-swap on the stored state, so changes made through both
replicas at once are all kept; Authenticate and the Auth service read the stored state first, so
a user added through one replica logs in through the other at once; permission checks use the
state as last read, re-read every second, so a revoked permission is enforced by the other
replica within a bound (awaited here with a deadline, never a fixed sleep). Tokens stay with the
replica that issued them: the other answers "invalid auth token", and etcd's clients then log in
again.
"""
from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest

from cosmos_etcd_shim.proto import auth_pb2
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from tests.harness import cosmos as cosmos_harness
from tests.harness import processes

KEY_VARIABLE = "COSMOS_ETCD_COSMOS_KEY"
ENFORCED_WITHIN = 15.0  # seconds: the refresh period (1 s) plus Cosmos reads, with a wide margin


class Replica:
    def __init__(self, server: processes.Server):
        self.server = server
        self.channel = grpc.insecure_channel(server.endpoint)
        self.auth = rpc_pb2_grpc.AuthStub(self.channel)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)

    def login(self, name: str, password: str) -> list[tuple[str, str]]:
        token = self.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=10).token
        return [("token", token)]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    cosmos_harness.require()
    workdir = tmp_path_factory.mktemp("auth-replicas")
    cosmos = cosmos_harness.start_cosmos(workdir / "cosmos")
    servers = []
    try:
        for n in (1, 2):
            servers.append(processes.start_shim(
                workdir / f"replica-{n}", backend="cosmos", env={KEY_VARIABLE: cosmos.key},
                extra_args=["--name", f"replica-{n}", "--cosmos-endpoint", cosmos.endpoint, "--bcrypt-cost", "4"]))
        yield cosmos, [Replica(server) for server in servers]
    finally:
        for server in servers:
            server.stop()
        cosmos.stop()


@pytest.fixture(scope="module")
def enabled(replicas):
    """Auth enabled through the first replica, with root; the replicas."""
    _, (a, b) = replicas
    a.auth.UserAdd(pb.AuthUserAddRequest(name="root", password="rootpw"))
    a.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
    a.auth.AuthEnable(pb.AuthEnableRequest())
    return a, b


def refused(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return None


def test_replicas_share_users_roles_and_permissions(enabled):
    a, b = enabled
    root_a = a.login("root", "rootpw")
    a.auth.RoleAdd(pb.AuthRoleAddRequest(name="tenant"), metadata=root_a)
    a.auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="tenant", perm=auth_pb2.Permission(
        permType=auth_pb2.Permission.READWRITE, key=b"/tenant-a/", range_end=b"/tenant-a0")), metadata=root_a)
    a.auth.UserAdd(pb.AuthUserAddRequest(name="alice", password="alicepw"), metadata=root_a)
    a.auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="alice", role="tenant"), metadata=root_a)

    # Through the other replica at once: it reads the stored state before it answers.
    root_b = b.login("root", "rootpw")
    status = [r.auth.AuthStatus(pb.AuthStatusRequest(), metadata=m) for r, m in ((a, root_a), (b, root_b))]
    assert status[0].enabled and status[0].authRevision == status[1].authRevision
    alice_b = b.login("alice", "alicepw")
    b.kv.Put(pb.PutRequest(key=b"/tenant-a/pod", value=b"1"), metadata=alice_b)
    assert refused(lambda: b.kv.Put(pb.PutRequest(key=b"/tenant-b/pod", value=b"1"),
                                    metadata=alice_b)) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: b.kv.Range(pb.RangeRequest(key=b"/tenant-a/pod"))) == grpc.StatusCode.INVALID_ARGUMENT
    # A token belongs to the replica that issued it.
    assert refused(lambda: a.kv.Range(pb.RangeRequest(key=b"/tenant-a/pod"),
                                      metadata=alice_b)) == grpc.StatusCode.UNAUTHENTICATED

    # Revoked through one replica, enforced by the other within the bound.
    a.auth.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(
        role="tenant", key=b"/tenant-a/", range_end=b"/tenant-a0"), metadata=root_a)
    deadline = time.monotonic() + ENFORCED_WITHIN
    while refused(lambda: b.kv.Range(pb.RangeRequest(key=b"/tenant-a/pod"), metadata=alice_b)) is None:
        assert time.monotonic() < deadline, f"replica 2 still allows a permission revoked {ENFORCED_WITHIN} s ago"
        time.sleep(0.1)
    assert refused(lambda: b.kv.Range(pb.RangeRequest(key=b"/tenant-a/pod"),
                                      metadata=alice_b)) == grpc.StatusCode.PERMISSION_DENIED

    # A password changed through one replica ends the user's tokens on the other too.
    a.auth.UserChangePassword(pb.AuthUserChangePasswordRequest(name="alice", password="newpw"), metadata=root_a)
    deadline = time.monotonic() + ENFORCED_WITHIN
    while refused(lambda: b.auth.UserGet(pb.AuthUserGetRequest(name="alice"), metadata=alice_b)) is None:
        assert time.monotonic() < deadline, "replica 2 still accepts a token of a changed password"
        time.sleep(0.1)
    assert refused(lambda: b.login("alice", "alicepw")) == grpc.StatusCode.INVALID_ARGUMENT
    b.login("alice", "newpw")


def test_concurrent_changes_through_both_replicas_are_all_kept(enabled):
    replicas = a, _ = enabled
    root = {id(r): r.login("root", "rootpw") for r in replicas}
    before = a.auth.AuthStatus(pb.AuthStatusRequest(), metadata=root[id(a)]).authRevision
    names = [f"user-{n}" for n in range(16)]

    def add(n: int) -> None:
        replica = replicas[n % 2]
        replica.auth.UserAdd(pb.AuthUserAddRequest(name=names[n], password="pw"), metadata=root[id(replica)],
                             timeout=30)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(len(names))))
    for replica in replicas:
        users = replica.auth.UserList(pb.AuthUserListRequest(), metadata=root[id(replica)]).users
        assert set(names) <= set(users)
        status = replica.auth.AuthStatus(pb.AuthStatusRequest(), metadata=root[id(replica)])
        assert status.authRevision == before + len(names)


def test_the_auth_state_is_on_the_container_not_the_replica(replicas, enabled, tmp_path):
    """A third replica started now (empty data directory) has the same users, auth enabled."""
    cosmos, _ = replicas
    third = processes.start_shim(tmp_path, backend="cosmos", env={KEY_VARIABLE: cosmos.key},
                                 extra_args=["--name", "replica-3", "--cosmos-endpoint", cosmos.endpoint])
    try:
        c = Replica(third)
        root = c.login("root", "rootpw")
        assert c.auth.AuthStatus(pb.AuthStatusRequest(), metadata=root).enabled
        assert "root" in c.auth.UserList(pb.AuthUserListRequest(), metadata=root).users
        assert refused(lambda: c.kv.Range(pb.RangeRequest(key=b"/x"))) == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        third.stop()
