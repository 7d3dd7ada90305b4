"""The Watch service: one bidirectional stream per client, many watchers on each.

With auth enabled a watcher is created only if the stream's caller (its token when the stream
opened) may read the whole watched range, then receives every event in it, as in etcd. Unlike
etcd 3.5, which checks only the start key of a "from key" watch, the whole range to the end of
the key space is checked.
"""
from __future__ import annotations

import asyncio
import logging

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.api.callers import Callers
from cosmos_etcd_shim.api.errors import WATCH_PERMISSION_DENIED
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.mvcc.errors import AuthError
from cosmos_etcd_shim.mvcc.watch import WatchHub
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from cosmos_etcd_shim.proto.rpc_pb2 import WatchResponse

logger = logging.getLogger(__name__)


class WatchServicer(rpc_pb2_grpc.WatchServicer):
    def __init__(self, hub: WatchHub, headers: ResponseHeaders, fragment_bytes: int, callers: Callers) -> None:
        self.hub = hub
        self.callers = callers
        self.headers = headers
        self.fragment_bytes = fragment_bytes

    async def Watch(self, request_iterator, context):
        stream = self.hub.open_stream()
        requests = asyncio.create_task(self._read_requests(request_iterator, stream, context))
        response: asyncio.Future | None = None
        try:
            while True:
                response = asyncio.ensure_future(stream.next_response())
                if not requests.done():
                    await asyncio.wait({response, requests}, return_when=asyncio.FIRST_COMPLETED)
                if requests.done() and not requests.cancelled() and requests.exception() is not None:
                    return  # reading the client's requests failed: the stream is broken
                # A client that closed its side (all requests sent) still gets its events, as from
                # etcd, whose receive loop ends on EOF without ending the stream.
                message = await response
                if message is None:  # the server is shutting down
                    return
                if message.events:
                    metrics.WATCH_DELIVERY_LAG.observe(self.hub.revision - message.events[-1].kv.mod_revision)
                # Watch responses carry the revision the hub gave them (0 for a compacted cancel).
                self.headers.fill_identity(message.header)
                if stream.wants_fragments(message.watch_id):
                    for fragment in fragments(message, self.fragment_bytes):
                        yield fragment
                else:
                    yield message
        finally:
            # However the stream ends (the client's cancellation arrives as one here), nothing of it
            # is left pending: both tasks are cancelled and awaited.
            pending = [task for task in (requests, response) if task is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await stream.close()

    async def _read_requests(self, request_iterator, stream, context) -> None:
        async for request in request_iterator:
            # A client that does not read its answers is not read either: HTTP/2 holds it back.
            await stream.wait_for_reader()
            kind = request.WhichOneof("request_union")
            if kind == "create_request":
                if self._may_watch(request.create_request, context):
                    stream.create(request.create_request)
                else:  # as etcd: created and cancelled at once, watch id 0
                    stream.send(WatchResponse(created=True, canceled=True, cancel_reason=WATCH_PERMISSION_DENIED),
                                self.hub.revision)
            elif kind == "cancel_request":
                stream.cancel(request.cancel_request.watch_id)
            elif kind == "progress_request":
                stream.request_progress()

    def _may_watch(self, create, context) -> bool:
        """Any refusal (no user, an invalid token, no read permission) reads as etcd's permission
        denied, as etcd 3.5 reports them all. An empty key watches from the first key (``\\0``)."""
        try:
            self.callers.auth.check_read(self.callers.of(context), create.key or b"\0", create.range_end)
        except AuthError:
            return False
        return True


def fragments(response: WatchResponse, limit: int) -> list[WatchResponse]:
    """etcd's sendFragments: a response of ``limit`` bytes or more with several events becomes
    pieces that stay under ``limit`` (a single event may exceed it), all but the last marked
    ``fragment``."""
    if response.ByteSize() < limit or len(response.events) < 2:
        return [response]
    pieces = []
    events = list(response.events)
    while events:
        piece = WatchResponse(header=response.header, watch_id=response.watch_id, fragment=True)
        taken = 0
        for event in events:
            piece.events.append(event)
            if len(piece.events) > 1 and piece.ByteSize() >= limit:
                del piece.events[-1]
                break
            taken += 1
        events = events[taken:]
        pieces.append(piece)
    pieces[-1].fragment = False
    return pieces
