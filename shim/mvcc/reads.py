"""Range: reading keys at a revision with etcd's limit, sort, filter, count and ``more`` rules.

The order of operations is etcd's (``applierV3backend.Range`` over ``mvcc.rangeKeys``): the
revision is checked, ``count`` is the number of live keys in the range ignoring the limit and the
min/max revision filters, the filters apply next, then the sort, then the limit sets ``more``.

:class:`RangeLimits` bound what one answer may hold. They are checked on the KeyValues chosen,
which the index already holds, before the answer is built: a refused Range costs no copy.

A Range below the current revision may choose versions whose values left the index
(:mod:`~cosmos_etcd_shim.mvcc.history`): they are taken from the values the caller fetched or
the history cache, and :class:`~cosmos_etcd_shim.mvcc.history.ValuesMissing` names those found
in neither. Only the versions in the answer need a value (none with ``keys_only`` or
``count_only``), all of those chosen when sorting by value.
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Mapping

from cosmos_etcd_shim.mvcc.errors import CompactedError, FutureRevisionError, RangeTooLargeError
from cosmos_etcd_shim.mvcc.go_sort import go_sort
from cosmos_etcd_shim.mvcc.history import VersionId, materialize
from cosmos_etcd_shim.mvcc.index import KeyIndex
from cosmos_etcd_shim.proto.kv_pb2 import KeyValue
from cosmos_etcd_shim.proto.rpc_pb2 import RangeRequest, RangeResponse

INT64_MAX = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class RangeLimits:
    """The most keys, and bytes of KeyValues, one Range answer may hold."""

    max_keys: int = sys.maxsize
    max_bytes: int = sys.maxsize


UNLIMITED = RangeLimits()

_SORT_KEYS = {
    RangeRequest.KEY: lambda kv: kv.key,
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
}


def range_end_of(range_end: bytes) -> bytes | None:
    """etcd's reading of range_end: empty is the single key, ``\\0`` is every key from ``key`` on."""
    if not range_end:
        return None
    if range_end == b"\x00":
        return b""
    return range_end


def check_revision(requested: int, current: int, compact_revision: int) -> int:
    """The revision a read is served at, or etcd's error for one out of bounds."""
    if requested > current:
        raise FutureRevisionError()
    if requested <= 0:
        return current
    if requested < compact_revision:
        raise CompactedError()
    return requested


def execute_range(index: KeyIndex, r: RangeRequest, current: int, compact_revision: int,
                  limits: RangeLimits = UNLIMITED, fetched: Mapping[VersionId, bytes] = {}) -> RangeResponse:
    """Serve ``r`` from ``index`` whose latest visible revision is ``current`` (``fetched``: values
    of superseded versions the caller read from the log)."""
    revision = check_revision(r.revision, current, compact_revision)
    response = RangeResponse()
    response.header.revision = current
    found = index.range(r.key, range_end_of(r.range_end), revision)
    if r.count_only:
        response.count = sum(1 for _ in found)
        return response

    filtered = bool(r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision)
    # etcd fetches limit + 1 in an int64: at the largest limit that overflows into "no limit".
    if 0 < r.limit < INT64_MAX and not filtered and r.sort_order == RangeRequest.NONE:
        # One more than the limit tells whether there is more; the rest is only counted.
        kvs = list(itertools.islice(found, r.limit + 1))
        count = len(kvs) + sum(1 for _ in found)
    else:
        kvs = list(found)
        count = len(kvs)

    if filtered:
        kvs = [kv for kv in kvs if _within_filters(kv, r)]

    sort_order = r.sort_order
    if r.sort_target != RangeRequest.KEY and sort_order == RangeRequest.NONE:
        sort_order = RangeRequest.ASCEND
    elif r.sort_target == RangeRequest.KEY and sort_order == RangeRequest.ASCEND:
        sort_order = RangeRequest.NONE  # already in key order
    if r.sort_target == RangeRequest.VALUE and sort_order != RangeRequest.NONE:
        kvs = materialize(kvs, fetched, index.cache)
    if sort_order != RangeRequest.NONE:
        kvs = go_sort(kvs, _SORT_KEYS[r.sort_target], descending=sort_order == RangeRequest.DESCEND)

    if 0 < r.limit < len(kvs):
        del kvs[r.limit:]
        response.more = True
    response.count = count
    if len(kvs) > limits.max_keys:  # before any value is fetched for them
        raise RangeTooLargeError(limits.max_keys, "keys")
    if r.keys_only:
        kvs = [_without_value(kv) for kv in kvs]
    else:
        kvs = materialize(kvs, fetched, index.cache)
    _check_limits(kvs, limits)
    response.kvs.extend(kvs)
    return response


def _check_limits(kvs: list[KeyValue], limits: RangeLimits) -> None:
    if len(kvs) > limits.max_keys:
        raise RangeTooLargeError(limits.max_keys, "keys")
    if sum(map(KeyValue.ByteSize, kvs)) > limits.max_bytes:
        raise RangeTooLargeError(limits.max_bytes, "bytes")


def _within_filters(kv: KeyValue, r: RangeRequest) -> bool:
    return not (
        (r.max_mod_revision and kv.mod_revision > r.max_mod_revision)
        or (r.min_mod_revision and kv.mod_revision < r.min_mod_revision)
        or (r.max_create_revision and kv.create_revision > r.max_create_revision)
        or (r.min_create_revision and kv.create_revision < r.min_create_revision)
    )


def _without_value(kv: KeyValue) -> KeyValue:
    return KeyValue(key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                    version=kv.version, lease=kv.lease)
