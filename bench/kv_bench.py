"""Benchmark the shim against a real etcd 3.5 on this machine (not a test).

    python bench/kv_bench.py [--quick] [--out results.json] [--profile] [--servers etcd,shim]

For each server (a fresh process with a temporary data dir, started by tests/harness/processes.py):

  a. `etcdctl check perf --load=s` and `--load=l` (etcd's own write benchmark, a Go client; 60 s each a server, skipped by --quick
     unless --check-perf is given): PASS/FAIL, throughput, slowest request, stddev;
  b. put and get throughput and p50/p99 latency with 16 and 64 concurrent clients (asyncio gRPC
     clients using the shim's generated stubs over a few shared connections, for a fixed duration);
  c. the server's resident memory (VmRSS, and the peak VmHWM, from /proc/PID/status) when idle and
     after loading 10,000 keys of 1 KiB.

Prints a markdown table (etcd, shim, shim/etcd) and writes the same figures as JSON to --out.
--profile runs a profiler on the shim during (b): py-spy (attached by pid) if installed, else the
shim runs under cProfile; the profile is written next to --out (or in the temp dir).

The load generator is one Python process; on a small machine it competes with the server for CPU and
can be the bottleneck for etcd: compare the ratio, and read the absolute figures with that in mind.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402
from bench.report import lookup, new_results, percentile, publish, ratio_table, ratios, stop_flushed  # noqa: E402
from tests.harness import processes  # noqa: E402


# ------------------------------------------------------------------------------------------------
# servers
# ------------------------------------------------------------------------------------------------

def start_server(kind: str, workdir: pathlib.Path, profile: str | None) -> processes.Server:
    if kind == "etcd":
        return processes.start_etcd(workdir / "etcd")
    if profile == "cprofile":
        port = processes.free_port()
        data_dir = workdir / "shim" / "shim.data"
        argv = processes.shim_argv(data_dir, port, ["--backend", "embedded", "--log-level", "warn"])
        # python -m cProfile -o FILE -m cosmos_etcd_shim serve ...  (stats are written on a clean exit)
        argv = [sys.executable, "-m", "cProfile", "-o", str(workdir / "shim.cprofile"), *argv[1:]]
        return processes._spawn("shim", argv, workdir / "shim", f"127.0.0.1:{port}", data_dir)
    return processes.start_shim(workdir / "shim", extra_args=["--log-level", "warn"])


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# ------------------------------------------------------------------------------------------------
# (a) etcdctl check perf
# ------------------------------------------------------------------------------------------------

def check_perf(endpoint: str, load: str = "s", flags: Sequence[str] = ()) -> dict:
    """etcdctl check perf; flags are etcdctl's own (e.g. --cacert/--cert/--key for an https:// endpoint)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    env["ETCDCTL_API"] = "3"
    started = time.monotonic()
    r = subprocess.run([str(processes.ETCDCTL), f"--endpoints={endpoint}", *flags, "check", "perf", f"--load={load}"],
                       capture_output=True, text=True, env=env, timeout=300)
    text = r.stdout + r.stderr
    result: dict = {"rc": r.returncode, "seconds": round(time.monotonic() - started, 1)}
    m = re.search(r"(PASS|FAIL): Throughput (?:is|too low:) (\d+) writes/s", text)
    if m:
        result["throughput_pass"], result["writes_per_s"] = m.group(1) == "PASS", int(m.group(2))
    # etcdctl 3.5 writes these two failures without a "FAIL: " prefix ("Stddev too high: 0.3s")
    m = re.search(r"Slowest request took (too long: )?([\d.]+)s", text)
    if m:
        result["slowest_pass"], result["slowest_s"] = m.group(1) is None, float(m.group(2))
    m = re.search(r"Stddev (?:is|(too high:)) ([\d.]+)s", text)
    if m:
        result["stddev_pass"], result["stddev_s"] = m.group(1) is None, float(m.group(2))
    verdicts = re.findall(r"^(PASS|FAIL)\s*$", text, re.M)
    result["verdict"] = verdicts[-1] if verdicts else "ERROR"
    if result["verdict"] == "ERROR":
        result["output"] = text[-2000:]
    return result


