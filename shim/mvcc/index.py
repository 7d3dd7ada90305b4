"""The in-memory key index: every key's versions back to the compact revision.

Like etcd's tree index: each key maps to its history, a list of versions ordered by
``mod_revision``. The newest version of each key is a full ``mvccpb.KeyValue``; a version
superseded by a durable newer one is a :class:`~cosmos_etcd_shim.mvcc.history.Superseded` entry
without its value, which :meth:`KeyIndex.release` hands to the history cache (see
:mod:`cosmos_etcd_shim.mvcc.history`). A deletion is a tombstone: a KeyValue with the deleting
revision as ``mod_revision`` and ``version == 0`` (exactly the ``kv`` of etcd's DELETE event).
Reading "key at revision R" is a bisection in that list, so historic reads and reads at the
current revision are the same code; only a historic one can meet an entry without its value.

Entries newer than the committed revision may be present while a batch is being made durable;
readers never see them because they read at the committed revision, and :meth:`rollback` removes
them if the batch fails.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict

from cosmos_etcd_shim.mvcc.history import Superseded, ValueCache
from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Revision


Version = KeyValue | Superseded


def _mod_revision(kv: Version) -> int:
    return kv.mod_revision


def is_tombstone(kv: Version) -> bool:
    return kv.version == 0


class KeyIndex:
    """Key -> history, ordered bytewise by key."""

    def __init__(self, cache: ValueCache | None = None) -> None:
        self._histories: SortedDict[bytes, list[Version]] = SortedDict()
        #: Where the values of superseded versions go (and are looked up by historic reads).
        self.cache = cache if cache is not None else ValueCache()
        #: Entries held, tombstones included: what compaction frees (a metric).
        self.version_count = 0

    def __len__(self) -> int:
        return len(self._histories)

    def get(self, key: bytes, revision: int) -> Version | None:
        """The live KeyValue of ``key`` at ``revision``, or None if absent or deleted then."""
        history = self._histories.get(key)
        return None if history is None else _visible(history, revision)

    def range(self, key: bytes, range_end: bytes | None, revision: int) -> Iterator[Version]:
        """Live KeyValues at ``revision`` in [key, range_end), in key order.

        ``range_end`` None means the single key; ``b""`` means every key from ``key`` on.
        """
        if range_end is None:
            kv = self.get(key, revision)
            if kv is not None:
                yield kv
            return
        if range_end and range_end <= key:
            return
        keys = self._histories.irange(key, range_end or None, inclusive=(True, False))
        histories = self._histories
        for k in keys:
            kv = _visible(histories[k], revision)
            if kv is not None:
                yield kv

    def versions(self, revision: int) -> Iterator[Version]:
        """Every entry (tombstones too) at or below ``revision``, by key, then by revision."""
        for history in self._histories.values():
            for kv in history:
                if kv.mod_revision > revision:
                    break
                yield kv

    def append(self, kv: KeyValue) -> None:
        """Record a new version (or tombstone) of ``kv.key``; its revision is the newest."""
        history = self._histories.get(kv.key)
        if history is None:
            self._histories[kv.key] = [kv]
        else:
            history.append(kv)
        self.version_count += 1

    def snapshot(self, revision: int) -> list[tuple[bytes, list[Version]]]:
        """A copy of every history (the lists, not the entries: those are never changed in place,
        only replaced), without entries newer than ``revision``, for a checkpoint."""
        copies = []
        for key, history in self._histories.items():
            if history[-1].mod_revision > revision:
                history = history[:bisect.bisect_right(history, revision, key=_mod_revision)]
                if not history:
                    continue
            copies.append((key, list(history)))
        return copies

    def load(self, events: Iterable[Event]) -> None:
        """Fill an empty index from a checkpoint's events (see :mod:`history`): in each key's
        history all but the newest are superseded versions, whose values the checkpoint leaves out."""
        histories = self._histories
        for event in events:
            kv = event.kv
            history = histories.get(kv.key)
            if history is None:
                histories[kv.key] = [kv]
            else:
                previous = history[-1]
                if previous.version:
                    history[-1] = Superseded(previous, kv.key)
                history.append(kv)
            self.version_count += 1

    def release(self, records: list[Revision]) -> None:
        """Drop the values of the versions that ``records`` (durable now) superseded, into the cache."""
        histories, cache = self._histories, self.cache
        for record in records:
            for event in record.events:
                key = event.kv.key
                history = histories.get(key)
                if history is None:
                    continue  # compacted away since (a tombstone freed at once)
                position = bisect.bisect_left(history, record.revision, key=_mod_revision) - 1
                if position < 0:
                    continue
                previous = history[position]
                if type(previous) is KeyValue and previous.version and previous.value:
                    if type(history[0]) is Superseded:
                        key = history[0].key  # one bytes object for every superseded version of the key
                    cache.put((key, previous.mod_revision), previous.value)
                    history[position] = Superseded(previous, key)

    def rollback(self, keys: set[bytes], revision: int) -> None:
        """Forget every entry of ``keys`` newer than ``revision`` (a batch that was not made durable)."""
        for key in keys:
            history = self._histories.get(key)
            if history is None:
                continue
            while history and history[-1].mod_revision > revision:
                history.pop()
                self.version_count -= 1
            if not history:
                del self._histories[key]

    def compact(self, revision: int) -> None:
        """Drop what no read at or after ``revision`` can see: etcd's compaction of the index.

        Per key, the newest entry at or below ``revision`` survives unless it is a tombstone.
        """
        emptied = []
        for key, history in self._histories.items():
            if history[0].mod_revision > revision or len(history) == 1 and not is_tombstone(history[0]):
                continue
            cut = bisect.bisect_right(history, revision, key=_mod_revision)
            keep_from = cut - 1 if not is_tombstone(history[cut - 1]) else cut
            if keep_from > 0:
                del history[:keep_from]
                self.version_count -= keep_from
            if not history:
                emptied.append(key)
        for key in emptied:
            del self._histories[key]


def _visible(history: list[Version], revision: int) -> Version | None:
    latest = history[-1]
    if latest.mod_revision <= revision:
        found = latest
    else:
        position = bisect.bisect_right(history, revision, key=_mod_revision)
        if position == 0:
            return None
        found = history[position - 1]
    return None if is_tombstone(found) else found
