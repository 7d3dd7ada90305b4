"""Hostile input over the gRPC surface, sent to the shim and to a real etcd 3.5.1 alike.

Hypothesis draws requests with any value in every field: keys and range ends in any order and of
any bytes, negative and extreme limits and revisions, Txns with random compares and nested Txns,
more operations than allowed, random lease ids and TTLs, random watch creations, and bytes that are
not a valid protobuf message at all (sent through a generic channel with identity serializers).

After each request:
* the answers match: a response equals etcd's (revisions relative to the scenario), an error has
  etcd's code and message. Where the libraries word a refusal differently (gRPC's own size limit,
  protobuf decoding) only the code is compared;
* a refused request changed nothing on that server: the whole store and its revision are read
  before and after;
* both servers still answer (the reads above).

Bytes that are not protobuf at all must be refused with INTERNAL "grpc: error unmarshalling
request"; they go to the shim alone, since Go's decoder lets some of them through (mismatched
groups, for one). Requests that crash etcd 3.5.1 (unknown sort or compare enums, a Txn Put with
ignore_value or ignore_lease beside a delete; see tests/conformance) go to the shim alone too.
About 40 s in all.
"""
from __future__ import annotations

import os
import tempfile
import threading

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.conftest import ETCD_ARGS
from tests.harness import processes
from tests.harness.differential import Connection, Error, Mismatch, normalise_response

SETTINGS = settings(max_examples=200, deadline=None,
                    database=DirectoryBasedExampleDatabase(os.path.join(tempfile.gettempdir(), "cosmos-etcd-fuzz")),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
MAX_REQUEST_BYTES = 1536 * 1024  # both servers' default --max-request-bytes
# Refusals whose wording is the gRPC or protobuf library's, which differ between Go and Python.
LIBRARY_WORDED = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL}


@pytest.fixture(scope="module")
def connection(tmp_path_factory):
    with processes.running(processes.start_etcd(tmp_path_factory.mktemp("fuzz-etcd"), extra_args=ETCD_ARGS)) as etcd, \
            processes.running(processes.start_shim(tmp_path_factory.mktemp("fuzz-shim"))) as shim:
        connection = Connection(etcd, shim)
        yield connection
        connection.close()


# ------------------------------------------------------------------------------------------------
# the check made after every request
# ------------------------------------------------------------------------------------------------

EVERYTHING = pb.RangeRequest(key=b"\x00", range_end=b"\x00")


def snapshot(side) -> tuple:
    """The whole store and its revision, as one server has them."""
    out = side.invoke("KV", "Range", EVERYTHING)
    assert not isinstance(out, Error), f"{side.name} stopped answering: {out!r}\n{side.describe_process()}"
    return out.header.revision, [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                                 for kv in out.kvs]


def check(connection: Connection, service: str, method: str, request, *, etcd_too: bool = True):
    """Send `request` (a message, or raw bytes) to both servers (or the shim alone); compare the
    answers and check that a refusal changed nothing. Returns the shim's answer."""
    sides = connection.sides if etcd_too else [s for s in connection.sides if s.name == "shim"]
    pair = connection.new_pair()
    answers = {}
    for side in sides:
        before = snapshot(side)
        answers[side.name] = invoke(side, service, method, request)
        if isinstance(answers[side.name], Error):
            assert snapshot(side) == before, f"{side.name}: the refused request changed the store: {answers[side.name]!r}"
    if etcd_too:
        compare(pair, method, answers["etcd"], answers["shim"])
    return answers["shim"]


def outcome(method: str, answer) -> str:
    """For hypothesis' statistics (pytest --hypothesis-show-statistics)."""
    return f"{method}: {answer.code.name if isinstance(answer, Error) else 'ok'}"


def message_types(service: str, method: str):
    """The request and response classes of an etcd method."""
    descriptor = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    return getattr(pb, descriptor.input_type.name), getattr(pb, descriptor.output_type.name)


def invoke(side, service: str, method: str, request):
    if not isinstance(request, bytes):
        return side.invoke(service, method, request)
    call = side.channel.unary_unary(f"/etcdserverpb.{service}/{method}", request_serializer=None,
                                    response_deserializer=message_types(service, method)[1].FromString)
    try:
        return call(request, timeout=30)
    except grpc.RpcError as e:
        return Error(e.code(), e.details())


def compare(pair, method: str, etcd, shim) -> None:
    if isinstance(etcd, Error) and isinstance(shim, Error) and etcd.code == shim.code and etcd.code in LIBRARY_WORDED:
        return
    if isinstance(etcd, Error) or isinstance(shim, Error):
        if etcd != shim:
            raise Mismatch(f"{method}: etcd answered {etcd!r}, the shim {shim!r}")
        return
    expected, got = (normalise_response(answer, pair.base[name]) for name, answer in (("etcd", etcd), ("shim", shim)))
    if expected != got:
        raise Mismatch(f"{method}: etcd answered\n{etcd}\nthe shim\n{shim}")


