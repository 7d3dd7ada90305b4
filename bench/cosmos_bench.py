"""Benchmark the shim on its Cosmos backend against the local Cosmos server (not a test).

    python bench/cosmos_bench.py [--quick] [--out results.json]

Every replica is `python -m cosmos_etcd_shim serve --backend cosmos` (tests/harness/processes.py) with its
Prometheus metrics on a port of its own; the replicas of one measurement share one local Cosmos server
(`@vercel/cosmosdb-server`, tests/harness/cosmos.py) and one database/container.

  1. Cosmos requests (and RU) per etcd operation: the replica's `cosmos_etcd_cosmos_requests_total{op,status}`
     and `cosmos_etcd_cosmos_request_units_total{op}` are scraped before and after each phase; the
     difference is divided by the number of etcd operations the phase completed. Background traffic
     (tailing the log for other replicas' writes, heartbeats) runs during every phase and is included;
     the "idle" row shows its rate on its own. The local server charges 1 RU a request, so RU equals
     requests here (on Azure a point read of 1 KiB is 1 RU, a write about 5-10 RU).
  2. Write throughput: puts/s from 32 concurrent asyncio grpc.aio clients spread over 1 and over 3
     replicas on one container; the 3 replicas either each write the log, or elect a leader
     (--listen-peer-urls) to which the others forward.
  3. Restart time against history length: N revisions written to a fresh container, the replica stopped
     and started again (timed until it serves a Range); then the same after a Compact at head, where the
     restart reads the checkpoint instead of the history.

Prints one markdown table a part and writes the figures as JSON to --out.
The load generator is one Python process on the same machine as the servers: read absolute figures with that in mind.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import re
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from bench.report import new_results, publish  # noqa: E402
from tests.harness import processes  # noqa: E402
from tests.harness.backends import LOCAL_COSMOS_KEY  # noqa: E402
from tests.harness.cosmos import start_cosmos  # noqa: E402
from tests.harness.cosmos_shims import elected  # noqa: E402

CLIENTS = 32


# ------------------------------------------------------------------------------------------------
# replicas and metrics
# ------------------------------------------------------------------------------------------------

class Replica:
    """One shim process on the Cosmos backend, with its metrics port."""

    def __init__(self, workdir: pathlib.Path, cosmos, name: str, container: str | None = None,
                 election: bool = False):
        self.workdir, self.cosmos, self.name, self.container = workdir, cosmos, name, container
        self.election = election  # a peer listener: the replicas elect a leader that makes every write
        self.metrics_port = processes.free_port()
        self.server: processes.Server | None = None
        self.port: int | None = None

    def start(self) -> float:
        """Start (or restart on the same data dir and port); returns the seconds until it served a Range."""
        extra = ["--cosmos-endpoint", self.cosmos.endpoint, "--name", self.name,
                 "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}", "--log-level", "warn"]
        if self.container:
            extra += ["--cosmos-container", self.container]
        if self.election:
            extra += elected()
        data_dir = self.server.data_dir if self.server else None
        started = time.monotonic()
        self.server = processes.start_shim(self.workdir, backend="cosmos", env=LOCAL_COSMOS_KEY, extra_args=extra,
                                           data_dir=data_dir, port=self.port)
        elapsed = time.monotonic() - started
        self.port = int(self.server.endpoint.rsplit(":", 1)[1])
        return elapsed

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def scrape(self) -> dict:
        """{'requests': {op: n}, 'errors': {op: n}, 'ru': {op: x}} from the replica's /metrics."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out: dict = {"requests": {}, "errors": {}, "ru": {}}
        for line in text.splitlines():
            m = re.match(r'cosmos_etcd_cosmos_requests_total\{(.*)\} ([0-9.e+-]+)$', line)
            if m:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                op, value = labels.get("op", "?"), float(m.group(2))
                out["requests"][op] = out["requests"].get(op, 0) + value
                if not labels.get("status", "").startswith("2"):
                    out["errors"][op] = out["errors"].get(op, 0) + value
                continue
            m = re.match(r'cosmos_etcd_cosmos_request_units_total\{(.*)\} ([0-9.e+-]+)$', line)
            if m:
                op = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).get("op", "?")
                out["ru"][op] = out["ru"].get(op, 0) + float(m.group(2))
        return out


