"""Values of superseded versions: dropped from the index, kept in a bounded cache, fetched on demand.

The index keeps every version since the compact revision, but the *value* only of each key's
newest version: that is what every read at the current revision, every Txn compare and every
write's ``prev_kv`` needs. Once a newer version of a key is durable, the older one becomes a
:class:`Superseded` entry (key, create and mod revision, version, lease: what count, filters,
sorts other than by value, ``keys_only`` and the watch's event order need) and its value moves
to the :class:`ValueCache`, a least-recently-used cache bounded in bytes
(``--history-cache-bytes``). Memory then follows the live data plus a bounded cache, not the
history.

A read that meets a superseded entry (a Range at an old revision, a watch's ``prev_kv`` for an
event from the past) looks the value up in the cache, and what is not there is fetched from the
log by revision (:meth:`RevisionLog.read_revisions`): the record of the version's mod revision
holds it. A version whose record was folded into the base by a compaction is the one visible at
the compact revision (its successor is newer than the compaction, or the index would have freed
it); the base holds exactly it, by key (:meth:`RevisionLog.read_base`).

Reads at the current revision never meet a superseded entry, so the hot path has no await:
:class:`ValuesMissing` is raised by a read that needs values it does not have, and the caller
fetches them (:func:`fetch_values`) and evaluates again with them.

Checkpoints of the index (item 4 of issue 12): every ``--checkpoint-interval`` revisions the
store that committed them hands the backend the index at that revision R, as pages of events
(:func:`checkpoint_pages`): per key, in key order, every version kept, only the newest one with
its value (a DELETE event for a tombstone). A start loads the newest checkpoint and the log after
R (:meth:`KeyIndex.load`), so it reads what is live plus a short tail, not the history since the
compaction. The pages are made from a copy of the index's lists on a worker thread, one page at
a time, so the event loop keeps serving and the memory it takes is one page.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc.errors import MVCCError
from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Revision

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# Revisions between two checkpoints of the index: a start reads at most about this many records.
DEFAULT_CHECKPOINT_INTERVAL = 10_000
# Revisions asked for in one log read: bounds the size of one request to the backend.
FETCH_BATCH_REVISIONS = 256
# Serialized events per checkpoint page (before the backend compresses it).
CHECKPOINT_PAGE_BYTES = 1024 * 1024
# What one cache entry costs besides its value: the OrderedDict slot, the tuple, the bytes headers.
ENTRY_OVERHEAD_BYTES = 200

VersionId = tuple[bytes, int]  # (key, mod_revision)


class Superseded:
    """A version whose value left the index: everything of its KeyValue but the value."""

    __slots__ = ("key", "create_revision", "mod_revision", "version", "lease")

    def __init__(self, kv: KeyValue, key: bytes) -> None:
        self.key = key  # the index's own key object, shared by every version of the key
        self.create_revision = kv.create_revision
        self.mod_revision = kv.mod_revision
        self.version = kv.version
        self.lease = kv.lease

    @property
    def id(self) -> VersionId:
        return self.key, self.mod_revision

    def with_value(self, value: bytes) -> KeyValue:
        return KeyValue(key=self.key, create_revision=self.create_revision, mod_revision=self.mod_revision,
                        version=self.version, lease=self.lease, value=value)


class ValuesMissing(MVCCError):
    """A read needs the values of superseded versions that are not at hand: fetch, then read again."""

    def __init__(self, versions: Iterable[Superseded]) -> None:
        super().__init__("values of superseded versions are needed")
        self.versions = list(versions)


class ValueCache:
    """(key, mod revision) -> value, least recently used first out beyond ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if capacity_bytes < 0:
            raise ValueError("the history cache size must not be negative")
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self._values: collections.OrderedDict[VersionId, bytes] = collections.OrderedDict()
        metrics.HISTORY_CACHE_BYTES.set_function(lambda: self.bytes)

    def __len__(self) -> int:
        return len(self._values)

    def get(self, version: VersionId) -> bytes | None:
        value = self._values.get(version)
        if value is None:
            metrics.HISTORY_CACHE_LOOKUPS.labels("miss").inc()
            return None
        metrics.HISTORY_CACHE_LOOKUPS.labels("hit").inc()
        self._values.move_to_end(version)
        return value

    def put(self, version: VersionId, value: bytes) -> None:
        cost = len(value) + len(version[0]) + ENTRY_OVERHEAD_BYTES
        if cost > self.capacity_bytes or version in self._values:
            return
        self._values[version] = value
        self.bytes += cost
        while self.bytes > self.capacity_bytes:
            (key, _), dropped = self._values.popitem(last=False)
            self.bytes -= len(dropped) + len(key) + ENTRY_OVERHEAD_BYTES


