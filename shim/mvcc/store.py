"""The MVCC store: the key index, the current and compact revisions, and the commit pipeline.

Reads are served from the index at the committed revision, on the event loop, without waiting.
Writes are queued and applied by one committer task in arrival order: it evaluates every queued
request against the index (each writing request becomes the next revision), makes the whole
batch durable with one :meth:`RevisionLog.append` (group commit: while one batch is on its way to
the disk, the next one gathers), and only then moves the committed revision forward and answers
the clients. A batch that cannot be made durable is rolled back from the index and every request
in it fails, so an acknowledged write is always durable and an unacknowledged one is never seen.

If another writer took the next revision first (:class:`LogConflictError`, several replicas on one
log), the batch is rolled back, the store catches up from the log, and the batch is evaluated
again: its compares then see the other writer's changes. While idle, the committer tails a shared
log, polling less often the longer nothing happens, and follows compactions made elsewhere.

Revisions another server made durable may also be *delivered* (:meth:`MVCCStore.deliver`: the
replication layer's push from a leader). The committer applies them between batches, so that the
index has one writer; records that do not follow on from the current revision make it read the
log instead. While the replication layer vouches that this store learns every revision without
tailing (:attr:`MVCCStore.replicated`: a follower pushed to, or the leader, which makes them), the
log is tailed only every :data:`PUSHED_POLL_SECONDS`: for what is not pushed (compactions, auth,
alarms) and as a check. It also says whether this server revokes expired leases
(:attr:`MVCCStore.expires_leases`): on a log with a leader only the leader does, so that only the
leader writes; and whether this server may write the log at all (:attr:`MVCCStore.may_write`,
asked before every append and compaction: a leader that holds its term's fence). A write refused
so was not applied: :class:`NotLeaderError`.

Every storage failure has one outcome for the requests it touched: throttling becomes etcd's
"too many requests" (back-pressure; the store stays up), anything else UNAVAILABLE. Only an
outage (no answer at all) opens the breaker that fails queued requests at once until the log
answers again. The committer runs under the server's :class:`Supervisor`: if it fails anyway,
the requests it held are answered, and it is started again.

The index keeps values only for each key's newest version (see :mod:`history`): a Range at an
old revision or a Txn holding one may need values from the log, fetched before the request is
evaluated again with them; a read at the current revision never awaits anything. Every
``checkpoint_interval`` revisions this store commits (only the writer of a shared log does),
it hands the backend a checkpoint of the index, so that a start reads it plus a short tail.

Compaction does not go through the committer: writes continue while it is recorded, and the
physical work happens in the storage backend (see :meth:`RevisionLog.compact`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc import txn as txns
from cosmos_etcd_shim.mvcc.alarms import Alarms
from cosmos_etcd_shim.mvcc.errors import CompactedError, FutureRevisionError, LeaseNotFoundError, MVCCError, NotLeaderError
from cosmos_etcd_shim.mvcc.errors import StorageUnavailableError, TooManyRequestsError, from_storage
from cosmos_etcd_shim.mvcc.history import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CHECKPOINT_INTERVAL,
    ValueCache,
    ValuesMissing,
    VersionId,
    checkpoint_pages,
    fetch_values,
    materialize,
)
from cosmos_etcd_shim.mvcc.index import KeyIndex
from cosmos_etcd_shim.mvcc.lease import Lessor, expire_forever
from cosmos_etcd_shim.mvcc.reads import UNLIMITED, RangeLimits, check_revision, execute_range
from cosmos_etcd_shim.proto.rpc_pb2 import (
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)
from cosmos_etcd_shim.proto.storage_pb2 import Revision
from cosmos_etcd_shim.storage import (
    LogCompactedError,
    LogConflictError,
    LogFencedError,
    RevisionLog,
    StorageError,
    StorageRejectedError,
    StorageThrottledError,
)
from cosmos_etcd_shim.storage.base import INITIAL_REVISION
from cosmos_etcd_shim.supervision import Supervisor

logger = logging.getLogger(__name__)

WriteFn = Callable[[txns.WriteTxn], Any]
# How often a shared log is tailed while its revisions are pushed to this store (see above).
PUSHED_POLL_SECONDS = 5.0


@dataclasses.dataclass
class _Write:
    apply: WriteFn
    future: asyncio.Future


class MVCCStore:
    def __init__(self, log: RevisionLog, range_limits: RangeLimits = UNLIMITED,
                 supervisor: Supervisor | None = None, history_cache_bytes: int = DEFAULT_CACHE_BYTES,
                 checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL) -> None:
        self.log = log
        self.range_limits = range_limits
        self.supervisor = supervisor or Supervisor()
        self.index = KeyIndex(ValueCache(history_cache_bytes))
        self.checkpoint_interval = checkpoint_interval  # revisions; 0: never
        self._checkpointed = INITIAL_REVISION  # the revision of the newest checkpoint known here
        self._checkpointing: asyncio.Task | None = None
        metrics.INDEX_VERSIONS.set_function(lambda: self.index.version_count)
        self.revision = INITIAL_REVISION
        self.compact_revision = -1
        self._queue: list[_Write] = []
        self._delivered: list[Revision] = []
        self._revision_waiters: list[tuple[int, asyncio.Future]] = []
        #: Set by the replication layer (see the module docstring).
        self.replicated = False
        self.expires_leases = True
        self.may_write: Callable[[], bool] = lambda: True
        self._compacting = asyncio.Lock()  # one Compact at a time on this server
        self._syncs: list[asyncio.Future] = []
        # A shared log that just failed is treated as down until a read of it succeeds again.
        self._storage_down = False
        # The last catch-up with a shared log was throttled (cleared by one that succeeds).
        self._throttled = False
        self._queued = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.leases = Lessor(log)
        self.alarms = Alarms(log)
        self._listeners: list[Callable[[list[Revision]], None]] = [self.leases.on_commit]
        #: Resolved with a reason when this store can no longer serve (it fell behind a compaction).
        self.failed: asyncio.Future = asyncio.get_running_loop().create_future()

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        state = await self.log.open()
        for kv in state.base:
            self.index.append(kv)
        self.compact_revision = state.compact_revision
        self.revision = max(INITIAL_REVISION, state.compact_revision)
        if state.checkpoint is not None:
            self.index.load(state.checkpoint.events)
            self.revision = self._checkpointed = max(self.revision, state.checkpoint.revision)
        self._apply_records(state.revisions)
        # The base is as old as the last folded compaction; one scheduled since applies too.
        self.index.compact(self.compact_revision)
        self.leases.recover(state.leases, self.index.range(b"\x00", b"", self.revision))
        self._tasks = [
            self.supervisor.start("mvcc-committer", self._commit_forever, core=True),
            self.supervisor.start("lease-expiry", lambda: expire_forever(self.leases, self._revoke_expired), core=True),
        ]
        logger.debug("store opened", extra={"revision": self.revision, "compact_revision": self.compact_revision,
                                           "keys": len(self.index)})

    async def close(self) -> None:
        if self._checkpointing is not None:
            self._checkpointing.cancel()
            await asyncio.gather(self._checkpointing, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for item in self._queue:
            item.future.cancel()
        self._queue.clear()
        await self.log.close()

    def on_commit(self, listener: Callable[[list[Revision]], None]) -> None:
        """Call ``listener`` with the revisions of every batch once it is durable and visible."""
        self._listeners.append(listener)

    # -- requests -----------------------------------------------------------------------------

    def lease_exists(self, lease_id: int) -> bool:
        return self.leases.exists(lease_id)

    @property
    def throttled(self) -> bool:
        """The shared log answered the last catch-up with throttling: it is there, its RU are spent."""
        return self._throttled

    @property
    def storage_down(self) -> bool:
        """A shared log failed and has not answered since: what needs it fails at once until it does."""
        return self._storage_down

    async def sync(self) -> None:
        """Wait until every write any writer had made durable when this call began is applied here.

        What a linearizable read needs when several servers share the log; free when the log is
        this server's alone, since then every durable write went through this store.
        """
        if not self.log.shared:
            return
        future = asyncio.get_running_loop().create_future()
        self._syncs.append(future)
        self._queued.set()
        await future

    async def range(self, r: RangeRequest) -> RangeResponse:
        """Range at the committed revision; one below it may fetch values from the log first."""
        return await self._with_history(
            lambda fetched: execute_range(self.index, r, self.revision, self.compact_revision, self.range_limits,
                                          fetched))

    async def _with_history(self, evaluate: Callable[[dict[VersionId, bytes]], Any]) -> Any:
        """``evaluate(fetched)``; while it needs values of superseded versions, fetch them and
        evaluate again (the store may have moved meanwhile: what is read is then read anew)."""
        fetched: dict[VersionId, bytes] = {}
        while True:
            try:
                return evaluate(fetched)
            except ValuesMissing as e:
                await self._fetch_missing(e, fetched)

    async def _fetch_missing(self, missing: ValuesMissing, fetched: dict[VersionId, bytes]) -> None:
        """Add the values ``missing`` names to ``fetched``; CompactedError if one of them is gone
        from the log and the base (a compaction took it since the read chose it)."""
        try:
            found = await fetch_values(self.log, self.index.cache, missing.versions)
        except StorageError as e:
            raise from_storage(e) from None
        if any(v.id not in found for v in missing.versions):
            raise CompactedError()
        fetched.update(found)

    async def hash_kv(self, requested: int) -> tuple[int, int, int]:
        """(revision, compact revision, CRC-32 of every version kept up to that revision).

        The same data gives the same hash on every cosmos-etcd member; it is not etcd's number,
        which hashes etcd's own on-disk encoding.
        """
        revision = check_revision(requested, self.revision, self.compact_revision)

        def digest_of(fetched: dict[VersionId, bytes]) -> int:
            digest = zlib.crc32(b"cosmos-etcd")  # an empty store hashes to non-zero, like etcd's
            for kv in materialize(list(self.index.versions(revision)), fetched, self.index.cache):
                digest = zlib.crc32(kv.SerializeToString(deterministic=True), digest)
            return digest

        return revision, self.compact_revision, await self._with_history(digest_of)

    async def put(self, p: PutRequest) -> PutResponse:
        await self.leases.refresh_unknown([p.lease])
        if p.lease and not self.lease_exists(p.lease):
            raise LeaseNotFoundError()
        return await self._write(lambda w: txns.apply_put(w, p))

    async def delete_range(self, d: DeleteRangeRequest) -> DeleteRangeResponse:
        return await self._write(lambda w: txns.apply_delete_range(w, d))

    async def txn(self, t: TxnRequest) -> TxnResponse:
        await self.leases.refresh_unknown(txns.leases_named(t))
        if not txns.is_write(t):
            # Nothing to make durable: evaluate at the committed revision, like a Range (which the
            # caller made current first, if the read is linearizable).
            return await self._with_history(lambda fetched: self._run_txn(
                txns.WriteTxn(self.index, self.revision, self.compact_revision, self.range_limits), t, fetched))
        # A Range at an old revision inside may need values from the log: then the Txn failed
        # (and wrote nothing); it is queued again with them.
        fetched: dict[VersionId, bytes] = {}
        while True:
            try:
                return await self._write(lambda w: self._run_txn(w, t, fetched))
            except ValuesMissing as e:
                await self._fetch_missing(e, fetched)

    def _run_txn(self, w: txns.WriteTxn, t: TxnRequest, fetched: dict[VersionId, bytes]) -> TxnResponse:
        w.fetched = fetched
        decision = txns.decide(w, t)
        txns.check_txn(w, t, decision, self.lease_exists)
        response = txns.apply_txn(w, decision)
        response.header.revision = w.read_revision
        return response

    async def revoke_lease(self, lease_id: int) -> None:
        """Delete the lease's keys in one revision, then forget the lease."""
        await self.leases.refresh_unknown([lease_id])
        try:
            await self._write(lambda w: self._delete_lease_keys(w, lease_id))
        except (StorageUnavailableError, TooManyRequestsError):
            self.leases.abort_revoke(lease_id)
            raise
        await self.leases.finish_revoke(lease_id)

    async def _revoke_expired(self, lease_id: int) -> None:
        if self.expires_leases:
            await self.revoke_lease(lease_id)

    def _delete_lease_keys(self, w: txns.WriteTxn, lease_id: int) -> None:
        for key in self.leases.begin_revoke(lease_id):
            w.delete_range(key, None)

    async def compact(self, c: CompactionRequest) -> CompactionResponse:
        """etcd's Compact: from now on no read below ``c.revision``, on every server of the log."""
        async with self._compacting:
            await self.sync()  # another server may have moved the head or compacted
            revision = c.revision
            if revision <= self.compact_revision:
                raise CompactedError()
            if revision > self.revision:
                raise FutureRevisionError()
            if not self.may_write():
                raise NotLeaderError("this server does not lead the log")
            try:
                await self.log.compact(revision)
            except LogCompactedError:  # another server compacted past it meanwhile
                self._follow_compaction()
                raise CompactedError() from None
            except StorageError as e:
                raise from_storage(e) from None
            self._follow_compaction()
        response = CompactionResponse()
        response.header.revision = self.revision
        return response

    def _follow_compaction(self) -> None:
        """Adopt the log's compact revision (made here or by another server) once this store has
        applied it: reads below it are refused from now on, and its history is freed."""
        revision = self.log.compact_revision
        if self.compact_revision < revision <= self.revision:
            self.compact_revision = revision
            metrics.COMPACT_REVISION.set(revision)
            self.index.compact(revision)

    async def _write(self, apply: WriteFn):
        future = asyncio.get_running_loop().create_future()
        self._enqueue(_Write(apply, future))
        return await future

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until this store has applied ``revision``; whether it has."""
        if self.revision >= revision:
            return True
        future = asyncio.get_running_loop().create_future()
        waiter = (revision, future)
        self._revision_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            return False
        finally:
            if waiter in self._revision_waiters:
                self._revision_waiters.remove(waiter)
        return True

    def deliver(self, records: list[Revision]) -> None:
        """Revisions another server made durable, in order (see the module docstring)."""
        self._delivered.extend(records)
        self._queued.set()

    def _enqueue(self, item: _Write) -> None:
        self._queue.append(item)
        self._queued.set()

    # -- the committer ------------------------------------------------------------------------

    async def _commit_forever(self) -> None:
        if self._queue or self._syncs:
            self._queued.set()  # restarted after a failure: what waits is served first
        interval = self.log.poll_interval
        while True:
            if self.log.shared:
                # Other writers append to the same log: tail it when there is nothing to do, often
                # right after activity, less and less often while nothing happens.
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
                    # that arrives as the event is set, and the store could then never close.
                    async with asyncio.timeout(interval):
                        await self._queued.wait()
                except TimeoutError:
                    before = self.revision
                    await self._catch_up_quietly()
                    busy = self.revision != before  # (while pushed to: the push missed something)
                    idle = PUSHED_POLL_SECONDS if self.replicated else self.log.idle_poll_interval
                    interval = self.log.poll_interval if busy else min(interval * 2, idle)
                    continue
                if not self.replicated:
                    interval = self.log.poll_interval
            else:
                await self._queued.wait()
            self._queued.clear()
            try:
                await self._serve_queued()
            except BaseException:
                # A failure nobody foresaw: answer everyone waiting rather than leave them hanging,
                # then let the supervisor log it and start the committer again.
                self._fail_waiting(StorageUnavailableError("internal error in the commit pipeline"))
                raise

    async def _serve_queued(self) -> None:
        if self._delivered:
            await self._apply_delivered()
        if self._storage_down:
            # Known outage of a shared log: answer UNAVAILABLE at once rather than make every
            # request wait out its own retries; then probe, and serve again once it answers.
            self._fail_waiting(StorageUnavailableError("the shared log is unreachable"))
            await self._catch_up_quietly()
            return
        if self._syncs:
            # Linearizable reads that arrived before this catch-up began see what it finds.
            waiting, self._syncs = self._syncs, []
            error = await self._catch_up_quietly()
            for future in waiting:
                if error is not None:
                    _fail(future, from_storage(error))
                elif not future.done():
                    future.set_result(None)
        while self._queue:
            batch, self._queue = self._queue, []
            await self._commit(batch)

    async def _commit(self, batch: list[_Write]) -> None:
        # An append at head+1 proves the batch was evaluated on the latest state. A batch that
        # writes nothing (a failed compare, a delete of nothing) has no such proof on a shared
        # log: catch up once, and evaluate again if another writer had moved the head.
        confirmed = not self.log.shared
        while True:
            outcomes, records = self._evaluate(batch)
            if not records:
                if confirmed:
                    break
                confirmed = True
                before = self.revision
                try:
                    await self._catch_up()
                except StorageError as e:
                    self._fail_batch(batch, e)
                    return
                if self.revision == before:
                    break
                continue
            if not self.may_write():  # deposed since these requests were queued: the next leader runs them
                self._rollback(records)
                self._fail_batch(batch, LogFencedError("this server does not lead the log"))
                return
            started = time.perf_counter()
            try:
                await self.log.append(records)
            except LogConflictError:
                self._rollback(records)
                try:
                    await self._catch_up()
                except StorageError as e:
                    self._fail_batch(batch, e)
                    return
                continue
            except StorageError as e:
                self._rollback(records)
                self._fail_batch(batch, e)
                return
            except BaseException:
                self._rollback(records)  # never leave a write that is not durable visible
                for item in batch:
                    _fail(item.future, StorageUnavailableError("internal error while writing the log"))
                raise
            metrics.STORAGE_APPEND_SECONDS.observe(time.perf_counter() - started)
            metrics.COMMIT_BATCH_REQUESTS.observe(len(batch))
            self.revision = records[-1].revision
            self._publish(records)
            self._maybe_checkpoint()
            break
        for future, outcome in outcomes:
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _fail_batch(self, batch: list[_Write], error: StorageError) -> None:
        logger.error("write batch failed", extra={"error": str(error), "requests": len(batch)})
        self._storage_down = self.log.shared and _is_outage(error)
        for item in batch:
            _fail(item.future, from_storage(error))

    def _fail_waiting(self, error: StorageUnavailableError) -> None:
        waiting = [item.future for item in self._queue] + self._syncs
        self._queue, self._syncs = [], []
        for future in waiting:
            _fail(future, error)

    def _evaluate(self, batch: list[_Write]):
        outcomes: list[tuple[asyncio.Future, Any]] = []
        records: list[Revision] = []
        revision = self.revision
        for item in batch:
            if item.future.done():  # the client went away before its request was applied
                continue
            w = txns.WriteTxn(self.index, revision, self.compact_revision, self.range_limits)
            try:
                outcome = item.apply(w)
            except MVCCError as e:
                w.rollback()
                outcomes.append((item.future, e))
                continue
            except Exception as e:  # a bug in one request must not leave its half-write in the index
                logger.exception("request failed while being applied")
                w.rollback()
                outcomes.append((item.future, e))
                continue
            if w.events:
                revision += 1
                records.append(Revision(revision=revision, events=w.events))
            outcomes.append((item.future, outcome))
        return outcomes, records

    async def _apply_delivered(self) -> None:
        records, self._delivered = self._delivered, []
        fresh = [r for r in records if r.revision > self.revision]
        if fresh and (fresh[0].revision != self.revision + 1
                      or any(b.revision != a.revision + 1 for a, b in zip(fresh, fresh[1:]))):
            # A gap (a message lost between a leader and this store): the log has every revision.
            await self._catch_up_quietly()
            fresh = [r for r in fresh if r.revision > self.revision]
            if fresh and fresh[0].revision != self.revision + 1:
                return  # not in the log yet either: the next tail brings them
        self._apply_records(fresh)

    def _maybe_checkpoint(self) -> None:
        """Start a checkpoint of the index at the current revision if ``checkpoint_interval``
        revisions passed since the last one (and none is being written)."""
        if not self.checkpoint_interval or self.revision - self._checkpointed < self.checkpoint_interval:
            return
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        # Between batches: the index holds nothing newer than the committed revision.
        revision, histories = self.revision, self.index.snapshot(self.revision)
        self._checkpointed = revision  # a failed one is tried again an interval later, not at once
        self._checkpointing = asyncio.create_task(self._write_checkpoint(revision, histories),
                                                  name="index-checkpoint")

    async def _write_checkpoint(self, revision: int, histories: list) -> None:
        pages = checkpoint_pages(histories, revision)
        done = object()

        async def each_page():
            # Made on a worker thread, one page at a time: the loop keeps serving meanwhile.
            while (page := await asyncio.to_thread(next, pages, done)) is not done:
                yield page

        started = time.perf_counter()
        try:
            kept = await self.log.save_checkpoint(revision, each_page())
        except Exception as e:  # noqa: BLE001 - a start then reads a longer tail; the next one may succeed
            logger.warning("index checkpoint failed", extra={"revision": revision, "error": str(e) or type(e).__name__})
            return
        logger.info("index checkpoint", extra={"revision": revision, "kept": kept,
                                              "seconds": round(time.perf_counter() - started, 3)})

    def _rollback(self, records: list[Revision]) -> None:
        """Remove a batch that did not become durable from the index."""
        self.index.rollback({e.kv.key for r in records for e in r.events}, self.revision)

    async def _catch_up(self) -> None:
        records = await self.log.tail(self.revision)
        # (deliveries are applied by this same task, so none came while the tail was on its way)
        self._apply_records(records)
        self._follow_compaction()

    async def _catch_up_quietly(self) -> StorageError | None:
        """Catch up; the error (logged) if the log cannot be read. On a shared log, the outcome
        also decides whether the log counts as down: only when it did not answer at all."""
        try:
            await self._catch_up()
            self._storage_down = self._throttled = False
        except LogCompactedError as e:
            # Another writer compacted (and collected) past what this store has applied: its
            # watchers would miss events. Stop; a restarted server loads the compacted base.
            logger.error("fell behind a compaction of the shared log", extra={"error": str(e)})
            if not self.failed.done():
                self.failed.set_result(f"fell behind a compaction of the shared log: {e}")
            return e
        except StorageError as e:
            logger.warning("cannot tail the log", extra={"error": str(e)})
            self._storage_down = self.log.shared and _is_outage(e)
            self._throttled = isinstance(e, StorageThrottledError)
            return e
        return None

    def _apply_records(self, records: Iterable[Revision]) -> None:
        applied = []
        for record in records:
            for event in record.events:
                self.index.append(event.kv)  # a DELETE event's kv is the tombstone
            applied.append(record)
        if applied:
            self.revision = applied[-1].revision
            self._publish(applied)

    def _publish(self, records: list[Revision]) -> None:
        """Wake what waits for these (durable, now visible) records; then the versions they
        superseded give their values up to the history cache (after the listeners, so that a
        live watch's ``prev_kv`` finds them in the index)."""
        metrics.REVISION.set(self.revision)
        if self._revision_waiters:
            reached = [w for w in self._revision_waiters if w[0] <= self.revision]
            for waiter in reached:
                self._revision_waiters.remove(waiter)
                if not waiter[1].done():
                    waiter[1].set_result(None)
        for listener in self._listeners:
            listener(records)
        self.index.release(records)


def _is_outage(error: StorageError) -> bool:
    """Whether the log did not answer at all (rather than answer with a refusal or throttling)."""
    return not isinstance(error, (StorageThrottledError, StorageRejectedError, LogCompactedError, LogFencedError))


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