# ------------------------------------------------------------------------------------------------
# (b) put / get load
# ------------------------------------------------------------------------------------------------

async def load(endpoint: str, op: str, clients: int, duration: float, value_size: int, keyspace: int,
               connections: int = 4, credentials: grpc.ChannelCredentials | None = None,
               metadata: tuple[tuple[str, str], ...] | None = None) -> dict:
    """`clients` concurrent request loops over `connections` channels for `duration` seconds; TLS
    channels with `credentials`, and `metadata` (an auth token) on every request. Keys are under bench/."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.secure_channel(endpoint, credentials, options=options) if credentials
                else grpc.aio.insecure_channel(endpoint, options=options)
                for _ in range(min(connections, clients))]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]
    value = b"v" * value_size
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def client(n: int) -> None:
        nonlocal errors
        stub = stubs[n % len(stubs)]
        i = n
        while time.monotonic() < stop_at:
            key = b"bench/%08d" % (i % keyspace)
            i += clients
            t0 = time.perf_counter()
            try:
                if op == "put":
                    await stub.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=30, metadata=metadata)
                else:
                    await stub.Range(rpc_pb2.RangeRequest(key=key), timeout=30, metadata=metadata)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    try:
        for stub in stubs:  # connect first
            await stub.Range(rpc_pb2.RangeRequest(key=b"bench/warmup"), timeout=30, wait_for_ready=True,
                             metadata=metadata)
        started = time.monotonic()
        stop_at = started + duration
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.monotonic() - started
    finally:
        for c in channels:
            await c.close()
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "ops_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 3), "p99_ms": round(percentile(latencies, 99) * 1000, 3)}


async def fill(endpoint: str, n_keys: int, value_size: int, clients: int = 16) -> float:
    """Put n_keys distinct keys of value_size bytes; returns seconds taken."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        value = b"m" * value_size
        started = time.monotonic()

        async def client(n: int) -> None:
            for i in range(n, n_keys, clients):
                await stub.Put(rpc_pb2.PutRequest(key=b"mem/%08d" % i, value=value), timeout=60)

        await asyncio.gather(*(client(n) for n in range(clients)))
        count = await stub.Range(rpc_pb2.RangeRequest(key=b"mem/", range_end=b"mem0", count_only=True), timeout=60)
        assert count.count == n_keys, f"loaded {count.count} of {n_keys} keys"
        return time.monotonic() - started


# ------------------------------------------------------------------------------------------------
# profiling
# ------------------------------------------------------------------------------------------------

