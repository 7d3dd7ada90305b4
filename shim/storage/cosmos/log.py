"""The Cosmos DB backend: the revision log, its checkpoints, leases and member heartbeats.

The log (see :mod:`layout` for the documents)
---------------------------------------------
* One logical partition (``pk = "log"``) holds the log: ordering and conditional writes exist
  only inside a partition. A log document holds consecutive revisions ``r``..``e`` (a group
  commit: one MVCC batch, one Cosmos request) and its id is derived from ``r``. **Creating the
  document whose first revision is head+1 is the compare-and-swap on the log head**: of two
  writers only one create succeeds (409 for the other, which raises :class:`LogConflictError`,
  catches up with :meth:`read_after` and retries). Boundaries are the same for every reader, and
  a writer only ever appends after the last revision of a whole document it has seen, so two
  documents can never overlap.
* A create whose answer is lost is resolved by reading the id back (see :mod:`client`): our
  nonce -> success, another nonce -> conflict, absent -> create again. Never a blind rewrite.
* Readers tail with ``e > @last AND r >= @cdoc ORDER BY r`` (parameterised, partition key in the
  WHERE, as the local test server requires) and check that what they read is contiguous.

Compaction and checkpoints
--------------------------
Compaction has two steps, as etcd's (a scheduled compact revision, then the physical work):

1. ``compact(R)`` *schedules* it: one etag-conditioned replace of ``meta`` sets ``sched`` = R and
   bumps its generation ``g``. From then on R is the compact revision of every replica: each
   one's tail query returns ``meta`` whenever its generation changed, so within one poll every
   replica refuses reads below R, cancels watches below R and frees the versions below R from
   memory. Nothing else waits for step 2, and writes never wait for either.
2. A background *fold* (:meth:`_fold`) writes the records in [C, R) into a checkpoint page set
   (:mod:`checkpoint`: a delta, or now and then the full base), then advances ``meta`` (durable
   compact revision ``compact`` = R, ``cdoc`` = first revision of the log document that holds R,
   the chain of page sets) with an etag condition, and only then deletes log documents that lie
   wholly below ``cdoc``. The replica that scheduled folds at once; a failed fold is retried
   within seconds; another replica takes over a fold left pending (its scheduler died).
   Concurrent folds of the same R write the same pages (derived ids) and one wins the ``meta``
   replace.

Restart reads the chain and the log from ``cdoc``: its cost follows the live data and the
uncompacted tail, not the history. Better still, it reads the newest *index checkpoint*
(:meth:`save_checkpoint`; every version kept at a revision R, only the newest values, pages in the
``hist`` partition named by ``meta``'s ``hist`` once all are written) and the log documents from
the one holding R on: the live data and a short tail. A checkpoint is used only while the log
still holds R (``cdoc`` <= R + 1 and a document holds R: a compaction past it, or a repair that
truncated the log below it, makes the start read the chain and the whole log instead). Several
replicas may write one: each set's ids carry its writer's nonce, ``meta`` names a set only if it
is newer than the one named (an etag-conditioned replace), and garbage collection removes only
sets older than the named one, so a set still being written is never removed. A reader re-reads ``meta`` after loading and starts over if
it changed, so it never mixes a base with a log from different compactions. Garbage (log
documents below ``cdoc``, page sets no chain names) is deleted in the background after each fold
and by :meth:`defragment`.

What replicas follow without asking: the tail query also returns ``meta`` when its generation
is newer than the one this replica saw, the ``auth-stamp`` document when its version is newer
than the auth state this replica holds, and the ``alarms`` document when its generation is newer
than the one this replica holds, so an idle replica learns compactions, auth changes and alarms
from the one query it makes per poll (a busy one at every linearizable read and write conflict).

The stale-writer hazard: a freed log id must not be re-created
-------------------------------------------------------------
A writer that still believes the head is H could re-create ``log-(H+1)`` after compaction
deleted it, and would wrongly acknowledge a revision that exists already. The fence is
*time*, with a horizon L (``fence_seconds``, default 300 s):

1. Compaction deletes a log document only once it is older than L by the server's clock (its
   ``_ts`` against the ``_ts`` of the compaction's own ``meta`` write).
2. A writer knows when it last learned that H was the head (``K``: the send time of its own
   create of the document ending at H, or of a query that found nothing after H). Any
   ``log-(H+1)`` was created after K, so cannot be deleted before K + L. If a create is
   answered before K + L/2 (the writer's monotonic clock), it cannot have hit a freed id.
3. A writer whose knowledge is older than L/2 first asks whether anything follows H (one
   query; idle replicas only, a busy one never pays it); a create answered later than that
   (a request stuck for minutes) is checked against ``meta`` before it is acknowledged, and
   withdrawn (deleted, conflict) if it lies below ``cdoc``. Readers also start at ``cdoc``, so
   such a document is never read as the log.

This costs nothing per commit (no stub per deleted document, no fence read per append). It
assumes clocks that run at the same rate within a margin of L/2 (not synchronised clocks) and a
consistency level whose reads in the write region see the latest write (Strong or Bounded
Staleness, which the shim checks at start; the operator's defaults are Strong for multi-region
accounts and Bounded Staleness for a single region). ``fence_seconds=0`` disables the age rule and makes
every append check first: only for tests and single-writer set-ups.

Leaders and the fence
---------------------
With an elected leader (the ``replication`` package) the leader answers linearizable reads from
its own store, which is exact only if no other server's append can land unknown to it. The
compare-and-swap alone does not give that: a former leader paused between preparing its append of
head+1 and sending it would land it after the new leader caught up. So a new leader, once caught
up, *fences* (:meth:`CosmosLog.fence_next`): it creates the document of head+1 itself, as a
``fence`` (no revisions, which readers never select). Another server's create of that id then
fails, and reading it back shows a fence: :class:`LogFencedError`, the batch was not written. The
leader's first append replaces its own fence (etag-conditioned), and the leader of a later term
replaces an unused fence with its own, which makes the earlier leader's replace fail the same way;
a fence of a later term is never replaced by an earlier one (a fence sent late). A former
leader cannot reach any later revision: it would first have to read head+1 as a revision, and it
appends only while it leads (``MVCCStore.may_write``). A server that never fences (no election)
replaces a fence left behind instead, as it would write to a log nobody leads.

Large values: payloads are zlib-compressed when that helps; a payload over the item limit is
split into chunk documents written before the document that names them (ids carry the writer's
nonce, so a losing writer's chunks never collide with the winner's and are collected later).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import pathlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from azure.cosmos import exceptions as cosmos_exceptions

from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Lease, Revision
from cosmos_etcd_shim.storage.base import (
    INITIAL_REVISION,
    AuthConflictError,
    AuthRecord,
    IndexCheckpoint,
    LogCompactedError,
    LogConflictError,
    LogFencedError,
    RecoveredState,
    RevisionLog,
    StorageError,
    StoreImage,
    StoredAlarm,
    fold,
)
from cosmos_etcd_shim.storage.cosmos import checkpoint, codec, layout, leadership
from cosmos_etcd_shim.storage.cosmos.checkpoint import PageSet, PageSetMissing
from cosmos_etcd_shim.storage.cosmos.client import (
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_DEADLINE,
    Conflict,
    CosmosConnection,
)
from cosmos_etcd_shim.storage.cosmos.stats import CosmosStats
from cosmos_etcd_shim.storage.embedded import NOT_COMPACTED, write_image

logger = logging.getLogger(__name__)

DEFAULT_FENCE_SECONDS = 300.0
LOAD_ATTEMPTS = 8
# Log documents per page when a start reads the log: few pages, since each query page costs a
# pass over the partition on the local test server (Cosmos itself caps a page at 4 MB).
LOAD_PAGE_ITEMS = 1000
COMPACT_ATTEMPTS = 8
# A failed fold is tried again after this long, doubling up to the maximum (not at the next
# compaction: the next one would only be bigger).
FOLD_RETRY_SECONDS = 1.0
FOLD_RETRY_MAX_SECONDS = 30.0
# A fold scheduled by another replica and still pending after this long is done by this one.
FOLD_TAKEOVER_SECONDS = 30.0
# Member records whose heartbeat is older than this are deleted (each rollout leaves some).
MEMBER_FORGET_SECONDS = 300.0
ALARM_ATTEMPTS = 8
# Revisions per log document when importing an image: large documents, few requests (a document
# over the item limit is split into chunks like any other).
IMPORT_REVISIONS_PER_DOCUMENT = 100
FULL_CHECKPOINT_MIN_BYTES = 64 * 1024
CHUNK_WRITE_CONCURRENCY = 4
# read_revisions: revisions at most this far apart are read with one range condition (the log
# documents in between come along), and this many ranges go into one query.
REVISION_SPAN_GAP = 8
SPANS_PER_QUERY = 32


class LogCorruptError(StorageError):
    """The log documents are not contiguous, or a payload does not decode."""


@dataclasses.dataclass
class _Doc:
    """A decoded log document."""

    first: int
    last: int
    records: list[Revision]
    size: int


@dataclasses.dataclass
class _Loaded:
    meta: dict
    base: dict[bytes, KeyValue]
    docs: list[_Doc]
    leases: list[Lease]
    read_at: float  # monotonic time the log query was sent
    checkpoint: IndexCheckpoint | None = None  # then ``base`` is empty and ``docs`` start at it

    def at_compact_revision(self) -> tuple[int, list[Revision]]:
        """The compact revision and the records from it on, after folding into ``base`` what a
        compaction scheduled since the last fold removed (the stored base is at the last fold);
        with a checkpoint, the records after it (the store compacts its index itself)."""
        folded = self.meta["compact"]
        compact = max(folded, self.meta.get("sched", NOT_COMPACTED))
        if self.checkpoint is not None:
            after = self.checkpoint.revision
            return compact, [r for doc in self.docs for r in doc.records if r.revision > after]
        records = []
        for record in (r for doc in self.docs for r in doc.records if r.revision >= folded):
            if record.revision < compact:
                fold(self.base, record)
            else:
                records.append(record)
        return compact, records


@dataclasses.dataclass(frozen=True)
class _Fence:
    first: int  # the revision it holds
    etag: str


class CosmosLog(RevisionLog):
    """The revision log in a Cosmos DB container (see the module docstring for the model)."""

    #: Several shim replicas append to one container: the store tails the log and syncs reads.
    shared = True

    def __init__(self, endpoint: str, *, key: str | None = None, credential: Any = None,
                 database: str = layout.DEFAULT_DATABASE, container: str = layout.DEFAULT_CONTAINER,
                 create: bool = True, insecure_skip_tls_verify: bool = False,
                 fence_seconds: float = DEFAULT_FENCE_SECONDS, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 retry_deadline: float = DEFAULT_RETRY_DEADLINE, stats: CosmosStats | None = None,
                 poll_interval: float = RevisionLog.poll_interval, key_loader=None) -> None:
        if fence_seconds < 0:
            raise ValueError("fence_seconds must not be negative")
        self.conn = CosmosConnection(endpoint, key=key, credential=credential, database=database,
                                     container=container, create=create,
                                     insecure_skip_tls_verify=insecure_skip_tls_verify,
                                     request_timeout=request_timeout, retry_deadline=retry_deadline, stats=stats,
                                     key_loader=key_loader)
        self.fence_seconds = fence_seconds
        self.poll_interval = poll_interval  # one query per poll: right after activity
        self.idle_poll_interval = max(poll_interval, RevisionLog.idle_poll_interval)  # ... and when idle
        self._head = INITIAL_REVISION
        self._head_known_at = -math.inf  # monotonic time we last learned that nothing follows _head
        self._fence: _Fence | None = None  # this server's fence on head+1, until its next append replaces it
        self._fences = False  # this server takes part in elections (it fenced once)
        self._compact = NOT_COMPACTED  # durable: the base is folded up to here
        self._sched = NOT_COMPACTED  # scheduled: what every replica treats as compacted
        self._generation = 0  # of the meta document last adopted
        self._cdoc = 0
        self._chain: list[PageSet] = []
        self._server_clock: tuple[int, float] | None = None  # (a server _ts, monotonic time it arrived)
        # Payload bytes of each log document from cdoc on, by first revision: what dbSize counts,
        # the same on every replica since each one tails every document.
        self._doc_sizes: dict[int, int] = {}
        self._fold_wanted = asyncio.Event()
        self._fold_pending_since: float | None = None  # when a fold scheduled elsewhere was seen
        self._scheduled_here = NOT_COMPACTED
        self._fold_task: asyncio.Task | None = None
        self._folding = asyncio.Lock()
        self._auth_stamp = 0  # the newest auth version the stamp document announced
        self._gc_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._closed = False
        self._auth_read: tuple[int, str] = (0, "")  # (version, etag) of the auth document last read
        self._alarms: frozenset[StoredAlarm] = frozenset()
        self._alarms_generation = -1  # of the alarms document last adopted; -1: none read yet
        self._history: dict | None = None  # meta's ``hist``: the index checkpoint named there

    def __repr__(self) -> str:
        return f"CosmosLog({self.conn!r})"

    @property
    def stats(self) -> CosmosStats:
        return self.conn.stats

    @property
    def compact_revision(self) -> int:
        """The compact revision as this replica last saw it, scheduled or folded (another replica
        may be ahead by up to one poll)."""
        return max(self._compact, self._sched)

    # -- open ---------------------------------------------------------------------------------

    async def open(self) -> RecoveredState:
        await self.conn.connect()
        await self._ensure_meta()
        await self._ensure_auth()
        await self._create_if_absent({"id": layout.ALARMS_ID, "pk": layout.LOG_PARTITION,
                                      "kind": layout.KIND_ALARMS, "g": 0, "a": []})
        self._adopt_alarms(await self._read_alarms("open"))
        await self._create_if_absent(dict(leadership.UNCLAIMED))
        state = await self.reload()
        self._fold_task = asyncio.create_task(self._fold_forever(), name="cosmos-compaction-fold")
        return state

    async def reload(self) -> RecoveredState:
        """Read the whole state again (base, log, leases) on the open connection: what a replica
        does after :class:`LogCompactedError` (another replica compacted past its revision)."""
        loaded = await self._load("open", use_checkpoint=True)
        self._adopt(loaded.meta)
        compact, records = loaded.at_compact_revision()
        last = loaded.docs[-1].last if loaded.docs else INITIAL_REVISION
        self._head = max(INITIAL_REVISION, compact, last)
        self._head_known_at = loaded.read_at
        self._doc_sizes = {doc.first: doc.size for doc in loaded.docs}
        if loaded.checkpoint is not None and self._history.get("cd") == loaded.meta["cdoc"] \
                and loaded.meta["cdoc"] not in self._doc_sizes:
            # The documents before the tail, as the checkpoint's writer counted them (dbSize).
            self._doc_sizes[loaded.meta["cdoc"]] = self._history.get("lb", 0)
        base = [loaded.base[key] for key in sorted(loaded.base)]
        logger.info("cosmos log opened", extra={
            "revision": self._head, "compact_revision": compact, "keys": len(base), "log_documents": len(loaded.docs),
            "checkpoint": loaded.checkpoint.revision if loaded.checkpoint else None})
        return RecoveredState(compact_revision=compact, base=base, revisions=records, leases=loaded.leases,
                              checkpoint=loaded.checkpoint)

    async def _ensure_meta(self) -> None:
        meta = {"id": layout.META_ID, "pk": layout.LOG_PARTITION, "kind": layout.KIND_META,
                "compact": NOT_COMPACTED, "cdoc": 0, "chain": [], "sched": NOT_COMPACTED, "g": 0}
        await self._create_if_absent(meta)

    async def _ensure_auth(self) -> None:
        # Version 0, nothing saved: the document always exists, so that reading it (once a second
        # on every replica) is a point read.
        auth = {"id": layout.AUTH_ID, "pk": layout.AUTH_PARTITION, "kind": layout.KIND_AUTH, "v": 0, "d": "", "w": ""}
        await self._create_if_absent(auth)
        await self._create_if_absent({"id": layout.AUTH_STAMP_ID, "pk": layout.LOG_PARTITION,
                                      "kind": layout.KIND_STAMP, "g": 0})

    async def _create_if_absent(self, document: dict) -> None:
        try:
            await self.conn.call("open", lambda: self.conn.container.create_item(document), expected=(409,))
        except cosmos_exceptions.CosmosResourceExistsError:
            pass

    async def _read_meta(self, op: str) -> dict:
        return await self.conn.read_item(op, layout.META_ID, layout.LOG_PARTITION)

    def _adopt(self, meta: dict) -> None:
        """Follow a meta document read now (never go back to an older one)."""
        if meta["compact"] >= self._compact:
            self._compact = meta["compact"]
            self._cdoc = meta["cdoc"]
            self._chain = [PageSet.from_json(p) for p in meta["chain"]]
            self._doc_sizes = {first: size for first, size in self._doc_sizes.items() if first >= self._cdoc}
        self._sched = max(self._sched, meta.get("sched", NOT_COMPACTED))
        self._generation = max(self._generation, meta.get("g", 0))
        if meta.get("hist") and (self._history is None or meta["hist"]["g"] >= self._history["g"]):
            self._history = meta["hist"]
        if self._sched > self._compact:
            if self._fold_pending_since is None:
                self._fold_pending_since = time.monotonic()
                # Look again when a fold scheduled elsewhere is due to be taken over.
                asyncio.get_running_loop().call_later(FOLD_TAKEOVER_SECONDS, self._fold_wanted.set)
            self._fold_wanted.set()
        else:
            self._fold_pending_since = None

    async def _load(self, op: str, use_checkpoint: bool = False) -> _Loaded:
        """A consistent view: meta, base (or the index checkpoint), log, leases; started over if
        meta changed meanwhile."""
        for attempt in range(LOAD_ATTEMPTS):
            meta = await self._read_meta(op)
            chain = [PageSet.from_json(p) for p in meta["chain"]]
            try:
                loaded = await self._load_from_checkpoint(op, meta) if use_checkpoint else None
                if loaded is not None:
                    base, docs, read_at, index_checkpoint = {}, *loaded
                else:
                    index_checkpoint = None
                    base = await checkpoint.read_base(self.conn, chain, op)
                    read_at = time.monotonic()
                    documents = await self._query_log(op, after=None, from_first=meta["cdoc"],
                                                      page_items=LOAD_PAGE_ITEMS)
                    docs = await self._decode(documents, op)
            except PageSetMissing:
                await asyncio.sleep(0.05 * attempt)
                continue
            leases = await self._read_leases(op)
            again = await self._read_meta(op)
            if again["_etag"] != meta["_etag"]:
                continue  # a compaction finished meanwhile: what was read may mix two states
            _check_contiguous(docs)
            return _Loaded(meta=meta, base=base, docs=docs, leases=leases, read_at=read_at,
                           checkpoint=index_checkpoint)
        raise StorageError(f"the Cosmos log kept changing while being read ({LOAD_ATTEMPTS} attempts)")

    async def _load_from_checkpoint(self, op: str, meta: dict) -> tuple[list[_Doc], float, IndexCheckpoint] | None:
        """The log documents from the one holding the named index checkpoint's revision, and the
        checkpoint; None if there is none or the log no longer holds its revision."""
        named = meta.get("hist")
        if not named or named["g"] + 1 < meta["cdoc"]:
            return None
        revision = named["g"]
        read_at = time.monotonic()
        documents = await self._query_log(op, after=revision - 1, from_first=meta["cdoc"], page_items=LOAD_PAGE_ITEMS)
        if not documents or documents[0]["r"] > revision:
            return None  # the log ends below it (truncated by a repair), or was compacted past it
        docs = await self._decode(documents, op)
        nonce = named["s"].split("-", 1)[1]
        ids = [layout.history_page_id(revision, nonce, number) for number in range(named["pages"])]
        try:
            events = await checkpoint.read_pages_by_id(self.conn, layout.HISTORY_PARTITION, ids, op)
        except StorageError:
            if (await self._read_meta(op)).get("hist") != named:
                raise PageSetMissing(f"index checkpoint {named['s']} was replaced while it was read") from None
            raise
        return docs, read_at, IndexCheckpoint(revision=revision, events=events)

    async def save_checkpoint(self, revision: int, pages: AsyncIterator[bytes]) -> bool:
        """Write the pages (one at a time, as they come), then name the set in ``meta`` if it is
        newer than the one named there and the log still holds ``revision``."""
        if revision + 1 < self._cdoc or self._history is not None and self._history["g"] >= revision:
            return False
        nonce = checkpoint.new_nonce()
        set_id = f"{revision:019d}-{nonce}"
        # dbSize at the next start: the log documents before the one holding ``revision``.
        holder = max((first for first in self._doc_sizes if first <= revision), default=self._cdoc)
        before = sum(size for first, size in self._doc_sizes.items() if first < holder)
        number = 0
        async for payload in pages:
            await checkpoint.write_page(self.conn, "checkpoint", {
                "id": layout.history_page_id(revision, nonce, number), "pk": layout.HISTORY_PARTITION,
                "kind": layout.KIND_HISTORY_PAGE, "s": set_id, "g": revision, "p": number}, payload)
            number += 1
        for _ in range(COMPACT_ATTEMPTS):
            meta = await self._read_meta("checkpoint")
            self._adopt(meta)
            named = meta.get("hist")
            if named and named["g"] >= revision or revision + 1 < meta["cdoc"]:
                return False  # its pages are garbage now, older than the named set
            updated = _meta_fields(meta)
            updated["hist"] = {"s": set_id, "g": revision, "pages": number, "cd": meta["cdoc"], "lb": before}
            try:
                stored = await self.conn.replace_if_match("checkpoint", updated, meta["_etag"])
            except cosmos_exceptions.CosmosAccessConditionFailedError:
                continue
            self._adopt(stored)
            self._start_gc()
            return True
        raise StorageError(f"naming the index checkpoint at {revision} kept conflicting with other writers")

    async def _query_log(self, op: str, *, after: int | None, from_first: int, up_to_first: int | None = None,
                         top: int | None = None, page_items: int = 100) -> list[dict]:
        where = ["c.pk = @pk", "c.kind = @kind", "c.r >= @cdoc"]
        params: dict[str, Any] = {"@pk": layout.LOG_PARTITION, "@kind": layout.KIND_LOG, "@cdoc": from_first}
        if after is not None:
            where.append("c.e > @after")
            params["@after"] = after
        if up_to_first is not None:
            where.append("c.r <= @upto")
            params["@upto"] = up_to_first
        select = f"SELECT TOP {int(top)} *" if top else "SELECT *"
        return await self.conn.query(op, f"{select} FROM c WHERE {' AND '.join(where)} ORDER BY c.r", params,
                                     layout.LOG_PARTITION, max_item_count=page_items)

    async def _decode(self, documents: list[dict], op: str) -> list[_Doc]:
        docs = []
        for document in documents:
            chunks = await checkpoint.read_chunks(self.conn, document, layout.LOG_PARTITION, op)
            try:
                records = codec.decode_records(codec.unpack(document, chunks))
            except codec.CorruptPayload as e:
                raise LogCorruptError(str(e)) from None
            if not records or records[0].revision != document["r"] or records[-1].revision != document["e"] \
                    or any(b.revision != a.revision + 1 for a, b in zip(records, records[1:])):
                raise LogCorruptError(f"{document['id']}: records do not match {document['r']}..{document['e']}")
            docs.append(_Doc(first=document["r"], last=document["e"], records=records,
                             size=document.get("b", 0)))
        return docs

    # -- append -------------------------------------------------------------------------------

    async def append(self, revisions: Sequence[Revision]) -> None:
        if not revisions:
            return
        first, last = revisions[0].revision, revisions[-1].revision
        if any(b.revision != a.revision + 1 for a, b in zip(revisions, revisions[1:])):
            raise ValueError("an append must hold consecutive revisions")
        if first != self._head + 1:
            raise LogConflictError(f"revision {first} is not the head {self._head} + 1")
        if time.monotonic() - self._head_known_at >= self.fence_seconds / 2:
            await self._refresh_head_knowledge()
        knowledge = self._head_known_at
        document_id = layout.log_id(first)
        nonce = checkpoint.new_nonce()
        packed = codec.pack(codec.encode_records(revisions))
        await self._write_chunks(document_id, nonce, packed, first, last)
        document = {"id": document_id, "pk": layout.LOG_PARTITION, "kind": layout.KIND_LOG, "r": first, "e": last,
                    **packed.fields(nonce), "w": nonce}
        sent_at = time.monotonic()
        try:
            stored = await self._write_log_document(document)
        except (LogConflictError, LogFencedError):
            self._forget_chunks(document_id, nonce, len(packed.chunks))
            raise
        self._note_server_time(stored)
        if time.monotonic() - knowledge >= self.fence_seconds / 2:
            await self._verify_not_below_compaction(document_id, first, nonce, len(packed.chunks))
        self._head = last
        self._head_known_at = sent_at
        self._doc_sizes[first] = packed.raw_size

    async def _write_log_document(self, document: dict) -> dict:
        """Create the log document of head+1 (the compare-and-swap on the head), or replace this
        server's fence there (see "Leaders and the fence")."""
        first = document["r"]
        fence = self._fence
        if fence is not None and fence.first == first:
            try:
                stored = await self._replace_fence("append", document, fence.etag)
            except (LogConflictError, LogFencedError):
                self._fence = None  # not ours any more
                raise
            self._fence = None  # (kept on any other failure: the next attempt replaces it again)
            return stored
        try:
            return await self.conn.create_once("append", document)
        except Conflict as e:
            existing = e.existing
            if existing is None or existing.get("kind") != layout.KIND_FENCE:
                raise LogConflictError(f"revision {first} exists already") from None
            if self._fences:
                raise LogFencedError(f"revision {first} is fenced by another leader") from None
            return await self._replace_fence("append", document, existing["_etag"])  # left behind: nobody leads here

    async def _replace_fence(self, op: str, document: dict, etag: str) -> dict:
        """Replace the fence at ``document``'s id, if unchanged since ``etag``. A refusal is read
        back: our own document there means an earlier attempt landed (its answer was lost)."""
        try:
            return await self.conn.replace_if_match(op, document, etag)
        except cosmos_exceptions.CosmosAccessConditionFailedError:
            stored = await self.conn.read_by_id(op + "_resolve", document["id"], layout.LOG_PARTITION)
        if stored is not None and stored.get("w") == document["w"]:
            return stored
        if stored is not None and stored.get("kind") == layout.KIND_FENCE:
            raise LogFencedError(f"revision {document['r']} is fenced by another leader")
        raise LogConflictError(f"revision {document['r']} exists already")

    async def fence_next(self, term: int) -> None:
        first = self._head + 1
        self._fences = True
        claim = {"id": layout.log_id(first), "pk": layout.LOG_PARTITION, "kind": layout.KIND_FENCE, "r": first,
                 "t": term, "w": checkpoint.new_nonce()}
        try:
            stored = await self.conn.create_once("fence", claim)
        except Conflict as e:
            existing = e.existing
            if existing is None or existing.get("kind") != layout.KIND_FENCE:
                raise LogConflictError(f"revision {first} exists: the head moved") from None
            if existing.get("t", 0) > term:
                raise LogFencedError(f"revision {first} is fenced by the leader of term {existing['t']}") from None
            stored = await self._replace_fence("fence", claim, existing["_etag"])  # an earlier term's, unused
        self._fence = _Fence(first, stored["_etag"])

    async def _refresh_head_knowledge(self) -> None:
        """Learn afresh that nothing follows the head (or raise LogConflictError: something does)."""
        asked_at = time.monotonic()
        found = await self.conn.query(
            "append_fence", "SELECT TOP 1 c.r FROM c WHERE c.pk = @pk AND c.kind = @kind AND c.e > @head",
            {"@pk": layout.LOG_PARTITION, "@kind": layout.KIND_LOG, "@head": self._head}, layout.LOG_PARTITION)
        if found:
            raise LogConflictError(f"the log has moved past {self._head}")
        self._head_known_at = asked_at

    async def _verify_not_below_compaction(self, document_id: str, first: int, nonce: str, chunks: int) -> None:
        meta = await self._read_meta("append_fence")
        self._adopt(meta)
        if first < meta["cdoc"]:
            logger.warning("withdrawing %s: it re-created a log id freed by compaction", document_id)
            await self.conn.delete("append_fence", document_id, layout.LOG_PARTITION)
            self._forget_chunks(document_id, nonce, chunks)
            raise LogConflictError(f"revision {first} was compacted already")

    async def _write_chunks(self, document_id: str, nonce: str, packed: codec.Packed, first: int, last: int) -> None:
        texts = packed.chunks
        if not texts:
            return
        semaphore = asyncio.Semaphore(CHUNK_WRITE_CONCURRENCY)

        async def write(index: int, text: str) -> None:
            async with semaphore:
                await self.conn.upsert("append_chunk", {
                    "id": layout.chunk_id(document_id, nonce, index), "pk": layout.LOG_PARTITION,
                    "kind": layout.KIND_CHUNK, "r": first, "e": last, "o": document_id, "w": nonce, "i": index,
                    "d": text})

        await asyncio.gather(*(write(i, t) for i, t in enumerate(texts)))

    def _forget_chunks(self, document_id: str, nonce: str, count: int) -> None:
        """Delete a losing append's chunks in the background (garbage collection would, later)."""
        if count:
            ids = [layout.chunk_id(document_id, nonce, i) for i in range(count)]
            self._spawn(self._delete_quietly("append_chunk", ids, layout.LOG_PARTITION))

    # -- read ---------------------------------------------------------------------------------

    async def read_after(self, revision: int, limit: int | None = None) -> Sequence[Revision]:
        """History for watchers: the records after ``revision``, from the compact revision on
        (scheduled or folded, as this replica knows it)."""
        if limit is not None and limit <= 0:
            return []
        asked_at = time.monotonic()
        documents = await self._query_log("read", after=revision, from_first=self._cdoc, top=limit)
        floor = max(revision, self.compact_revision - 1)
        records = await self._records_after(floor, documents, asked_at, complete=limit is None or
                                            len(documents) < limit)
        return records[:limit] if limit is not None else records

    async def read_revisions(self, revisions: Sequence[int]) -> dict[int, Revision]:
        """The records of ``revisions`` from the log documents holding them (from ``cdoc`` on: one
        query per :data:`SPANS_PER_QUERY` runs of nearby revisions)."""
        spans = _spans(sorted(set(revisions)), REVISION_SPAN_GAP)
        wanted = set(revisions)
        found: dict[int, Revision] = {}
        for start in range(0, len(spans), SPANS_PER_QUERY):
            group = spans[start:start + SPANS_PER_QUERY]
            params: dict[str, Any] = {"@pk": layout.LOG_PARTITION, "@kind": layout.KIND_LOG, "@cdoc": self._cdoc}
            clauses = []
            for number, (low, high) in enumerate(group):
                clauses.append(f"(c.e >= @lo{number} AND c.r <= @hi{number})")
                params[f"@lo{number}"], params[f"@hi{number}"] = low, high
            documents = await self.conn.query(
                "read_revisions", "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind AND c.r >= @cdoc AND "
                f"({' OR '.join(clauses)})", params, layout.LOG_PARTITION)
            for doc in await self._decode(documents, "read_revisions"):
                found.update((r.revision, r) for r in doc.records if r.revision in wanted)
        return found

    async def read_base(self, keys: Sequence[bytes]) -> dict[bytes, KeyValue]:
        """The base's key-values of ``keys``: only the pages whose key span holds one of them, of
        each page set of the chain (oldest first, as :func:`checkpoint.read_base` folds them);
        read again from a fresh ``meta`` if the chain changed meanwhile."""
        wanted = {layout.key_hex(key): key for key in keys}
        for attempt in range(LOAD_ATTEMPTS):
            chain = list(self._chain)
            try:
                return await checkpoint.read_keys(self.conn, chain, wanted, "read_base")
            except PageSetMissing:
                self._adopt(await self._read_meta("read_base"))
                await asyncio.sleep(0.05 * attempt)
        raise StorageError(f"the checkpoint chain kept changing while being read ({LOAD_ATTEMPTS} attempts)")

    async def tail(self, revision: int) -> Sequence[Revision]:
        """Every record after ``revision`` (also those below a compaction learned by this same
        query: the store needs them for the latest values), and what changed in ``meta`` and the
        auth stamp, in one query."""
        asked_at = time.monotonic()
        documents = await self.conn.query(
            "read",
            "SELECT * FROM c WHERE c.pk = @pk AND ((c.kind = @log AND c.e > @after AND c.r >= @cdoc)"
            " OR (c.id = @meta AND c.g > @generation) OR (c.id = @stamp AND c.g > @auth)"
            " OR (c.id = @alarms AND c.g > @alarmsg))",
            {"@pk": layout.LOG_PARTITION, "@log": layout.KIND_LOG, "@after": revision, "@cdoc": self._cdoc,
             "@meta": layout.META_ID, "@generation": self._generation, "@stamp": layout.AUTH_STAMP_ID,
             "@auth": self._auth_stamp, "@alarms": layout.ALARMS_ID, "@alarmsg": self._alarms_generation},
            layout.LOG_PARTITION)
        logs = sorted((d for d in documents if d["kind"] == layout.KIND_LOG), key=lambda d: d["r"])
        records = await self._records_after(revision, logs, asked_at, complete=True)
        for document in documents:
            if document["kind"] == layout.KIND_META:
                self._adopt(document)
            elif document["kind"] == layout.KIND_STAMP:
                self._auth_stamp = max(self._auth_stamp, document["g"])
            elif document["kind"] == layout.KIND_ALARMS:
                self._adopt_alarms(document)
        return records

    async def _records_after(self, revision: int, documents: list[dict], asked_at: float,
                             complete: bool) -> list[Revision]:
        """Decode log documents (in order) into the contiguous records after ``revision``, and
        learn the head from them."""
        docs = await self._decode(documents, "read")
        _check_contiguous(docs)
        records = [r for doc in docs for r in doc.records if r.revision > revision]
        expected = max(revision + 1, INITIAL_REVISION + 1)
        if records and records[0].revision != expected:
            raise LogCompactedError(f"records {expected}..{records[0].revision - 1} were compacted")
        for doc in docs:
            if doc.first >= self._cdoc:
                self._doc_sizes[doc.first] = doc.size
        if docs:
            if docs[-1].last >= self._head:
                self._head = docs[-1].last
                if complete:
                    self._head_known_at = asked_at
        elif complete and self._head <= revision:
            # Nothing after ``revision``, which the store has from a leader's push rather than
            # from this log: it is the head, as of this query.
            self._head, self._head_known_at = revision, asked_at
        return records

    def auth_may_have_changed(self, version: int) -> bool:
        return self._auth_stamp > version

    async def head(self) -> int:
        """The latest revision in the log (one query): what a linearizable read must wait for."""
        asked_at = time.monotonic()
        found = await self.conn.query(
            "head", "SELECT TOP 1 c.e FROM c WHERE c.pk = @pk AND c.kind = @kind ORDER BY c.r DESC",
            {"@pk": layout.LOG_PARTITION, "@kind": layout.KIND_LOG}, layout.LOG_PARTITION)
        head = max(INITIAL_REVISION, self._compact, found[0]["e"] if found else INITIAL_REVISION)
        if head >= self._head:
            self._head, self._head_known_at = head, asked_at
        return head

    # -- compaction ---------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        """Schedule the compaction at ``revision`` (step 1 of the module docstring); the fold
        follows in the background. LogCompactedError if it is not above the compact revision."""
        nonce = checkpoint.new_nonce()
        for _ in range(COMPACT_ATTEMPTS):
            meta = await self._read_meta("compact")
            if meta.get("w") == nonce:  # an earlier attempt landed; its answer was lost
                self._adopt(meta)
                break
            self._adopt(meta)
            if revision <= self.compact_revision:
                raise LogCompactedError(f"revision {revision} is compacted already (at {self.compact_revision})")
            updated = _meta_fields(meta)
            updated.update(sched=revision, g=meta.get("g", 0) + 1, w=nonce)
            try:
                stored = await self.conn.replace_if_match("compact", updated, meta["_etag"])
            except cosmos_exceptions.CosmosAccessConditionFailedError:
                continue  # another replica changed meta (or our own retried request landed): re-read
            self._adopt(stored)
            self._note_server_time(stored)
            break
        else:
            raise StorageError(f"compaction at {revision} kept conflicting with other writers")
        self._scheduled_here = max(self._scheduled_here, revision)
        self._fold_wanted.set()

    async def _fold_forever(self) -> None:
        """Fold scheduled compactions into checkpoints (step 2), retrying failures within seconds;
        take over a fold another replica scheduled and left pending."""
        delay = FOLD_RETRY_SECONDS
        while True:
            await self._fold_wanted.wait()
            self._fold_wanted.clear()
            target = self._sched
            if target <= self._compact:
                continue
            pending = self._fold_pending_since
            if self._scheduled_here < target and pending is not None and \
                    time.monotonic() - pending < FOLD_TAKEOVER_SECONDS:
                continue  # the replica that scheduled it folds it
            try:
                await self._fold(target)
            except Exception as e:  # noqa: BLE001 - any failure: retried soon, never lost
                logger.warning("compaction fold failed; retrying", extra={
                    "revision": target, "error": str(e) or type(e).__name__, "retry_in_seconds": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, FOLD_RETRY_MAX_SECONDS)
                self._fold_wanted.set()
            else:
                delay = FOLD_RETRY_SECONDS

    async def _fold(self, revision: int) -> None:
        """Write the base at ``revision`` and move the durable compact revision there (one fold at a
        time here: a defragment waits for the background fold rather than repeat it)."""
        async with self._folding:
            if revision > self._compact:
                await self._fold_unlocked(revision)

    async def _fold_unlocked(self, revision: int) -> None:
        for _ in range(COMPACT_ATTEMPTS):
            meta = await self._read_meta("compact")
            compact = meta["compact"]
            if revision <= compact:
                self._adopt(meta)
                return
            documents = await self._query_log("compact", after=None, from_first=meta["cdoc"], up_to_first=revision)
            docs = await self._decode(documents, "compact")
            _check_contiguous(docs)
            if docs and docs[-1].last >= revision:
                cdoc = docs[-1].first
            elif revision <= INITIAL_REVISION:
                cdoc = meta["cdoc"]  # no record at the compact revision (the store's empty start)
            else:
                raise StorageError(f"cannot compact at {revision}: the log ends at "
                                   f"{docs[-1].last if docs else compact}")
            records = [r for doc in docs for r in doc.records if compact <= r.revision < revision]
            chain = [PageSet.from_json(p) for p in meta["chain"]]
            try:
                page_set = await self._write_checkpoint(revision, compact, records, chain)
            except PageSetMissing:
                continue  # the chain was replaced under us: start over from the new meta
            new_chain = [page_set] if page_set.full else [*chain, page_set]
            updated = _meta_fields(meta)
            updated.update(compact=revision, cdoc=cdoc, chain=[p.to_json() for p in new_chain],
                           g=meta.get("g", 0) + 1)
            try:
                stored = await self.conn.replace_if_match("compact", updated, meta["_etag"])
            except cosmos_exceptions.CosmosAccessConditionFailedError:
                continue  # another fold or schedule got there: re-read
            self._adopt(stored)
            self._note_server_time(stored)
            logger.info("compaction folded", extra={"revision": revision, "records": len(records)})
            self._start_gc()
            return
        raise StorageError(f"folding the compaction at {revision} kept conflicting with other writers")

    async def _write_checkpoint(self, revision: int, compact: int, records: list[Revision],
                                chain: list[PageSet]) -> PageSet:
        events = checkpoint.delta_events(records)
        if not chain:
            # The first checkpoint: the delta from nothing is the full base.
            events = [e for e in events if e.type == Event.PUT]
            full = True
        else:
            delta_bytes = sum(e.ByteSize() for e in events)
            deltas = sum(p.bytes for p in chain if not p.full)
            full = len(chain) >= checkpoint.MAX_CHAIN or \
                deltas + delta_bytes > max(chain[0].bytes, FULL_CHECKPOINT_MIN_BYTES)
            if full:
                base = await checkpoint.read_base(self.conn, chain, "compact")
                for event in events:
                    if event.type == Event.PUT:
                        base[event.kv.key] = event.kv
                    else:
                        base.pop(event.kv.key, None)
                events = checkpoint.full_events(base)
        set_id = layout.page_set(revision, full, compact)
        return await checkpoint.write_page_set(self.conn, set_id, revision, events, full)

    def _start_gc(self) -> None:
        if self._gc_task is None or self._gc_task.done():
            self._gc_task = asyncio.create_task(self._gc_quietly(), name="cosmos-log-gc")

    async def _gc_quietly(self) -> None:
        try:
            await self.collect_garbage()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - garbage stays until the next compaction
            logger.warning("cosmos garbage collection failed: %s", e)

    async def collect_garbage(self) -> int:
        """Delete log documents below ``cdoc`` older than the fence horizon, page sets no chain
        names and index checkpoints older than the named one. Returns how many documents were deleted."""
        cdoc, compact, chain_ids = self._cdoc, self._compact, {p.id for p in self._chain}
        now = self._server_now()
        deleted = 0
        old = await self.conn.query(
            "compact_gc", "SELECT c.id, c.kind, c.r, c._ts, c.b FROM c WHERE c.pk = @pk AND c.r < @cdoc",
            {"@pk": layout.LOG_PARTITION, "@cdoc": cdoc}, layout.LOG_PARTITION)
        if self.fence_seconds > 0:
            old = [d for d in old if now is not None and d["_ts"] + 1 + self.fence_seconds <= now]
        # Log documents first, oldest first; then their chunks (a reader never finds a log
        # document whose chunks are gone).
        old.sort(key=lambda d: (d["kind"] != layout.KIND_LOG, d["r"]))
        for document in old:
            if await self.conn.delete("compact_gc", document["id"], layout.LOG_PARTITION):
                deleted += 1
        pages = await self.conn.query(
            "compact_gc", "SELECT c.id, c.s FROM c WHERE c.pk = @pk AND c.g <= @compact",
            {"@pk": layout.BASE_PARTITION, "@compact": compact}, layout.BASE_PARTITION)
        for page in pages:
            if page["s"] not in chain_ids and await self.conn.delete("compact_gc", page["id"], layout.BASE_PARTITION):
                deleted += 1
        if self._history is not None:
            # Index checkpoints older than the named one (never one still being written: newer).
            stale = await self.conn.query(
                "compact_gc", "SELECT c.id FROM c WHERE c.pk = @pk AND c.g < @named",
                {"@pk": layout.HISTORY_PARTITION, "@named": self._history["g"]}, layout.HISTORY_PARTITION)
            for document in stale:
                if await self.conn.delete("compact_gc", document["id"], layout.HISTORY_PARTITION):
                    deleted += 1
        return deleted

    # -- leases -------------------------------------------------------------------------------

    async def save_lease(self, lease: Lease) -> None:
        await self.conn.upsert("lease", {
            "id": layout.lease_id(lease.id), "pk": layout.LEASE_PARTITION, "kind": layout.KIND_LEASE,
            "d": base64.b64encode(lease.SerializeToString()).decode("ascii")})

    async def delete_lease(self, lease_id: int) -> None:
        await self.conn.delete("lease", layout.lease_id(lease_id), layout.LEASE_PARTITION)

    async def load_leases(self) -> list[Lease]:
        return await self._read_leases("lease")

    async def _read_leases(self, op: str) -> list[Lease]:
        documents = await self.conn.query(op, "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind",
                                          {"@pk": layout.LEASE_PARTITION, "@kind": layout.KIND_LEASE},
                                          layout.LEASE_PARTITION)
        return [Lease.FromString(base64.b64decode(d["d"])) for d in documents]

    # -- auth ---------------------------------------------------------------------------------

    async def load_auth(self) -> AuthRecord | None:
        document = await self.conn.read_item("auth", layout.AUTH_ID, layout.AUTH_PARTITION)
        self._auth_read = (document["v"], document["_etag"])
        return _auth_record(document)

    async def save_auth(self, record: AuthRecord) -> None:
        """Replace the auth document if unchanged since it was read at ``record.version - 1`` (its
        etag). A replace answered 412 is read back: our nonce there means an earlier attempt of this
        same request landed (its answer was lost), anything else a save by another server."""
        version, etag = self._auth_read
        if version != record.version - 1:
            raise AuthConflictError(f"auth version {record.version - 1} was not the last one read ({version})")
        nonce = checkpoint.new_nonce()
        document = {"id": layout.AUTH_ID, "pk": layout.AUTH_PARTITION, "kind": layout.KIND_AUTH,
                    "v": record.version, "d": base64.b64encode(record.data).decode("ascii"), "w": nonce}
        try:
            stored = await self.conn.replace_if_match("auth", document, etag)
        except cosmos_exceptions.CosmosAccessConditionFailedError:
            stored = await self.conn.read_item("auth", layout.AUTH_ID, layout.AUTH_PARTITION)
            if stored.get("w") != nonce:
                raise AuthConflictError("another server saved the auth state") from None
        self._auth_read = (record.version, stored["_etag"])
        await self._announce_auth(record.version)

    async def _announce_auth(self, version: int) -> None:
        """Raise the auth stamp to ``version`` (never lower it), so that other replicas read the
        new state. If this fails they still read it at their periodic full read."""
        try:
            await self.conn.call("auth", lambda: self.conn.container.patch_item(
                layout.AUTH_STAMP_ID, partition_key=layout.LOG_PARTITION,
                patch_operations=[{"op": "set", "path": "/g", "value": version}],
                filter_predicate=f"FROM c WHERE c.g < {int(version)}"), expected=(412,))
        except cosmos_exceptions.CosmosAccessConditionFailedError:
            pass  # a newer version was announced already
        except StorageError as e:
            logger.warning("cannot announce the new auth state to other replicas", extra={"error": str(e)})

    # -- alarms -------------------------------------------------------------------------------

    @property
    def alarms(self) -> frozenset[StoredAlarm]:
        return self._alarms

    async def activate_alarm(self, alarm: StoredAlarm) -> None:
        await self._change_alarms(lambda alarms: alarms | {alarm})

    async def deactivate_alarm(self, alarm: StoredAlarm) -> bool:
        before = await self._change_alarms(lambda alarms: alarms - {alarm})
        return alarm in before

    async def _change_alarms(self, change) -> frozenset[StoredAlarm]:
        """Read the alarms document, apply ``change`` to its set and replace it if unchanged since
        (its etag), reading again after a lost race; the set as it was read before the change.
        Setting or removing one alarm gives the same result however often it is applied, so a
        retried replace whose first answer was lost needs no nonce."""
        for _ in range(ALARM_ATTEMPTS):
            document = await self._read_alarms("alarm")
            self._adopt_alarms(document)
            before = _alarms_of(document)
            after = change(before)
            if after == before:
                return before
            updated = {"id": layout.ALARMS_ID, "pk": layout.LOG_PARTITION, "kind": layout.KIND_ALARMS,
                       "g": document["g"] + 1, "a": _alarms_json(after)}
            try:
                stored = await self.conn.replace_if_match("alarm", updated, document["_etag"])
            except cosmos_exceptions.CosmosAccessConditionFailedError:
                continue  # another replica changed the alarms meanwhile: decide again on its set
            self._adopt_alarms(stored)
            return before
        raise StorageError(f"changing the alarms kept conflicting with other replicas ({ALARM_ATTEMPTS} attempts)")

    async def _read_alarms(self, op: str) -> dict:
        return await self.conn.read_item(op, layout.ALARMS_ID, layout.LOG_PARTITION)

    def _adopt_alarms(self, document: dict) -> None:
        """Follow an alarms document read now (never go back to an older generation)."""
        if document["g"] > self._alarms_generation:
            self._alarms, self._alarms_generation = _alarms_of(document), document["g"]

    # -- members ------------------------------------------------------------------------------

    async def heartbeat(self, member: dict) -> None:
        """Record (upsert) this replica as alive now. ``member`` needs an ``id`` (int) or a ``name``;
        it is stored as JSON text, so 64-bit ids survive (Cosmos numbers are doubles)."""
        identity = member.get("id", member.get("name"))
        if identity is None:
            raise ValueError("a member needs an id or a name")
        stored = await self.conn.upsert("member", {
            "id": layout.member_id(identity), "pk": layout.MEMBER_PARTITION, "kind": layout.KIND_MEMBER,
            "m": json.dumps(member, sort_keys=True)})
        self._note_server_time(stored)

    async def members(self, max_age_seconds: float) -> list[dict]:
        """The members whose last heartbeat is at most ``max_age_seconds`` old (server clock)."""
        documents = await self.conn.query("member", "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind",
                                          {"@pk": layout.MEMBER_PARTITION, "@kind": layout.KIND_MEMBER},
                                          layout.MEMBER_PARTITION)
        now = self._server_now()
        if now is None:
            now = time.time()
        for document in documents:
            if document["_ts"] + MEMBER_FORGET_SECONDS < now:
                with contextlib.suppress(StorageError):  # another replica may delete it first
                    await self.conn.delete("member", document["id"], layout.MEMBER_PARTITION)
        # _ts counts whole seconds: a heartbeat up to one second older may still be in time.
        return [json.loads(d["m"]) for d in documents if d["_ts"] + 1 >= now - max_age_seconds]

    async def remove_member(self, identity: int | str) -> None:
        await self.conn.delete("member", layout.member_id(identity), layout.MEMBER_PARTITION)

    def leader_lease(self) -> leadership.CosmosLeaderLease:
        return leadership.CosmosLeaderLease(self.conn)

    # -- maintenance --------------------------------------------------------------------------

    async def import_image(self, image: StoreImage) -> None:
        """The base as the first checkpoint (a full page set at the compact revision), ``meta``
        moved there with an etag condition (the step that fails if another writer got here
        first), then the revisions as log documents; leases get their full TTL from now, as etcd
        gives them after a restore."""
        meta = await self._read_meta("import")
        self._adopt(meta)
        records = list(image.revisions)
        if self._head != INITIAL_REVISION or meta["compact"] != NOT_COMPACTED or meta.get("sched", NOT_COMPACTED) \
                != NOT_COMPACTED or await self._query_log("import", after=INITIAL_REVISION, from_first=0):
            raise StorageError(f"the container {self.conn.container_name} is not empty")
        compact = image.compact_revision
        if compact != NOT_COMPACTED:
            base = {kv.key: kv for kv in image.base}
            page_set = await checkpoint.write_page_set(
                self.conn, layout.page_set(compact, True, NOT_COMPACTED), compact, checkpoint.full_events(base), True)
            first = records[0].revision if records else compact + 1
            updated = _meta_fields(meta)
            updated.update(compact=compact, sched=compact, cdoc=first, chain=[page_set.to_json()], g=meta.get("g", 0) + 1)
            try:
                stored = await self.conn.replace_if_match("import", updated, meta["_etag"])
            except cosmos_exceptions.CosmosAccessConditionFailedError:
                raise StorageError("another writer changed the container during the import") from None
            self._adopt(stored)
            self._head = first - 1
        for start in range(0, len(records), IMPORT_REVISIONS_PER_DOCUMENT):
            await self.append(records[start:start + IMPORT_REVISIONS_PER_DOCUMENT])
        now_ms = int(time.time() * 1000)
        for lease in image.leases:
            await self.save_lease(Lease(id=lease.id, ttl=lease.ttl, deadline_ms=now_ms + lease.ttl * 1000))
        if image.auth is not None:
            await self.load_auth()
            await self.save_auth(AuthRecord(version=1, data=image.auth.data))
        for alarm in image.alarms:
            await self.activate_alarm(alarm)

    async def load_migration(self) -> str | None:
        found = await self.conn.query("migration", "SELECT * FROM c WHERE c.pk = @pk AND c.id = @id",
                                      {"@pk": layout.LOG_PARTITION, "@id": layout.MIGRATION_ID}, layout.LOG_PARTITION)
        return found[0]["source"] if found else None

    async def save_migration(self, source: str | None) -> None:
        if source is None:
            await self.conn.delete("migration", layout.MIGRATION_ID, layout.LOG_PARTITION)
            return
        await self.conn.upsert("migration", {"id": layout.MIGRATION_ID, "pk": layout.LOG_PARTITION,
                                             "kind": layout.KIND_MIGRATION, "source": source})

    async def defragment(self) -> None:
        """Cosmos manages its own space: finish a scheduled compaction and collect its garbage now."""
        if self._sched > self._compact:
            await self._fold(self._sched)
        await self.collect_garbage()

    async def snapshot(self, destination: pathlib.Path) -> None:
        """A SQLite database in the embedded backend's format, from one consistent read: a data
        directory holding only this file (as ``cosmos-etcd.db``) is a complete embedded store."""
        loaded = await self._load("snapshot")
        auth = _auth_record(await self.conn.read_item("snapshot", layout.AUTH_ID, layout.AUTH_PARTITION))
        alarms = _alarms_of(await self._read_alarms("snapshot"))
        await asyncio.to_thread(_write_sqlite, pathlib.Path(destination), loaded, auth, alarms)

    def size(self) -> tuple[int, int]:
        """The log from cdoc and the checkpoint chain, as every replica sees them (Cosmos manages
        its own free space: compaction garbage is not counted)."""
        in_use = sum(self._doc_sizes.values()) + sum(p.bytes for p in self._chain)
        return in_use, in_use

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._gc_task, self._fold_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.conn.close()

    # -- helpers ------------------------------------------------------------------------------

    def _note_server_time(self, document: dict) -> None:
        if "_ts" in document:
            self._server_clock = (document["_ts"], time.monotonic())

    def _server_now(self) -> float | None:
        """A lower bound of the server's clock: the last write's _ts plus the time since its answer."""
        if self._server_clock is None:
            return None
        ts, at = self._server_clock
        return ts + (time.monotonic() - at)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _delete_quietly(self, op: str, ids: list[str], partition: str) -> None:
        for document_id in ids:
            with contextlib.suppress(StorageError):
                await self.conn.delete(op, document_id, partition)


def _meta_fields(meta: dict) -> dict:
    """A meta document without the fields Cosmos adds (to be written back changed)."""
    return {key: value for key, value in meta.items() if not key.startswith("_")}


def _spans(revisions: list[int], gap: int) -> list[tuple[int, int]]:
    """Sorted revisions as (low, high) runs, a new run wherever two are more than ``gap`` apart."""
    spans: list[tuple[int, int]] = []
    for revision in revisions:
        if spans and revision - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], revision)
        else:
            spans.append((revision, revision))
    return spans


def _check_contiguous(docs: list[_Doc]) -> None:
    for before, after in zip(docs, docs[1:]):
        if after.first != before.last + 1:
            raise LogCorruptError(f"the log is not contiguous: revisions {before.first}..{before.last} then "
                                  f"{after.first}..{after.last} (a region failover can lose the last revisions): "
                                  "run `cosmos-etcd repair` with the same --cosmos-* flags to review what is lost "
                                  f"and truncate the log to revision {before.last}")


def _auth_record(document: dict) -> AuthRecord | None:
    if document["v"] == 0:
        return None
    return AuthRecord(version=document["v"], data=base64.b64decode(document["d"]))


def _alarms_of(document: dict) -> frozenset[StoredAlarm]:
    return frozenset(StoredAlarm(int(member_id), alarm) for member_id, alarm in document["a"])


def _alarms_json(alarms: frozenset[StoredAlarm]) -> list[list]:
    # Member ids are uint64: as text, since Cosmos numbers are doubles.
    return [[str(a.member_id), a.alarm] for a in sorted(alarms)]


def _write_sqlite(destination: pathlib.Path, loaded: _Loaded, auth: AuthRecord | None,
                  alarms: frozenset[StoredAlarm]) -> None:
    compact, records = loaded.at_compact_revision()
    write_image(destination, StoreImage(compact, loaded.base.values(), records, loaded.leases, auth, alarms))