def diff(before: dict, after: dict) -> dict:
    out = {}
    for kind in ("requests", "errors", "ru"):
        ops = set(before[kind]) | set(after[kind])
        d = {op: round(after[kind].get(op, 0) - before[kind].get(op, 0), 3) for op in ops}
        out[kind] = {op: v for op, v in sorted(d.items()) if v}
    out["total_requests"] = round(sum(out["requests"].values()), 3)
    out["total_ru"] = round(sum(out["ru"].values()), 3)
    return out


def merge(diffs: list[dict]) -> dict:
    out: dict = {"requests": {}, "errors": {}, "ru": {}}
    for d in diffs:
        for kind in ("requests", "errors", "ru"):
            for op, v in d[kind].items():
                out[kind][op] = round(out[kind].get(op, 0) + v, 3)
    out["total_requests"] = round(sum(out["requests"].values()), 3)
    out["total_ru"] = round(sum(out["ru"].values()), 3)
    return out


@contextlib.contextmanager
def cosmos_server(workdir: pathlib.Path):
    cosmos = start_cosmos(workdir)
    try:
        yield cosmos
    finally:
        cosmos.stop()


def channel(endpoint: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])


# ------------------------------------------------------------------------------------------------
# part 1: requests per etcd operation
# ------------------------------------------------------------------------------------------------

async def measured(replica: Replica, label: str, ops_fn, note: str = "") -> dict:
    """Run ops_fn() (returns the number of etcd operations it completed) between two scrapes."""
    before = replica.scrape()
    started = time.monotonic()
    ops = await ops_fn()
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.05)  # let the counters of the last responses land
    d = diff(before, replica.scrape())
    per = round(d["total_requests"] / ops, 3) if ops else None
    print(f"  [{label}] {ops} ops, {d['total_requests']:g} requests ({per}/op) in {elapsed:.1f}s {d['requests']}",
          file=sys.stderr)
    return {"label": label, "ops": ops, "seconds": round(elapsed, 2), **d,
            "requests_per_op": per, "ru_per_op": round(d["total_ru"] / ops, 3) if ops else None, "note": note}