class Profiler:
    """py-spy attached to the shim's pid while the load runs (or nothing: cProfile wraps the process)."""

    def __init__(self, mode: str | None, pid: int, out_dir: pathlib.Path):
        self.mode, self.pid, self.out_dir = mode, pid, out_dir
        self.process: subprocess.Popen | None = None
        self.output: pathlib.Path | None = None

    def __enter__(self):
        if self.mode == "py-spy":
            self.output = self.out_dir / "shim-profile.speedscope.json"
            self.process = subprocess.Popen(
                ["py-spy", "record", "--pid", str(self.pid), "--rate", "200", "--format", "speedscope",
                 "--output", str(self.output), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.returncode not in (0, -signal.SIGINT) or not self.output.exists():
                print(f"py-spy failed (rc={self.process.returncode}): {self.process.stderr.read()[-500:]}",
                      file=sys.stderr)
                self.output = None


def speedscope_summary(path: pathlib.Path, top: int = 20) -> list[dict]:
    """The functions with the most samples in a py-spy speedscope profile (self and inclusive %)."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    own: dict[int, float] = {}
    inclusive: dict[int, float] = {}
    total = 0.0
    for prof in doc["profiles"]:
        for stack, weight in zip(prof.get("samples", []), prof.get("weights", [])):
            if not stack:
                continue
            total += weight
            own[stack[-1]] = own.get(stack[-1], 0) + weight
            for f in set(stack):
                inclusive[f] = inclusive.get(f, 0) + weight
    rows = []
    for f, w in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        frame = frames[f]
        where = f"{pathlib.Path(frame.get('file', '?')).name}:{frame.get('line', '?')}"
        rows.append({"function": f"{frame['name']} ({where})", "self_pct": round(100 * w / total, 1),
                     "inclusive_pct": round(100 * inclusive[f] / total, 1)})
    return rows


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def bench_server(kind: str, args, workdir: pathlib.Path, profile: str | None, out_dir: pathlib.Path) -> dict:
    result: dict = {}
    server = start_server(kind, workdir, profile if kind == "shim" else None)
    try:
        pid = server.process.pid
        result["memory_idle_kib"] = memory(pid)
        # memory first, on a fresh server: the put runs below would add their history to it
        print(f"[{kind}] loading {args.keys} keys of {args.value_size} B", file=sys.stderr)
        result["fill_seconds"] = round(asyncio.run(fill(server.endpoint, args.keys, args.value_size)), 2)
        result["memory_loaded_kib"] = memory(pid)
        if args.check_perf:
            for load_name in args.check_perf_loads:
                print(f"[{kind}] etcdctl check perf --load={load_name} (60 s)", file=sys.stderr)
                result[f"check_perf_{load_name}"] = check_perf(server.endpoint, load_name)
        with Profiler(profile if kind == "shim" else None, pid, out_dir) as profiler:
            for op in ("put", "get"):
                for clients in args.clients:
                    print(f"[{kind}] {op} x{clients} clients, {args.duration}s", file=sys.stderr)
                    result[f"{op}_{clients}"] = asyncio.run(
                        load(server.endpoint, op, clients, args.duration, args.value_size, args.keyspace))
        if profiler.output:
            result["profile"] = str(profiler.output)
            result["profile_top"] = speedscope_summary(profiler.output)
    finally:
        rc = stop_flushed(server)
        result["exit_code"] = rc
        if kind == "shim" and profile == "cprofile":
            prof = workdir / "shim.cprofile"
            if prof.exists():
                target = out_dir / "shim.cprofile"
                shutil.copy(prof, target)
                result["profile"] = str(target)
                import pstats
                print("\n[shim] cProfile, top 25 by own time:", file=sys.stderr)
                pstats.Stats(str(prof), stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return result


def rows(results: dict, args) -> list[tuple[str, float | None, float | None, bool]]:
    """(label, etcd, shim, higher_is_better)."""
    def get(kind, *path):
        return lookup(results, kind, *path)

    out = []
    if args.check_perf:
        for load_name in args.check_perf_loads:
            key = f"check_perf_{load_name}"
            out += [(f"check perf --load={load_name}: writes/s", get("etcd", key, "writes_per_s"), get("shim", key, "writes_per_s"), True),
                    (f"check perf --load={load_name}: slowest request (s)", get("etcd", key, "slowest_s"), get("shim", key, "slowest_s"), False),
                    (f"check perf --load={load_name}: stddev (s)", get("etcd", key, "stddev_s"), get("shim", key, "stddev_s"), False)]
    for op in ("put", "get"):
        for clients in args.clients:
            out += [(f"{op} x{clients}: ops/s", get("etcd", f"{op}_{clients}", "ops_per_s"), get("shim", f"{op}_{clients}", "ops_per_s"), True),
                    (f"{op} x{clients}: p50 ms", get("etcd", f"{op}_{clients}", "p50_ms"), get("shim", f"{op}_{clients}", "p50_ms"), False),
                    (f"{op} x{clients}: p99 ms", get("etcd", f"{op}_{clients}", "p99_ms"), get("shim", f"{op}_{clients}", "p99_ms"), False)]
    out += [("RSS idle (MiB)", mib(get("etcd", "memory_idle_kib", "VmRSS")), mib(get("shim", "memory_idle_kib", "VmRSS")), False),
            (f"load {args.keys} x {args.value_size} B (s)", get("etcd", "fill_seconds"), get("shim", "fill_seconds"), False),
            (f"RSS after {args.keys} keys (MiB)", mib(get("etcd", "memory_loaded_kib", "VmRSS")), mib(get("shim", "memory_loaded_kib", "VmRSS")), False),
            ("peak RSS (MiB)", mib(get("etcd", "memory_loaded_kib", "VmHWM")), mib(get("shim", "memory_loaded_kib", "VmHWM")), False)]
    return out


def mib(kib):
    return None if kib is None else round(kib / 1024, 1)


def table(results: dict, args) -> str:
    lines = ratio_table((label, e, s) for label, e, s, _ in rows(results, args))
    for kind, load_name in ((k, n) for k in ("etcd", "shim") for n in args.check_perf_loads):
        cp = results.get(kind, {}).get(f"check_perf_{load_name}")
        if cp:
            lines.append(f"\n`etcdctl check perf --load={load_name}` on {kind}: **{cp['verdict']}** "
                         f"(throughput {'PASS' if cp.get('throughput_pass') else 'FAIL'}, "
                         f"slowest {'PASS' if cp.get('slowest_pass') else 'FAIL'}, "
                         f"stddev {'PASS' if cp.get('stddev_pass') else 'FAIL'})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, no check perf (under 2 minutes)")
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON to this path")
    parser.add_argument("--profile", action="store_true", help="profile the shim (py-spy if installed, else cProfile)")
    parser.add_argument("--profiler", choices=["auto", "py-spy", "cprofile"], default="auto",
                        help="which profiler --profile uses (default: py-spy if on PATH)")
    parser.add_argument("--servers", default="etcd,shim", help="comma-separated: etcd,shim")
    parser.add_argument("--clients", default="16,64", help="comma-separated concurrent client counts")
    parser.add_argument("--duration", type=float, help="seconds per put/get run (default 10, quick 3)")
    parser.add_argument("--check-perf-loads", default="s,l", type=lambda v: v.split(","),
                        help="etcdctl check perf loads to run, comma-separated (default: s,l; l is a Go client's "
                             "throughput run with 500 clients)")
    parser.add_argument("--keys", type=int, default=10_000, help="keys loaded for the memory figure")
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--keyspace", type=int, default=1000, help="distinct keys the put/get runs use")
    parser.add_argument("--check-perf", action=argparse.BooleanOptionalAction, default=None,
                        help="run etcdctl check perf (default: on, off with --quick)")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    if args.check_perf is None:
        args.check_perf = not args.quick
    profile = None
    if args.profile:
        profile = args.profiler if args.profiler != "auto" else ("py-spy" if shutil.which("py-spy") else "cprofile")
    servers = [s for s in args.servers.split(",") if s]

    started = time.monotonic()
    results = new_results({"quick": args.quick, "clients": args.clients, "duration_s": args.duration,
                           "keys": args.keys, "value_size": args.value_size, "keyspace": args.keyspace,
                           "check_perf": args.check_perf, "profile": profile}, args.out)
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        out_dir = args.out.resolve().parent if args.out else pathlib.Path(tmp)
        for kind in servers:
            results[kind] = bench_server(kind, args, pathlib.Path(tmp) / kind, profile, out_dir)
        results["ratios"] = ratios(rows(results, args))
        publish(results, table(results, args), started, "the load generator is one Python process on the same machine",
                args.out)
        for kind in servers:
            if results[kind].get("profile"):
                print(f"\n{kind} profile: {results[kind]['profile']}")
            if results[kind].get("profile_top"):
                print("| function (py-spy, all threads) | self % | inclusive % |\n|---|---:|---:|")
                for row in results[kind]["profile_top"]:
                    print(f"| {row['function']} | {row['self_pct']} | {row['inclusive_pct']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
