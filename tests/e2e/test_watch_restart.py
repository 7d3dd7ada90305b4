"""Watches and leases across restarts of the server: SIGTERM, then kill -9, on the same data dir and port.

Watch: writers keep writing (through a client that waits for the server and retries) while a
watcher streams; the server is stopped under them, restarted in place, and the watcher reconnects
with start_revision = last seen + 1. Writes are idempotent creates of unique keys (a Txn on
create_revision == 0), so a retried write whose first attempt did commit makes no second revision;
the whole history is then every key under the prefix, one revision each, contiguous. The
concatenation of the watcher's segments must be exactly that history: no gap, no duplicate.

Lease: a granted lease still exists after a restart, its keys still attached, its TTL renewed to
the full TTL (etcd renews every lease when a new leader takes over); a lease revoked before the
restart stays gone; a short lease still expires after the restart, deleting its key.
"""
from __future__ import annotations

import threading
import time

import grpc
import pytest
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc

from tests.harness.differential import prefix_end
from tests.harness.waiting import poll
from tests.harness.watch_streams import WatchStream, check_atomic

from .conftest import Subject

PREFIX = b"restart/"
WRITERS = 3
MAX_WRITES_PER_WRITER = 5000  # a bound; the writers stop when told to, after the last restart
EVENTS_PER_SEGMENT = 100
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.UNKNOWN}
# Reconnect quickly once the server is back (gRPC's default backoff starts at 1 s and grows).
RETRY_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                         ("grpc.max_reconnect_backoff_ms", 500)]


