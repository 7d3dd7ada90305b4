"""``cosmos-etcd migrate`` (issue 15, item 1): a real etcd with a history (puts, deletes, Txns,
leases, a compaction) moved into the store while a writer keeps writing, then cut over; on the
embedded store and on Cosmos.

After the cutover a shim started on the target must answer as the source does: every key with
every field, reads at old revisions, the compaction, the leases, a watch from before the cutover
revision with the same events, and the next write at the next revision. An interrupted migration
resumes (and the half-done target refuses to be served meanwhile); a target that is not empty is
refused. Progress is awaited in the migration's own log lines, never by sleeping.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import uuid

import grpc
import pytest
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc

from tests.e2e.conftest import shim_only
from tests.harness import processes
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.waiting import poll

pytestmark = [shim_only, pytest.mark.timeout(180)]

LEASE_ID = 0x1EA5E


@pytest.fixture
def source(tmp_path):
    server = processes.start_etcd(tmp_path / "source")
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "cosmos"])
def target(request, tmp_path):
    """An empty target store of the backend."""
    data_dir = tmp_path / "target.data"
    if request.param == "embedded":
        return Target("embedded", data_dir, [], {})
    cosmos = request.getfixturevalue("cosmos")
    container = f"migrate-{uuid.uuid4().hex[:8]}"
    return Target("cosmos", data_dir, ["--cosmos-endpoint", cosmos.endpoint, "--cosmos-container", container],
                  LOCAL_COSMOS_KEY)


class Target:
    def __init__(self, backend: str, data_dir: pathlib.Path, extra: list[str], env: dict[str, str]) -> None:
        self.backend, self.data_dir, self.extra, self.env = backend, data_dir, extra, env

    @property
    def flags(self) -> list[str]:
        """The target flags of migrate (as serve's)."""
        return ["--backend", self.backend, "--data-dir", str(self.data_dir), *self.extra]

    def serve(self, workdir: pathlib.Path) -> processes.Server:
        """A shim on the target store."""
        return processes.start_shim(workdir, backend=self.backend, data_dir=self.data_dir, extra_args=self.extra,
                                    env=self.env)

    def serve_refused(self) -> subprocess.CompletedProcess:
        """``cosmos-etcd serve`` on the target, which must exit."""
        argv = processes.shim_argv(self.data_dir, processes.free_port(), ["--backend", self.backend, *self.extra])
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **self.env})


class Migration:
    """``cosmos-etcd migrate`` as a process; its JSON log lines on stderr in a file."""

    def __init__(self, source: processes.Server, target: Target, workdir: pathlib.Path, *flags: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"migrate-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cosmos_etcd_shim", "migrate", "--from-endpoints", source.endpoint,
                 *target.flags, *flags], stdout=subprocess.PIPE, stderr=log, text=True,
                env={**os.environ, **target.env})

    def lines(self) -> list[dict]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def wait_for(self, message: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.lines():
                if entry.get("message", entry.get("msg")) == message:
                    return entry
            assert self.process.poll() is None, f"migrate exited with {self.process.returncode}: {self.log()}"
            assert time.monotonic() < deadline, f"no {message!r} within {timeout}s: {self.log()}"
            time.sleep(0.05)  # pacing of the polls of the log file

    def finish(self, timeout: float = 90) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def stubs(endpoint: str):
    channel = grpc.insecure_channel(endpoint)
    return channel, rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel)


def write_history(endpoint: str) -> None:
    channel, kv, lease = stubs(endpoint)
    with channel:
        for i in range(30):
            kv.Put(pb.PutRequest(key=b"h/%02d" % i, value=b"v%d" % i), timeout=10)
        kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"h/txn", value=b"t")),
                                      pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"h/00"))]),
               timeout=10)
        lease.LeaseGrant(pb.LeaseGrantRequest(ID=LEASE_ID, TTL=600), timeout=10)
        kv.Put(pb.PutRequest(key=b"h/leased", value=b"l", lease=LEASE_ID), timeout=10)
        revision = kv.Put(pb.PutRequest(key=b"h/01", value=b"again"), timeout=10).header.revision
        kv.Compact(pb.CompactionRequest(revision=revision - 5, physical=True), timeout=10)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"h/1", range_end=b"h/2"), timeout=10)


