"""`cosmos-etcd repair` after a forced region failover left the Cosmos log with a gap (issue 11, item 4).

The failover is simulated as it happens: a shim replica writes revisions 2..H, one log document
each; the log documents of L+1..H are then deleted with the Azure SDK (the new write region never
received them) while the replica, which still believes the head is H, keeps running; its next
writes create log documents H+1 (a value large enough to be chunked) and H+2 past the gap. Then:

* `repair --truncate-after L` is refused while that replica runs (its heartbeat changes);
* the replica, restarted, exits non-zero with one line naming the gap and `cosmos-etcd repair`;
* `repair` alone reports L and the documents after the gap, exits 3 and changes nothing;
* `repair --truncate-after H` (what clients saw as the head) is refused and changes nothing;
* `repair --truncate-after L --save-removed FILE` saves the removed documents (the chunked value
  can be put together again from the file), deletes them, leaves everything else as it was, and
  exits 0 saying the head is L; a second `repair` finds the log contiguous;
* a shim then starts, serves the values written up to L at revision L, and the next write gets L+1.

Also: a container without a meta document, and a log missing revisions at its compaction point,
are refused as out of scope; and `repair --truncate-after` is refused while elected replicas run,
which write no heartbeats (their leader renews the leader record instead). Every process is real (local Cosmos server, the shim, the CLI);
synchronisation is by the processes' own readiness and exit, never by fixed sleeps.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import uuid

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from cosmos_etcd_shim.storage.cosmos import codec, layout
from tests.harness import processes
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.cosmos_shims import elected

from .conftest import shim_only
from .test_cli import SHIM, assert_one_line_error

pytestmark = [shim_only, pytest.mark.timeout(240)]

RPC_TIMEOUT = 20
PUTS = 20  # revisions 2..21, one log document each
LOST_DOCUMENTS = 6  # the failover loses the last six: L = 15, H = 21
BIG_VALUE_BYTES = 1_400_000  # random bytes: base64 is over the inline limit, so it is chunked


@pytest.fixture
def container(request) -> str:
    return f"repair-{uuid.uuid4().hex[:8]}-{request.node.name.removeprefix('test_')[:30]}"


@pytest.fixture
def database(cosmos):
    """The database, straight through the Azure SDK (no shim)."""
    from azure.cosmos import CosmosClient

    client = CosmosClient(cosmos.endpoint, credential=cosmos.key, enable_endpoint_discovery=False)
    yield client.create_database_if_not_exists(layout.DEFAULT_DATABASE)
    client.close()


@pytest.fixture
def documents(database, container):
    """The test's container through the Azure SDK; a shim creates it as it does in production."""
    return database.get_container_client(container)


def connection_flags(cosmos, container: str) -> list[str]:
    return ["--cosmos-endpoint", cosmos.endpoint, "--cosmos-container", container]


def start_shim(cosmos, container: str, workdir: pathlib.Path, name: str, extra_args: list[str] = ()) -> processes.Server:
    return processes.start_shim(workdir / name, backend="cosmos", data_dir=workdir / name / "data",
                                env=LOCAL_COSMOS_KEY,
                                extra_args=["--name", name, *connection_flags(cosmos, container), *extra_args])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SHIM, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, **LOCAL_COSMOS_KEY})


def repair(cosmos, container: str, *args: str) -> subprocess.CompletedProcess:
    # --log-level error: the local server's plain-http warnings would be lines on stderr too.
    return run_cli("repair", *connection_flags(cosmos, container), "--log-level", "error", *args)


def log_partition(documents) -> dict[str, dict]:
    """Every document of the log partition (log documents, chunks, meta) as stored, by id."""
    found = documents.query_items("SELECT * FROM c WHERE c.pk = @pk",
                                  parameters=[{"name": "@pk", "value": layout.LOG_PARTITION}],
                                  partition_key=layout.LOG_PARTITION)
    return {d["id"]: d for d in found}


def log_documents(documents) -> list[dict]:
    return sorted((d for d in log_partition(documents).values() if d["kind"] == layout.KIND_LOG),
                  key=lambda d: d["r"])


def payload_value(log_document: dict, stored: list[dict]) -> bytes:
    """The value of the single put in ``log_document``, put together from its chunks in ``stored``."""
    chunks = sorted((d for d in stored if d["kind"] == layout.KIND_CHUNK and d["o"] == log_document["id"]
                     and d["w"] == log_document["w"]), key=lambda d: d["i"])
    assert len(chunks) == log_document["c"], f"{len(chunks)} of {log_document['c']} chunks of {log_document['id']}"
    [record] = codec.decode_records(codec.unpack(log_document, [c["d"] for c in chunks]))
    [event] = record.events
    return event.kv.value


