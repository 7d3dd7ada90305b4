"""Where a write goes: this server's store when it leads (or writes alone), else the leader.

The API layer calls :class:`Writes` for every request that may create a revision (Put,
DeleteRange, a writing Txn, Compact, LeaseRevoke) once it has checked the request as etcd's API
layer does. A follower forwards it (:mod:`forwarding`) and, before answering, waits until its own
store has applied the revision the leader answered with, as an etcd member answers a proposal only
once it applied it: a client that wrote through a follower then reads its write there, serializable
reads and watches included.

While there is no leader (an election under way) a write waits for one, at most a lease period
and two rounds; then etcd's ``no leader``. A write the leader refuses as not leading (its lease ran out
between the follower's choice and the call) or that could not reach it is sent again, once, to the
next leader: in both cases it did not run. So is a write this server took as the leader and could
not run because it stopped leading before it was written (:class:`~fencing.NotLeading`, the
store's ``NotLeaderError``): the leader writes only while it holds its term's fence (:mod:`fencing`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cosmos_etcd_shim.mvcc.errors import MVCCError, NotLeaderError
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import rpc_pb2
from cosmos_etcd_shim.replication.election import NOBODY, Election, Leader
from cosmos_etcd_shim.replication.fencing import Fencing, NotLeading
from cosmos_etcd_shim.replication.forwarding import NO_LEADER, Forwarder, NotSent
from cosmos_etcd_shim.replication.push import catch_up_to
from cosmos_etcd_shim.storage import StorageError

logger = logging.getLogger(__name__)

SENDS = 2  # the first leader, and the next one if the first did not run the request


class Writes:
    def __init__(self, store: MVCCStore, election: Election | None = None, forwarder: Forwarder | None = None,
                 fencing: Fencing | None = None) -> None:
        self.store = store
        self.election = election
        self.forwarder = forwarder
        self.fencing = fencing
        self._local: dict[str, Callable[..., Awaitable]] = {
            "Put": store.put, "DeleteRange": store.delete_range, "Txn": store.txn, "Compact": store.compact,
            "LeaseRevoke": self._revoke_lease,
        }

    async def put(self, request: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
        return await self._route("Put", request)

    async def delete_range(self, request: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
        return await self._route("DeleteRange", request)

    async def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """A writing Txn (a read-only one is a read: see :mod:`reads`)."""
        return await self._route("Txn", request)

    async def compact(self, request: rpc_pb2.CompactionRequest) -> rpc_pb2.CompactionResponse:
        return await self._route("Compact", request)

    async def revoke_lease(self, request: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse:
        return await self._route("LeaseRevoke", request)

    async def _revoke_lease(self, request: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse:
        await self.store.revoke_lease(request.ID)
        return rpc_pb2.LeaseRevokeResponse()

    async def lead(self, method: str, request):
        """Run a write on this server's store as the leader (a forwarded one, or its own client's).
        :class:`NotLeading` if this server does not lead, or stopped before the write was made."""
        await self.fencing.begin()
        try:
            return await self._local[method](request)
        except NotLeaderError:
            self.fencing.lost()
            raise NotLeading() from None

    async def _route(self, method: str, request):
        election = self.election
        if election is None:
            return await self._local[method](request)
        for _ in range(SENDS):
            leader = await self._known_leader()
            if election.is_leader:
                try:
                    return await self.lead(method, request)
                except NotLeading:
                    await self._leader_other_than(leader)
                    continue
            try:
                response = await self.forwarder.call(leader, method, request)
            except NotSent as e:
                logger.info("forwarded request not run; asking the next leader",
                            extra={"method": method, "leader": leader.address, "reason": str(e)})
                election.suspect(leader)
                await self._leader_other_than(leader)
                continue
            await self._applied(method, request, response)
            return response
        raise NO_LEADER

    async def _known_leader(self) -> Leader:
        leader = self.election.leader
        if leader == NOBODY:
            leader = await self._leader_other_than(NOBODY)
            if leader == NOBODY:
                raise NO_LEADER
        return leader

    async def _leader_other_than(self, leader: Leader) -> Leader:
        """The next leader, waiting at most a lease period and two rounds for one (how long a takeover
        may take, see :mod:`election`); NOBODY if none came."""
        election = self.election
        try:
            async with asyncio.timeout(election.lease_seconds + 2 * election.round_seconds):
                return await election.changed(leader)
        except TimeoutError:
            return election.leader

    async def _applied(self, method: str, request, response) -> None:
        """Wait until this server's store has what the leader answered (see the module docstring)."""
        store = self.store
        try:
            if method == "Compact":
                await store.sync()  # from now on this server refuses reads below it too
            else:
                await catch_up_to(store, response.header.revision)
            if method == "LeaseRevoke":
                await store.leases.refresh()
        except (MVCCError, StorageError) as e:  # the write is done: answer it; the next read catches up
            logger.warning("a forwarded write is done but this server could not catch up yet",
                           extra={"method": method, "error": str(e)})
