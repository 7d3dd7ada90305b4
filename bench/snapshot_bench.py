"""Benchmark snapshots, restores and a migration beside a real etcd (not a test).

    python bench/snapshot_bench.py [--keys N] [--out results.json]

The same data goes into a real etcd 3.5.1 and into the shim on its embedded store: N keys of
1 KiB written in batches of 100 puts per Txn, then every tenth key overwritten (history). Then,
on each side:

  1. ``etcdctl snapshot save``: seconds and file size (both are etcd's bbolt database);
  2. ``etcdutl snapshot restore`` of etcd's file into an etcd data dir, and ``cosmos-etcd restore``
     of the shim's file into an embedded data dir: seconds;
  3. ``cosmos-etcd migrate --cutover`` from the etcd into a new embedded store (no etcd peer: the
     ratio is against etcd's own snapshot plus restore, the way etcd users move data today).

Prints one markdown table with the shim / etcd ratio per row and writes the figures as JSON.
The load generator, the servers and the tools share one machine: read absolute figures with that in mind.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.report import new_results, publish, ratio_table  # noqa: E402
from cosmos_etcd_shim.proto import rpc_pb2 as pb  # noqa: E402
from cosmos_etcd_shim.proto import rpc_pb2_grpc  # noqa: E402
from tests.harness import processes  # noqa: E402

ETCDUTL = processes.ETCD_BIN_DIR / "etcdutl"
VALUE = b"v" * 1024
BATCH = 100


def fill(endpoint: str, keys: int) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for start in range(0, keys, BATCH):
            kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"bench/%08d" % i, value=VALUE))
                                          for i in range(start, min(keys, start + BATCH))]), timeout=60)
        for start in range(0, keys, BATCH * 10):
            kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"bench/%08d" % i, value=VALUE))
                                          for i in range(start, min(keys, start + BATCH * 10), 10)]), timeout=60)


def timed(argv: list[str], **kwargs) -> float:
    started = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800, **kwargs)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {r.stderr[-2000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    started = time.monotonic()
    results = new_results({"keys": args.keys, "value_bytes": len(VALUE)}, args.out)
    with tempfile.TemporaryDirectory() as scratch:
        work = pathlib.Path(scratch)
        etcd = processes.start_etcd(work / "etcd")
        shim = processes.start_shim(work / "shim", extra_args=["--log-level", "warn"])
        try:
            for server in (etcd, shim):
                fill(server.endpoint, args.keys)
            for side, server in (("etcd", etcd), ("shim", shim)):
                path = work / f"{side}.snapshot"
                seconds = timed([str(processes.ETCDCTL), f"--endpoints={server.endpoint}", "snapshot", "save",
                                 str(path)], env=processes.ctl_env())
                results[side] = {"snapshot_s": round(seconds, 2), "snapshot_mb": round(path.stat().st_size / 1e6, 1)}
            peer = processes.free_port()
            results["etcd"]["restore_s"] = round(timed(
                [str(ETCDUTL), "snapshot", "restore", str(work / "etcd.snapshot"), "--data-dir", str(work / "r.etcd"),
                 "--name", "r", "--initial-cluster", f"r=http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"]), 2)
            results["shim"]["restore_s"] = round(timed(
                [sys.executable, "-m", "cosmos_etcd_shim", "restore", "--from", str(work / "shim.snapshot"),
                 "--data-dir", str(work / "r.shim"), "--log-level", "warn"]), 2)
            results["shim"]["migrate_s"] = round(timed(
                [sys.executable, "-m", "cosmos_etcd_shim", "migrate", "--from-endpoints", etcd.endpoint,
                 "--data-dir", str(work / "m.shim"), "--cutover", "--log-level", "warn"]), 2)
        finally:
            etcd.stop()
            shim.stop()
    e, s = results["etcd"], results["shim"]
    rows = [("snapshot save (s)", e["snapshot_s"], s["snapshot_s"]),
            ("snapshot size (MB)", e["snapshot_mb"], s["snapshot_mb"]),
            ("restore (s)", e["restore_s"], s["restore_s"]),
            ("etcd -> new store: etcd snapshot + restore vs cosmos-etcd migrate --cutover (s)",
             e["snapshot_s"] + e["restore_s"], s["migrate_s"])]
    text = "\n".join([f"### Snapshots, restore and migration ({args.keys:,} keys of 1 KiB, shim on its embedded store)",
                      "", *ratio_table(rows)])
    publish(results, text, started, "snapshot_bench", args.out)


if __name__ == "__main__":
    main()
