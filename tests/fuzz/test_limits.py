"""The limits that keep one client from making the server hold unbounded state, with small values:

* --max-concurrent-streams: the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS the server announces
  (etcd's flag; by default no limit, as etcd announces 2^32-1);
* --max-watchers-per-stream: a creation beyond it is refused as etcd refuses a watch (created and
  canceled at once, watch id -1, a reason), and the stream goes on serving;
* --max-range-keys: a Range answer beyond it is RESOURCE_EXHAUSTED, inside a Txn too, and a Txn
  refused for it writes nothing; pages (limit) and counts stay available.

--max-request-bytes and --max-txn-ops are compared with etcd in tests/e2e/test_cli.py and
tests/fuzz/test_grpc_fuzz.py; a watch client that does not read is tested in
tests/unit/test_watch_backpressure.py.
"""
from __future__ import annotations

import socket
import struct
import threading

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from tests.harness import processes

SETTINGS_MAX_CONCURRENT_STREAMS = 0x3


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    shim = processes.start_shim(tmp_path_factory.mktemp("limited"), extra_args=[
        "--max-concurrent-streams", "7", "--max-watchers-per-stream", "3", "--max-range-keys", "5"])
    channel = grpc.insecure_channel(shim.endpoint)
    yield shim, channel
    channel.close()
    shim.stop()


def announced_settings(endpoint: str) -> dict[int, int]:
    """The SETTINGS frame an HTTP/2 server sends first (RFC 9113 §6.5), read by hand."""
    host, port = endpoint.rsplit(":", 1)
    empty_settings = bytes([0, 0, 0, 0x4, 0]) + struct.pack(">I", 0)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + empty_settings)
        received = b""
        while True:
            while len(received) < 9 or len(received) < 9 + int.from_bytes(received[:3], "big"):
                chunk = conn.recv(4096)
                assert chunk, "the server closed the connection before its SETTINGS"
                received += chunk
            length, kind, flags = int.from_bytes(received[:3], "big"), received[3], received[4]
            payload, received = received[9:9 + length], received[9 + length:]
            if kind == 0x4 and not flags & 0x1:  # SETTINGS, not an ACK
                return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
                        for i in range(0, length, 6)}


def test_max_concurrent_streams(limited, tmp_path):
    shim, _ = limited
    assert announced_settings(shim.endpoint)[SETTINGS_MAX_CONCURRENT_STREAMS] == 7
    unlimited = processes.start_shim(tmp_path)
    try:
        # no limit by default: none announced (HTTP/2's default), where etcd announces 2^32-1
        assert announced_settings(unlimited.endpoint).get(SETTINGS_MAX_CONCURRENT_STREAMS, 2**32 - 1) >= 2**31 - 1
    finally:
        unlimited.stop()


class WatchStream:
    """One Watch stream driven request by request."""

    def __init__(self, channel: grpc.Channel):
        self._requests: list[pb.WatchRequest] = []
        self._ready = threading.Condition()
        self._closed = False
        self.responses = rpc_pb2_grpc.WatchStub(channel).Watch(self._generate(), timeout=60)

    def _generate(self):
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._requests or self._closed)
                if self._closed:
                    return
                request = self._requests.pop(0)
            yield request

    def send(self, request: pb.WatchRequest) -> pb.WatchResponse:
        with self._ready:
            self._requests.append(request)
            self._ready.notify()
        return next(self.responses)

    def create(self, key: bytes) -> pb.WatchResponse:
        return self.send(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key)))

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self.responses.cancel()


def test_max_watchers_per_stream(limited):
    _, channel = limited
    stream = WatchStream(channel)
    try:
        ids = [stream.create(b"w/%d" % i).watch_id for i in range(3)]
        assert ids == [0, 1, 2]
        refused = stream.create(b"w/3")
        assert (refused.watch_id, refused.created, refused.canceled) == (-1, True, True)
        assert refused.cancel_reason == "cosmos-etcd: too many watchers on the stream (--max-watchers-per-stream 3)"
        # the stream goes on: a cancelled watcher makes room, and the others still see their events
        assert stream.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=1))).canceled
        assert stream.create(b"w/3").created
        rpc_pb2_grpc.KVStub(channel).Put(pb.PutRequest(key=b"w/0", value=b"v"), timeout=10)
        assert [e.kv.key for e in next(stream.responses).events] == [b"w/0"]
    finally:
        stream.close()
    other = WatchStream(channel)  # the limit is per stream
    try:
        assert [other.create(b"w/%d" % i).canceled for i in range(3)] == [False] * 3
    finally:
        other.close()


def test_max_range_keys(limited):
    _, channel = limited
    kv = rpc_pb2_grpc.KVStub(channel)
    for i in range(6):
        kv.Put(pb.PutRequest(key=b"r/%d" % i, value=b"v"), timeout=10)
    everything = pb.RangeRequest(key=b"r/", range_end=b"r0")
    expected = ("cosmos-etcd: range answer has more than 5 keys (--max-range-keys); read it in pages with limit")
    with pytest.raises(grpc.RpcError) as refused:
        kv.Range(everything, timeout=10)
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, expected)

    page = kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", limit=5), timeout=10)
    assert (len(page.kvs), page.count, page.more) == (5, 6, True)
    assert kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", count_only=True), timeout=10).count == 6
    assert len(kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", min_mod_revision=page.kvs[1].mod_revision),
                        timeout=10).kvs) == 5

    revision = page.header.revision
    writing_txn = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"r/new", value=b"v")),
                                         pb.RequestOp(request_range=everything)])
    with pytest.raises(grpc.RpcError) as refused:
        kv.Txn(writing_txn, timeout=10)
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, expected)
    after = kv.Range(pb.RangeRequest(key=b"r/new"), timeout=10)
    assert (after.header.revision, after.count) == (revision, 0), "the refused Txn wrote"
