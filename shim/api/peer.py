"""The ``Peer`` service on the peer listener: the leader's side of forwarded writes and pushes.

Thin, as the client services: it checks that the caller knows this term's peer token (only
servers that read the shared log do) and that this server still leads, then runs the request on
the store as the KV and Lease services would, without their checks, which the follower that
received the request made already (see ``peer.proto``). Refusals carry etcd's status, exactly what
a client of this server would get, and the follower passes them on unchanged.
"""
from __future__ import annotations

import functools
import hmac

import grpc

from cosmos_etcd_shim.api.errors import status_of
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import peer_pb2_grpc, rpc_pb2
from cosmos_etcd_shim.replication.election import Election
from cosmos_etcd_shim.replication.forwarding import NOT_LEADER, TOKEN_METADATA
from cosmos_etcd_shim.replication.push import CommitFeed


def _leads_for(election: Election, context: grpc.aio.ServicerContext) -> bool:
    """Whether this server leads, in the term whose token the caller gives."""
    token = dict(context.invocation_metadata() or ()).get(TOKEN_METADATA, "")
    return election.is_leader and hmac.compare_digest(token.encode(), election.leader.token.encode())


def _peer_rpc(method):
    @functools.wraps(method)
    async def wrapper(self: "PeerServicer", request, context: grpc.aio.ServicerContext):
        if not _leads_for(self.election, context):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NOT_LEADER)
        try:
            response = await method(self, request)
        except Exception as e:  # etcd's refusals, and INTERNAL for a bug, as the client services answer
            status = status_of(e)
        else:
            self.headers.fill(response.header)
            return response
        await context.abort(status.code, status.message)

    return wrapper


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, store: MVCCStore, election: Election, feed: CommitFeed, headers: ResponseHeaders) -> None:
        self.store = store
        self.election = election
        self.feed = feed
        self.headers = headers  # the revision as this server's own API fills it; the follower sets the rest

    @_peer_rpc
    async def Put(self, request):
        return await self.store.put(request)

    @_peer_rpc
    async def DeleteRange(self, request):
        return await self.store.delete_range(request)

    @_peer_rpc
    async def Txn(self, request):
        return await self.store.txn(request)

    @_peer_rpc
    async def Compact(self, request):
        return await self.store.compact(request)

    @_peer_rpc
    async def LeaseRevoke(self, request):
        await self.store.revoke_lease(request.ID)
        return rpc_pb2.LeaseRevokeResponse()

    async def Follow(self, request, context):
        if not _leads_for(self.election, context):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NOT_LEADER)
        async for message in self.feed.stream():
            if not self.election.is_leader:
                return  # stepped down: the follower turns to the next leader
            yield message