def test_repair_after_a_failover_gap(cosmos, container, documents, tmp_path):
    replica = start_shim(cosmos, container, tmp_path, "replica-a")
    try:
        with grpc.insecure_channel(replica.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            written = {f"/k/{i:02d}".encode(): f"before-{i}".encode() for i in range(PUTS)}
            revisions = [kv.Put(pb.PutRequest(key=k, value=v), timeout=RPC_TIMEOUT).header.revision
                         for k, v in written.items()]
            assert revisions == list(range(2, PUTS + 2))
            logged = log_documents(documents)
            assert [(d["r"], d["e"]) for d in logged] == [(r, r) for r in revisions]
            last, head = logged[-LOST_DOCUMENTS - 1]["e"], logged[-1]["e"]

            # The failover: the new write region never received L+1..H. The replica keeps running.
            for document in logged[-LOST_DOCUMENTS:]:
                documents.delete_item(document["id"], partition_key=layout.LOG_PARTITION)
            big = os.urandom(BIG_VALUE_BYTES)
            past_gap = [kv.Put(pb.PutRequest(key=b"/after/big", value=big), timeout=RPC_TIMEOUT).header.revision,
                        kv.Put(pb.PutRequest(key=b"/after/small", value=b"s"), timeout=RPC_TIMEOUT).header.revision]
            assert past_gap == [head + 1, head + 2], "the replica should have written past the gap"

        stored = log_partition(documents)
        removable = {i: d for i, d in stored.items() if d.get("r", 0) > last}
        assert sorted(d["kind"] for d in removable.values()) == ["chunk", "chunk", "log", "log"], removable.keys()
        big_document = stored[layout.log_id(head + 1)]
        assert payload_value(big_document, list(stored.values())) == big
        etags = {i: d["_etag"] for i, d in stored.items()}
        saved = tmp_path / "removed.json"
        acknowledge = ["--truncate-after", str(last), "--save-removed", str(saved)]

        # While the replica that wrote past the gap still runs, nothing may be deleted.
        line = assert_one_line_error(repair(cosmos, container, *acknowledge), "running")
        assert "replica-a" in line, line
        assert not saved.exists()
        assert {i: d["_etag"] for i, d in log_partition(documents).items()} == etags
    finally:
        assert replica.stop() == 0, replica.log()[-3000:]

    # Restarted, the replica cannot start, and says why and what to do in one line.
    restarted = run_cli(*processes.shim_argv(tmp_path / "replica-a" / "data", processes.free_port(), [
        "--backend", "cosmos", "--name", "replica-a", "--log-level", "error",
        *connection_flags(cosmos, container)])[len(SHIM):])
    line = assert_one_line_error(restarted, "not contiguous")
    assert f"revisions {last}..{last} then {head + 1}..{head + 1}" in line, line
    assert "cosmos-etcd repair" in line and f"to revision {last}" in line, line

    # Without an acknowledgement: the report, exit 3, nothing changed.
    report = repair(cosmos, container)
    assert report.returncode == 3, report.stdout + report.stderr
    assert f"last contiguous revision: {last}\n" in report.stdout, report.stdout
    for revision in (head + 1, head + 2):
        assert f"{layout.log_id(revision)}  revisions {revision}..{revision}" in report.stdout, report.stdout
    assert "2 log documents holding 2 revisions" in report.stdout, report.stdout
    assert f"revisions {last + 1}..{head} are missing" in report.stdout, report.stdout
    assert f"--truncate-after {last} --save-removed FILE" in report.stdout, report.stdout
    assert {i: d["_etag"] for i, d in log_partition(documents).items()} == etags

    # The head the clients saw is not what survives: refused, nothing changed.
    line = assert_one_line_error(repair(cosmos, container, "--truncate-after", str(head + 2), "--save-removed",
                                        str(saved)), "does not name")
    assert f", {last}:" in line, line
    assert not saved.exists()
    assert {i: d["_etag"] for i, d in log_partition(documents).items()} == etags

    # Acknowledged: saved, then truncated.
    truncated = repair(cosmos, container, *acknowledge)
    assert truncated.returncode == 0, truncated.stdout + truncated.stderr
    assert truncated.stdout.splitlines()[-1] == \
        f"the log is contiguous again: the shim can start; its head is revision {last}", truncated.stdout
    removed = json.loads(saved.read_text())
    assert removed["truncated_after"] == last and removed["container"] == container
    assert {d["id"]: d for d in removed["documents"]} == removable
    big_saved = next(d for d in removed["documents"] if d["id"] == big_document["id"])
    assert payload_value(big_saved, removed["documents"]) == big, "the chunked value cannot be rebuilt from the file"
    remaining = log_partition(documents)
    assert {i: d["_etag"] for i, d in remaining.items()} == {i: e for i, e in etags.items() if i not in removable}
    assert max(d["e"] for d in remaining.values() if d["kind"] == layout.KIND_LOG) == last

    again = repair(cosmos, container)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"the log is contiguous up to revision {last}" in again.stdout, again.stdout

    # The shim starts on the truncated log: the values written up to L, and the next write gets L+1.
    server = start_shim(cosmos, container, tmp_path, "replica-b")
    try:
        with grpc.insecure_channel(server.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            everything = kv.Range(pb.RangeRequest(key=b"/", range_end=b"0"), timeout=RPC_TIMEOUT)
            assert everything.header.revision == last
            survivors = {k: v for (k, v), r in zip(written.items(), revisions) if r <= last}
            assert {kv_.key: kv_.value for kv_ in everything.kvs} == survivors
            assert [kv_.mod_revision for kv_ in everything.kvs] == [r for r in revisions if r <= last]
            put = kv.Put(pb.PutRequest(key=b"/after/repair", value=b"new"), timeout=RPC_TIMEOUT)
            assert put.header.revision == last + 1
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def test_repair_refuses_a_container_without_meta(cosmos, container, database):
    from azure.cosmos import PartitionKey

    documents = database.create_container(container, partition_key=PartitionKey(layout.PARTITION_KEY_PATH))
    documents.create_item({"id": layout.log_id(2), "pk": layout.LOG_PARTITION, "kind": layout.KIND_LOG, "r": 2,
                           "e": 2, "w": "x", "d": ""})
    before = log_partition(documents)
    line = assert_one_line_error(repair(cosmos, container), "no meta document")
    assert "out of scope" in line, line
    assert log_partition(documents) == before


def test_repair_refuses_revisions_missing_at_the_compaction_point(cosmos, container, documents, tmp_path):
    server = start_shim(cosmos, container, tmp_path, "compacting")
    try:
        with grpc.insecure_channel(server.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for i in range(5):
                kv.Put(pb.PutRequest(key=b"/c", value=str(i).encode()), timeout=RPC_TIMEOUT)
            kv.Compact(pb.CompactionRequest(revision=4), timeout=RPC_TIMEOUT)
        # The checkpoint may be written after Compact answers: wait for meta to say it is done.
        deadline = time.monotonic() + 30
        while (meta := log_partition(documents)[layout.META_ID])["compact"] != 4:
            assert time.monotonic() < deadline, f"compaction not folded into meta in 30 s: {meta}"
            time.sleep(0.05)  # between polls
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert meta["cdoc"] == 4
    documents.delete_item(layout.log_id(4), partition_key=layout.LOG_PARTITION)  # lost with the old region
    before = log_partition(documents)
    line = assert_one_line_error(repair(cosmos, container), "should start at revision 4")
    assert "starts at 5" in line and "out of scope" in line, line
    assert log_partition(documents) == before


def test_repair_refuses_while_elected_replicas_run(cosmos, container, documents, tmp_path):
    """Elected replicas write no heartbeat documents: what shows they run is the leader record,
    which their leader renews every third of its lease."""
    replicas = [start_shim(cosmos, container, tmp_path, name, elected()) for name in ("elected-a", "elected-b")]
    try:
        assert not [d for d in documents.query_items("SELECT * FROM c WHERE c.kind = @kind", parameters=[
            {"name": "@kind", "value": layout.KIND_MEMBER}], enable_cross_partition_query=True)]
        saved = tmp_path / "removed.json"
        line = assert_one_line_error(repair(cosmos, container, "--truncate-after", "1", "--save-removed", str(saved)),
                                     "running")
        assert "elected-a" in line and "elected-b" in line, line
        assert not saved.exists()
    finally:
        for replica in replicas:
            assert replica.stop() == 0, replica.log()[-3000:]
