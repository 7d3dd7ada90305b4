"""Watch streams end cleanly (issue 16, item 3): a client cancelling its stream leaves no task of
the server pending and unreferenced (asyncio reports those as "Task was destroyed but it is
pending!" when they are collected: work dropped without being cancelled).

The real server as a process (embedded store; in-process, grpc.aio would bind this test process
to one event loop) and a real gRPC client: many streams with a watcher each, each cancelled by the
client while the server waits for the next event; then the server is stopped and its log, where
asyncio reports such tasks, is checked.
"""
from __future__ import annotations

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from tests.harness import processes

pytestmark = pytest.mark.timeout(60)

STREAMS = 50


def test_cancelled_watch_streams_leave_no_pending_task(tmp_path):
    server = processes.start_shim(tmp_path, backend="embedded", data_dir=tmp_path / "data")
    try:
        with grpc.insecure_channel(server.endpoint) as channel:
            watch = rpc_pb2_grpc.WatchStub(channel)
            for i in range(STREAMS):
                requests = iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k%d" % i))])
                call = watch.Watch(requests)
                assert next(call).created
                call.cancel()  # the server is waiting for the next event on this stream
            # Every stream has ended on the server once a new one is served after them all.
            kv = rpc_pb2_grpc.KVStub(channel)
            kv.Put(pb.PutRequest(key=b"k0", value=b"v"), timeout=10)
    finally:
        assert server.stop() == 0
    leaked = [line for line in server.log().splitlines() if "destroyed but it is pending" in line]
    assert not leaked, f"{len(leaked)} tasks dropped while pending: {leaked[:3]}"
