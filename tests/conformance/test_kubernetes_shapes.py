"""The requests kube-apiserver (storage/etcd3) sends, compared with a real etcd."""
from __future__ import annotations

import grpc

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.differential import compare, op_delete, op_put, op_range, prefix_end


def create(pair, key, value):
    """storage.Create: If(ModRevision(key) == 0).Then(Put).Else(Get)."""
    return pair.txn([compare(key, "MOD", "=", 0)], [op_put(key, value)], [op_range(key)])


def update(pair, key, value, known_mod_revision):
    """GuaranteedUpdate: If(ModRevision(key) == known).Then(Put).Else(Get)."""
    return pair.txn([compare(key, "MOD", "=", pair.rev(known_mod_revision))], [op_put(key, value)], [op_range(key)])


def delete(pair, key, known_mod_revision):
    """Delete with preconditions: If(ModRevision(key) == known).Then(Delete prev_kv).Else(Get)."""
    return pair.txn([compare(key, "MOD", "=", pair.rev(known_mod_revision))],
                    [op_delete(key, prev_kv=True)], [op_range(key)])


def get(pair, key):
    return pair.range(key, limit=1)


def test_optimistic_create(pair):
    key = pair.k(b"registry/pods/default/web-0")
    r = create(pair, key, b"pod-v1")
    assert r.succeeded and r.header.revision == 1
    r = create(pair, key, b"pod-v1-again")
    assert not r.succeeded and r.responses[0].response_range.kvs[0].value == b"pod-v1"
    get(pair, key)


def test_optimistic_update(pair):
    key = pair.k(b"registry/configmaps/kube-system/cm")
    create(pair, key, b"v1")
    current = get(pair, key).kvs[0].mod_revision
    r = update(pair, key, b"v2", current)
    assert r.succeeded
    # a stale writer loses and gets the current object back
    r = update(pair, key, b"v2-stale", current)
    assert not r.succeeded and r.responses[0].response_range.kvs[0].value == b"v2"
    fresh = r.responses[0].response_range.kvs[0].mod_revision
    assert update(pair, key, b"v3", fresh).succeeded
    # update of an object that was deleted meanwhile
    pair.delete(key)
    r = update(pair, key, b"v4", fresh + 1)
    assert not r.succeeded and not r.responses[0].response_range.kvs
    get(pair, key)


def test_optimistic_delete(pair):
    key = pair.k(b"registry/secrets/ns/s")
    create(pair, key, b"secret")
    pair.put(key, b"secret-2")
    stale = 1
    r = delete(pair, key, stale)
    assert not r.succeeded
    current = r.responses[0].response_range.kvs[0].mod_revision
    r = delete(pair, key, current)
    assert r.succeeded and r.responses[0].response_delete_range.prev_kvs[0].value == b"secret-2"
    r = delete(pair, key, current)
    assert not r.succeeded
    get(pair, key)


def test_get_with_limit_one(pair):
    key = pair.k(b"registry/pods/ns/a")
    get(pair, key)
    pair.put(key, b"a")
    pair.put(key + b"b", b"ab")
    r = get(pair, key)
    assert len(r.kvs) == 1 and r.count == 1 and not r.more


def paginate(pair, prefix, limit, *, mutate=None):
    """A kube-apiserver list: pages of `limit` at the first page's revision, each continuing from
    the last key + b"\\x00", until `more` is false. Returns the keys seen."""
    end = prefix_end(prefix)
    first = pair.range(prefix, range_end=end, limit=limit)
    seen = [kv.key for kv in first.kvs]
    at = first.header.revision
    more = first.more
    if mutate:
        mutate()
    pages = 1
    while more:
        r = pair.range(seen[-1] + b"\x00", range_end=end, limit=limit, revision=pair.rev(at))
        seen += [kv.key for kv in r.kvs]
        more = r.more
        pages += 1
        assert pages < 1000
    return seen, first


def test_paginated_list(pair):
    prefix = pair.k(b"registry/pods/")
    keys = [prefix + b"ns%d/pod-%02d" % (i % 3, i) for i in range(23)]
    for key in keys:
        pair.put(key, b"spec-" + key[-6:])
    pair.put(pair.k(b"registry/podsx"), b"not in the prefix")
    pair.put(pair.k(b"registry/pod"), b"not in the prefix")
    for limit in (1, 5, 10, 22, 23, 24, 500):
        seen, first = paginate(pair, prefix, limit)
        assert seen == sorted(keys)
        assert first.count == len(keys)


def test_paginated_list_during_writes(pair):
    prefix = pair.k(b"registry/leases/")
    keys = [prefix + b"l-%02d" % i for i in range(12)]
    for key in keys:
        pair.put(key, b"v")

    def mutate():
        pair.delete(keys[7])
        pair.put(keys[9], b"changed")
        pair.put(prefix + b"l-99", b"new")
        pair.put(prefix + b"l-05a", b"new")

    seen, _ = paginate(pair, prefix, 4, mutate=mutate)
    assert seen == keys  # the list is a snapshot at the first page's revision
    seen, _ = paginate(pair, prefix, 4)
    assert len(seen) == 13  # 12 - 1 deleted + 2 created


def test_count_only_on_prefix(pair):
    prefix = pair.k(b"registry/events/")
    for i in range(7):
        pair.put(prefix + b"e%d" % i, b"e")
    r = pair.range(prefix, range_end=prefix_end(prefix), count_only=True)
    assert r.count == 7 and not r.kvs
    pair.delete(prefix + b"e3")
    pair.range(prefix, range_end=prefix_end(prefix), count_only=True)
    pair.range(prefix, range_end=prefix_end(prefix), count_only=True, revision=pair.rev(7))
    pair.range(pair.k(b"registry/none/"), range_end=prefix_end(pair.k(b"registry/none/")), count_only=True)


def test_keys_only_list(pair):
    prefix = pair.k(b"registry/nodes/")
    for i in range(3):
        pair.put(prefix + b"n%d" % i, b"x" * 100)
    pair.range(prefix, range_end=prefix_end(prefix), keys_only=True)
    pair.range(prefix, range_end=prefix_end(prefix), keys_only=True, limit=2)


def test_compaction_cas_then_compact(pair):
    key = pair.k(b"compact_rev_key")
    for i in range(4):
        pair.put(pair.k(b"registry/x/%d" % i), b"v")
    # first run of the compactor: the key does not exist, version 0
    r = pair.txn([compare(key, "VERSION", "=", 0)], [op_put(key, b"4")], [op_range(key)])
    assert r.succeeded
    pair.compact(4)
    # another apiserver with a stale view loses the CAS and learns the current version
    r = pair.txn([compare(key, "VERSION", "=", 0)], [op_put(key, b"5")], [op_range(key)])
    assert not r.succeeded
    version = r.responses[0].response_range.kvs[0].version
    assert version == 1
    for i in range(3):
        pair.put(pair.k(b"registry/y/%d" % i), b"v")
    current = pair.revision()
    r = pair.txn([compare(key, "VERSION", "=", version)], [op_put(key, b"%d" % current)], [op_range(key)])
    assert r.succeeded
    pair.compact(current)
    pair.expect_error("KV", "Range", pb.RangeRequest(key=pair.k(b"registry/x/0"), revision=pair.rev(current - 1)),
                      grpc.StatusCode.OUT_OF_RANGE,
                      "etcdserver: mvcc: required revision has been compacted")
    pair.range(pair.k(b"registry/"), range_end=prefix_end(pair.k(b"registry/")), revision=pair.rev(current))
