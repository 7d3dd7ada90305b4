"""Truncating a Cosmos log that is no longer contiguous: the work of ``cosmos-etcd repair``.

Why a log can have a gap
------------------------
On a multi-region account with a consistency weaker than Strong, a forced (or service-managed)
region failover can promote a region that lacks the last acknowledged log documents: the log
ended at revision H, the new write region holds it only up to L < H. A shim replica that still
believes the head is H then creates ``log-(H+1)`` past the gap (the id is free in the new region),
and from then on every start of a shim fails the contiguity check of :mod:`log`. Revisions
L+1..H are gone with the old region, and whatever was written past the gap was evaluated against
state that no longer exists: the only consistent state left is the log up to L.

What the command does
---------------------
1. :func:`survey` reads ``meta`` and the log documents from ``cdoc`` (what a starting shim reads
   of the log partition), finds the first document that does not follow the one before it (a gap,
   or an overlap written by a replica that was behind), and lists every document of the log
   partition past the last contiguous revision L: the log documents and their chunks. It changes
   nothing; :func:`report` says what it found and what a truncation would do.
2. :func:`truncate`, only when the operator acknowledges what is lost by naming L
   (``--truncate-after L``, checked against the survey) and a new local file to save to: it
   refuses while a shim replica is running (a running replica holds the lost revisions in memory
   and would append past the gap again), writes every document to be removed to the file (full
   JSON as stored, chunks included: nothing is destroyed without a copy), deletes the log
   documents highest first and then the chunks, and finally loads the log as a starting shim
   does. Highest first: until the lowest one goes, a shim that starts meanwhile still finds the
   gap and stops; from then on it finds a contiguous log, and the chunk ids still to be deleted
   carry the nonces of old writers, never a new writer's.

Out of scope (refused with a message): a container without a ``meta`` document, and a log that
does not start at ``cdoc`` (revisions missing below the compaction point: the checkpoint and the
log disagree, and truncating the log cannot reconcile them).
"""
from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import os
import pathlib
from collections.abc import Callable

from cosmos_etcd_shim.storage.base import INITIAL_REVISION, StorageError
from cosmos_etcd_shim.storage.cosmos import layout
from cosmos_etcd_shim.storage.cosmos.log import CosmosLog, LogCorruptError

OP = "repair"


class RepairRefused(StorageError):
    """The log is not one this command repairs, or the acknowledgement does not match the log."""


class Outcome(enum.Enum):
    CONTIGUOUS = "the log is contiguous: nothing to do"
    GAP_FOUND = "the log has a gap: nothing was changed"
    REPAIRED = "the log was truncated after its last contiguous revision"


@dataclasses.dataclass
class Survey:
    """The log partition as read from ``meta``'s ``cdoc``, split at the first discontinuity."""

    meta: dict
    kept: list[dict]  # log documents up to the last contiguous revision, in revision order
    after_gap: list[dict]  # log documents past it, in revision order (empty: the log is contiguous)
    chunks: list[dict]  # chunk documents past it (of after_gap, or of writers that lost a race)

    @property
    def last_contiguous(self) -> int:
        return self.kept[-1]["e"] if self.kept else INITIAL_REVISION

    @property
    def removed(self) -> list[dict]:
        return [*self.after_gap, *self.chunks]

    @property
    def lost_revisions(self) -> int:
        return sum(d["e"] - d["r"] + 1 for d in self.after_gap)


async def survey(log: CosmosLog) -> Survey:
    """Read the log partition (from ``cdoc``) and find its first discontinuity; changes nothing."""
    conn = log.conn
    meta = await conn.read_by_id(OP, layout.META_ID, layout.LOG_PARTITION)
    if meta is None:
        raise RepairRefused(f"{conn.database_name}/{conn.container_name} has no meta document: not a cosmos-etcd "
                            "log, or one that lost its compaction state (out of scope of repair)")
    documents = await log._query_log(OP, after=None, from_first=meta["cdoc"])
    start = meta["cdoc"] or INITIAL_REVISION + 1
    first = documents[0]["r"] if documents else None
    if first != start and (documents or meta["cdoc"]):  # no document at all: a new store, unless compacted
        raise RepairRefused(f"the log should start at revision {start} (meta: compact revision {meta['compact']}) "
                            f"but {f'starts at {first}' if documents else 'is empty'}: revisions are missing at "
                            "or below the compaction point (out of scope of repair)")
    gap = next((i for i in range(1, len(documents)) if documents[i]["r"] != documents[i - 1]["e"] + 1), None)
    if gap is None:
        return Survey(meta, documents, [], [])
    kept, after_gap = documents[:gap], documents[gap:]
    chunks = await conn.query(
        OP, "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind AND c.r > @last",
        {"@pk": layout.LOG_PARTITION, "@kind": layout.KIND_CHUNK, "@last": kept[-1]["e"]}, layout.LOG_PARTITION)
    chunks.sort(key=lambda c: (c["r"], c["id"]))
    return Survey(meta, kept, after_gap, chunks)


