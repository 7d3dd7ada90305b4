"""The differential harness itself: it must see every difference, and only real ones."""
from __future__ import annotations

import grpc
import pytest

from cosmos_etcd_shim.proto import kv_pb2
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.differential import (Error, Mismatch, normalise_response, op_put, op_range, prefix_end, rev,
                                        translate_request)


def test_prefix_end():
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"
    assert prefix_end(b"/t000001/") == b"/t0000010"


def test_translate_request_placeholders_at_every_level():
    req = pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=pb.Compare.MOD, mod_revision=rev(3)),
                 pb.Compare(key=b"k", target=pb.Compare.MOD, mod_revision=0),
                 pb.Compare(key=b"k", target=pb.Compare.VERSION, version=rev(1))],
        success=[op_range(b"k", revision=rev(-1), min_mod_revision=rev(2), max_create_revision=5),
                 pb.RequestOp(request_txn=pb.TxnRequest(success=[op_range(b"k", revision=rev(7))]))])
    out = translate_request(req, 100)
    assert out.compare[0].mod_revision == 103
    assert out.compare[1].WhichOneof("target_union") == "mod_revision" and out.compare[1].mod_revision == 0
    assert out.compare[2].version == rev(1)  # a version is not a revision: left alone
    r = out.success[0].request_range
    assert (r.revision, r.min_mod_revision, r.max_create_revision) == (99, 102, 5)
    assert out.success[1].request_txn.success[0].request_range.revision == 107
    assert req.compare[0].mod_revision == rev(3)  # the template is not modified


def test_normalise_response_nested_headers_and_zero():
    raw = pb.TxnResponse(
        header=pb.ResponseHeader(cluster_id=1, member_id=2, revision=50, raft_term=3),
        responses=[pb.ResponseOp(response_range=pb.RangeResponse(
            header=pb.ResponseHeader(cluster_id=9, revision=50, raft_term=9),
            kvs=[kv_pb2.KeyValue(key=b"k", create_revision=41, mod_revision=40, version=2)]))])
    norm, nonzero = normalise_response(raw, 40)
    assert norm.header == pb.ResponseHeader(revision=10)
    rr = norm.responses[0].response_range
    assert rr.header == pb.ResponseHeader(revision=10)
    assert (rr.kvs[0].create_revision, rr.kvs[0].mod_revision, rr.kvs[0].version) == (1, 0, 2)
    assert "responses[0].response_range.kvs[0].mod_revision" in nonzero
    # an absent revision (0) and a revision equal to the base (also 0 once relative) differ
    unset, unset_nonzero = normalise_response(pb.RangeResponse(header=pb.ResponseHeader(revision=0)), 40)
    at_base, at_base_nonzero = normalise_response(pb.RangeResponse(header=pb.ResponseHeader(revision=40)), 40)
    assert unset == at_base and unset_nonzero != at_base_nonzero


def test_mismatch_is_detected(pair):
    pair.put(pair.k(b"a"), b"1")
    pair.put(pair.k(b"b"), b"2")
    # the same request, but the second side is asked for another key: values differ
    with pytest.raises(Mismatch) as e:
        pair.call("KV", "Range", lambda side: pb.RangeRequest(key=side.k(b"a" if side.name == "etcd" else b"b")))
    assert "answered differently" in str(e.value)
    # a revision differing by one
    with pytest.raises(Mismatch):
        pair.call("KV", "Range", lambda side: pb.RangeRequest(
            key=side.k(b"a"), range_end=b"\x00", revision=side.rev(1 if side.name == "etcd" else 2)))
    # an error on one side only
    with pytest.raises(Mismatch) as e:
        pair.call("KV", "Range", lambda side: pb.RangeRequest(
            key=side.k(b"a"), revision=side.rev(2 if side.name == "etcd" else 50)))
    assert "OUT_OF_RANGE" in str(e.value)
    # the raw answers of the last call stay available
    assert isinstance(pair.raw("etcd"), pb.RangeResponse) and isinstance(pair.raw(pair.sides[1].name), Error)


def test_same_errors_compare_equal(pair):
    out = pair.call("KV", "Range", pb.RangeRequest(key=b""))
    assert out == Error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")


def test_revisions_are_relative_to_the_scenario(pair_factory):
    def scenario():
        p = pair_factory()
        assert p.put(p.k(b"x"), b"1").header.revision == 1
        assert p.txn([], [op_put(p.k(b"y"), b"2")]).header.revision == 2
        return p

    first = scenario()
    second = scenario()
    assert first.prefix < first.prefix + b"\xff" < second.marker < second.prefix
    assert first.base["etcd"] < second.base["etcd"]
    # from-key ranges of a scenario see its own keys only (later namespaces hold none yet)
    r = second.range(second.k(b""), range_end=b"\x00")
    assert [kv.key for kv in r.kvs] == [second.k(b"x"), second.k(b"y")]
