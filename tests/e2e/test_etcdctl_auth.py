"""etcdctl's auth commands (users, roles, permissions, auth enable/disable) on etcd and on the shim.

A module of its own, so that its fresh pair of servers is the only one that ever has auth enabled.
The comparison machinery is test_etcdctl's: exit code, normalised stdout, etcdctl's error lines
and the gRPC status of its client log lines.
"""
from __future__ import annotations

import pytest

from .test_etcdctl import Pair

ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"


@pytest.fixture
def ctl(e2e_etcd, e2e_shim):
    return Pair(e2e_etcd, e2e_shim)


def test_auth_lifecycle(ctl):
    ctl.check("user", "list", expect_rc=0)
    ctl.check("role", "list", expect_rc=0)
    ctl.check("auth", "status", expect_rc=0)
    ctl.check("user", "add", "root", "--new-user-password=rootpw", expect_rc=0)
    ctl.check("user", "add", "alice", "--new-user-password=alicepw", expect_rc=0)
    ctl.check("user", "add", "alice", "--new-user-password=again")           # exists
    ctl.check("user", "add", "nopw", "--no-password", expect_rc=0)
    ctl.check("role", "add", "reader", expect_rc=0)
    ctl.check("role", "add", "reader")                                       # exists
    ctl.check("role", "grant-permission", "reader", "read", "a/", "--prefix", expect_rc=0)
    ctl.check("role", "grant-permission", "reader", "readwrite", "b/k", expect_rc=0)
    ctl.check("role", "grant-permission", "reader", "write", "c/", "c/z", expect_rc=0)
    ctl.check("role", "grant-permission", "nosuchrole", "read", "x")
    ctl.check("role", "get", "reader", expect_rc=0)
    ctl.check("role", "get", "nosuchrole")
    ctl.check("user", "grant-role", "alice", "reader", expect_rc=0)
    ctl.check("user", "grant-role", "alice", "nosuchrole")
    ctl.check("user", "grant-role", "nosuchuser", "reader")
    ctl.check("user", "get", "alice", expect_rc=0)
    ctl.check("user", "get", "alice", "--detail", expect_rc=0)
    ctl.check("user", "get", "nosuchuser")
    ctl.check("user", "list", expect_rc=0)
    ctl.check("role", "list", expect_rc=0)
    ctl.check("put", "a/x", "0", expect_rc=0)
    ctl.check("put", "b/k", "0", expect_rc=0)

    ctl.check("auth", "enable", expect_rc=0)
    ctl.check("auth", "status", ROOT, expect_rc=0)
    ctl.check("get", "a/x")                                                  # no user
    ctl.check("get", "a/x", ALICE, expect_rc=0)
    ctl.check("get", "a/", "--prefix", ALICE, "-w", "json")
    ctl.check("get", "a", "--prefix", ALICE)                                 # wider than granted
    ctl.check("put", "a/x", "1", ALICE)                                      # read only
    ctl.check("put", "b/k", "1", ALICE, expect_rc=0)
    ctl.check("put", "c/m", "1", ALICE, expect_rc=0)                         # write only range
    ctl.check("get", "c/m", ALICE)
    ctl.check("del", "b/k", ALICE, expect_rc=0)
    ctl.check("get", "a/x", "--user=alice:wrong")
    ctl.check("get", "a/x", "--user=nobody:pw")
    ctl.check("get", "a/x", "--user=nopw:")                                  # a user without password
    ctl.check("put", "a/x", "2", ROOT, expect_rc=0)
    ctl.check("get", "a/x", ALICE, "-w", "json")
    ctl.check("txn", ALICE, stdin='value("a/x") = "2"\n\nput b/k yes\n\nget a/x\n\n')
    ctl.check("txn", ALICE, stdin='value("a/x") = "2"\n\nput a/x no\n\n\n')  # a write it may not do
    ctl.check("user", "list", ALICE)                                         # needs root
    ctl.check("user", "list", ROOT, expect_rc=0)
    ctl.check("user", "passwd", "alice", "--interactive=false", ROOT, stdin="newpw\n", expect_rc=0)
    ctl.check("get", "a/x", ALICE)                                           # the old password
    ctl.check("get", "a/x", "--user=alice:newpw", expect_rc=0)
    ctl.check("role", "revoke-permission", "reader", "a/", "--prefix", ROOT, expect_rc=0)
    ctl.check("get", "a/x", "--user=alice:newpw")                            # no longer allowed
    ctl.check("role", "get", "reader", ROOT, expect_rc=0)
    ctl.check("user", "revoke-role", "alice", "reader", ROOT, expect_rc=0)
    ctl.check("user", "get", "alice", ROOT, expect_rc=0)
    ctl.check("user", "delete", "root", ROOT)                                # the root user, while enabled
    ctl.check("auth", "disable", ROOT, expect_rc=0)

    ctl.check("get", "a/x", expect_rc=0)
    ctl.check("auth", "status", expect_rc=0)
    ctl.check("user", "delete", "alice", expect_rc=0)
    ctl.check("user", "delete", "nopw", expect_rc=0)
    ctl.check("user", "delete", "root", expect_rc=0)
    ctl.check("user", "delete", "root")
    ctl.check("role", "delete", "reader", expect_rc=0)
    ctl.check("role", "list", expect_rc=0)
    ctl.check("user", "list", expect_rc=0)
    ctl.verify()


def test_a_tenant_restricted_to_its_prefix(ctl):
    """The README's commands, as written there."""
    tenant, root = "--user=tenant-a:tenantpw", "--user=root:rootpw"
    ctl.check("user", "add", "root", "--new-user-password=rootpw", expect_rc=0)
    ctl.check("user", "grant-role", "root", "root", expect_rc=0)
    ctl.check("role", "add", "tenant-a", expect_rc=0)
    ctl.check("role", "grant-permission", "tenant-a", "readwrite", "/tenant-a/", "--prefix", expect_rc=0)
    ctl.check("user", "add", "tenant-a", "--new-user-password=tenantpw", expect_rc=0)
    ctl.check("user", "grant-role", "tenant-a", "tenant-a", expect_rc=0)
    ctl.check("auth", "enable", expect_rc=0)
    ctl.check(tenant, "put", "/tenant-a/registry/x", "1", expect_rc=0)
    ctl.check(tenant, "get", "/tenant-b/", "--prefix", expect_rc=1)
    ctl.check(root, "user", "list", expect_rc=0)
    ctl.check(root, "auth", "disable", expect_rc=0)
    ctl.check("del", "/tenant-a/", "--prefix", expect_rc=0)
    for user in ("tenant-a", "root"):
        ctl.check("user", "delete", user, expect_rc=0)
    ctl.check("role", "delete", "tenant-a", expect_rc=0)
    ctl.verify()