async def part_costs(cosmos, workdir: pathlib.Path, args) -> dict:
    replica = Replica(workdir / "costs", cosmos, "replica-1")
    replica.start()
    rows: list[dict] = []
    try:
        async with channel(replica.endpoint) as ch:
            kv, lease, watch = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch), rpc_pb2_grpc.WatchStub(ch)
            value = b"v" * 128
            n_seq = args.seq_ops
            n_load = args.load_ops

            async def seq_put():
                for i in range(n_seq):
                    await kv.Put(rpc_pb2.PutRequest(key=b"seq/%06d" % i, value=value), timeout=30)
                return n_seq
            rows.append(await measured(replica, "Put, 1 client", seq_put, "aim <= 1"))

            async def load_put():
                counter = iter(range(n_load))
                done = 0

                async def client():
                    nonlocal done
                    for i in counter:
                        await kv.Put(rpc_pb2.PutRequest(key=b"load/%06d" % (i % 1000), value=value), timeout=30)
                        done += 1
                await asyncio.gather(*(client() for _ in range(CLIENTS)))
                return done
            rows.append(await measured(replica, f"Put, {CLIENTS} clients", load_put,
                                       "requests per acknowledged write; aim <= 1 on average"))

            async def seq_get(serializable=False):
                for i in range(n_seq):
                    await kv.Range(rpc_pb2.RangeRequest(key=b"seq/%06d" % i, serializable=serializable), timeout=30)
                return n_seq
            rows.append(await measured(replica, "Range (linearizable), 1 client", seq_get, "aim <= 1"))

            async def load_get():
                counter = iter(range(n_load))
                done = 0

                async def client():
                    nonlocal done
                    for i in counter:
                        await kv.Range(rpc_pb2.RangeRequest(key=b"load/%06d" % (i % 1000)), timeout=30)
                        done += 1
                await asyncio.gather(*(client() for _ in range(CLIENTS)))
                return done
            rows.append(await measured(replica, f"Range (linearizable), {CLIENTS} clients", load_get, "aim <= 1"))
            rows.append(await measured(replica, "Range (serializable), 1 client",
                                       lambda: seq_get(serializable=True), "expect 0 (background only)"))

            async def txn():
                for i in range(n_seq):
                    key = b"txn/%06d" % i
                    await kv.Txn(rpc_pb2.TxnRequest(
                        compare=[rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.VERSION,
                                                 result=rpc_pb2.Compare.EQUAL, version=0)],
                        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
                        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))]), timeout=30)
                return n_seq
            rows.append(await measured(replica, "Txn (compare + put), 1 client", txn))

            lease_ids: list[int] = []
            n_lease = max(10, n_seq // 4)

            async def grant():
                for _ in range(n_lease):
                    r = await lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=30)
                    lease_ids.append(r.ID)
                return n_lease
            rows.append(await measured(replica, "LeaseGrant", grant))

            async def keepalive():
                queue: asyncio.Queue = asyncio.Queue()
                call = lease.LeaseKeepAlive(_drain(queue))
                got = 0
                for _ in range(n_lease):
                    await queue.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease_ids[0]))
                    await call.read()
                    got += 1
                await queue.put(None)
                call.cancel()
                return got
            rows.append(await measured(replica, "LeaseKeepAlive (one stream)", keepalive))

            async def watched():
                start_rev = (await kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=30)).header.revision + 1
                queue: asyncio.Queue = asyncio.Queue()
                await queue.put(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
                    key=b"watched/", range_end=b"watched0", start_revision=start_rev)))
                call = watch.Watch(_drain(queue))
                await call.read()  # created
                events = 0
                before = replica.scrape()
                for i in range(n_seq):
                    await kv.Put(rpc_pb2.PutRequest(key=b"watched/%06d" % i, value=value), timeout=30)
                while events < n_seq:
                    r = await asyncio.wait_for(call.read(), 30)
                    events += len(r.events)
                await asyncio.sleep(0.05)
                d = diff(before, replica.scrape())
                await queue.put(None)
                call.cancel()
                return events, d
            # the watch row: requests of (puts + delivery) minus what the same puts cost without a watcher
            t0 = time.monotonic()
            events, with_watch = await watched()
            elapsed = time.monotonic() - t0
            put_cost = rows[0]["requests_per_op"] or 0
            extra = round((with_watch["total_requests"] - put_cost * n_seq) / events, 3) if events else None
            print(f"  [watch] {events} events, {with_watch['total_requests']:g} requests with puts; "
                  f"extra {extra}/event", file=sys.stderr)
            rows.append({"label": "watch event (watcher open while writing)", "ops": events, "seconds": round(elapsed, 2),
                         **with_watch, "requests_per_op": extra,
                         "ru_per_op": extra,
                         "note": "extra requests per delivered event beyond the puts' own (Put, 1 client row); expect 0"})

            async def idle():
                await asyncio.sleep(args.idle_seconds)
                return 0
            r = await measured(replica, f"idle replica, {args.idle_seconds:g} s", idle)
            r["requests_per_op"] = round(r["total_requests"] / args.idle_seconds, 3)
            r["ru_per_op"] = round(r["total_ru"] / args.idle_seconds, 3)
            r["note"] = "per second (tailing, heartbeats), not per op"
            rows.append(r)

            async def compact():
                rev = (await kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=30)).header.revision
                await kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=120)
                return 1
            r = await measured(replica, "Compact at head", compact)
            r["note"] = "one Compact of the whole history above"
            rows.append(r)
    finally:
        replica.stop()
    return {"rows": rows}


async def _drain(queue: asyncio.Queue):
    while True:
        item = await queue.get()
        if item is None:
            return
        yield item


def costs_table(res: dict) -> str:
    lines = ["| etcd operation | ops | Cosmos requests | requests / op | RU / op | by backend op | note |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in res["rows"]:
        by = ", ".join(f"{op} {v:g}" for op, v in r["requests"].items()) or "-"
        lines.append(f"| {r['label']} | {r['ops']} | {r['total_requests']:g} | {_fmt(r['requests_per_op'])} | "
                     f"{_fmt(r['ru_per_op'])} | {by} | {r['note']} |")
    lines.append("\nThe local Cosmos server charges 1 RU per request, so RU equals requests here. Background requests "
                 "(tailing, heartbeats; see the idle row) fall into every phase and are included.")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:g}"


# ------------------------------------------------------------------------------------------------
# part 2: write throughput, 1 and 3 replicas
# ------------------------------------------------------------------------------------------------

