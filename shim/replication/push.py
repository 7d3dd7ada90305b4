"""The leader pushes its committed revisions to the followers (``Peer.Follow``).

Leader side, :class:`CommitFeed`: every follower's stream gets each batch the leader's store
commits, in order, as soon as it is durable, and a message with only the committed revision every
:data:`HEARTBEAT_SECONDS` while nothing is committed. A follower too slow to take them (its queue of
:data:`QUEUE_BATCHES` batches full) is cut off rather than allowed to hold the leader's memory; it
reads the log and follows again.

Follower side, :class:`PushFollower`: one stream to the current leader; each message's revisions go
to :meth:`MVCCStore.deliver`, which applies them between the committer's batches and reads the log
instead when they do not follow on (a gap is never papered over: the log has every revision). While
the stream lives the store tails the log only every few seconds (for compactions, auth and alarms,
which are not pushed, and as a check). When the stream breaks, or brings nothing for
:data:`SILENCE_SECONDS` (a leader paused or cut off), or says this store is behind and the log
cannot be read for what it missed (a refused or throttled query), the store goes back to polling
the log at once, and the follower connects again to whichever server leads then.

Who follows, :meth:`CommitFeed.members`: a follower names itself in its stream's metadata (its
member record, as MemberList shows it, read by :func:`member_in`), and the leader counts it as a
follower for as long as its stream is open (``api.peer`` accepts it once the term's token checked). The election records them in the leader record, which
is how every server's MemberList learns the others without requests of its own.
"""
from __future__ import annotations

import asyncio
import json
import logging

import grpc

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc.errors import MVCCError
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import peer_pb2, peer_pb2_grpc
from cosmos_etcd_shim.proto.storage_pb2 import Revision
from cosmos_etcd_shim.replication.election import NOBODY, Election
from cosmos_etcd_shim.replication.forwarding import TOKEN_METADATA, Forwarder, NotSent

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
SILENCE_SECONDS = 3 * HEARTBEAT_SECONDS
QUEUE_BATCHES = 1024
RECONNECT_SECONDS = 1.0
MEMBER_METADATA = "cosmos-etcd-member"
# How long a follower waits for a revision the leader answered with to be pushed before reading the log.
PUSH_WAIT_SECONDS = 0.5


async def catch_up_to(store: MVCCStore, revision: int) -> None:
    """Until this store has ``revision``, which the leader committed: its push usually brings it with
    the leader's answer; past :data:`PUSH_WAIT_SECONDS` (no stream yet, or it broke) the log has it."""
    if not await store.wait_for_revision(revision, PUSH_WAIT_SECONDS):
        await store.sync()


class CommitFeed:
    """The leader's committed batches, for every follower that follows; and who follows (the member
    record each follower sends with its stream, see :func:`member_in`)."""

    def __init__(self, store: MVCCStore) -> None:
        self.store = store
        self._queues: dict[asyncio.Queue, dict | None] = {}  # one per open stream: its follower
        store.on_commit(self._publish)

    def members(self) -> list[dict]:
        """The followers' member records (one per member id: a reconnecting follower may briefly
        have two streams)."""
        return list({member["id"]: member for member in self._queues.values() if member is not None}.values())

    def _publish(self, records: list[Revision]) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(records)
            except asyncio.QueueFull:
                self._queues.pop(queue, None)
                queue.put_nowait(None)  # room for it: the follower reads the log and follows again

    async def stream(self, member: dict | None):
        """The messages of one follower's stream (``member``: its member record, if it sent one),
        until it goes away or falls behind."""
        queue: asyncio.Queue = asyncio.Queue(QUEUE_BATCHES + 1)
        self._queues[queue] = member
        try:
            yield peer_pb2.FollowResponse(committed=self.store.revision)
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_SECONDS):
                        records = await queue.get()
                except TimeoutError:
                    yield peer_pb2.FollowResponse(committed=self.store.revision)
                    continue
                if records is None:
                    logger.warning("a follower fell behind the leader's pushes; it reads the log instead")
                    return
                yield peer_pb2.FollowResponse(committed=records[-1].revision, revisions=records)
        finally:
            self._queues.pop(queue, None)


def member_in(metadata) -> dict | None:
    """The member record a follower sent with its stream; None if absent or not one."""
    text = dict(metadata or ()).get(MEMBER_METADATA)
    try:
        member = json.loads(text) if text else None
    except ValueError:
        return None
    fields = {"id": int, "name": str, "peerURLs": list, "clientURLs": list}
    if not isinstance(member, dict) or set(member) != set(fields) or isinstance(member["id"], bool) or \
            not all(isinstance(member[name], kind) for name, kind in fields.items()) or \
            not all(isinstance(url, str) for url in (*member["peerURLs"], *member["clientURLs"])):
        logger.warning("a follower sent no valid member record; it is not listed as a member")
        return None
    return member


class PushFollower:
    """This server's stream from the leader while it does not lead; what its store is told of the
    role (see ``MVCCStore.replicated`` and ``MVCCStore.expires_leases``)."""

    def __init__(self, store: MVCCStore, election: Election, forwarder: Forwarder) -> None:
        self.store = store
        self.election = election
        self.forwarder = forwarder
        self._member_metadata = (MEMBER_METADATA, json.dumps(election.member, sort_keys=True))

    async def run_forever(self) -> None:
        while True:
            leader = self.election.leader
            # The leader makes every revision, and only it revokes expired leases (only it writes).
            self.store.replicated = self.store.expires_leases = self.election.is_leader
            if leader == NOBODY or self.election.is_leader:
                await self.election.changed(leader)
                continue
            try:
                await self._follow(leader)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, NotSent, TimeoutError, MVCCError) as e:
                # (MVCCError: behind the leader, and the log could not be read for the rest)
                logger.info("not pushed to by the leader; reading the log", extra={
                    "leader": leader.address, "reason": e.code().name if isinstance(e, grpc.RpcError) else str(e)})
            finally:
                self.store.replicated = False
            try:  # the next leader at once; the same one again after a pause
                async with asyncio.timeout(RECONNECT_SECONDS):
                    await self.election.changed(leader)
            except TimeoutError:
                pass

    async def _follow(self, leader) -> None:
        stub = peer_pb2_grpc.PeerStub(await self.forwarder.channel_to(leader.address))
        call = stub.Follow(peer_pb2.FollowRequest(), metadata=((TOKEN_METADATA, leader.token), self._member_metadata))
        try:
            while self.election.leader == leader:
                async with asyncio.timeout(SILENCE_SECONDS):
                    message = await call.read()
                if message is grpc.aio.EOF:
                    return
                self.store.replicated = True
                if message.revisions:
                    self.store.deliver(list(message.revisions))
                    metrics.PUSHED_REVISIONS.inc(len(message.revisions))
                elif message.committed > self.store.revision:
                    await self.store.sync()  # behind (a new stream): what was missed is in the log
        finally:
            call.cancel()
