"""The space quota (``--quota-backend-bytes``): etcd 3.5's backend quota, which raises NOSPACE.

What is checked, as etcd 3.5.1 checks it (its quota wrappers of the KV and Lease services, before
any other check of the request: validation, auth token, request size):

* Put, every Txn (read-only ones too: their cost is 0, but they are checked) and LeaseGrant.
  Range, DeleteRange, Compact, LeaseRevoke and keep-alives are never checked.
* A request fits if ``backend size + its cost < quota``. Its cost is etcd's estimate of what it
  adds: a Put 256 bytes of metadata plus its key and value; a Txn the costlier of its two
  branches, each the sum of its Puts; a LeaseGrant 64 bytes.
* A request that does not fit raises NOSPACE for this member's id (:meth:`Alarms.activate`, the
  Alarm API's ACTIVATE) and is refused with :class:`NoSpaceError` (RESOURCE_EXHAUSTED
  "etcdserver: mvcc: database space exceeded"). From then on the raised alarm refuses what
  NOSPACE refuses (see ``alarms``), whatever the size, until an operator disarms it; a write that
  still does not fit after the disarm raises it again. Since every Txn is checked, a read-only
  Txn is refused while the size is at or over the quota, and served again once compaction and
  defragmentation brought it under (though NOSPACE is still raised), as in etcd.

What "backend size" is: Status' ``dbSize`` (:meth:`RevisionLog.size`), read at each check.

* Embedded: the bytes of the SQLite database's files (the database, its write-ahead log and the
  log's index), as etcd counts its bbolt file. Compaction frees pages inside the files, which
  later writes reuse, but does not shrink them; only Defragment (a checkpoint of the write-ahead
  log and VACUUM) does, as only etcd's defragmentation shrinks its file.
* Cosmos: the records of the log not yet compacted and the checkpoint (the base at the compact
  revision), counted uncompressed; every replica sees the same figure once it has read the log's
  tail. Cosmos reuses the space of deleted documents itself, so the size drops as soon as a
  compaction is folded into the checkpoint (Defragment folds a pending one at once): unlike
  etcd, compaction alone may bring it back under the quota. The quota is what keeps the log's and
  the checkpoint's logical partitions under Cosmos' 20 GB limit (see the README's "Alarms").

The alarm is shared state: raised through one Cosmos replica, it refuses writes through every
replica. Each replica checks the size it knows; a replica learns the others' writes when it
reads the log's tail, so one that was idle may admit one more write before it refuses.

Deliberate differences from etcd 3.5.1:

* A Put nested in a Txn costs like one at the top level (etcd counts the top level only), as
  ``alarms`` refuses it under NOSPACE.
* etcd checks a write a second time when it applies it: one that no longer fits (other writes
  were applied meanwhile) is applied all the same, answered ErrNoSpace, and raises NOSPACE. The
  shim checks once: a write admitted is applied and acknowledged, and NOSPACE is raised by the
  next write that does not fit. The size can overshoot the quota by the writes admitted at once.
"""
from __future__ import annotations

import logging

from cosmos_etcd_shim.mvcc.alarms import Alarms
from cosmos_etcd_shim.mvcc.errors import MVCCError, NoSpaceError
from cosmos_etcd_shim.proto.rpc_pb2 import NOSPACE, PutRequest, RequestOp, TxnRequest
from cosmos_etcd_shim.storage import RevisionLog

logger = logging.getLogger(__name__)

# etcd's estimates of what a key's metadata and a lease add to the backend (kvOverhead, leaseOverhead).
PUT_OVERHEAD_BYTES = 256
LEASE_GRANT_COST_BYTES = 64


class SpaceQuota:
    """Refuses, and raises NOSPACE for, a request that would take the backend to its quota.

    ``limit_bytes`` is ``--quota-backend-bytes`` once its default is applied; a negative limit
    disables the quota, as in etcd.
    """

    def __init__(self, log: RevisionLog, alarms: Alarms, member_id: int, limit_bytes: int) -> None:
        self.log = log
        self.alarms = alarms
        self.member_id = member_id
        self.limit_bytes = limit_bytes

    async def check_put(self, p: PutRequest) -> None:
        await self._check(put_cost(p))

    async def check_txn(self, t: TxnRequest) -> None:
        await self._check(txn_cost(t))

    async def check_lease_grant(self) -> None:
        await self._check(LEASE_GRANT_COST_BYTES)

    async def _check(self, cost: int) -> None:
        if self.limit_bytes < 0:
            return
        size, _ = self.log.size()
        if size + cost < self.limit_bytes:
            return
        try:
            await self.alarms.activate(self.member_id, NOSPACE)
        except MVCCError as e:
            # etcd ignores a failed ACTIVATE too: the request is refused all the same, and the
            # next one that does not fit tries to raise the alarm again.
            logger.warning("cannot raise NOSPACE", extra={"error": str(e)})
        raise NoSpaceError()


def put_cost(p: PutRequest) -> int:
    return PUT_OVERHEAD_BYTES + len(p.key) + len(p.value)


def txn_cost(t: TxnRequest) -> int:
    """The costlier branch: only one of them is applied."""
    return max(_branch_cost(t.success), _branch_cost(t.failure))


def _branch_cost(ops: list[RequestOp]) -> int:
    cost = 0
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            cost += put_cost(op.request_put)
        elif kind == "request_txn":
            cost += txn_cost(op.request_txn)
    return cost
