"""Key-range permissions as etcd decides them (its ``range_perm_cache.go``).

A user's roles grant read and write permissions on keys and key ranges; etcd merges them per
user into two sets of intervals and asks:

* a request on a single key (no range end): does some interval hold the key?
* a request on a range [key, range_end): do the intervals that overlap it cover it without a
  gap? (The union counts: two grants that touch cover the range together.)

Keys compare as etcd's ``BytesAffineComparable``: bytewise, except that the empty key is the
largest of all, so an empty range end (and etcd's "from key" end ``\\0``) means "to the end".
A granted permission with range end ``\\0`` is open-ended; one with no range end holds one key.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from cosmos_etcd_shim.proto.auth_pb2 import Permission, Role

READ, WRITE, READWRITE = Permission.READ, Permission.WRITE, Permission.READWRITE
FROM_KEY = b"\x00"  # a range end meaning "every key from the key on"


def _order(key: bytes) -> tuple[int, bytes]:
    """Sort key of etcd's affine comparison: the empty key after every other."""
    return (1, b"") if not key else (0, key)


@dataclasses.dataclass(frozen=True)
class Interval:
    begin: bytes
    end: bytes  # exclusive; b"" is past every key

    @classmethod
    def point(cls, key: bytes) -> "Interval":
        return cls(key, key + b"\x00")

    def overlaps(self, other: "Interval") -> bool:
        return _order(self.begin) < _order(other.end) and _order(other.begin) < _order(self.end)


def request_interval(key: bytes, range_end: bytes) -> Interval:
    return Interval(key, b"" if range_end == FROM_KEY else range_end)


def granted_interval(permission: Permission) -> Interval:
    if not permission.range_end:
        return Interval.point(permission.key)
    return Interval(permission.key, b"" if permission.range_end == FROM_KEY else permission.range_end)


@dataclasses.dataclass
class UserPermissions:
    """One user's permissions, merged over all of its roles (etcd's unifiedRangePermissions)."""

    read: list[Interval]
    write: list[Interval]

    @classmethod
    def of(cls, roles: Iterable[Role]) -> "UserPermissions":
        read, write = [], []
        for role in roles:
            for permission in role.keyPermission:
                interval = granted_interval(permission)
                if permission.permType in (READ, READWRITE):
                    read.append(interval)
                if permission.permType in (WRITE, READWRITE):
                    write.append(interval)
        by_begin = lambda interval: _order(interval.begin)  # noqa: E731
        return cls(sorted(read, key=by_begin), sorted(write, key=by_begin))

    def allows(self, key: bytes, range_end: bytes, write: bool) -> bool:
        intervals = self.write if write else self.read
        if not range_end:
            return any(_order(i.begin) <= _order(key) < _order(i.end) for i in intervals)
        return _covers(intervals, request_interval(key, range_end))


def _covers(intervals: list[Interval], wanted: Interval) -> bool:
    """etcd's IntervalTree.Contains: the intervals overlapping ``wanted``, in order of their
    beginnings, form one run without a gap that starts at or before it and ends at or after it."""
    begin = end = None
    for interval in intervals:
        if not interval.overlaps(wanted):
            continue
        if begin is None:
            begin, end = interval.begin, interval.end
            continue
        if _order(end) < _order(interval.begin):
            return False
        if _order(interval.end) > _order(end):
            end = interval.end
    return begin is not None and _order(end) >= _order(wanted.end) and _order(begin) <= _order(wanted.begin)
