"""Watches: every committed event, in order, exactly once, to every watcher whose range it touches.

A :class:`WatchStream` is one client stream with its watchers and its queue of outgoing
responses. Each watcher has a cursor, ``next_revision``: the first revision it has not been sent.

- A *synced* watcher's cursor is the store's revision + 1: the hub hands it each batch as it is
  committed (:meth:`WatchHub.on_commit`), in the same event-loop step that makes the batch
  visible, so nothing can slip between.
- An *unsynced* watcher (it asked for history, or its stream's queue is full because the client
  reads slowly) catches up from the durable log, a bounded number of revisions at a time, and
  becomes synced again when its cursor reaches the store's revision. A slow client therefore
  costs a bounded queue, not memory that grows with the write rate, and never slows the others.
  Its requests are not read either until it reads again (:meth:`WatchStream.wait_for_reader`), so
  that the answers to its creates and progress requests cannot pile up, and at most
  ``max_watchers`` watchers live on one stream.

One revision's events always travel in one response (the API layer splits it only for a client
that asked for fragments), and a response never holds a revision twice, so watches are ordered, unique, reliable and atomic as
etcd's are. A watcher whose cursor falls below the compact revision is cancelled with
``compact_revision`` set, as etcd does.

``prev_kv`` comes from the index. Live events find it there with its value (the store releases
superseded values only after the watchers had the batch); a watcher catching up may need values
that left the index, and fetches them (see :mod:`history`) before the slice is sent.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Iterable

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc.history import Superseded, VersionId, fetch_values, materialize
from cosmos_etcd_shim.mvcc.index import KeyIndex
from cosmos_etcd_shim.mvcc.reads import range_end_of
from cosmos_etcd_shim.proto.kv_pb2 import Event
from cosmos_etcd_shim.proto.rpc_pb2 import WatchCreateRequest, WatchResponse
from cosmos_etcd_shim.proto.storage_pb2 import Revision
from cosmos_etcd_shim.storage import RevisionLog, StorageError
from cosmos_etcd_shim.storage.base import INITIAL_REVISION

logger = logging.getLogger(__name__)

# A stream whose client has this many responses unread stops receiving live events; its watchers
# catch up from the log once the client reads again.
MAX_QUEUED_RESPONSES = 256
# Revisions read from the log per catch-up step (etcd's watchBatchMaxRevs).
CATCH_UP_REVISIONS = 1000
# A catch-up that failed (the storage did not answer) is tried again after this, doubling.
CATCH_UP_RETRY_SECONDS = 0.2
CATCH_UP_RETRY_MAX_SECONDS = 5.0
AUTO_WATCH_ID = 0  # the client leaves the choice to the server
PROGRESS_RESPONSE_ID = -1  # WatchProgressRequest's answer, when every watcher is synced
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_WATCHER_RANGE = "mvcc: watcher range is empty"
END_OF_STREAM = WatchResponse()  # queued by end(); never sent


@dataclasses.dataclass(eq=False)
class Watcher:
    id: int
    key: bytes
    range_end: bytes | None  # None: the single key; b"": every key from key on
    next_revision: int
    prev_kv: bool
    progress_notify: bool
    fragment: bool
    no_put: bool
    no_delete: bool
    synced: bool = False
    # Cancelled because its history was compacted; its id stays taken until the client cancels it.
    compacted: bool = False
    # Whether anything was sent since the last periodic progress notification.
    active: bool = False

    def matches(self, key: bytes) -> bool:
        if self.range_end is None:
            return key == self.key
        return self.key <= key and (not self.range_end or key < self.range_end)

    def wants(self, event: Event) -> bool:
        if event.type == Event.PUT:
            return not self.no_put and self.matches(event.kv.key)
        return not self.no_delete and self.matches(event.kv.key)


class WatchHub:
    """All watch streams of one server, fed by the store's commits."""

    def __init__(self, index: KeyIndex, log: RevisionLog, current_revision, compact_revision,
                 max_watchers: int = sys.maxsize) -> None:
        self.index = index
        self.log = log
        self.max_watchers = max_watchers  # per stream
        self._current_revision = current_revision
        self._compact_revision = compact_revision
        self.streams: set[WatchStream] = set()

    @property
    def revision(self) -> int:
        return self._current_revision()

    def open_stream(self) -> "WatchStream":
        stream = WatchStream(self)
        self.streams.add(stream)
        metrics.WATCH_STREAMS.set(len(self.streams))
        return stream

    def close_all(self) -> None:
        """End every stream (server shutdown): their clients see the stream end and reconnect."""
        for stream in list(self.streams):
            stream.end()

    def on_commit(self, records: list[Revision]) -> None:
        for stream in list(self.streams):
            stream.deliver_live(records)

    async def notify_progress_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.notify_progress()

    def notify_progress(self) -> None:
        """The periodic progress notification: to synced watchers that asked and had nothing to say."""
        for stream in self.streams:
            for watcher in stream.watchers.values():
                if watcher.progress_notify and watcher.synced and not watcher.active:
                    stream.send(WatchResponse(watch_id=watcher.id), self.revision)
                watcher.active = False

    def prev_kv_of(self, event: Event, revision: int, fetched: dict[VersionId, bytes]):
        previous = self.index.get(event.kv.key, revision - 1)
        return None if previous is None else materialize([previous], fetched, self.index.cache)[0]

    def missing_prev_values(self, watchers: list[Watcher], records: list[Revision],
                            fetched: dict[VersionId, bytes]) -> list[Superseded]:
        """The superseded versions whose values the ``prev_kv`` of these events need and neither
        ``fetched`` nor the cache holds."""
        missing = []
        for record in records:
            for event in record.events:
                if not any(w.prev_kv and record.revision >= w.next_revision and w.wants(event) for w in watchers):
                    continue
                previous = self.index.get(event.kv.key, record.revision - 1)
                if type(previous) is Superseded and previous.id not in fetched \
                        and self.index.cache.get(previous.id) is None:
                    missing.append(previous)
        return missing


