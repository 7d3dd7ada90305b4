"""Request checks made before anything is applied, in etcd's order (``v3rpc/key.go``).

A request refused here changes nothing. The Txn duplicate-key rule is etcd's ``checkIntervals``:
within one branch no key may be put twice or put and deleted; the two branches of a nested Txn
are exclusive, so they may put the same key. Delete ranges are intervals [key, range_end) taken
literally (a range_end of ``\\0`` covers nothing here, as in etcd).
"""
from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

from cosmos_etcd_shim.api import errors
from cosmos_etcd_shim.proto.rpc_pb2 import DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest

# etcd compares its raft entry with the limit: the request plus a header with a 64-bit request id
# and the field tags, 17 or 18 bytes more for a request near the limit (measured on etcd 3.5.1).
RAFT_ENVELOPE_BYTES = 17


def check_size(request: Message, max_request_bytes: int) -> None:
    if request.ByteSize() + RAFT_ENVELOPE_BYTES > max_request_bytes:
        raise errors.REQUEST_TOO_LARGE.error()


def check_range(r: RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY.error()
    if r.sort_order not in RangeRequest.SortOrder.values() or r.sort_target not in RangeRequest.SortTarget.values():
        raise errors.INVALID_SORT_OPTION.error()


def check_put(p: PutRequest) -> None:
    if not p.key:
        raise errors.EMPTY_KEY.error()
    if p.ignore_value and p.value:
        raise errors.VALUE_PROVIDED.error()
    if p.ignore_lease and p.lease:
        raise errors.LEASE_PROVIDED.error()


def check_delete_range(d: DeleteRangeRequest) -> None:
    if not d.key:
        raise errors.EMPTY_KEY.error()


def check_txn(t: TxnRequest, max_txn_ops: int) -> None:
    _check_txn_ops(t, max_txn_ops)
    _check_intervals(t.success)
    _check_intervals(t.failure)


def _check_txn_ops(t: TxnRequest, max_txn_ops: int) -> None:
    operations = max(len(t.compare), len(t.success), len(t.failure))
    if operations > max_txn_ops:
        raise errors.TOO_MANY_OPS.error()
    if any(not c.key for c in t.compare):
        raise errors.EMPTY_KEY.error()
    for op in (*t.success, *t.failure):
        # A nested Txn may use only what its parent left of the limit (seen on etcd 3.5).
        _check_op(op, max_txn_ops - operations)


def _check_op(op: RequestOp, max_txn_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        check_range(op.request_range)
    elif kind == "request_put":
        check_put(op.request_put)
    elif kind == "request_delete_range":
        check_delete_range(op.request_delete_range)
    elif kind == "request_txn":
        _check_txn_ops(op.request_txn, max_txn_ops)
    else:
        raise errors.KEY_NOT_FOUND.error()  # an empty RequestOp, as etcd answers it


Interval = tuple[bytes, bytes]


def _check_intervals(ops: Sequence[RequestOp]) -> tuple[set[bytes], list[Interval]]:
    """The keys put and ranges deleted by ``ops`` (with nested Txns), refusing any overlap."""
    deletes: list[Interval] = []
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            deletes.append((d.key, d.range_end) if d.range_end else (d.key, d.key + b"\x00"))

    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, deletes_then = _check_intervals(op.request_txn.success)
        puts_else, deletes_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or _deleted(deletes, key):
                raise errors.DUPLICATE_KEY.error()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _deleted(deletes, key):
                raise errors.DUPLICATE_KEY.error()
            puts.add(key)
        deletes += deletes_then + deletes_else

    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or _deleted(deletes, key):
            raise errors.DUPLICATE_KEY.error()
        puts.add(key)
    return puts, deletes


def _deleted(deletes: list[Interval], key: bytes) -> bool:
    return any(begin <= key < end for begin, end in deletes)
