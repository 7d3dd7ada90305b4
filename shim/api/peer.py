"""The ``Peer`` service on the peer listener: the leader's side of forwarded writes, read indexes and pushes.

Thin, as the client services: it checks that the caller knows this term's peer token (only
servers that read the shared log do) and that this server still leads, then runs the request as
the leader (``replication.writes`` and ``replication.reads``), without the client services' checks,
which the follower that received the request made already (see ``peer.proto``). Refusals carry
etcd's status, exactly what a client of this server would get, and the follower passes them on
unchanged.
"""
from __future__ import annotations

import functools
import hmac

import grpc

from cosmos_etcd_shim.api.errors import status_of
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.proto import peer_pb2, peer_pb2_grpc
from cosmos_etcd_shim.replication.election import Election
from cosmos_etcd_shim.replication.fencing import NotLeading
from cosmos_etcd_shim.replication.forwarding import NOT_LEADER, TOKEN_METADATA
from cosmos_etcd_shim.replication.push import CommitFeed, member_in
from cosmos_etcd_shim.replication.reads import Reads
from cosmos_etcd_shim.replication.writes import Writes


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
        except NotLeading:  # deposed since the check above: the request did not run
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NOT_LEADER)
        except Exception as e:  # etcd's refusals, and INTERNAL for a bug, as the client services answer
            status = status_of(e)
        else:
            self.headers.fill(response.header)
            return response
        await context.abort(status.code, status.message)

    return wrapper


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, writes: Writes, reads: Reads, election: Election, feed: CommitFeed,
                 headers: ResponseHeaders) -> None:
        self.writes = writes
        self.reads = reads
        self.election = election
        self.feed = feed
        self.headers = headers  # the revision as this server's own API fills it; the follower sets the rest

    @_peer_rpc
    async def Put(self, request):
        return await self.writes.lead("Put", request)

    @_peer_rpc
    async def DeleteRange(self, request):
        return await self.writes.lead("DeleteRange", request)

    @_peer_rpc
    async def Txn(self, request):
        return await self.writes.lead("Txn", request)

    @_peer_rpc
    async def Compact(self, request):
        return await self.writes.lead("Compact", request)

    @_peer_rpc
    async def LeaseRevoke(self, request):
        return await self.writes.lead("LeaseRevoke", request)

    @_peer_rpc
    async def ReadIndex(self, request):
        revision, compact_revision = await self.reads.lead()
        response = peer_pb2.ReadIndexResponse(compact_revision=compact_revision)
        response.header.revision = revision
        return response

    async def Follow(self, request, context):
        if not _leads_for(self.election, context):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NOT_LEADER)
        async for message in self.feed.stream(member_in(context.invocation_metadata())):
            if not self.election.is_leader:
                return  # stepped down: the follower turns to the next leader
            yield message
