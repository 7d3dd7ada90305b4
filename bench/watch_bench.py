"""Benchmark watch delivery and leases: the shim against a real etcd 3.5 on this machine (not a test).

    python bench/watch_bench.py [--quick] [--out results.json] [--servers etcd,shim]

For each server (a fresh process with a temporary data dir, started by tests/harness/processes.py):

  a. event delivery latency, from the Put's acknowledgement to the watcher's receipt of the event
     (p50/p99; 0 when the event arrived before the acknowledgement, which happens), and from the
     Put being sent to the receipt:
       - 1 watcher on the written key;
       - 1,000 watchers, all on the written key (fan-out; over 10 streams on 2 connections): every
         watcher's receipt counts, and the time until the last of them has it ("all delivered");
       - 1,000 watchers on other keys plus 1 on the written key (the cost of many watchers that
         do not match);
     puts are sequential: the next one is sent once every watcher has the previous event;
  b. lease grant rate: concurrent LeaseGrant loops for a fixed time (ops/s, p50/p99);
  c. keep-alive rate: concurrent LeaseKeepAlive streams, each sending the next renewal when the
     previous one is answered, over a set of granted leases (renewals/s, p50/p99).

Prints a markdown table (etcd, shim, shim/etcd) and writes the same figures as JSON to --out.
The load generator is one Python process on the same machine as the server: with 1,000 watchers
parsing the responses is a large part of what is measured, for both servers alike; compare the
ratios, and read the absolute figures with that in mind.
"""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from bench.report import lookup, new_results, percentile, publish, ratio_table, ratios, stop_flushed  # noqa: E402
from tests.harness import processes  # noqa: E402

OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]


def start_server(kind: str, workdir: pathlib.Path) -> processes.Server:
    if kind == "etcd":
        return processes.start_etcd(workdir / "etcd")
    return processes.start_shim(workdir / "shim", extra_args=["--log-level", "warn"])


def summary(seconds: list[float], prefix: str = "") -> dict:
    values = sorted(seconds)
    return {f"{prefix}p50_ms": round(percentile(values, 50) * 1000, 3),
            f"{prefix}p99_ms": round(percentile(values, 99) * 1000, 3)}


# ------------------------------------------------------------------------------------------------
# (a) delivery latency
# ------------------------------------------------------------------------------------------------

class Receiver:
    """Watch streams whose reader tasks note when each watcher received the event of a revision."""

    def __init__(self, channels: list[grpc.aio.Channel], streams: int):
        self.calls = [rpc_pb2_grpc.WatchStub(channels[i % len(channels)]).Watch() for i in range(streams)]
        self.created = 0
        self.received: dict[int, list[float]] = {}  # revision -> receipt times, one per matching watcher
        self.waiting: dict[int, tuple[int, asyncio.Future]] = {}
        self.tasks: list[asyncio.Task] = []

    async def watch(self, keys: list[bytes]) -> None:
        """One watcher per key, spread over the streams; returns once all are created."""
        for i, key in enumerate(keys):
            call = self.calls[i % len(self.calls)]
            await call.write(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key)))
        if not self.tasks:
            self.tasks = [asyncio.create_task(self._read(call)) for call in self.calls]
        target = self.created + len(keys)
        deadline = time.monotonic() + 60
        while self.created < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.created} of {target} watchers created")
            await asyncio.sleep(0.01)

    async def _read(self, call) -> None:
        while True:
            r = await call.read()
            if r is grpc.aio.EOF:
                return
            now = time.perf_counter()
            if r.created:
                self.created += 1
                continue
            for e in r.events:
                times = self.received.setdefault(e.kv.mod_revision, [])
                times.append(now)
                waiting = self.waiting.get(e.kv.mod_revision)
                if waiting and len(times) >= waiting[0] and not waiting[1].done():
                    waiting[1].set_result(None)

    async def wait(self, revision: int, count: int, timeout: float = 30) -> list[float]:
        times = self.received.get(revision, [])
        if len(times) < count:
            future = asyncio.get_running_loop().create_future()
            self.waiting[revision] = (count, future)
            await asyncio.wait_for(future, timeout)
            del self.waiting[revision]
        return self.received.pop(revision)

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def delivery(endpoint: str, scenario: str, puts: int, watchers: int) -> dict:
    """Sequential puts to one key; the delivery of each event to the watchers that match it."""
    channels = [grpc.aio.insecure_channel(endpoint, options=OPTIONS) for _ in range(3)]
    kv = rpc_pb2_grpc.KVStub(channels[0])
    receiver = Receiver(channels[1:], streams=1 if watchers == 1 else 10)
    key = b"wb/%s/key" % scenario.encode()
    try:
        await kv.Range(rpc_pb2.RangeRequest(key=b"warmup"), timeout=30, wait_for_ready=True)
        if scenario == "fan-out":
            await receiver.watch([key] * watchers)
            matching = watchers
        else:  # watchers on other keys, plus one on the written key
            await receiver.watch([b"wb/%s/other-%05d" % (scenario.encode(), i) for i in range(watchers - 1)] + [key])
            matching = 1
        from_ack, from_send, all_delivered = [], [], []
        for i in range(puts + 5):  # the first few warm up
            sent = time.perf_counter()
            response = await kv.Put(rpc_pb2.PutRequest(key=key, value=b"v%d" % i), timeout=30)
            acked = time.perf_counter()
            times = await receiver.wait(response.header.revision, matching)
            if i < 5:
                continue
            from_ack.extend(max(0.0, t - acked) for t in times)
            from_send.extend(t - sent for t in times)
            all_delivered.append(max(times) - acked if max(times) > acked else 0.0)
        out = {"puts": puts, "watchers": watchers, "deliveries": len(from_ack), **summary(from_ack),
               **summary(from_send, "from_send_")}
        if matching > 1:
            out.update(summary(all_delivered, "all_delivered_"))
        return out
    finally:
        await receiver.close()
        for channel in channels:
            await channel.close()


