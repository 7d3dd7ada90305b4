"""mvcc/watch.py: a watch client that does not read its answers is not read either.

Each creation or progress request queues an answer; WatchStream.wait_for_reader (awaited by the
Watch servicer before it takes the next request) holds requests back while a full queue of
answers is unread, so that HTTP/2 flow control stops the client instead of the server's memory
growing. Live events to such a client stop as well (their watchers catch up later from the log).
"""
from __future__ import annotations

import asyncio

from cosmos_etcd_shim.mvcc.index import KeyIndex
from cosmos_etcd_shim.mvcc.watch import MAX_QUEUED_RESPONSES, WatchHub
from cosmos_etcd_shim.proto.rpc_pb2 import WatchCreateRequest


async def test_requests_wait_until_the_client_reads():
    hub = WatchHub(KeyIndex(), log=None, current_revision=lambda: 1, compact_revision=lambda: 0)
    stream = hub.open_stream()
    try:
        for i in range(MAX_QUEUED_RESPONSES - 1):
            stream.create(WatchCreateRequest(key=b"k%d" % i))
        await stream.wait_for_reader()  # one answer short of a full queue: not held back

        stream.create(WatchCreateRequest(key=b"last"))
        waiting = asyncio.create_task(stream.wait_for_reader())
        await asyncio.sleep(0)  # let it run until it blocks
        assert not waiting.done(), "requests were taken while the client had a full queue unread"

        for _ in range(MAX_QUEUED_RESPONSES // 2):
            assert (await stream.next_response()).created
        await asyncio.sleep(0)
        assert not waiting.done()  # still half a queue unread
        assert (await stream.next_response()).created
        await waiting  # below half: requests are read again
    finally:
        await stream.close()
