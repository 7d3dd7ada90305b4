"""Random KV sequences (Put, DeleteRange, Range, Txn, Compact) sent to etcd and the shim alike.

Each hypothesis example runs in a fresh namespace over a handful of colliding keys (some are
prefixes of others); every response is compared, and at the end the whole history of the
namespace (a range at every revision of the scenario) is compared too.

COSMOS_ETCD_RANDOM_EXAMPLES overrides the number of examples (default 300).
"""
from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.differential import COMPARE_RESULTS, COMPARE_TARGETS, Error, prefix_end

KEYS = [b"a", b"ab", b"b", b"b\xff", b"c", b"c\x00", b"d"]
VALUES = [b"", b"x", b"xx", b"y"]
MAX_REL = 24  # relative revisions drawn mostly from [0, 8], sometimes up to MAX_REL (the future)

EXAMPLES = int(os.environ.get("COSMOS_ETCD_RANDOM_EXAMPLES", "300"))

# --- specs: plain data (readable in hypothesis' failure report), turned into requests per scenario

keys = st.sampled_from(KEYS)
rel_revs = st.one_of(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8), st.integers(0, MAX_REL))
range_ends = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("key"), keys),
    st.just(("prefix",)),
    st.just(("from",)),
)
maybe_rev = st.one_of(st.none(), rel_revs)


@st.composite
def range_specs(draw):
    return dict(
        op="range", key=draw(keys), end=draw(range_ends),
        limit=draw(st.sampled_from([0, 0, 1, 2, 3])),
        revision=draw(st.one_of(st.none(), st.none(), rel_revs, st.just("negative"))),
        sort_order=draw(st.sampled_from([0, 0, 1, 2])),
        sort_target=draw(st.integers(0, 4)),
        keys_only=draw(st.booleans()), count_only=draw(st.sampled_from([False, False, False, True])),
        serializable=draw(st.booleans()),
        filters={name: draw(st.one_of(st.none(), st.none(), st.none(), rel_revs))
                 for name in ("min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision")},
    )


@st.composite
def put_specs(draw):
    return dict(
        op="put", key=draw(keys), value=draw(st.sampled_from(VALUES)), prev_kv=draw(st.booleans()),
        ignore_value=draw(st.sampled_from([False] * 11 + [True])),
        ignore_lease=draw(st.sampled_from([False] * 11 + [True])),
        lease=draw(st.sampled_from([0] * 24 + [7])),
    )


@st.composite
def delete_specs(draw):
    return dict(op="delete", key=draw(keys), end=draw(range_ends), prev_kv=draw(st.booleans()))


@st.composite
def compare_specs(draw):
    target = draw(st.sampled_from(sorted(COMPARE_TARGETS)))
    if target == "VALUE":
        value = ("bytes", draw(st.sampled_from(VALUES)))
    elif target in ("CREATE", "MOD"):
        value = draw(st.one_of(st.tuples(st.just("rev"), rel_revs), st.just(("int", 0))))
    elif target == "VERSION":
        value = ("int", draw(st.integers(0, 4)))
    else:
        value = ("int", draw(st.sampled_from([0, 0, 7])))
    return dict(key=draw(keys), end=draw(st.sampled_from([("none",)] * 4 + [("prefix",), ("from",), ("key", b"c")])),
                target=target, result=draw(st.sampled_from(["=", ">", "<", "!="])), value=value)


def txn_specs(depth):
    ops = st.one_of(range_specs(), put_specs(), delete_specs())
    if depth < 2:
        ops = st.one_of(ops, st.deferred(lambda: txn_specs(depth + 1)))
    return st.fixed_dictionaries(dict(
        op=st.just("txn"),
        compare=st.lists(compare_specs(), max_size=3),
        success=st.lists(ops, max_size=3),
        failure=st.lists(ops, max_size=3),
    ))


compact_specs = st.fixed_dictionaries(dict(op=st.just("compact"), revision=st.one_of(st.integers(0, 5), rel_revs),
                                           physical=st.booleans()))

operations = st.one_of(
    put_specs(), put_specs(), delete_specs(), range_specs(), txn_specs(1), txn_specs(1),
    compact_specs,
)


def build_end(pair, key, end):
    kind = end[0]
    if kind == "none":
        return b""
    if kind == "key":
        return pair.k(end[1])
    if kind == "prefix":
        return prefix_end(pair.k(key))
    return b"\x00"


def build_range(pair, s) -> pb.RangeRequest:
    req = pb.RangeRequest(key=pair.k(s["key"]), range_end=build_end(pair, s["key"], s["end"]), limit=s["limit"],
                          sort_order=s["sort_order"], sort_target=s["sort_target"], keys_only=s["keys_only"],
                          count_only=s["count_only"], serializable=s["serializable"])
    if s["revision"] == "negative":
        req.revision = -1  # read as the current revision
    elif s["revision"] is not None:
        req.revision = pair.rev(s["revision"])
    for name, value in s["filters"].items():
        if value is not None:
            setattr(req, name, pair.rev(value))
    return req