class Writer(threading.Thread):
    """Puts, overwrites and deletes on the source until stopped; counts what was acknowledged."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.stopping, self.acknowledged = endpoint, threading.Event(), 0
        self.error: Exception | None = None

    def run(self) -> None:
        channel, kv, _ = stubs(self.endpoint)
        try:
            with channel:
                while not self.stopping.is_set():
                    n = self.acknowledged
                    if n % 5 == 4:
                        kv.DeleteRange(pb.DeleteRangeRequest(key=b"w/%03d" % (n - 3)), timeout=10)
                    else:
                        kv.Put(pb.PutRequest(key=b"w/%03d" % (n % 200), value=b"%d" % n), timeout=10)
                    self.acknowledged += 1
        except Exception as e:  # reported by the test
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        assert self.error is None, self.error


def answers(endpoint: str, revisions: list[int], watch_from: int) -> dict:
    """Everything compared between source and target, without headers' ids."""
    channel, kv, lease = stubs(endpoint)
    with channel:
        found: dict = {"now": [kv_ for kv_ in kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"), timeout=10).kvs]}
        found["revision"] = kv.Range(pb.RangeRequest(key=b"\0", limit=1), timeout=10).header.revision
        for revision in revisions:
            try:
                found[revision] = list(kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=revision),
                                                timeout=10).kvs)
            except grpc.RpcError as e:
                found[revision] = (e.code(), e.details())
        ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=LEASE_ID, keys=True), timeout=10)
        found["lease"] = (ttl.grantedTTL, list(ttl.keys), ttl.TTL > 0)
        found["leases"] = sorted(lease_.ID for lease_ in lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10).leases)
        watch = rpc_pb2_grpc.WatchStub(channel).Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"\0", range_end=b"\0", start_revision=watch_from))]), timeout=10)
        events = []
        for answer in watch:
            events.extend(answer.events)
            if answer.events and answer.events[-1].kv.mod_revision >= found["revision"]:
                break
        watch.cancel()
        found["watch"] = events
    return found


def compare_after_cutover(source: processes.Server, target: Target, workdir: pathlib.Path) -> None:
    channel, kv, _ = stubs(source.endpoint)
    with channel:
        last = kv.Range(pb.RangeRequest(key=b"\0", limit=1), timeout=10).header.revision
    revisions = [2, last - 40, last - 10, last - 1, last]
    expected = answers(source.endpoint, revisions, watch_from=last - 20)
    assert expected[2][0] == grpc.StatusCode.OUT_OF_RANGE  # compacted on the source
    served = target.serve(workdir / "served")
    try:
        got = answers(served.endpoint, revisions, watch_from=last - 20)
        assert got == expected
        channel, kv, _ = stubs(served.endpoint)
        with channel:
            assert kv.Put(pb.PutRequest(key=b"after", value=b"1"), timeout=10).header.revision == last + 1
    finally:
        served.stop()


def test_a_migration_under_a_running_writer_keeps_every_revision(source, target, tmp_path):
    write_history(source.endpoint)
    migration = Migration(source, target, tmp_path)
    writer = Writer(source.endpoint)
    writer.start()
    try:
        migration.wait_for("migration imported the source's snapshot")
        at_import = writer.acknowledged
        poll(lambda: writer.acknowledged >= at_import + 150, 60, "150 writes after the import")
    finally:
        writer.stop()  # the runbook: the source's writers stop before the cutover
    migration.process.send_signal(signal.SIGUSR1)
    code, out = migration.finish()
    assert code == 0, migration.log()
    assert out.startswith("migrated ") and "cut over" in out
    compare_after_cutover(source, target, tmp_path)


def test_an_interrupted_migration_resumes_and_is_not_served_meanwhile(source, target, tmp_path):
    write_history(source.endpoint)
    first = Migration(source, target, tmp_path)
    first.wait_for("migration imported the source's snapshot")
    writer = Writer(source.endpoint)
    writer.start()
    poll(lambda: writer.acknowledged >= 50, 60, "50 writes")
    first.process.send_signal(signal.SIGTERM)
    code, _ = first.finish()
    assert code == 3, first.log()
    refused = target.serve_refused()
    assert refused.returncode != 0 and "being filled and is not complete" in refused.stderr, refused.stderr
    poll(lambda: writer.acknowledged >= 120, 60, "more writes while the migration is stopped")
    second = Migration(source, target, tmp_path)
    resumed = second.wait_for("migration resumed")
    assert resumed["revision"] > 0
    writer.stop()
    second.process.send_signal(signal.SIGUSR1)
    code, _ = second.finish()
    assert code == 0, second.log()
    compare_after_cutover(source, target, tmp_path)


def test_a_target_that_is_not_empty_is_refused(source, target, tmp_path):
    served = target.serve(tmp_path / "occupant")
    try:
        channel, kv, _ = stubs(served.endpoint)
        with channel:
            kv.Put(pb.PutRequest(key=b"occupant", value=b"1"), timeout=10)
    finally:
        served.stop()
    write_history(source.endpoint)
    migration = Migration(source, target, tmp_path, "--cutover")
    code, _ = migration.finish()
    assert code == 1
    assert "not empty" in migration.log()
