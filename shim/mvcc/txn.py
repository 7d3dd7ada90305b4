"""Writes and transactions: Put, DeleteRange and Txn applied as etcd's applier applies them.

A :class:`WriteTxn` gathers the changes of one revision. Its reads see its own earlier writes
(etcd's ``storeTxnWrite``), its writes go into the index at revision ``begin + 1`` right away and
are removed again by :meth:`WriteTxn.rollback` when the request fails or the batch cannot be made
durable.

For a Txn, etcd first decides every branch (the outer and all nested compares) on the state
*before* the Txn, then checks the chosen Puts (ignore_value/ignore_lease need an existing key, a
lease must exist) and Ranges (revision bounds), and only then applies the operations in order.
The same order is kept here, so the same error wins when several apply.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

from cosmos_etcd_shim.mvcc.errors import CompactedError, FutureRevisionError, KeyNotFoundError, LeaseNotFoundError
from cosmos_etcd_shim.mvcc.history import VersionId
from cosmos_etcd_shim.mvcc.index import KeyIndex
from cosmos_etcd_shim.mvcc.reads import UNLIMITED, RangeLimits, execute_range, range_end_of
from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.rpc_pb2 import (
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    TxnRequest,
    TxnResponse,
)

LeaseLookup = Callable[[int], bool]


class WriteTxn:
    """The changes of one revision, readable by the requests that make them."""

    def __init__(self, index: KeyIndex, begin: int, compact_revision: int,
                 range_limits: RangeLimits = UNLIMITED, fetched: Mapping[VersionId, bytes] = {}) -> None:
        self.index = index
        self.fetched = fetched  # values of superseded versions, for Ranges at an old revision
        self.begin = begin
        self.compact_revision = compact_revision
        self.range_limits = range_limits
        self.events: list[Event] = []

    @property
    def revision(self) -> int:
        """The revision this transaction writes."""
        return self.begin + 1

    @property
    def read_revision(self) -> int:
        return self.begin + 1 if self.events else self.begin

    def range(self, r: RangeRequest) -> RangeResponse:
        return execute_range(self.index, r, self.read_revision, self.compact_revision, self.range_limits,
                             self.fetched)

    def get(self, key: bytes) -> KeyValue | None:
        return self.index.get(key, self.read_revision)

    def put(self, key: bytes, value: bytes, lease: int) -> None:
        revision = self.revision
        previous = self.index.get(key, revision)
        kv = KeyValue(
            key=key,
            create_revision=previous.create_revision if previous else revision,
            mod_revision=revision,
            version=previous.version + 1 if previous else 1,
            value=value,
            lease=lease,
        )
        self.index.append(kv)
        self.events.append(Event(type=Event.PUT, kv=kv))

    def delete_range(self, key: bytes, range_end: bytes | None) -> int:
        revision = self.revision
        doomed = list(self.index.range(key, range_end, revision))
        for kv in doomed:
            tombstone = KeyValue(key=kv.key, mod_revision=revision)
            self.index.append(tombstone)
            self.events.append(Event(type=Event.DELETE, kv=tombstone))
        return len(doomed)

    def rollback(self) -> None:
        self.index.rollback({event.kv.key for event in self.events}, self.begin)
        self.events.clear()


# -- Put and DeleteRange --------------------------------------------------------------------

def apply_put(txn: WriteTxn, p: PutRequest) -> PutResponse:
    response = PutResponse()
    previous = txn.get(p.key) if (p.ignore_value or p.ignore_lease or p.prev_kv) else None
    if (p.ignore_value or p.ignore_lease) and previous is None:
        raise KeyNotFoundError()
    if p.prev_kv and previous is not None:
        response.prev_kv.CopyFrom(previous)
    txn.put(
        p.key,
        previous.value if p.ignore_value else p.value,
        previous.lease if p.ignore_lease else p.lease,
    )
    response.header.revision = txn.revision
    return response


def apply_delete_range(txn: WriteTxn, d: DeleteRangeRequest) -> DeleteRangeResponse:
    response = DeleteRangeResponse()
    end = range_end_of(d.range_end)
    if d.prev_kv:
        response.prev_kvs.extend(txn.index.range(d.key, end, txn.read_revision))
    response.deleted = txn.delete_range(d.key, end)
    response.header.revision = txn.revision if txn.events else txn.begin
    return response


def check_put(p: PutRequest, txn: WriteTxn, lease_exists: LeaseLookup) -> None:
    """What etcd checks before applying a Put: the lease exists; ignore_* need the key."""
    if (p.ignore_value or p.ignore_lease) and txn.get(p.key) is None:
        raise KeyNotFoundError()
    if p.lease and not lease_exists(p.lease):
        raise LeaseNotFoundError()


# -- Txn --------------------------------------------------------------------------------------

def is_write(t: TxnRequest) -> bool:
    """Whether any branch at any depth could write (etcd then serialises it with the writes)."""
    for op in (*t.success, *t.failure):
        kind = op.WhichOneof("request")
        if kind in ("request_put", "request_delete_range"):
            return True
        if kind == "request_txn" and is_write(op.request_txn):
            return True
    return False


def leases_named(t: TxnRequest) -> set[int]:
    """The leases the Puts of ``t`` (any branch, any depth) attach keys to."""
    named = set()
    for op in (*t.success, *t.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put" and op.request_put.lease:
            named.add(op.request_put.lease)
        elif kind == "request_txn":
            named |= leases_named(op.request_txn)
    return named


@dataclasses.dataclass
class Decision:
    """The branch a Txn takes, and the decisions of the Txns nested in that branch, in order."""

    succeeded: bool
    ops: list[RequestOp]
    nested: list["Decision"]


def decide(txn: WriteTxn, t: TxnRequest) -> Decision:
    """Evaluate the compares of ``t`` and of every Txn nested in the chosen branches, before any write."""
    succeeded = all(_compare_holds(txn, c) for c in t.compare)
    ops = list(t.success if succeeded else t.failure)
    nested = [decide(txn, op.request_txn) for op in ops if op.WhichOneof("request") == "request_txn"]
    return Decision(succeeded, ops, nested)


def _walk(decision: Decision) -> Iterator[RequestOp]:
    """The non-Txn operations on the chosen path, depth first, as etcd's checkRequests visits them."""
    nested = iter(decision.nested)
    for op in decision.ops:
        if op.WhichOneof("request") == "request_txn":
            yield from _walk(next(nested))
        else:
            yield op