class Writers:
    """Threads creating unique keys, each retried until acknowledged, until told to finish (a
    write once started is always carried through to its acknowledgement)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.acked = 0
        self.retries = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.finish = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(WRITERS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> None:
        self.finish.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.abort.set()
        assert not any(t.is_alive() for t in self.threads), "writers did not finish in time"
        assert not self.errors, self.errors

    def run(self, n: int) -> None:
        with grpc.insecure_channel(self.endpoint, options=RETRY_CHANNEL_OPTIONS) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for i in range(MAX_WRITES_PER_WRITER):
                if self.finish.is_set():
                    return
                k = PREFIX + b"w%d/%05d" % (n, i)
                request = pb.TxnRequest(
                    compare=[pb.Compare(key=k, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=0)],
                    success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=k))])
                while not self.abort.is_set():
                    try:
                        kv.Txn(request, timeout=10, wait_for_ready=True)
                        break
                    except grpc.RpcError as e:
                        if e.code() not in RETRYABLE:
                            with self.lock:
                                self.errors.append(f"writer {n}: {e.code()} {e.details()}")
                            return
                        with self.lock:
                            self.retries += 1
                        time.sleep(0.05)  # pacing of the retries, not synchronisation
                else:
                    return
                with self.lock:
                    self.acked += 1

    def count(self) -> int:
        with self.lock:
            return self.acked


class Segment:
    """One watch connection: a fresh channel, a prefix watcher from `start`."""

    def __init__(self, endpoint: str, start: int):
        self.channel = grpc.insecure_channel(endpoint)
        self.stream = WatchStream(self.channel, f"segment from {start}")
        created = self.stream.create(key=PREFIX, range_end=prefix_end(PREFIX), start_revision=start)
        assert created.created and not created.canceled, created
        self.watch_id = created.watch_id
        self.start = start

    def pump_until(self, condition, timeout: float, what: str) -> None:
        self.stream.wait_for(condition, timeout, what)

    def received(self) -> int:
        return len(self.stream.events(self.watch_id))

    def wait_end(self) -> None:
        """The server went away: the stream ends (an error); keep everything received before."""
        self.stream.wait_for(lambda: self.stream.ended, 30, "the stream to end")

    def close(self) -> None:
        self.stream.close()
        self.channel.close()


def history(endpoint: str) -> tuple[list, int]:
    with grpc.insecure_channel(endpoint) as channel:
        r = rpc_pb2_grpc.KVStub(channel).Range(pb.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX)), timeout=30)
    return sorted(r.kvs, key=lambda kv: kv.mod_revision), r.header.revision


@pytest.mark.timeout(180)
def test_watch_resumes_exactly_after_sigterm_and_kill_9(tmp_path):
    subject = Subject(tmp_path)
    server = subject.start()
    segments: list[Segment] = []
    writers = None
    try:
        endpoint = server.endpoint
        _, before = history(endpoint)
        start = before + 1
        writers = Writers(endpoint)
        segments.append(Segment(endpoint, start))
        writers.start()
        for stop in ("SIGTERM", "kill -9", None):
            seg = segments[-1]
            # let this segment see some live events first: the writers are busy when it stops
            seg.pump_until(lambda: seg.received() >= EVENTS_PER_SEGMENT, 30, f"{EVENTS_PER_SEGMENT} events")
            if stop is None:
                break
            if stop == "SIGTERM":
                subject.server.stop()
            else:
                subject.server.kill()
            seg.wait_end()
            last = seg.stream.last_revision(seg.watch_id) or seg.start - 1
            subject.start()
            segments.append(Segment(endpoint, last + 1))
        writers.join(120)
        kvs, head = history(endpoint)
        seg = segments[-1]
        seg.stream.wait_events_through(seg.watch_id, head, 30)

        # the expected history: every key once, one revision each, contiguous after `before`
        assert len(kvs) == writers.count()
        assert all(kv.version == 1 and kv.create_revision == kv.mod_revision and kv.value == kv.key for kv in kvs)
        assert [kv.mod_revision for kv in kvs] == list(range(before + 1, head + 1))
        expected = [(kv.key, kv.mod_revision) for kv in kvs]

        got = []
        for seg in segments:
            check_atomic(seg.stream.by_id[seg.watch_id], label=seg.stream.name)
            events = seg.stream.events(seg.watch_id)
            assert all(e.type == e.PUT and e.kv.version == 1 and e.kv.value == e.kv.key for e in events)
            assert not events or events[0].kv.mod_revision >= seg.start
            got.extend((e.kv.key, e.kv.mod_revision) for e in events)
        missing = sorted(set(expected) - set(got), key=lambda x: x[1])
        repeated = len(got) - len(set(got))
        assert got == expected, (f"watch across restarts: {len(got)} events, expected {len(expected)}; "
                                 f"missing {missing[:10]}, {repeated} repeated; segments start at "
                                 f"{[s.start for s in segments]}")
        print(f"\n{len(expected)} writes ({writers.retries} retries) across a SIGTERM and a kill -9; "
              f"segments {[(s.start, s.received()) for s in segments]}")
    finally:
        if writers is not None:
            writers.abort.set()
        for seg in segments:
            seg.close()
        subject.stop()


def lease_client(endpoint: str):
    channel = grpc.insecure_channel(endpoint)
    return channel, rpc_pb2_grpc.LeaseStub(channel), rpc_pb2_grpc.KVStub(channel)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", ["SIGTERM", "kill -9"])
def test_leases_survive_a_restart(tmp_path, stop):
    subject = Subject(tmp_path)
    server = subject.start()
    try:
        channel, lease, kv = lease_client(server.endpoint)
        with channel:
            kept = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=10), timeout=10).ID
            chosen = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600, ID=0x1234), timeout=10).ID
            revoked = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=10).ID
            for name, lease_id in [(b"a", kept), (b"b", kept), (b"c", chosen), (b"gone", revoked)]:
                kv.Put(pb.PutRequest(key=PREFIX + name, value=name, lease=lease_id), timeout=10)
            lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=revoked), timeout=10)
            # let the 10 s lease age, so that a renewal on restart shows
            poll(lambda: lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=kept), timeout=10).TTL <= 7,
                       10, "the lease to age by 3 s")
            short = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=4), timeout=10).ID
            before_stop = kv.Put(pb.PutRequest(key=PREFIX + b"short", value=b"short", lease=short),
                                 timeout=10).header.revision
        if stop == "SIGTERM":
            subject.server.stop()
        else:
            subject.server.kill()
        server = subject.start()

        channel, lease, kv = lease_client(server.endpoint)
        with channel, WatchStream(channel, "after restart") as stream:
            ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=kept, keys=True), timeout=10)
            assert ttl.grantedTTL == 10 and 8 <= ttl.TTL <= 12, f"TTL not renewed on restart: {ttl}"
            assert sorted(ttl.keys) == [PREFIX + b"a", PREFIX + b"b"]
            ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=chosen, keys=True), timeout=10)
            assert ttl.grantedTTL == 600 and 590 <= ttl.TTL <= 602 and list(ttl.keys) == [PREFIX + b"c"]
            assert lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=revoked), timeout=10).TTL == -1
            listed = {s.ID for s in lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10).leases}
            assert {kept, chosen} <= listed and revoked not in listed
            assert [kv_.lease for kv_ in kv.Range(pb.RangeRequest(key=PREFIX + b"a"), timeout=10).kvs] == [kept]
            # keep-alive works on a recovered lease
            (answer,) = list(lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=kept)]), timeout=10))
            assert answer.ID == kept and answer.TTL == 10
            # the short lease still expires after the restart, deleting its key (and only its key)
            # (watched from before the stop: an expiry during the restart is seen too)
            watched = stream.create(key=PREFIX, range_end=prefix_end(PREFIX), start_revision=before_stop + 1)
            stream.wait_for(lambda: any(e.kv.key == PREFIX + b"short" for e in stream.events(watched.watch_id)),
                            20, "the short lease's key to expire")
            (deletion,) = stream.events(watched.watch_id)
            assert deletion.type == deletion.DELETE
            assert lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=short), timeout=10).TTL == -1
            remaining = [x.key for x in kv.Range(pb.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX)),
                                                 timeout=10).kvs]
            assert remaining == [PREFIX + b"a", PREFIX + b"b", PREFIX + b"c"]
            for lease_id in (kept, chosen):
                lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=10)
    finally:
        subject.stop()