def report(found: Survey) -> list[str]:
    """What the survey found and what a truncation would do, as lines for the operator."""
    compact = found.meta["compact"]
    lines = [f"meta: compact revision {compact if compact > INITIAL_REVISION else 'none'}, "
             f"log read from revision {found.meta['cdoc'] or INITIAL_REVISION + 1}"]
    if not found.after_gap:
        lines.append(f"the log is contiguous up to revision {found.last_contiguous} "
                     f"({len(found.kept)} log documents): nothing to do")
        return lines
    last, before, first = found.last_contiguous, found.kept[-1], found.after_gap[0]
    if first["r"] > last + 1:
        why = f"revisions {last + 1}..{first['r'] - 1} are missing (lost in a region failover?)"
    else:
        why = f"revisions {first['r']}..{last} are in both (written by a replica that was behind)"
    lines += [
        f"the log is not contiguous: revisions {before['r']}..{last} then {first['r']}..{first['e']}: {why}",
        f"last contiguous revision: {last}",
        f"after the gap: {len(found.after_gap)} log documents holding {found.lost_revisions} revisions "
        f"({first['r']}..{found.after_gap[-1]['e']}), and {len(found.chunks)} chunk documents:",
        *(f"  {d['id']}  revisions {d['r']}..{d['e']}" + (f"  ({d['c']} chunks)" if "c" in d else "")
          for d in found.after_gap),
        f"truncating after revision {last} loses these {found.lost_revisions} revisions (writes that clients "
        f"were told had succeeded); the next write gets revision {last + 1}, so restart the clients that saw "
        f"revisions above {last} (kube-apiserver) once the shim serves again",
        f"with --truncate-after {last} --save-removed FILE, repair will:",
        "  1. refuse if a shim replica is running (its heartbeat or the leader record changes): stop every replica "
        "first",
        f"  2. write the {len(found.removed)} documents above (full JSON, chunks included) to FILE, a new file",
        f"  3. delete the {len(found.after_gap)} log documents, highest first, then the {len(found.chunks)} "
        "chunk documents",
        "  4. load the log as a starting shim does, to check that it is contiguous",
    ]
    return lines


async def running_replicas(log: CosmosLog, window: float) -> list[str]:
    """The shim replicas whose heartbeat document changed within ``window`` seconds (the names of
    those still running), and, while elected replicas run, those the leader record names (it changes
    at every renewal, a third of the leader lease; elected replicas write no heartbeat documents).
    Two reads of the documents' etags, not clocks: no clock skew."""
    sql = ("SELECT c.id, c.kind, c.m, c.ms, c._etag FROM c WHERE c.pk = @pk "
           "AND (c.kind = @member OR c.kind = @leader)")
    params = {"@pk": layout.MEMBER_PARTITION, "@member": layout.KIND_MEMBER, "@leader": layout.KIND_LEADER}
    before = {d["id"]: d["_etag"] for d in await log.conn.query(OP, sql, params, layout.MEMBER_PARTITION)}
    await asyncio.sleep(window)
    after = await log.conn.query(OP, sql, params, layout.MEMBER_PARTITION)
    names = set()
    for document in after:
        if before.get(document["id"]) == document["_etag"]:
            continue
        if document["kind"] == layout.KIND_LEADER:
            names.update(member["name"] for member in json.loads(document.get("ms") or "[]"))
        else:
            names.add(json.loads(document["m"]).get("name", document["id"]))
    return sorted(names)


async def truncate(log: CosmosLog, found: Survey, save_to: pathlib.Path, say: Callable[[str], None]) -> int:
    """Save, then delete, everything past the last contiguous revision; returns the new head."""
    await asyncio.to_thread(_save, save_to, found, log)
    say(f"saved the {len(found.removed)} documents to be removed to {save_to}")
    # Highest first (see the module docstring), then the chunks no remaining document names.
    for document in [*reversed(found.after_gap), *found.chunks]:
        await log.conn.delete(OP, document["id"], layout.LOG_PARTITION)
    say(f"deleted {len(found.after_gap)} log documents and {len(found.chunks)} chunk documents")
    try:
        await log.reload()
    except LogCorruptError as e:
        raise StorageError(f"the log still does not load after the truncation: {e}") from None
    return await log.head()


async def run(log: CosmosLog, *, truncate_after: int | None, save_removed: pathlib.Path | None,
              liveness_window: float, say: Callable[[str], None]) -> Outcome:
    """The ``repair`` command on an unopened log: survey and report, and truncate when acknowledged."""
    await log.conn.connect()
    try:
        if truncate_after is not None:
            # First, so that what is reported below is what is removed: no replica writes meanwhile.
            say(f"checking that no shim replica is running ({liveness_window:g} s)...")
            running = await running_replicas(log, liveness_window)
            if running:
                raise RepairRefused(f"shim replicas are running ({', '.join(running)}: heartbeats or leader renewals "
                                    f"within {liveness_window:g} s): stop every replica, then run repair again")
        found = await survey(log)
        for line in report(found):
            say(line)
        if not found.after_gap:
            return Outcome.CONTIGUOUS
        last = found.last_contiguous
        if truncate_after is None:
            say(f"nothing was changed; after reviewing what is lost, run the same command with "
                f"--truncate-after {last} --save-removed FILE")
            return Outcome.GAP_FOUND
        if truncate_after != last:
            raise RepairRefused(f"--truncate-after {truncate_after} does not name the last contiguous revision, "
                                f"{last}: nothing was changed (run repair without --truncate-after to review)")
        head = await truncate(log, found, save_removed, say)
        say(f"the log is contiguous again: the shim can start; its head is revision {head}")
        return Outcome.REPAIRED
    finally:
        await log.close()


def _save(path: pathlib.Path, found: Survey, log: CosmosLog) -> None:
    """Write the documents to a new file and make it durable; never overwrite one."""
    saved = {"database": log.conn.database_name, "container": log.conn.container_name,
             "truncated_after": found.last_contiguous, "documents": found.removed}
    try:
        with open(path, "x", encoding="utf-8") as file:
            try:
                json.dump(saved, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            except BaseException:
                os.unlink(path)
                raise
    except FileExistsError:
        raise RepairRefused(f"--save-removed {path} exists already: name a new file") from None
    except OSError as e:
        raise RepairRefused(f"cannot write --save-removed {path}: {e.strerror}: nothing was changed") from None