def check_txn(txn: WriteTxn, t: TxnRequest, decision: Decision, lease_exists: LeaseLookup) -> None:
    if is_write(t):
        for op in _walk(decision):
            if op.WhichOneof("request") == "request_put":
                check_put(op.request_put, txn, lease_exists)
    for op in _walk(decision):
        if op.WhichOneof("request") == "request_range":
            requested = op.request_range.revision
            if requested > txn.read_revision:
                raise FutureRevisionError()
            if requested and requested < txn.compact_revision:
                raise CompactedError()  # negative revisions too, as etcd's checkRequestRange


def apply_txn(txn: WriteTxn, decision: Decision) -> TxnResponse:
    """Apply the chosen path. Nested responses carry an empty header, as etcd's do."""
    response = TxnResponse(succeeded=decision.succeeded)
    nested = iter(decision.nested)
    for op in decision.ops:
        result = response.responses.add()
        kind = op.WhichOneof("request")
        if kind == "request_range":
            result.response_range.CopyFrom(txn.range(op.request_range))
        elif kind == "request_put":
            result.response_put.CopyFrom(apply_put(txn, op.request_put))
        elif kind == "request_delete_range":
            result.response_delete_range.CopyFrom(apply_delete_range(txn, op.request_delete_range))
        elif kind == "request_txn":
            inner = apply_txn(txn, next(nested))
            inner.header.SetInParent()
            result.response_txn.CopyFrom(inner)
    return response


def _compare_holds(txn: WriteTxn, c: Compare) -> bool:
    kvs = list(txn.index.range(c.key, range_end_of(c.range_end), txn.read_revision))
    if not kvs:
        # A missing key has no value to compare (etcd: "nil == empty string in grpc").
        return c.target != Compare.VALUE and _compare_kv(c, None)
    return all(_compare_kv(c, kv) for kv in kvs)


_TARGETS = {
    Compare.VERSION: ("version", 0),
    Compare.CREATE: ("create_revision", 0),
    Compare.MOD: ("mod_revision", 0),
    Compare.VALUE: ("value", b""),
    Compare.LEASE: ("lease", 0),
}


def _compare_kv(c: Compare, kv: KeyValue | None) -> bool:
    if c.target in _TARGETS:
        field, zero = _TARGETS[c.target]
        actual = getattr(kv, field) if kv is not None else zero
        # The operand counts only when the oneof field set matches the target; otherwise it is zero.
        expected = getattr(c, field) if c.WhichOneof("target_union") == field else zero
    else:
        actual = expected = 0  # etcd compares an unknown target as equal
    if c.result == Compare.EQUAL:
        return actual == expected
    if c.result == Compare.NOT_EQUAL:
        return actual != expected
    if c.result == Compare.GREATER:
        return actual > expected
    if c.result == Compare.LESS:
        return actual < expected
    return True
