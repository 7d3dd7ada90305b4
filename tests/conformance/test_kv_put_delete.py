"""KV.Put and KV.DeleteRange, compared field by field with a real etcd."""
from __future__ import annotations

import grpc

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.differential import compare, op_range, prefix_end

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_put_revisions_and_versions(pair):
    k = pair.k(b"a")
    r = pair.put(k, b"1")
    assert r.header.revision == 1 and not r.HasField("prev_kv")
    pair.put(k, b"2")
    pair.put(pair.k(b"b"), b"x")
    pair.put(k, b"3")
    r = pair.range(k)
    assert (r.kvs[0].create_revision, r.kvs[0].mod_revision, r.kvs[0].version) == (1, 4, 3)
    # version restarts after a delete, and create_revision moves
    pair.delete(k)
    pair.range(k)
    pair.put(k, b"4")
    r = pair.range(k)
    assert (r.kvs[0].create_revision, r.kvs[0].mod_revision, r.kvs[0].version) == (6, 6, 1)
    pair.put(k, b"4")  # same value again: still a new revision
    r = pair.range(k)
    assert r.kvs[0].version == 2 and r.header.revision == 7


def test_put_prev_kv(pair):
    k = pair.k(b"a")
    r = pair.put(k, b"1", prev_kv=True)
    assert not r.HasField("prev_kv")
    r = pair.put(k, b"2", prev_kv=True)
    assert r.prev_kv.value == b"1" and r.prev_kv.version == 1
    pair.put(k, b"3", prev_kv=True)
    pair.delete(k)
    pair.put(k, b"4", prev_kv=True)


def test_put_ignore_value(pair):
    k = pair.k(b"a")
    pair.expect_error("KV", "Put", pb.PutRequest(key=k, ignore_value=True), INVALID, "etcdserver: key not found")
    pair.put(k, b"keep")
    r = pair.put(k, ignore_value=True, prev_kv=True)
    assert r.prev_kv.value == b"keep"
    r = pair.range(k)
    assert r.kvs[0].value == b"keep" and r.kvs[0].version == 2
    pair.expect_error("KV", "Put", pb.PutRequest(key=k, value=b"x", ignore_value=True), INVALID,
                      "etcdserver: value is provided")
    pair.range(k)


def test_put_ignore_lease(pair):
    k = pair.k(b"a")
    pair.expect_error("KV", "Put", pb.PutRequest(key=k, value=b"v", ignore_lease=True), INVALID,
                      "etcdserver: key not found")
    pair.put(k, b"v1")
    pair.put(k, b"v2", ignore_lease=True, prev_kv=True)
    pair.put(k, ignore_lease=True, ignore_value=True)
    pair.expect_error("KV", "Put", pb.PutRequest(key=k, value=b"v", lease=12345, ignore_lease=True), INVALID,
                      "etcdserver: lease is provided")
    r = pair.range(k)
    assert r.kvs[0].version == 3 and r.kvs[0].value == b"v2"


def test_put_ignore_value_and_lease_on_absent_key(pair):
    pair.expect_error("KV", "Put", pb.PutRequest(key=pair.k(b"x"), ignore_value=True, ignore_lease=True), INVALID,
                      "etcdserver: key not found")
    assert pair.revision() == 0


def fill(pair):
    for key in (b"a", b"ab", b"abc", b"b", b"c", b"d"):
        pair.put(pair.k(key), key * 2)


def test_delete_single(pair):
    fill(pair)
    r = pair.delete(pair.k(b"ab"))
    assert r.deleted == 1 and not r.prev_kvs and r.header.revision == 7
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")))
    r = pair.delete(pair.k(b"ab"))
    assert r.deleted == 0 and r.header.revision == 7


def test_delete_range(pair):
    fill(pair)
    r = pair.delete(pair.k(b"ab"), range_end=pair.k(b"c"))
    assert r.deleted == 3
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")))
    pair.delete(pair.k(b"c"), range_end=pair.k(b"a"))  # range_end < key: nothing


def test_delete_prefix(pair):
    fill(pair)
    r = pair.delete(pair.k(b"a"), range_end=prefix_end(pair.k(b"a")), prev_kv=True)
    assert r.deleted == 3 and [kv.key for kv in r.prev_kvs] == [pair.k(b"a"), pair.k(b"ab"), pair.k(b"abc")]
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")))


def test_delete_from_key(pair):
    fill(pair)
    r = pair.delete(pair.k(b"b"), range_end=b"\x00", prev_kv=True)
    assert r.deleted == 3
    pair.range(pair.k(b""), range_end=b"\x00")


def test_delete_prev_kv(pair):
    fill(pair)
    pair.put(pair.k(b"b"), b"second")
    pair.delete(pair.k(b"b"), prev_kv=True)
    pair.delete(pair.k(b"b"), prev_kv=True)
    pair.delete(pair.k(b"a"), range_end=pair.k(b"z"), prev_kv=True)


def test_delete_nothing_keeps_revision(pair):
    fill(pair)
    before = pair.state()
    for req in (dict(key=pair.k(b"zz")), dict(key=pair.k(b"e"), range_end=pair.k(b"z")),
                dict(key=pair.k(b"x"), range_end=prefix_end(pair.k(b"x")), prev_kv=True),
                dict(key=pair.k(b"e"), range_end=b"\x00")):
        r = pair.delete(**req)
        assert r.deleted == 0 and r.header.revision == before.header.revision
    assert pair.state() == before


def test_put_after_delete_history(pair):
    k = pair.k(b"k")
    pair.put(k, b"1")
    pair.delete(k)
    pair.put(k, b"2")
    pair.delete(k)
    assert pair.revision() == 4
    for n in range(0, 5):
        pair.range(k, revision=pair.rev(n))
        pair.range(k, range_end=b"\x00", revision=pair.rev(n), count_only=True)


def test_large_and_binary_values(pair):
    pair.put(pair.k(b"big"), bytes(range(256)) * 4096)
    pair.put(pair.k(b"nul"), b"\x00" * 10)
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")))


def test_put_with_lease(pair):
    """KV and leases: a lease chosen by the client (same id on both sides) attached by Put, kept by
    ignore_lease, detached by a Put without lease, and revoking it deletes its keys in one revision."""
    lease_id = 0x5EED_0000 + pair.number
    a, b, c = pair.k(b"a"), pair.k(b"b"), pair.k(b"c")
    r = pair.ok("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=600, ID=lease_id))
    assert r.ID == lease_id and r.TTL == 600
    pair.put(a, b"1", lease=lease_id)
    pair.put(b, b"2", lease=lease_id, prev_kv=True)
    pair.put(c, b"3")
    pair.put(a, b"1b", ignore_lease=True, prev_kv=True)  # keeps the lease
    pair.put(b, b"2b", prev_kv=True)  # no lease given: detached
    pair.put(c, ignore_value=True, lease=lease_id, prev_kv=True)  # attached, value kept
    r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")))
    assert [kv.lease for kv in r.kvs] == [lease_id, 0, lease_id]
    for result in ("=", ">", "<", "!="):
        pair.txn([compare(a, "LEASE", result, lease_id)], [op_range(a)], [op_range(b)])
        pair.txn([compare(b, "LEASE", result, lease_id)], [op_range(a)], [op_range(b)])
    before = pair.revision()
    r = pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))
    assert r.header.revision == before + 1
    r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")))
    assert [kv.key for kv in r.kvs] == [b]
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), revision=pair.rev(before))
    pair.expect_error("KV", "Put", pb.PutRequest(key=a, value=b"x", lease=lease_id), grpc.StatusCode.NOT_FOUND,
                      "etcdserver: requested lease not found")
