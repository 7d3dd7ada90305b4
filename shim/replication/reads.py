"""What a linearizable read waits for: every write acknowledged anywhere before it began.

etcd answers a linearizable read once its member has applied the leader's commit index as of the
read (raft's ReadIndex). Here, with an elected leader:

* **The leader** answers from its own store, without a request, while it holds its term's fence
  (:mod:`fencing`): every write acknowledged anywhere is then in its store (its own, and those of
  earlier leaders, which it read before fencing), and no other server's append can land in the
  log. It stops holding the term, by its own clock, before another server can start one (see
  :mod:`election` on clocks).
* **A follower** asks the leader for its read index (``Peer.ReadIndex``, one round trip between
  replicas, no Cosmos request): the leader's committed and compact revisions; the follower answers
  once its own store has that revision, which the leader's push has usually brought already. A
  follower behind the leader's compaction reads the log first, so that it refuses what the leader
  refuses.
* **Without a leader** to ask (an election under way, the leader unreachable or slower than
  :data:`READ_INDEX_SECONDS`), a follower reads the log itself (``MVCCStore.sync``: one query,
  shared by the reads that arrive meanwhile), as every server does without election: reads go on
  while the leader is gone. A leader that could not be reached is not asked again for
  :data:`RETRY_LEADER_SECONDS`, so that reads do not each wait for it.

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
from cosmos_etcd_shim.replication.fencing import Fencing, NotLeading
from cosmos_etcd_shim.replication.forwarding import LEADER_CHANGED, ForwardedError, Forwarder, NotSent
from cosmos_etcd_shim.replication.push import catch_up_to

logger = logging.getLogger(__name__)

RETRY_LEADER_SECONDS = 1.0
# The leader answers a read index from memory (the first of its term after fencing the log): one
# that takes longer is a leader paused or cut off, and this server's own query answers sooner.
READ_INDEX_SECONDS = 1.0


class Reads:
    def __init__(self, store: MVCCStore, election: Election | None = None, forwarder: Forwarder | None = None,
                 fencing: Fencing | None = None) -> None:
        self.store = store
        self.election = election
        self.forwarder = forwarder
        self.fencing = fencing
        self._avoided: tuple[Leader, float] = (NOBODY, 0.0)  # a leader that could not be reached, until when

    async def current(self) -> None:
        """Wait until this server's store has every write acknowledged before this call."""
        election = self.election
        if election is not None:
            if election.is_leader:
                try:
                    await self.fencing.begin()
                except NotLeading:
                    pass  # deposed meanwhile: as a follower
                else:
                    metrics.LINEARIZABLE_READS.labels("lease").inc()
                    return
            if await self._from_leader(election.leader):
                return
        metrics.LINEARIZABLE_READS.labels("log").inc()
        await self.store.sync()

    async def lead(self) -> tuple[int, int]:
        """As the leader, a follower's read index: (revision, compact revision), with no await between
        the check that this server holds its term and the answer. :class:`NotLeading` if it does not."""
        await self.fencing.begin()
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