async def put_load(endpoints: list[str], duration: float, clients: int = CLIENTS) -> dict:
    channels = [channel(e) for e in endpoints]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]
    value = b"v" * 128
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def client(n: int) -> None:
        nonlocal errors
        stub = stubs[n % len(stubs)]
        i = n
        while time.monotonic() < stop_at:
            key = b"tput/%06d" % (i % 1000)
            i += clients
            t0 = time.perf_counter()
            try:
                await stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    try:
        for stub in stubs:
            await stub.Range(rpc_pb2.RangeRequest(key=b"warmup"), timeout=30, wait_for_ready=True)
        started = time.monotonic()
        stop_at = started + duration
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.monotonic() - started
    finally:
        for c in channels:
            await c.close()
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, round(p / 100 * (len(latencies) - 1)))] * 1000, 2) if latencies else None
    return {"puts": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "puts_per_s": round(len(latencies) / elapsed, 1), "p50_ms": pct(50), "p99_ms": pct(99)}


# (replicas, whether they elect a leader): each replica writing the log itself, and with a leader
THROUGHPUT_SET_UPS = ((1, False), (3, False), (3, True))


def set_up_name(n: int, election: bool) -> str:
    return f"replicas_{n}" + ("_elected" if election else "")


async def part_throughput(workdir: pathlib.Path, args) -> dict:
    out = {}
    for n, election in THROUGHPUT_SET_UPS:
        name = set_up_name(n, election)
        with cosmos_server(workdir / name) as cosmos:
            replicas = [Replica(workdir / name / f"replica-{i + 1}", cosmos, f"replica-{i + 1}", election=election)
                        for i in range(n)]
            try:
                for r in replicas:
                    r.start()
                if election:  # the first write waits for the first election: not part of the measurement
                    await put_load([r.endpoint for r in replicas], 0.5, clients=len(replicas))
                befores = [r.scrape() for r in replicas]
                print(f"  [throughput] {name}, {CLIENTS} clients, {args.duration:g}s", file=sys.stderr)
                res = await put_load([r.endpoint for r in replicas], args.duration)
                d = merge([diff(b, r.scrape()) for b, r in zip(befores, replicas)])
                res["cosmos_requests"] = d["total_requests"]
                res["requests_per_put"] = round(d["total_requests"] / res["puts"], 3) if res["puts"] else None
                res["requests_by_op"] = d["requests"]
                res["cosmos_errors"] = d["errors"]
                out[name] = res
            finally:
                for r in replicas:
                    r.stop()
    return out


def throughput_table(res: dict) -> str:
    lines = [f"| replicas (one container) | puts/s ({CLIENTS} clients) | p50 ms | p99 ms | errors | Cosmos requests / put | non-2xx Cosmos responses |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for n, election in THROUGHPUT_SET_UPS:
        r = res.get(set_up_name(n, election))
        if r:
            errs = ", ".join(f"{op} {v:g}" for op, v in r["cosmos_errors"].items()) or "0"
            label = f"{n}" if n == 1 else f"{n}, " + ("elected leader" if election else "every replica writes")
            lines.append(f"| {label} | {r['puts_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
                         f"{_fmt(r['requests_per_put'])} | {errs} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# part 3: restart time against history length
# ------------------------------------------------------------------------------------------------

async def write_revisions(endpoint: str, n: int, clients: int) -> int:
    async with channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        counter = iter(range(n))
        value = b"h" * 128

        async def client():
            for i in counter:
                await kv.Put(rpc_pb2.PutRequest(key=b"hist/%04d" % (i % 500), value=value), timeout=60)
        await asyncio.gather(*(client() for _ in range(clients)))
        return (await kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=30)).header.revision


async def compact_head(endpoint: str) -> int:
    async with channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        rev = (await kv.Range(rpc_pb2.RangeRequest(key=b"x"), timeout=30)).header.revision
        await kv.Compact(rpc_pb2.CompactionRequest(revision=rev, physical=True), timeout=300)
        return rev


async def check_serving(endpoint: str, expect_rev: int) -> int:
    async with channel(endpoint) as ch:
        r = await rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"hist/", range_end=b"hist0", count_only=True),
                                               timeout=30)
        assert r.header.revision >= expect_rev, f"restarted at revision {r.header.revision} < {expect_rev}"
        return r.count


