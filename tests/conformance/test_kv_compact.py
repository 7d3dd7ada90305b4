"""KV.Compact and reads around the compact revision, compared with a real etcd.

Compaction is global: every compaction here is at a revision inside the current scenario.
"""
from __future__ import annotations

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.differential import op_put, op_range, prefix_end

OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"


def fill(pair):
    """Revisions 1..8: a written four times, b created, deleted and re-created, c deleted."""
    a, b, c = pair.k(b"a"), pair.k(b"b"), pair.k(b"c")
    pair.put(a, b"a1")  # 1
    pair.put(b, b"b1")  # 2
    pair.put(a, b"a2")  # 3
    pair.put(c, b"c1")  # 4
    pair.delete(b)  # 5
    pair.put(a, b"a3")  # 6
    pair.delete(c)  # 7
    pair.put(b, b"b2")  # 8
    assert pair.revision() == 8


def read_everything(pair, n):
    everything = dict(range_end=prefix_end(pair.k(b"")), revision=pair.rev(n))
    return [
        pair.call("KV", "Range", pb.RangeRequest(key=pair.k(b""), **everything)),
        pair.call("KV", "Range", pb.RangeRequest(key=pair.k(b"a"), revision=pair.rev(n))),
        pair.call("KV", "Range", pb.RangeRequest(key=pair.k(b""), count_only=True, **everything)),
        pair.call("KV", "Range", pb.RangeRequest(key=pair.k(b""), limit=1, **everything)),
    ]


@pytest.mark.parametrize("physical", [False, True])
def test_reads_below_at_and_above_the_compact_revision(pair, physical):
    fill(pair)
    r = pair.compact(4, physical=physical)
    assert r.header.revision == 8
    for n in range(0, 4):
        for out in read_everything(pair, n):
            assert out == (OUT_OF_RANGE, COMPACTED)
    for n in range(4, 9):
        for out in read_everything(pair, n):
            assert out.header.revision == 8
    for out in read_everything(pair, 9):
        assert out == (OUT_OF_RANGE, FUTURE)
    pair.state()


def test_compact_again_and_backwards(pair):
    fill(pair)
    pair.compact(3)
    before = pair.state()
    pair.expect_error("KV", "Compact", pb.CompactionRequest(revision=pair.rev(3)), OUT_OF_RANGE, COMPACTED)
    pair.expect_error("KV", "Compact", pb.CompactionRequest(revision=pair.rev(2)), OUT_OF_RANGE, COMPACTED)
    pair.expect_error("KV", "Compact", pb.CompactionRequest(revision=pair.rev(2), physical=True), OUT_OF_RANGE,
                      COMPACTED)
    pair.compact(5)
    pair.compact(8)  # at the current revision
    assert pair.state() == before
    read_everything(pair, 8)
    read_everything(pair, 7)


def test_compact_in_the_future(pair):
    fill(pair)
    before = pair.state()
    pair.expect_error("KV", "Compact", pb.CompactionRequest(revision=pair.rev(9)), OUT_OF_RANGE, FUTURE)
    pair.expect_error("KV", "Compact", pb.CompactionRequest(revision=pair.rev(1000), physical=True), OUT_OF_RANGE,
                      FUTURE)
    assert pair.state() == before
    read_everything(pair, 1)  # nothing was compacted


def test_history_survives_where_it_should(pair):
    fill(pair)
    pair.compact(6, physical=True)
    for n in (6, 7, 8):
        read_everything(pair, n)
        pair.range(pair.k(b"b"), revision=pair.rev(n))
        pair.range(pair.k(b"c"), revision=pair.rev(n))
    # versions and create revisions are kept across the compaction
    r = pair.range(pair.k(b"a"))
    assert r.kvs[0].version == 3 and r.kvs[0].create_revision == 1
    pair.put(pair.k(b"a"), b"a4")
    pair.put(pair.k(b"c"), b"c2")
    pair.state()
    read_everything(pair, 7)


def test_compact_then_write_and_read(pair):
    fill(pair)
    pair.compact(8)
    pair.put(pair.k(b"a"), b"a5", prev_kv=True)
    pair.delete(pair.k(b""), range_end=prefix_end(pair.k(b"")), prev_kv=True)
    read_everything(pair, 8)
    read_everything(pair, 10)
    pair.compact(10)
    read_everything(pair, 10)
    pair.expect_error("KV", "Range", pb.RangeRequest(key=pair.k(b"a"), revision=pair.rev(9)), OUT_OF_RANGE, COMPACTED)


def test_compacted_revision_inside_txn(pair):
    fill(pair)
    pair.compact(5)
    before = pair.state()
    req = pb.TxnRequest(success=[op_put(pair.k(b"x"), b"x"), op_range(pair.k(b"a"), revision=pair.rev(2))])
    pair.call("KV", "Txn", req)
    assert pair.state() == before
    pair.txn([], [op_range(pair.k(b"a"), revision=pair.rev(5)), op_put(pair.k(b"x"), b"x")])


def test_filters_after_compaction(pair):
    fill(pair)
    pair.compact(6)
    everything = dict(key=pair.k(b""), range_end=prefix_end(pair.k(b"")))
    for n in range(0, 10):
        pair.range(**everything, min_mod_revision=pair.rev(n))
        pair.range(**everything, max_create_revision=pair.rev(n), limit=1)