def materialize(kvs: list, fetched: Mapping[VersionId, bytes], cache: ValueCache) -> list[KeyValue]:
    """``kvs`` with every superseded entry given its value (from ``fetched`` or the cache), or
    :class:`ValuesMissing` naming those neither holds."""
    if not any(type(kv) is Superseded for kv in kvs):
        return kvs
    out, missing = [], []
    for kv in kvs:
        if type(kv) is Superseded:
            value = fetched.get(kv.id)
            if value is None:
                value = cache.get(kv.id)
            if value is None:
                missing.append(kv)
                continue
            kv = kv.with_value(value)
        out.append(kv)
    if missing:
        raise ValuesMissing(missing)
    return out


async def fetch_values(log, cache: ValueCache, versions: Iterable[Superseded]) -> dict[VersionId, bytes]:
    """The values of ``versions`` from the cache or the log (by revision, else from the base by
    key); each fetched value is cached. StorageError if the backend cannot be read; a version
    gone from both (compacted meanwhile) is left out, and the read that asked fails as compacted."""
    found: dict[VersionId, bytes] = {}
    wanted: dict[int, list[bytes]] = {}
    for version in versions:
        value = cache.get(version.id)
        if value is not None:
            found[version.id] = value
        else:
            wanted.setdefault(version.mod_revision, []).append(version.key)
    revisions = sorted(wanted)
    for start in range(0, len(revisions), FETCH_BATCH_REVISIONS):
        batch = revisions[start:start + FETCH_BATCH_REVISIONS]
        records = await log.read_revisions(batch)
        metrics.HISTORY_FETCHED_REVISIONS.inc(len(records))
        for revision, record in records.items():
            keys = set(wanted[revision])
            for event in record.events:
                if event.kv.key in keys:
                    found[event.kv.key, revision] = event.kv.value
    folded = [(key, revision) for revision, keys in wanted.items() for key in keys if (key, revision) not in found]
    if folded:
        base = await log.read_base([key for key, _ in folded])
        for key, revision in folded:
            kv = base.get(key)
            if kv is not None and kv.mod_revision == revision:
                found[key, revision] = kv.value
    for version, value in found.items():
        cache.put(version, value)
    return found


def checkpoint_pages(histories: list[tuple[bytes, list]], revision: int) -> Iterator[bytes]:
    """The index at ``revision`` (its histories as :meth:`KeyIndex.snapshot` copied them) as
    checkpoint pages: serialized ``Revision(revision=revision, events=...)`` messages."""
    page = Revision(revision=revision)
    size = 0
    for key, versions in histories:
        for kv in versions:
            if type(kv) is Superseded:
                kv = KeyValue(key=key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                              version=kv.version, lease=kv.lease)
            event = page.events.add(type=Event.PUT if kv.version else Event.DELETE)
            event.kv.CopyFrom(kv)
            size += event.ByteSize()
        if size >= CHECKPOINT_PAGE_BYTES:
            yield page.SerializeToString()
            page = Revision(revision=revision)
            size = 0
    if size or not page.events:
        yield page.SerializeToString()
