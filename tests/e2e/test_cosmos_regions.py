"""Multi-region Cosmos accounts (issue 11): the shim reads from the write region only, follows a
failover, and checks the account's consistency level when it starts.

Set-up: one local Cosmos server for the module; per test, a two-region account in front of it
(``tests/harness/regions.py``: a global and two regional proxies, each answering the account read
with write region A, readable regions B then A, at the proxies' http addresses) and the real shim
(``cosmos-etcd serve --backend cosmos --cosmos-endpoint <global endpoint>``, the real azure-cosmos
SDK with endpoint discovery on). Requests are counted per proxy, i.e. per region.

1. Every document read and write of the shim (log tail, head, meta, leases, members, auth) goes
   through the write region A -- while a plain azure-cosmos client on the same account, with the
   SDK's default routing, reads through B (so the rig does distinguish the two).
2. After a simulated failover to B (the account names B, A answers writes 403/3), the shim's writes
   reach B, and from then on its reads and writes go through B only, none through A.
3. Session, ConsistentPrefix and Eventual accounts: the CLI exits non-zero with one line saying why
   and what to change, before touching the store (only account reads reached the rig).
4. BoundedStaleness on this multi-region account: the shim serves, and its log holds the warning
   with the account's regions and staleness bounds as fields.
5. An account that reports no consistency level: the shim serves and logs the level as unknown.

Figures (requests per region) are printed: run with ``-s``. Synchronisation is by deadline
polling, never by fixed sleeps.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import grpc
import pytest
from azure.cosmos import CosmosClient

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from cosmos_etcd_shim.storage.cosmos import layout
from tests.harness import processes
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.regions import GLOBAL, READS, REGION_A, REGION_B, WRITES, TwoRegionAccount, data_requests

from .conftest import shim_only
from .test_cli import assert_one_line_error

pytestmark = [shim_only, pytest.mark.timeout(120)]

RPC_TIMEOUT = 15.0
ALL_KEYS = {"key": b"\0", "range_end": b"\0"}


@pytest.fixture
def container() -> str:
    return f"regions-{uuid.uuid4().hex[:12]}"


def cosmos_flags(account: TwoRegionAccount, container: str) -> list[str]:
    return ["--cosmos-endpoint", account.endpoint, "--cosmos-container", container]


def serve_on(workdir, account: TwoRegionAccount, container: str) -> processes.Server:
    """The shim as a process, on the rig's global endpoint (as the real account's would be given)."""
    return processes.start_shim(workdir, backend="cosmos", env=LOCAL_COSMOS_KEY,
                                extra_args=cosmos_flags(account, container))


def serve_one_put(workdir, account: TwoRegionAccount, container: str) -> processes.Server:
    """Start the shim, make one write through it, stop it: what it logged is then complete."""
    shim = serve_on(workdir, account, container)
    try:
        with grpc.insecure_channel(shim.endpoint) as channel:
            rpc_pb2_grpc.KVStub(channel).Put(pb.PutRequest(key=b"k", value=b"v"), timeout=RPC_TIMEOUT)
    finally:
        shim.stop()
    return shim


def log_records(server: processes.Server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def workload(kv: rpc_pb2_grpc.KVStub, lease: rpc_pb2_grpc.LeaseStub, tag: str) -> None:
    """Writes, linearizable reads (each one a head read), a lease, a delete and a compaction (meta)."""
    revision = 0
    for i in range(5):
        revision = kv.Put(pb.PutRequest(key=f"/{tag}/k{i}".encode(), value=b"v"), timeout=RPC_TIMEOUT).header.revision
        assert kv.Range(pb.RangeRequest(key=f"/{tag}/k{i}".encode()), timeout=RPC_TIMEOUT).kvs[0].value == b"v"
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=RPC_TIMEOUT)
    kv.Put(pb.PutRequest(key=f"/{tag}/leased".encode(), value=b"v", lease=granted.ID), timeout=RPC_TIMEOUT)
    kv.DeleteRange(pb.DeleteRangeRequest(key=f"/{tag}/k0".encode()), timeout=RPC_TIMEOUT)
    kv.Compact(pb.CompactionRequest(revision=revision), timeout=RPC_TIMEOUT)
    assert kv.Range(pb.RangeRequest(**ALL_KEYS, count_only=True), timeout=RPC_TIMEOUT).count >= 5


def figures(account: TwoRegionAccount, since: dict[str, int] | None = None) -> str:
    return "; ".join(f"{name}: {dict(account.operations(name, since))}" for name in (GLOBAL, REGION_A, REGION_B))


def await_operation(account: TwoRegionAccount, name: str, operations: frozenset[str], since: dict[str, int],
                    timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(account.operations(name, since)[operation] for operation in operations):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {sorted(operations)} through {name} after {timeout}s: {figures(account, since)}")
        time.sleep(0.05)


def test_every_read_goes_to_the_write_region(cosmos, tmp_path, container):
    with TwoRegionAccount(cosmos.port) as account:
        shim = serve_on(tmp_path, account, container)
        try:
            with grpc.insecure_channel(shim.endpoint) as channel:
                workload(rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel), "pinned")
            # The log tail, lease and member upkeep keep running: wait for tail reads after the workload.
            await_operation(account, REGION_A, READS, account.mark())
        finally:
            shim.stop()
        seen = {name: account.operations(name) for name in (GLOBAL, REGION_A, REGION_B)}
        print(f"\nrequests per region, shim pinned to {REGION_A}: {figures(account)}")
        assert data_requests(seen[REGION_B]) == 0, figures(account)
        assert data_requests(seen[GLOBAL]) == 0, figures(account)
        assert sum(seen[REGION_A][op] for op in READS) > 0 and sum(seen[REGION_A][op] for op in WRITES) > 0

        # The same account through the SDK's default routing reads from B: the rig tells regions apart.
        before = account.mark()
        with CosmosClient(account.endpoint, credential=cosmos.key) as client:
            documents = client.get_database_client(layout.DEFAULT_DATABASE).get_container_client(container)
            assert list(documents.query_items("SELECT * FROM c WHERE c.pk = @pk", partition_key=layout.LOG_PARTITION,
                                              parameters=[{"name": "@pk", "value": layout.LOG_PARTITION}]))
        print(f"a default azure-cosmos client's query: {figures(account, before)}")
        assert account.operations(REGION_B, before)["query"] > 0, figures(account, before)
        assert account.operations(REGION_A, before)["query"] == 0, figures(account, before)


def test_reads_and_writes_follow_a_failover(cosmos, tmp_path, container):
    with TwoRegionAccount(cosmos.port) as account:
        shim = serve_on(tmp_path, account, container)
        try:
            with grpc.insecure_channel(shim.endpoint) as channel:
                kv, lease = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel)
                workload(kv, lease, "before")
                before = account.mark()
                account.failover(to=REGION_B)
                # The first write after the failover meets A's 403/3; the SDK re-reads the account and
                # writes to B. From the moment it is acknowledged, the shim knows B is the write region.
                kv.Put(pb.PutRequest(key=b"/after/first", value=b"v"), timeout=RPC_TIMEOUT)
                assert account.operations(REGION_B, before)["create"] > 0, figures(account, before)
                kv.Range(pb.RangeRequest(key=b"/after/first"), timeout=RPC_TIMEOUT)
                after = account.mark()
                workload(kv, lease, "after")
                await_operation(account, REGION_B, READS, account.mark())
        finally:
            shim.stop()
        print(f"\nfailover: until the shim learnt of it: {figures(account, before)}"
              f"\nafter: {figures(account, after)}")
        assert account.operations(REGION_A, before)["create"] > 0, "the first write should have met A's refusal"
        assert data_requests(account.operations(REGION_A, after)) == 0, figures(account, after)
        assert data_requests(account.operations(GLOBAL, after)) == 0, figures(account, after)
        assert sum(account.operations(REGION_B, after)[op] for op in READS) > 0
        assert sum(account.operations(REGION_B, after)[op] for op in WRITES) > 0


@pytest.mark.parametrize("level", ["Session", "ConsistentPrefix", "Eventual"])
def test_weak_consistency_is_refused(cosmos, tmp_path, container, level):
    with TwoRegionAccount(cosmos.port, consistency=level) as account:
        argv = processes.shim_argv(tmp_path / "data", processes.free_port(),
                                   ["--backend", "cosmos", *cosmos_flags(account, container), "--log-level", "error"])
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                           env={**os.environ, **LOCAL_COSMOS_KEY})
        line = assert_one_line_error(r, level)
        for words in ("consistency level", "Strong", "BoundedStaleness", "latest write"):
            assert words in line, line
        touched = {name: account.operations(name) for name in (GLOBAL, REGION_A, REGION_B)}
        assert all(set(operations) <= {"account"} for operations in touched.values()), figures(account)


def test_bounded_staleness_on_a_multi_region_account_warns(cosmos, tmp_path, container):
    with TwoRegionAccount(cosmos.port, consistency="BoundedStaleness") as account:
        shim = serve_one_put(tmp_path, account, container)
        warnings = [r for r in log_records(shim) if r["level"] == "warning" and "BoundedStaleness" in r["msg"]]
        assert len(warnings) == 1, shim.log()
        warning = warnings[0]
        assert "failover" in warning["msg"] and "RPO" in warning["msg"], warning
        assert warning["consistency"] == "BoundedStaleness"
        assert warning["regions"] == sorted([REGION_A, REGION_B]) and warning["write_region"] == REGION_A
        assert warning["max_staleness_prefix"] == 100000 and warning["max_interval_seconds"] == 300


def test_an_unreported_consistency_level_is_logged_as_unknown(cosmos, tmp_path, container):
    with TwoRegionAccount(cosmos.port, consistency=None) as account:
        shim = serve_one_put(tmp_path, account, container)
        records = [r for r in log_records(shim) if "consistency level" in r["msg"]]
        assert [r["level"] for r in records] == ["info"], shim.log()
        assert records[0]["consistency"] is None and records[0]["regions"] == sorted([REGION_A, REGION_B])