# ------------------------------------------------------------------------------------------------
# what etcd 3.5.1 cannot be sent
# ------------------------------------------------------------------------------------------------

def crashes_etcd(message) -> bool:
    if isinstance(message, pb.RangeRequest):
        return message.sort_order not in pb.RangeRequest.SortOrder.values() or \
            message.sort_target not in pb.RangeRequest.SortTarget.values()
    if isinstance(message, pb.TxnRequest):
        ops = list(_ops(message))
        puts_needing_key = any(op.WhichOneof("request") == "request_put" and
                               (op.request_put.ignore_value or op.request_put.ignore_lease) for op in ops)
        deletes = any(op.WhichOneof("request") == "request_delete_range" for op in ops)
        return (puts_needing_key and deletes) or any(
            c.target not in pb.Compare.CompareTarget.values() or c.result not in pb.Compare.CompareResult.values()
            for c in _compares(message)) or any(crashes_etcd(op.request_range) for op in ops
                                                  if op.WhichOneof("request") == "request_range")
    return False


def _ops(t: pb.TxnRequest):
    for op in (*t.success, *t.failure):
        yield op
        if op.WhichOneof("request") == "request_txn":
            yield from _ops(op.request_txn)


def _compares(t: pb.TxnRequest):
    yield from t.compare
    for op in _ops(t):
        if op.WhichOneof("request") == "request_txn":
            yield from op.request_txn.compare


# ------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------

INT64 = st.one_of(st.integers(-2**63, 2**63 - 1), st.sampled_from([0, -1, 1, 2, 2**31, 2**32, 2**63 - 1, -2**63]),
                  st.integers(-3, 40))
KEYS = st.one_of(st.binary(max_size=8), st.sampled_from([b"", b"\x00", b"\xff", b"\xff\xff", b"fz/a", b"fz/b"]))
RANGE_ENDS = st.one_of(KEYS, st.just(b""), st.just(b"\x00"))
VALUES = st.binary(max_size=16)
ENUM = st.integers(0, 4)


def range_requests(enums=ENUM):
    return st.builds(pb.RangeRequest, key=KEYS, range_end=RANGE_ENDS, limit=INT64, revision=INT64, sort_order=enums,
                     sort_target=enums, serializable=st.booleans(), keys_only=st.booleans(), count_only=st.booleans(),
                     min_mod_revision=INT64, max_mod_revision=INT64, min_create_revision=INT64,
                     max_create_revision=INT64)


put_requests = st.builds(pb.PutRequest, key=KEYS, value=VALUES, lease=st.one_of(st.just(0), INT64),
                         prev_kv=st.booleans(), ignore_value=st.booleans(), ignore_lease=st.booleans())
delete_requests = st.builds(pb.DeleteRangeRequest, key=KEYS, range_end=RANGE_ENDS, prev_kv=st.booleans())
# Any target with any of the compared fields: the wrong field for the target is hostile too.
compares = st.one_of(*(st.builds(pb.Compare, result=st.integers(0, 3), target=ENUM, key=KEYS, range_end=RANGE_ENDS,
                                 **{field: values})
                       for field, values in (("version", INT64), ("create_revision", INT64), ("mod_revision", INT64),
                                             ("value", VALUES), ("lease", INT64))))
simple_ops = st.one_of(st.builds(pb.RequestOp, request_range=range_requests(st.integers(0, 2))),
                       st.builds(pb.RequestOp, request_put=put_requests),
                       st.builds(pb.RequestOp, request_delete_range=delete_requests),
                       st.just(pb.RequestOp()))


def _txns_around(inner):
    ops = st.lists(st.one_of(simple_ops, st.builds(pb.RequestOp, request_txn=inner)), max_size=3)
    return st.builds(pb.TxnRequest, compare=st.lists(compares, max_size=2), success=ops, failure=ops)


txn_requests = st.recursive(
    st.builds(pb.TxnRequest, compare=st.lists(compares, max_size=3), success=st.lists(simple_ops, max_size=3),
              failure=st.lists(simple_ops, max_size=3)),
    _txns_around, max_leaves=8)
# Compactions that must be refused (a past revision would compact both stores: not hostile, and
# covered by the conformance suite).
compactions = st.builds(pb.CompactionRequest, revision=st.one_of(st.integers(-2**63, -1), st.integers(2**40, 2**63 - 1)),
                        physical=st.booleans())
# TTLs that leave nothing to expire during the run (a random Put may attach a key to the lease), or
# that are refused; ids never 0 (each server would choose its own). TimeToLive is left out: its
# answer is the time left, which no two servers share.
lease_grants = st.builds(pb.LeaseGrantRequest, ID=INT64.map(lambda i: i or 1),
                         TTL=st.one_of(st.integers(9_000_000_001, 2**63 - 1), st.integers(3600, 9_000_000_000)))

