"""The Watch service: one bidirectional stream per client, many watchers on each."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.mvcc.watch import WatchHub
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from cosmos_etcd_shim.proto.rpc_pb2 import WatchResponse

logger = logging.getLogger(__name__)


class WatchServicer(rpc_pb2_grpc.WatchServicer):
    def __init__(self, hub: WatchHub, headers: ResponseHeaders, fragment_bytes: int) -> None:
        self.hub = hub
        self.headers = headers
        self.fragment_bytes = fragment_bytes

    async def Watch(self, request_iterator, context):
        stream = self.hub.open_stream()
        requests = asyncio.create_task(self._read_requests(request_iterator, stream))
        try:
            while True:
                response = asyncio.ensure_future(stream.next_response())
                done, _ = await asyncio.wait({response, requests}, return_when=asyncio.FIRST_COMPLETED)
                if response not in done:
                    # The client closed its side: etcd ends the stream too.
                    response.cancel()
                    return
                message = response.result()
                if message is None:  # the server is shutting down
                    return
                # Watch responses carry the revision the hub gave them (0 for a compacted cancel).
                self.headers.fill_identity(message.header)
                if stream.wants_fragments(message.watch_id):
                    for fragment in fragments(message, self.fragment_bytes):
                        yield fragment
                else:
                    yield message
        finally:
            requests.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await requests
            stream.close()

    @staticmethod
    async def _read_requests(request_iterator, stream) -> None:
        async for request in request_iterator:
            kind = request.WhichOneof("request_union")
            if kind == "create_request":
                stream.create(request.create_request)
            elif kind == "cancel_request":
                stream.cancel(request.cancel_request.watch_id)
            elif kind == "progress_request":
                stream.request_progress()


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
