"""What a linearizable read waits for: every write acknowledged anywhere before it began.

etcd answers a linearizable read once its member has applied the leader's commit index as of the
read (raft's ReadIndex). Here, with an elected leader:

* **The leader** catches up with the log (``MVCCStore.sync``: one query, shared by every read that
  arrives meanwhile, its own clients' and the followers').
* **A follower** asks the leader for its read index (``Peer.ReadIndex``): the leader catches up as
  above and answers its committed and compact revisions; the follower answers once its own store
  has that revision, which the leader's push usually brought already. So a follower makes no Cosmos
  request for reads, and the replicas' concurrent reads share one query instead of one each. A
  follower behind the leader's compaction reads the log first, so that it refuses what the leader
  refuses.
* **Without a leader** to ask (an election under way, the leader unreachable or slower than
  :data:`READ_INDEX_SECONDS`) a follower reads the log itself, as every server does without
  election: reads go on while the leader is gone. A leader that could not be reached is not asked
  again for :data:`RETRY_LEADER_SECONDS`, so that reads do not each wait for it.

Why the leader reads the log rather than answer from memory while its lease holds (a lease read,
which would cost nothing): the log's compare-and-swap, not the election, orders writes, and Cosmos
has no fence that would refuse a deposed leader's append. A leader paused between preparing an
append and sending it can land it after another server took over and answered reads without it;
that write was never acknowledged, but once a replica that read the log shows it, the new leader's
lease reads would not, and a read would go back in time. Reading the log makes the log's order the
reads' order, whatever the leases do.

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
# A read index takes the leader one query of the log; one that takes longer than this is a leader
# paused or cut off, and this server's own query answers sooner.
READ_INDEX_SECONDS = 1.0


class Reads:
    def __init__(self, store: MVCCStore, election: Election | None = None, forwarder: Forwarder | None = None) -> None:
        self.store = store
        self.election = election
        self.forwarder = forwarder
        self._avoided: tuple[Leader, float] = (NOBODY, 0.0)  # a leader that could not be reached, until when

    async def current(self) -> None:
        """Wait until this server's store has every write acknowledged before this call."""
        election = self.election
        if election is not None and not election.is_leader and await self._from_leader(election.leader):
            return
        metrics.LINEARIZABLE_READS.labels("log").inc()
        await self.store.sync()

    async def lead(self) -> tuple[int, int]:
        """As the leader, a follower's read index: (revision, compact revision) once this store has
        every write durable in the log."""
        await self.store.sync()
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