KV_REQUESTS = st.one_of(
    st.tuples(st.just("KV"), st.just("Range"), range_requests()),
    st.tuples(st.just("KV"), st.just("Put"), put_requests),
    st.tuples(st.just("KV"), st.just("DeleteRange"), delete_requests),
    st.tuples(st.just("KV"), st.just("Txn"), txn_requests),
    st.tuples(st.just("KV"), st.just("Compact"), compactions),
    st.tuples(st.just("Lease"), st.just("LeaseGrant"), lease_grants),
    st.tuples(st.just("Lease"), st.just("LeaseRevoke"), st.builds(pb.LeaseRevokeRequest, ID=INT64)),
)


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------

@SETTINGS
@given(request=KV_REQUESTS)
def test_random_field_values(connection, request):
    service, method, message = request
    event(outcome(method, check(connection, service, method, message, etcd_too=not crashes_etcd(message))))


def txn_of(n_compare: int, n_success: int, n_failure: int) -> pb.TxnRequest:
    put = lambda i: pb.RequestOp(request_put=pb.PutRequest(key=b"fz/ops/%d" % i, value=b"v"))
    compare = pb.Compare(key=b"fz/ops/0", target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
    return pb.TxnRequest(compare=[compare] * n_compare, success=[put(i) for i in range(n_success)],
                         failure=[put(i) for i in range(n_failure)])


@pytest.mark.parametrize("shape", [(129, 0, 0), (0, 129, 0), (0, 0, 129), (128, 128, 128), (1, 200, 1)],
                         ids=lambda s: "compare/success/failure=%d/%d/%d" % s)
def test_txn_operation_count(connection, shape):
    check(connection, "KV", "Txn", txn_of(*shape))


@SETTINGS
@given(outer=st.integers(0, 127), inner=st.integers(0, 129))
def test_nested_txn_operation_count(connection, outer, inner):
    """A nested Txn may use only what its parent left of --max-txn-ops."""
    nested = pb.RequestOp(request_txn=txn_of(0, inner, 0))
    request = pb.TxnRequest(success=[nested] + txn_of(0, outer, 0).success[:outer])
    event(outcome("Txn", check(connection, "KV", "Txn", request)))


def _length_delimited(number: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2, encoded by hand (protobuf for Python cannot build the
    deepest messages: it refuses more than 100 levels of nesting)."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_txn(depth: int) -> bytes:
    """A Txn whose success branch is a Txn ... `depth` times, ending in one Put."""
    txn = txn_of(0, 1, 0).SerializeToString()
    for _ in range(depth):
        txn = _length_delimited(2, _length_delimited(4, txn))  # TxnRequest.success -> RequestOp.request_txn
    return txn


@pytest.mark.parametrize("depth", [1, 10, 45, 60, 127, 130, 500])
def test_deeply_nested_txn(connection, depth):
    if depth <= 45:  # both decoders accept it
        check(connection, "KV", "Txn", nested_txn(depth))
        return
    # Deeper than protobuf for Python decodes (etcd applies up to 127 levels, then counts too many
    # operations): the shim refuses it whole, as a message it cannot decode.
    answer = check(connection, "KV", "Txn", nested_txn(depth), etcd_too=False)
    assert answer.code == grpc.StatusCode.INTERNAL and answer.details.startswith("grpc: error unmarshalling request:")


METHODS = [("KV", "Range"), ("KV", "Put"), ("KV", "DeleteRange"), ("KV", "Txn"), ("KV", "Compact"),
           ("Lease", "LeaseGrant"), ("Lease", "LeaseRevoke"), ("Lease", "LeaseLeases"),
           ("Maintenance", "Status"), ("Cluster", "MemberList")]
# Answers that differ between any two servers (versions, sizes, member names): only refusals compare.
SERVER_SPECIFIC = {"Status", "MemberList"}


def decoded(service: str, method: str, raw: bytes):
    """The message `raw` is, or None if it does not decode."""
    try:
        return message_types(service, method)[0].FromString(raw)
    except Exception:  # noqa: BLE001 - any refusal of the decoder counts as "does not decode"
        return None


def tamed(message) -> bytes:
    """Bytes that decoded into a request the random ones above do not send, made harmless alike:
    no compaction of the history, no short or server-chosen lease."""
    if isinstance(message, pb.CompactionRequest) and message.revision >= 0:
        message.revision = -1 - message.revision
    if isinstance(message, pb.LeaseGrantRequest):
        message.ID, message.TTL = message.ID or 1, max(message.TTL, 3600)
    return message.SerializeToString()


@st.composite
def wire_bytes(draw, service: str, method: str) -> bytes:
    """Bytes for `method`: random, or a valid request cut short, with a byte changed, or followed
    by random bytes (which may be unknown fields, or a field of the wrong wire type)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=48))
    valid = {"Range": range_requests(), "Put": put_requests, "DeleteRange": delete_requests, "Txn": txn_requests,
             "Compact": compactions, "LeaseGrant": lease_grants}.get(method)
    raw = (draw(valid) if valid is not None else message_types(service, method)[0]()).SerializeToString()
    mutation = draw(st.sampled_from(["cut", "change", "append"]))
    if mutation == "cut" and raw:
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if mutation == "change" and raw:
        at = draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1:]
    return raw + draw(st.binary(min_size=1, max_size=12))


@SETTINGS
@given(data=st.data(), target=st.sampled_from(METHODS))
def test_malformed_protobuf_on_the_wire(connection, data, target):
    service, method = target
    raw = data.draw(wire_bytes(service, method))
    message = decoded(service, method, raw)
    if message is None:  # not protobuf: refused clearly (Go's decoder lets some of it through, e.g. mismatched groups)
        answer = check(connection, service, method, raw, etcd_too=False)
        assert isinstance(answer, Error) and answer.code == grpc.StatusCode.INTERNAL, answer
        assert answer.details.startswith("grpc: error unmarshalling request: "), answer
    else:
        answer = check(connection, service, method, tamed(message),
                       etcd_too=not crashes_etcd(message) and method not in SERVER_SPECIFIC)
    event(outcome(method, answer) + ("" if message is not None else " (undecodable)"))


@pytest.mark.parametrize("what, request_", [
    ("key at the limit", pb.PutRequest(key=b"k" * (MAX_REQUEST_BYTES - 100))),
    ("key over the limit", pb.PutRequest(key=b"k" * (MAX_REQUEST_BYTES + 1))),
    ("value over the limit", pb.PutRequest(key=b"fz/big", value=b"v" * (MAX_REQUEST_BYTES + 1))),
    ("value over gRPC's limit", pb.PutRequest(key=b"fz/big", value=b"v" * (MAX_REQUEST_BYTES + 600 * 1024))),
    ("txn over the limit", pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"fz/t%d" % i, value=b"v" * 20000)) for i in range(100)])),
    ("range key over gRPC's limit", pb.RangeRequest(key=b"k" * (MAX_REQUEST_BYTES + 600 * 1024))),
    ("delete range end over the limit", pb.DeleteRangeRequest(key=b"a", range_end=b"z" * (MAX_REQUEST_BYTES + 1))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_oversized_requests(connection, what, request_):
    method = {pb.PutRequest: "Put", pb.TxnRequest: "Txn", pb.RangeRequest: "Range", pb.DeleteRangeRequest: "DeleteRange"}
    answer = check(connection, "KV", method[type(request_)], request_)
    if "over" in what:
        assert isinstance(answer, Error), what
    if what == "key at the limit":  # accepted: leave the store as small as it was
        check(connection, "KV", "DeleteRange", pb.DeleteRangeRequest(key=request_.key))


# ------------------------------------------------------------------------------------------------
# Watch
# ------------------------------------------------------------------------------------------------

watch_creations = st.builds(pb.WatchCreateRequest, key=KEYS, range_end=RANGE_ENDS,
                            start_revision=st.one_of(st.integers(-2**63, 0), st.integers(2**40, 2**63 - 1),
                                                     st.just(0)),
                            progress_notify=st.booleans(), filters=st.lists(st.integers(0, 3), max_size=2),
                            prev_kv=st.booleans(), watch_id=st.one_of(st.just(0), INT64), fragment=st.booleans())


def first_answers(side, create: pb.WatchCreateRequest) -> list[pb.WatchResponse]:
    """The answer to one watch creation: the created (or refused) response, and for a start below
    the compact revision (-1 while nothing was compacted, as in etcd) the cancellation that follows."""
    finished = threading.Event()

    def requests():
        yield pb.WatchRequest(create_request=create)
        finished.wait(60)  # keep the stream open until the answers are read

    responses = side.stub("Watch").Watch(requests(), timeout=30)
    answers = []
    try:
        for response in responses:
            answers.append(response)
            if not (response.created and not response.canceled and create.start_revision < -1):
                break
    finally:
        finished.set()
        responses.cancel()
    return answers


@SETTINGS
@given(create=watch_creations)
def test_random_watch_creations(connection, create):
    pair = connection.new_pair()
    answers = {side.name: [normalise_response(r, pair.base[side.name]) for r in first_answers(side, create)]
               for side in connection.sides}
    event("created" if answers["shim"] and not answers["shim"][0][0].canceled else "refused")
    assert answers["shim"] == answers["etcd"]
    for side in connection.sides:
        snapshot(side)  # still serving