class WatchStream:
    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub
        self.watchers: dict[int, Watcher] = {}
        self._outbound: asyncio.Queue[WatchResponse] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._next_id = 0
        self._progress_requested = False
        self._catching_up = asyncio.Event()
        self._catch_up_task = asyncio.create_task(self._catch_up_forever(), name="watch-catch-up")

    # -- requests from the client -------------------------------------------------------------

    def create(self, r: WatchCreateRequest) -> None:
        hub = self.hub
        refusal = self._refusal(r)
        if refusal:
            # As etcd: "created" and "canceled" at once, under the id -1.
            self.send(WatchResponse(watch_id=-1, created=True, canceled=True, cancel_reason=refusal), hub.revision)
            return
        watch_id = r.watch_id if r.watch_id != AUTO_WATCH_ID else self._choose_id()
        current = hub.revision
        # Only 0 means "from now": a negative start is a past one like any other (below the compact
        # revision, the watcher is cancelled as compacted), as in etcd.
        start = r.start_revision if r.start_revision != 0 else current + 1
        filters = set(r.filters)
        watcher = Watcher(
            id=watch_id,
            key=r.key,
            range_end=range_end_of(r.range_end),
            next_revision=start,
            prev_kv=r.prev_kv,
            progress_notify=r.progress_notify,
            fragment=r.fragment,
            no_put=WatchCreateRequest.NOPUT in filters,
            no_delete=WatchCreateRequest.NODELETE in filters,
        )
        self.watchers[watch_id] = watcher
        self.send(WatchResponse(watch_id=watch_id, created=True), current)
        if start > current:
            watcher.synced = True
        else:
            self._catching_up.set()

    def _refusal(self, r: WatchCreateRequest) -> str:
        if r.watch_id != AUTO_WATCH_ID and r.watch_id in self.watchers:
            return DUPLICATE_WATCH_ID
        if r.range_end not in (b"", b"\x00") and r.key >= r.range_end:
            return EMPTY_WATCHER_RANGE
        if len(self.watchers) >= self.hub.max_watchers:
            limit = self.hub.max_watchers
            return f"cosmos-etcd: too many watchers on the stream (--max-watchers-per-stream {limit})"
        return ""

    def _choose_id(self) -> int:
        while self._next_id in self.watchers:
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    def cancel(self, watch_id: int) -> None:
        if self.watchers.pop(watch_id, None) is not None:
            self.send(WatchResponse(watch_id=watch_id, canceled=True), self.hub.revision)

    def request_progress(self) -> None:
        """etcd 3.5.13+/3.6: one response with watch_id -1 once every watcher here is synced.

        If some watcher is still catching up, the answer waits until none is: its header revision
        then promises that every event up to it was sent (kube-apiserver's consistent reads).
        """
        self._progress_requested = True
        if not self._lagging():
            self._answer_pending_progress()

    def _answer_pending_progress(self) -> None:
        if self._progress_requested:
            self._progress_requested = False
            self.send(WatchResponse(watch_id=PROGRESS_RESPONSE_ID), self.hub.revision)

    async def close(self) -> None:
        self.hub.streams.discard(self)
        metrics.WATCH_STREAMS.set(len(self.hub.streams))
        self._catch_up_task.cancel()
        await asyncio.gather(self._catch_up_task, return_exceptions=True)

    # -- responses ----------------------------------------------------------------------------

    def send(self, response: WatchResponse, revision: int) -> None:
        response.header.revision = revision
        self._outbound.put_nowait(response)

    def wants_fragments(self, watch_id: int) -> bool:
        watcher = self.watchers.get(watch_id)
        return watcher is not None and watcher.fragment

    def end(self) -> None:
        self._outbound.put_nowait(END_OF_STREAM)

    async def next_response(self) -> WatchResponse | None:
        """The next response to send; None once the stream has been ended."""
        response = await self._outbound.get()
        if response is END_OF_STREAM:
            return None
        if self._outbound.qsize() < MAX_QUEUED_RESPONSES // 2:
            self._drained.set()
        return response

    def _congested(self) -> bool:
        return self._outbound.qsize() >= MAX_QUEUED_RESPONSES

    async def wait_for_reader(self) -> None:
        """Return at once, unless the client has a full queue of responses unread: then once it
        has read half of them."""
        while self._congested():
            self._drained.clear()
            await self._drained.wait()

    def deliver_live(self, records: list[Revision]) -> None:
        """A committed batch, to every synced watcher (or unsync them if the client lags)."""
        revision = records[-1].revision
        congested = self._congested()
        for watcher in self.watchers.values():
            if not watcher.synced:
                continue
            if congested:
                watcher.synced = False
                self._catching_up.set()
                continue
            self._send_events(watcher, records, revision)

    def _send_events(self, watcher: Watcher, records: Iterable[Revision], header_revision: int,
                     fetched: dict[VersionId, bytes] | None = None) -> None:
        events = []
        last = watcher.next_revision - 1
        for record in records:
            if record.revision < watcher.next_revision:
                continue
            last = record.revision
            for event in record.events:
                if watcher.wants(event):
                    events.append(self._event_for(watcher, event, record.revision, fetched or {}))
        watcher.next_revision = last + 1
        if events:
            watcher.active = True
            self.send(WatchResponse(watch_id=watcher.id, events=events), header_revision)

    def _event_for(self, watcher: Watcher, event: Event, revision: int, fetched: dict[VersionId, bytes]) -> Event:
        if not watcher.prev_kv:
            return event
        with_prev = Event()
        with_prev.CopyFrom(event)
        previous = self.hub.prev_kv_of(event, revision, fetched)
        if previous is not None:
            with_prev.prev_kv.CopyFrom(previous)
        return with_prev

    # -- catching up from the log -------------------------------------------------------------

    async def _catch_up_forever(self) -> None:
        delay = CATCH_UP_RETRY_SECONDS
        while True:
            await self._catching_up.wait()
            self._catching_up.clear()
            try:
                while await self._catch_up_step():
                    pass
            except Exception as e:  # noqa: BLE001 - the watchers wait for history: try again soon
                logger.warning("watch catch-up failed; retrying", exc_info=not isinstance(e, StorageError),
                               extra={"error": str(e) or type(e).__name__, "retry_in_seconds": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, CATCH_UP_RETRY_MAX_SECONDS)
                self._catching_up.set()
            else:
                delay = CATCH_UP_RETRY_SECONDS

    async def _catch_up_step(self) -> bool:
        """Send the next slice of history to the unsynced watchers; False when all are synced."""
        await self.wait_for_reader()
        lagging = self._lagging()
        if not lagging:
            self._answer_pending_progress()
            return False
        hub = self.hub
        # The log may know of a compaction (by another server) that the store follows only once
        # it has applied it: history below either is gone.
        compact_revision = max(hub._compact_revision(), hub.log.compact_revision)
        for watcher in lagging:
            if watcher.next_revision < compact_revision:
                watcher.compacted = True
                # As etcd: no reason and no header revision; clients read compact_revision.
                self.send(WatchResponse(watch_id=watcher.id, canceled=True, compact_revision=compact_revision), 0)
        lagging = [w for w in lagging if not w.compacted]
        if not lagging:
            return False
        start = min(w.next_revision for w in lagging)
        records = await hub.log.read_after(start - 1, CATCH_UP_REVISIONS)
        if records and records[0].revision > max(start, INITIAL_REVISION + 1):
            return True  # compacted while it was read: the next step cancels the watchers below it
        # Between the read and now the store may have moved on (more to read next step) or not yet
        # published what the read saw (not ours to send yet).
        fetched: dict[VersionId, bytes] = {}
        while True:
            # (after any await: what the store published meanwhile is not in ``records``)
            current = hub.revision
            records = [r for r in records if r.revision <= current]
            missing = hub.missing_prev_values(lagging, records, fetched)
            if not missing:
                break
            found = await fetch_values(hub.log, hub.index.cache, missing)
            if not found.keys() & {version.id for version in missing}:
                raise StorageError("the previous values of past events are in neither the log nor the base")
            fetched.update(found)
        for watcher in lagging:
            if watcher.synced or self.watchers.get(watcher.id) is not watcher:
                continue
            self._send_events(watcher, records, current, fetched)
            if watcher.next_revision > current or not records or records[-1].revision == current:
                watcher.next_revision = max(watcher.next_revision, current + 1)
                watcher.synced = True
        if self._lagging():
            return True
        self._answer_pending_progress()
        return False

    def _lagging(self) -> list[Watcher]:
        return [w for w in self.watchers.values() if not w.synced and not w.compacted]
