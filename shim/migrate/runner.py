"""A live migration from a running etcd into this project's store, every revision kept.

1. **Start or resume.** An empty target is marked as a migration from the source's cluster id,
   then filled from the source's snapshot (:mod:`cosmos_etcd_shim.snapshot.etcd_db`): its history
   since the last compaction, leases, users with their password hashes, roles, alarms, each
   revision unchanged. A target marked as a migration from the same cluster resumes after its last
   revision. Anything else is refused: a store that is not empty, or one whose import was
   interrupted (its auth state and leases may be missing: empty it and start over).
2. **Follow.** One watch of the whole key space from the target's revision + 1; each revision is
   appended to the target's log as it is, so revision numbers, create and mod revisions and
   versions stay identical. A gap (a revision missing from the watch) stops the migration.
3. **Cutover**, when asked (``--cutover``, or SIGUSR1): once the target has every revision the
   source has, the copy is verified at that revision (a digest of every key, value, create and
   mod revision, version and lease on both sides) and the source must not have moved meanwhile
   (its writers are stopped first: see the README's runbook); then the leases are set to the
   source's (granted TTL, deadline from the remaining TTL), the target is compacted where the
   source is, and the migration mark is cleared: the shim then serves the store.

A target that is still marked refuses to be served (``cosmos-etcd serve`` checks), so a
half-copied store is never mistaken for the source.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable

from cosmos_etcd_shim.migrate.source import SourceEtcd, state_digest
from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Lease, Revision
from cosmos_etcd_shim.snapshot.etcd_db import read_etcd_database
from cosmos_etcd_shim.storage.base import INITIAL_REVISION, RecoveredState, RevisionLog, fold

logger = logging.getLogger(__name__)

IMPORTING, FOLLOWING = "importing", "following"


class MigrationError(Exception):
    """The migration cannot go on; the target keeps what it has (a rerun resumes if it can)."""


@dataclasses.dataclass
class Progress:
    phase: str  # "import", "follow", "cutover", "done"
    keys: int  # live keys in the target
    revision: int  # the target's revision
    source_revision: int  # the source's revision last seen

    @property
    def lag(self) -> int:
        return max(0, self.source_revision - self.revision)


class Migration:
    def __init__(self, source: SourceEtcd, target: RevisionLog, cutover: asyncio.Event,
                 report: Callable[[Progress], None] = lambda progress: None) -> None:
        self.source = source
        self.target = target
        self.cutover = cutover
        self.report = report
        self.state: dict[bytes, KeyValue] = {}
        self.progress = Progress("import", 0, INITIAL_REVISION, 0)
        self._advanced = asyncio.Condition()

    async def run(self, recovered: RecoveredState) -> Progress:
        """Migrate into the target (opened: ``recovered`` is what it held); the final progress."""
        await self.source.connect()
        mark = json.dumps({"cluster_id": f"{await self.source.cluster_id():x}", "endpoint": self.source.endpoint})
        await self._start_or_resume(recovered, mark)
        follower = asyncio.create_task(self._follow(), name="migrate-follow")
        try:
            while not follower.done():
                cutover = asyncio.create_task(self.cutover.wait())
                await asyncio.wait([follower, cutover], return_when=asyncio.FIRST_COMPLETED)
                cutover.cancel()
                if self.cutover.is_set() and not follower.done():
                    await self._cut_over(follower)
                    return self.progress
            follower.result()
            raise MigrationError("the source's watch ended")
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def _start_or_resume(self, recovered: RecoveredState, mark: str) -> None:
        existing = await self.target.load_migration()
        base = list(recovered.base)
        empty = not recovered.revisions and not base and recovered.compact_revision < 0 \
            and recovered.checkpoint is None
        if existing is None and not empty:
            raise MigrationError("the target store is not empty (and not a migration into it): migrate into an "
                                 "empty data directory or container")
        if existing is not None:
            if json.loads(existing)["phase"] == IMPORTING:
                raise MigrationError("the import of the source's snapshot into this target was interrupted: empty "
                                     "the target and start over")
            if json.loads(existing)["cluster_id"] != json.loads(mark)["cluster_id"]:
                raise MigrationError(f"the target is a migration from another etcd cluster ({existing})")
            for kv in base:
                self.state[kv.key] = kv
            if recovered.checkpoint is not None:  # each key's last event there is its state at its revision
                fold(self.state, Revision(events=recovered.checkpoint.events))
            for record in recovered.revisions:
                fold(self.state, record)
            last = recovered.revisions[-1].revision if recovered.revisions else \
                recovered.checkpoint.revision if recovered.checkpoint else INITIAL_REVISION
            self._advance(max(INITIAL_REVISION, recovered.compact_revision, last), "follow")
            logger.info("migration resumed", extra={"revision": self.progress.revision})
            return
        await self.target.save_migration(json.dumps({**json.loads(mark), "phase": IMPORTING}))
        image = read_etcd_database(await self.source.snapshot())
        image.base, image.revisions = list(image.base), list(image.revisions)
        await self.target.import_image(image)
        revisions = image.revisions
        for kv in image.base:
            self.state[kv.key] = kv
        for record in revisions:
            fold(self.state, record)
        await self.target.save_migration(json.dumps({**json.loads(mark), "phase": FOLLOWING}))
        last = revisions[-1].revision if revisions else INITIAL_REVISION
        self._advance(max(INITIAL_REVISION, image.compact_revision, last), "follow")
        logger.info("migration imported the source's snapshot", extra={"revision": self.progress.revision,
                                                                       "keys": len(self.state)})

    async def _follow(self) -> None:
        async for answer in self.source.changes(self.progress.revision + 1):
            records: list[Revision] = []
            for event in answer.events:
                revision = event.kv.mod_revision
                if not records or records[-1].revision != revision:
                    records.append(Revision(revision=revision))
                if event.type == Event.PUT:
                    records[-1].events.append(event)
                else:  # a deletion as the shim's log records one: the key and the deleting revision
                    records[-1].events.append(Event(type=Event.DELETE, kv=KeyValue(key=event.kv.key,
                                                                                    mod_revision=revision)))
            expected = self.progress.revision + 1
            if [r.revision for r in records] != list(range(expected, expected + len(records))):
                raise MigrationError(f"the source's watch skipped from revision {expected - 1} to "
                                     f"{records[0].revision}")
            await self.target.append(records)
            for record in records:
                fold(self.state, record)
            self.progress.source_revision = max(self.progress.source_revision, answer.header.revision)
            await self._notify(records[-1].revision)

    def _advance(self, revision: int, phase: str) -> None:
        self.progress.revision = revision
        self.progress.phase = phase
        self.progress.keys = len(self.state)
        self.report(self.progress)

    async def _notify(self, revision: int) -> None:
        async with self._advanced:
            self._advance(revision, self.progress.phase)
            self._advanced.notify_all()

    async def _caught_up_with(self, revision: int, follower: asyncio.Task) -> None:
        """Wait until the target has ``revision``, or fail with the follower if it stops first."""
        async def reached() -> None:
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.progress.revision >= revision)

        waiter = asyncio.create_task(reached())
        await asyncio.wait([waiter, follower], return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            follower.result()  # its error, if it failed
            raise MigrationError("the source's watch ended during the cutover")

    async def _cut_over(self, follower: asyncio.Task) -> None:
        self.progress.phase = "cutover"
        while True:
            source_revision = await self.source.revision()
            self.progress.source_revision = source_revision
            self.report(self.progress)
            await self._caught_up_with(source_revision, follower)
            expected, keys = await self.source.digest_at(source_revision)
            ours = state_digest(self.state[key] for key in sorted(self.state))
            if await self.source.revision() != source_revision:
                logger.warning("the source took writes during the cutover: stop its writers; following on",
                               extra={"revision": source_revision})
                continue
            if ours != expected or keys != len(self.state):
                raise MigrationError(f"verification failed at revision {source_revision}: the source has {keys} "
                                     f"keys, the target {len(self.state)}, and their digests differ")
            break
        await self._copy_leases()
        compact = await self.source.compact_revision()
        if compact > self.target.compact_revision:
            await self.target.compact(compact)
        await self.target.save_migration(None)
        self._advance(source_revision, "done")
        logger.info("migration cut over", extra={"revision": source_revision, "keys": len(self.state)})

    async def _copy_leases(self) -> None:
        source = await self.source.leases()
        now_ms = int(time.time() * 1000)
        for lease_id, (granted, remaining) in source.items():
            await self.target.save_lease(Lease(id=lease_id, ttl=granted, deadline_ms=now_ms + remaining * 1000))
        for lease in await self.target.load_leases():
            if lease.id not in source:
                await self.target.delete_lease(lease.id)