# ------------------------------------------------------------------------------------------------
# (b) lease grants, (c) keep-alives
# ------------------------------------------------------------------------------------------------

async def grants(endpoint: str, clients: int, duration: float) -> dict:
    channels = [grpc.aio.insecure_channel(endpoint, options=OPTIONS) for _ in range(4)]
    stubs = [rpc_pb2_grpc.LeaseStub(c) for c in channels]
    latencies: list[float] = []
    stop_at = 0.0

    async def client(n: int) -> None:
        stub = stubs[n % len(stubs)]
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            await stub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600), timeout=30)
            latencies.append(time.perf_counter() - t0)

    try:
        for stub in stubs:
            await stub.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600), timeout=30, wait_for_ready=True)
        started = time.monotonic()
        stop_at = started + duration
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.monotonic() - started
    finally:
        for c in channels:
            await c.close()
    return {"clients": clients, "grants": len(latencies), "ops_per_s": round(len(latencies) / elapsed, 1),
            **summary(latencies)}


async def keep_alives(endpoint: str, streams: int, leases: int, duration: float) -> dict:
    channels = [grpc.aio.insecure_channel(endpoint, options=OPTIONS) for _ in range(4)]
    stubs = [rpc_pb2_grpc.LeaseStub(c) for c in channels]
    latencies: list[float] = []
    stop_at = 0.0
    try:
        ids = [(await stubs[0].LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=600), timeout=30, wait_for_ready=True)).ID
               for _ in range(leases)]

        async def stream(n: int) -> None:
            call = stubs[n % len(stubs)].LeaseKeepAlive()
            i = n
            try:
                while time.monotonic() < stop_at:
                    lease_id = ids[i % len(ids)]
                    i += streams
                    t0 = time.perf_counter()
                    await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                    r = await call.read()
                    assert r.ID == lease_id and r.TTL == 600, r
                    latencies.append(time.perf_counter() - t0)
                await call.done_writing()
            finally:
                call.cancel()

        started = time.monotonic()
        stop_at = started + duration
        await asyncio.gather(*(stream(n) for n in range(streams)))
        elapsed = time.monotonic() - started
    finally:
        for c in channels:
            await c.close()
    return {"streams": streams, "leases": leases, "renewals": len(latencies),
            "ops_per_s": round(len(latencies) / elapsed, 1), **summary(latencies)}


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

SCENARIOS = [  # (result key, label, scenario, watchers)
    ("delivery_1", "1 watcher", "single", 1),
    ("delivery_1000_fanout", "1,000 watchers on the key", "fan-out", 1000),
    ("delivery_1000_others", "1,000 watchers, 1 on the key", "others", 1000),
]


