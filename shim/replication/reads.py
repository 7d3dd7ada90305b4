"""What a linearizable read waits for: every write acknowledged anywhere before it began.

etcd answers a linearizable read once its member has applied the leader's commit index as of the
read (raft's ReadIndex). Here, with an elected leader:

* **The leader** reads from its own store while its lease holds (a lease read, no request at
  all): every write of its term went through its store, and an earlier leader's writes are in the
  log, which the leader reads once at the first read of its term. That needs one rule on the
  writing side (:meth:`Writes.lead <cosmos_etcd_shim.replication.writes.Writes.lead>`): a leader
  answers a write only if it still leads the same term once the write is durable. A deposed
  leader's write that lands late is then never acknowledged, so it cannot be missing from the new
  leader's reads; it is the ambiguous outcome of etcd's ``leader changed``.
* **A follower** asks the leader for its committed revision (``Peer.ReadIndex``: one round trip
  between replicas, not a Cosmos query) and answers once its own store has it, which the leader's
  push usually brought already. A follower behind the leader's compaction reads the log first, so
  that it refuses what the leader refuses.
* **Without a leader** to ask (an election under way, the leader unreachable) a follower reads
  the log, as every server does without election (``MVCCStore.sync``): reads go on while the
  leader is gone, at a Cosmos query each. A leader that could not be reached is not asked again
  for :data:`RETRY_LEADER_SECONDS`, so that reads do not each wait for its connection.

Permission changes are not part of this: as the auth store documents, they reach other replicas
within a poll of the log.
"""
from __future__ import annotations

import logging
import time

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import peer_pb2
from cosmos_etcd_shim.replication.election import NOBODY, Election, Leader
from cosmos_etcd_shim.replication.forwarding import LEADER_CHANGED, ForwardedError, Forwarder, NotSent
from cosmos_etcd_shim.replication.push import catch_up_to

logger = logging.getLogger(__name__)

RETRY_LEADER_SECONDS = 1.0
# The leader answers a read index from memory (but for its term's first, which reads the log): one
# that takes longer is paused or cut off, and the log answers sooner.
READ_INDEX_SECONDS = 1.0


class NotLeading(Exception):
    """This server does not lead (any more): it cannot give a read index."""


class Reads:
    def __init__(self, store: MVCCStore, election: Election | None = None, forwarder: Forwarder | None = None) -> None:
        self.store = store
        self.election = election
        self.forwarder = forwarder
        self._current_term = 0  # the term whose earlier leaders' writes this store has read
        self._avoided: tuple[Leader, float] = (NOBODY, 0.0)  # a leader that could not be reached, until when

    async def current(self) -> None:
        """Wait until this server's store has every write acknowledged before this call."""
        election = self.election
        if election is None:
            await self.store.sync()
            return
        if election.is_leader:
            try:
                await self.lead()
            except NotLeading:
                pass  # deposed meanwhile: as a follower
            else:
                metrics.LINEARIZABLE_READS.labels("lease").inc()
                return
        if not await self._from_leader(election.leader):
            metrics.LINEARIZABLE_READS.labels("log").inc()
            await self.store.sync()

    async def lead(self) -> tuple[int, int]:
        """As the leader: make sure this store has every acknowledged write, then its (revision,
        compact revision), with no await between the check and the answer. :class:`NotLeading` if
        this server does not lead."""
        election = self.election
        term = election.leader.term
        if not election.is_leader:
            raise NotLeading()
        if self._current_term != term:
            await self.store.sync()  # the first read of this term: what the earlier leaders wrote
            if not (election.is_leader and election.leader.term == term):
                raise NotLeading()
            self._current_term = term
        return self.store.revision, self.store.compact_revision

    async def _from_leader(self, leader: Leader) -> bool:
        """As a follower: catch up to the leader's read index; whether that worked."""
        avoided, until = self._avoided
        if leader == NOBODY or (leader == avoided and time.monotonic() < until):
            return False
        try:
            answer = await self.forwarder.call(leader, "ReadIndex", peer_pb2.ReadIndexRequest(), READ_INDEX_SECONDS)
        except (NotSent, ForwardedError) as e:
            logger.info("no read index from the leader; reading the log",
                        extra={"leader": leader.address, "reason": str(e)})
            if isinstance(e, NotSent) or e is LEADER_CHANGED:  # gone or deposed, not a refusal
                self._avoided = (leader, time.monotonic() + RETRY_LEADER_SECONDS)
                self.election.suspect(leader)
            return False
        store = self.store
        if answer.compact_revision > store.compact_revision:
            return False  # the log says what was compacted
        await catch_up_to(store, answer.header.revision)
        metrics.LINEARIZABLE_READS.labels("read_index").inc()
        return True