async def part_restart(workdir: pathlib.Path, args) -> dict:
    rows = []
    for n in args.history:
        with cosmos_server(workdir / f"restart-{n}") as cosmos:
            replica = Replica(workdir / f"restart-{n}" / "replica-1", cosmos, "replica-1")
            try:
                first = replica.start()
                t0 = time.monotonic()
                rev = await write_revisions(replica.endpoint, n, args.history_clients)
                write_s = time.monotonic() - t0
                row = {"revisions": n, "head_revision": rev, "writer_clients": args.history_clients, "first_start_s": round(first, 2),
                       "write_s": round(write_s, 2)}
                replica.stop()
                row["restart_s"] = round(replica.start(), 3)
                await check_serving(replica.endpoint, rev)
                before_restart = replica.scrape()  # a fresh process: counters are since start
                row["restart_requests"] = diff({"requests": {}, "errors": {}, "ru": {}}, before_restart)["total_requests"]
                print(f"  [restart] {n} revisions: restart {row['restart_s']}s, "
                      f"{row['restart_requests']:g} requests", file=sys.stderr)
                t0 = time.monotonic()
                await compact_head(replica.endpoint)
                row["compact_s"] = round(time.monotonic() - t0, 2)
                replica.stop()
                row["restart_after_compact_s"] = round(replica.start(), 3)
                await check_serving(replica.endpoint, rev)
                row["restart_after_compact_requests"] = diff({"requests": {}, "errors": {}, "ru": {}},
                                                             replica.scrape())["total_requests"]
                print(f"  [restart] {n} revisions, compacted: restart {row['restart_after_compact_s']}s, "
                      f"{row['restart_after_compact_requests']:g} requests", file=sys.stderr)
                rows.append(row)
            finally:
                replica.stop()
    return {"rows": rows}


def restart_table(res: dict) -> str:
    lines = ["| revisions written | first start s | restart s | Cosmos requests at restart | Compact at head s | "
             "restart after Compact s | Cosmos requests at restart after Compact |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['revisions']} | {r['first_start_s']} | {r['restart_s']} | {r['restart_requests']:g} | "
                     f"{r['compact_s']} | {r['restart_after_compact_s']} | {r['restart_after_compact_requests']:g} |")
    clients = res["rows"][0]["writer_clients"] if res["rows"] else 1
    lines.append(f"\nThe history was written by {clients} client(s) (one client: about one log document a revision). "
                 "Restart time is the `start_shim` call: process start until it serves a Range (includes Python "
                 "start-up, about the 'first start' figure on an empty container). Requests at restart are counted "
                 "from process start until just after the first Range.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under ~2 minutes)")
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON to this path")
    parser.add_argument("--parts", default="costs,throughput,restart", help="comma-separated: costs,throughput,restart")
    parser.add_argument("--duration", type=float, help="seconds of the throughput runs (default 8, quick 3)")
    parser.add_argument("--history-clients", type=int, default=1,
                        help="concurrent clients writing the history (default 1: one log document a revision; "
                             "more clients batch several revisions into a document)")
    parser.add_argument("--history", help="comma-separated revision counts for the restart part "
                                          "(default 1000,10000; quick 500,2000)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.history = [int(v) for v in (args.history or ("500,2000" if args.quick else "1000,10000")).split(",")]
    args.seq_ops = 50 if args.quick else 200
    args.load_ops = 320 if args.quick else 1600
    args.idle_seconds = 5.0
    parts = [p for p in args.parts.split(",") if p]

    started = time.monotonic()
    results = new_results({"quick": args.quick, "clients": CLIENTS, "duration_s": args.duration,
                           "history": args.history, "history_clients": args.history_clients, "seq_ops": args.seq_ops, "load_ops": args.load_ops,
                           "idle_seconds": args.idle_seconds}, args.out)
    results["note"] = "the local Cosmos server charges 1 RU per request: RU equals requests here"
    texts = []
    with tempfile.TemporaryDirectory(prefix="cosmos-bench-") as tmp:
        work = pathlib.Path(tmp)
        if "costs" in parts:
            print("part 1: Cosmos requests per etcd operation", file=sys.stderr)
            with cosmos_server(work / "costs") as cosmos:
                results["costs"] = asyncio.run(part_costs(cosmos, work, args))
            texts.append("### Cosmos requests per etcd operation (one replica)\n\n" + costs_table(results["costs"]))
        if "throughput" in parts:
            print("part 2: write throughput", file=sys.stderr)
            results["throughput"] = asyncio.run(part_throughput(work, args))
            texts.append("### Write throughput on one container\n\n" + throughput_table(results["throughput"]))
        if "restart" in parts:
            print("part 3: restart time", file=sys.stderr)
            results["restart"] = asyncio.run(part_restart(work, args))
            texts.append("### Restart time against history length\n\n" + restart_table(results["restart"]))
    publish(results, "\n\n".join(texts), started,
            "local Cosmos server (@vercel/cosmosdb-server), the load generator is one Python process on the same machine",
            args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