def build_put(pair, s) -> pb.PutRequest:
    return pb.PutRequest(key=pair.k(s["key"]), value=s["value"], prev_kv=s["prev_kv"], ignore_value=s["ignore_value"],
                         ignore_lease=s["ignore_lease"], lease=s["lease"])


def build_delete(pair, s) -> pb.DeleteRangeRequest:
    return pb.DeleteRangeRequest(key=pair.k(s["key"]), range_end=build_end(pair, s["key"], s["end"]),
                                 prev_kv=s["prev_kv"])


def build_compare(pair, s) -> pb.Compare:
    target, field = COMPARE_TARGETS[s["target"]]
    c = pb.Compare(key=pair.k(s["key"]), range_end=build_end(pair, s["key"], s["end"]), target=target,
                   result=COMPARE_RESULTS[s["result"]])
    kind, value = s["value"]
    setattr(c, field, pair.rev(value) if kind == "rev" else value)
    return c


def build_op(pair, s) -> pb.RequestOp:
    if s["op"] == "range":
        return pb.RequestOp(request_range=build_range(pair, s))
    if s["op"] == "put":
        return pb.RequestOp(request_put=build_put(pair, s))
    if s["op"] == "delete":
        return pb.RequestOp(request_delete_range=build_delete(pair, s))
    return pb.RequestOp(request_txn=build_txn(pair, s))


def build_txn(pair, s) -> pb.TxnRequest:
    return pb.TxnRequest(compare=[build_compare(pair, c) for c in s["compare"]],
                         success=[build_op(pair, o) for o in s["success"]],
                         failure=[build_op(pair, o) for o in s["failure"]])


def run(pair, s):
    if s["op"] == "range":
        return pair.call("KV", "Range", build_range(pair, s))
    if s["op"] == "put":
        return pair.call("KV", "Put", build_put(pair, s))
    if s["op"] == "delete":
        return pair.call("KV", "DeleteRange", build_delete(pair, s))
    if s["op"] == "txn":
        return pair.call("KV", "Txn", build_txn(pair, s))
    return pair.call("KV", "Compact", pb.CompactionRequest(revision=pair.rev(s["revision"]), physical=s["physical"]))


def _covers(delete, key: bytes) -> bool:
    start, kind = delete["key"], delete["end"][0]
    if kind == "none":
        return key == start
    if kind == "key":
        return start <= key < delete["end"][1]
    if kind == "prefix":
        return start <= key < prefix_end(start)
    return key >= start


def _walk(txn):
    for op in (*txn["success"], *txn["failure"]):
        yield op
        if op["op"] == "txn":
            yield from _walk(op)


def crashes_etcd(spec) -> bool:
    """etcd 3.5.1 panics, and the whole server exits, on a Txn whose Put with ignore_value
    or ignore_lease targets a key that an earlier delete of the same Txn removed: the Put is
    checked on the state before the Txn and fails while being applied ("unexpected error during
    txn"). The reference cannot answer such a Txn, so the generator avoids it (conservatively: any
    such Put and any delete covering its key anywhere in the Txn). test_kv_txn covers the shim."""
    if spec["op"] != "txn":
        return False
    ops = list(_walk(spec))
    deletes = [op for op in ops if op["op"] == "delete"]
    return any(op["op"] == "put" and (op["ignore_value"] or op["ignore_lease"]) and
               any(_covers(d, op["key"]) for d in deletes) for op in ops)


_DATABASE = DirectoryBasedExampleDatabase(os.path.join(tempfile.gettempdir(), "cosmos-etcd-hypothesis"))


@settings(max_examples=EXAMPLES, deadline=None, database=_DATABASE,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(sequence=st.lists(operations, min_size=2, max_size=14))
def test_random_kv_sequences(pair_factory, sequence):
    assume(not any(crashes_etcd(spec) for spec in sequence))
    pair = pair_factory()
    outcomes = [run(pair, spec) for spec in sequence]
    assert len(outcomes) == len(sequence)
    for spec, out in zip(sequence, outcomes):  # shown by --hypothesis-show-statistics
        event(f"{spec['op']}: {out.details if isinstance(out, Error) else 'ok'}")
    # the final state and the whole history of the namespace, compared revision by revision
    final = pair.state()
    everything = pb.RangeRequest(key=pair.k(b""), range_end=prefix_end(pair.k(b"")))
    for n in range(0, final.header.revision + 2):
        everything.revision = pair.rev(n)
        out = pair.call("KV", "Range", everything)
        assert isinstance(out, (pb.RangeResponse, Error))
