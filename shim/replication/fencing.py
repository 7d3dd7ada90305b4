"""A leader's term on the log: what this server does before it writes or answers reads as leader.

Winning the election is not enough to write: a former leader may still have an append on its way.
At the start of its term the leader catches up with the log and *fences* it
(``RevisionLog.fence_next``: from then on another server's append fails, see the Cosmos log's
docstring), and only then counts as holding the term (:meth:`Fencing.holds`). Holding it is what
the store asks before every append and compaction (``MVCCStore.may_write``), and what lets the
leader answer linearizable reads from its own store (:mod:`reads`): every write acknowledged
anywhere is then in it, and no other server's can land.

The fence is set as soon as this server becomes the leader (:meth:`Fencing.run_forever`), and
again by the first request of the term if that failed. A leader whose lease ran out stops holding
the term at once, by its clock, as it stops counting itself leader (see :mod:`election`).
"""
from __future__ import annotations

import asyncio
import logging

from cosmos_etcd_shim.mvcc.errors import MVCCError, from_storage
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.replication.election import NOBODY, Election
from cosmos_etcd_shim.storage import LogConflictError, LogFencedError, StorageError

logger = logging.getLogger(__name__)


class NotLeading(Exception):
    """This server does not lead (any more): the request did not run, and the next leader may run it."""


class Fencing:
    def __init__(self, store: MVCCStore, election: Election) -> None:
        self.store = store
        self.election = election
        self._term = 0  # the term whose fence this server set
        self._lock = asyncio.Lock()
        store.may_write = self.holds

    def holds(self) -> bool:
        """Whether this server leads, in a term whose fence it set."""
        return self.election.is_leader and self._term == self.election.leader.term

    async def begin(self) -> None:
        """As the leader: set this term's fence if not done yet. :class:`NotLeading` if this server
        does not lead (or stopped while it fenced); the store's errors if the log cannot be read."""
        election = self.election
        if self.holds():
            return
        if not election.is_leader:
            raise NotLeading()
        term = election.leader.term
        async with self._lock:
            while not self.holds() and election.is_leader and election.leader.term == term:
                await self.store.sync()
                try:
                    await self.store.log.fence_next(term)
                except LogConflictError:
                    continue  # a former leader's append landed after the catch-up: catch up again
                except LogFencedError:
                    raise NotLeading() from None  # a later leader fenced already
                except StorageError as e:
                    raise from_storage(e) from None
                self._term = term
                logger.info("fenced the log for this term", extra={"term": term, "revision": self.store.revision})
        if not self.holds():
            raise NotLeading()

    def lost(self) -> None:
        """The store found the log fenced against this server's write: a later term's leader fenced
        it, or an older fence lies in the way (the log was repaired below it). The next
        :meth:`begin` fences again, or finds that this server no longer leads."""
        self._term = 0

    async def run_forever(self) -> None:
        leader = NOBODY
        while True:
            leader = await self.election.changed(leader)
            if not self.election.is_leader:
                continue
            try:
                await self.begin()
            except (NotLeading, MVCCError) as e:
                logger.warning("could not fence the log at the start of this term; the first request tries again",
                               extra={"error": str(e) or type(e).__name__})