async def bench_server(kind: str, args, workdir: pathlib.Path) -> dict:
    """Every measurement on one fresh server. (Starting and stopping the server block the event
    loop briefly; nothing is measured meanwhile.)"""
    result: dict = {}
    server = start_server(kind, workdir)
    try:
        for key, label, scenario, watchers in SCENARIOS:
            puts = args.puts if watchers == 1 or scenario == "others" else args.fanout_puts
            print(f"[{kind}] delivery: {label}, {puts} puts", file=sys.stderr)
            result[key] = await delivery(server.endpoint, scenario, puts, watchers)
        print(f"[{kind}] lease grants x{args.clients}, {args.duration}s", file=sys.stderr)
        result["grant"] = await grants(server.endpoint, args.clients, args.duration)
        print(f"[{kind}] keep-alives x{args.clients} streams, {args.duration}s", file=sys.stderr)
        result["keep_alive"] = await keep_alives(server.endpoint, args.clients, 100, args.duration)
    finally:
        result["exit_code"] = stop_flushed(server)
    return result


async def bench_all(servers: list[str], args, workdir: pathlib.Path) -> dict:
    # one event loop for the whole run: gRPC's asyncio machinery outlives a loop closed under it
    return {kind: await bench_server(kind, args, workdir / kind) for kind in servers}


def rows(results: dict, args) -> list[tuple[str, float | None, float | None]]:
    def get(kind, *path):
        return lookup(results, kind, *path)

    out = []
    for key, label, scenario, _ in SCENARIOS:
        out += [(f"delivery, {label}: ack→receipt p50 ms", get("etcd", key, "p50_ms"), get("shim", key, "p50_ms")),
                (f"delivery, {label}: ack→receipt p99 ms", get("etcd", key, "p99_ms"), get("shim", key, "p99_ms")),
                (f"delivery, {label}: send→receipt p99 ms", get("etcd", key, "from_send_p99_ms"),
                 get("shim", key, "from_send_p99_ms"))]
        if scenario == "fan-out":
            out += [(f"delivery, {label}: all delivered p50 ms", get("etcd", key, "all_delivered_p50_ms"),
                     get("shim", key, "all_delivered_p50_ms")),
                    (f"delivery, {label}: all delivered p99 ms", get("etcd", key, "all_delivered_p99_ms"),
                     get("shim", key, "all_delivered_p99_ms"))]
    out += [(f"lease grant x{args.clients}: ops/s", get("etcd", "grant", "ops_per_s"), get("shim", "grant", "ops_per_s")),
            (f"lease grant x{args.clients}: p99 ms", get("etcd", "grant", "p99_ms"), get("shim", "grant", "p99_ms")),
            (f"keep-alive x{args.clients} streams: renewals/s", get("etcd", "keep_alive", "ops_per_s"),
             get("shim", "keep_alive", "ops_per_s")),
            (f"keep-alive x{args.clients} streams: p99 ms", get("etcd", "keep_alive", "p99_ms"),
             get("shim", "keep_alive", "p99_ms"))]
    return out


def table(results: dict, args) -> str:
    return "\n".join(ratio_table(rows(results, args)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer puts, shorter runs (under 2 minutes)")
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON to this path")
    parser.add_argument("--servers", default="etcd,shim", help="comma-separated: etcd,shim")
    parser.add_argument("--puts", type=int, help="puts measured with 1 matching watcher (default 1000, quick 200)")
    parser.add_argument("--fanout-puts", type=int, help="puts measured with 1,000 matching watchers (default 200, quick 40)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent grant loops / keep-alive streams")
    parser.add_argument("--duration", type=float, help="seconds per lease run (default 10, quick 3)")
    args = parser.parse_args(argv)
    args.puts = args.puts or (200 if args.quick else 1000)
    args.fanout_puts = args.fanout_puts or (40 if args.quick else 200)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    servers = [s for s in args.servers.split(",") if s]

    started = time.monotonic()
    results = new_results({"quick": args.quick, "puts": args.puts, "fanout_puts": args.fanout_puts,
                           "clients": args.clients, "duration_s": args.duration}, args.out)
    with tempfile.TemporaryDirectory(prefix="watch-bench-") as tmp:
        results.update(asyncio.run(bench_all(servers, args, pathlib.Path(tmp))))
    results["ratios"] = ratios(rows(results, args))
    publish(results, table(results, args), started, "the load generator is one Python process on the same machine",
            args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
