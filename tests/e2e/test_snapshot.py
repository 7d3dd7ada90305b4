"""`etcdctl snapshot save` from the shim gives etcd's own database (issue 16, item 2).

The same history (puts, a Txn that puts and deletes, a lease with a key, a value larger than a
page, hundreds of keys, a compaction, deletions after it) is written to a real etcd and to the
shim, both fresh for this module so that their revisions are equal. Then:

* both snapshots are read bucket by bucket (``shim/snapshot/bbolt.py``'s reader, itself checked
  against etcd's file here): the ``key`` bucket (every revision, etcd's key encoding, KeyValue
  bytes) and the ``lease`` bucket are byte for byte etcd's;
* ``etcdutl snapshot status`` (which runs bbolt's consistency check) reports the same revision;
* ``etcdutl snapshot restore`` of the shim's snapshot gives an etcd that serves what the shim
  serves: current keys, old revisions, the compaction, the lease, the next revision; with auth,
  the same users, roles and permissions.

And the way back: ``cosmos-etcd restore`` builds an embedded data directory from the shim's
snapshot or from etcd's, and the shim started on it answers as the source did, at the same
revisions. Also through the second of two Cosmos replicas, and ``--snapshot-format sqlite`` (the
store image).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import uuid

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from cosmos_etcd_shim.snapshot import bbolt
from tests.e2e.conftest import TARGET, shim_only, start_etcd_at
from tests.harness import cosmos_shims, processes
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.faultproxy import Rule, ThreadedFaultProxy
from tests.harness.faultrules import on_proxy

ETCDUTL = processes.ETCD_BIN_DIR / "etcdutl"
LEASE_ID = 0x5EED
MANY = 300  # keys enough for several leaf pages under a branch
COMPACT_AT = 200


def write_history(endpoint: str) -> dict[str, int]:
    """The history, through gRPC; the revisions worth reading back at."""
    with grpc.insecure_channel(endpoint) as channel:
        kv, lease = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel)

        def put(key: bytes, value: bytes, **fields) -> int:
            return kv.Put(pb.PutRequest(key=key, value=value, **fields), timeout=10).header.revision

        first = put(b"a", b"1")
        put(b"b", b"2")
        kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"3")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"d", value=b"4")),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a")),
        ]), timeout=10)
        lease.LeaseGrant(pb.LeaseGrantRequest(ID=LEASE_ID, TTL=3600), timeout=10)
        put(b"l/x", b"leased", lease=LEASE_ID)
        put(b"a", b"5")
        put(b"big", bytes(range(256)) * 40)  # 10 KiB: a page of its own plus overflow pages
        for i in range(MANY):
            put(b"many/%03d" % i, b"v%d" % i)
        before_compaction = put(b"c", b"33")
        compact_at = first - 2 + COMPACT_AT
        kv.Compact(pb.CompactionRequest(revision=compact_at, physical=True), timeout=30)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"b"), timeout=10)
        kv.Txn(pb.TxnRequest(success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"e", value=b"1")),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"d")),
        ]), timeout=10)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"many/000", range_end=b"many/010"), timeout=10)
        last = put(b"d", b"again")
    return {"compact": compact_at, "before_compaction": before_compaction, "last": last}


def save(endpoint: str, path: pathlib.Path, *auth: str) -> pathlib.Path:
    r = processes.etcdctl(endpoint, [*auth, "snapshot", "save", str(path)], timeout=120)
    assert r.returncode == 0, r.stderr
    return path


def database_of(snapshot: pathlib.Path) -> dict[bytes, dict[bytes, bytes]]:
    """The buckets of a saved snapshot, after checking the SHA-256 that the server appended."""
    data = snapshot.read_bytes()
    assert hashlib.sha256(data[:-32]).digest() == data[-32:], "the appended SHA-256 does not match"
    database = snapshot.with_suffix(".bbolt")
    database.write_bytes(data[:-32])
    return {name: dict(items) for name, items in bbolt.read(database).items()}


def etcdutl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ETCDUTL), *args], capture_output=True, text=True, timeout=120)


def status_of(snapshot: pathlib.Path) -> dict:
    r = etcdutl("snapshot", "status", str(snapshot), "-w", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def restore_etcd(snapshot: pathlib.Path, workdir: pathlib.Path) -> processes.Server:
    """``etcdutl snapshot restore`` into a new single-member etcd, started on it."""
    client, peer = processes.free_port(), processes.free_port()
    data_dir = workdir / "restored.etcd"
    r = etcdutl("snapshot", "restore", str(snapshot), "--data-dir", str(data_dir), "--name", "restored",
                "--initial-cluster", f"restored=http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}")
    assert r.returncode == 0, r.stderr
    return start_etcd_at(workdir, data_dir, client, peer, name="restored")


def cosmos_etcd_restore(snapshot: pathlib.Path, data_dir: pathlib.Path, *flags: str,
                        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosmos_etcd_shim", "restore", "--from", str(snapshot),
                           "--data-dir", str(data_dir), *flags], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def restore_shim(snapshot: pathlib.Path, workdir: pathlib.Path) -> processes.Server:
    """``cosmos-etcd restore`` into a new data directory, and a shim started on it."""
    data_dir = workdir / "restored.data"
    r = cosmos_etcd_restore(snapshot, data_dir)
    assert r.returncode == 0, r.stderr
    return processes.start_shim(workdir / "restored-shim", data_dir=data_dir)


def member_id(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        return rpc_pb2_grpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=10).header.member_id


def answers(endpoint: str, revisions: dict[str, int]) -> dict[str, object]:
    """What etcdctl reads, and the lease, without headers (member and cluster ids differ between
    servers)."""
    def get(*args: str):
        r = processes.etcdctl(endpoint, ["get", *args, "-w", "json"])
        if r.returncode != 0:
            return "error", r.stderr.strip().splitlines()[-1]
        return json.loads(r.stdout).get("kvs", [])

    found: dict[str, object] = {"now": get("", "--from-key")}
    for name, revision in revisions.items():
        found[name] = get("", "--from-key", "--rev", str(revision))
    found["compacted"] = get("a", "--rev", str(revisions["compact"] - 1))
    with grpc.insecure_channel(endpoint) as channel:
        lease = rpc_pb2_grpc.LeaseStub(channel).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=LEASE_ID, keys=True),
                                                                timeout=10)
    found["lease"] = (lease.ID, lease.grantedTTL, list(lease.keys))
    return found


def assert_serves(restored: processes.Server, expected: dict, history: dict[str, int]) -> None:
    """A restored server answers as the source did, and writes on at the next revision; then it stops."""
    try:
        assert answers(restored.endpoint, history) == expected
        after = processes.etcdctl(restored.endpoint, ["put", "next", "1", "-w", "json"])
        assert json.loads(after.stdout)["header"]["revision"] == history["last"] + 1
    finally:
        restored.stop()


@pytest.fixture(scope="module")
def history(e2e_etcd, e2e_shim):
    revisions = {side: write_history(server.endpoint) for side, server in (("etcd", e2e_etcd), ("shim", e2e_shim))}
    assert revisions["etcd"] == revisions["shim"]
    return revisions["shim"]


@pytest.fixture(scope="module")
def snapshots(history, e2e_etcd, e2e_shim, tmp_path_factory):
    folder = tmp_path_factory.mktemp("snapshots")
    return {side: save(server.endpoint, folder / f"{side}.db")
            for side, server in (("etcd", e2e_etcd), ("shim", e2e_shim))}


def test_the_snapshot_is_etcds_database(snapshots, history, e2e_etcd, e2e_shim):
    etcd, shim = database_of(snapshots["etcd"]), database_of(snapshots["shim"])
    assert sorted(shim) == sorted(etcd)
    assert shim[b"key"] == etcd[b"key"]
    # The history really is in there: every revision after the compaction; before it, only the
    # last put of each key then live ("a" put first, deleted in the Txn, put again: only the latter).
    revisions = {int.from_bytes(key[:8], "big") for key in shim[b"key"]}
    assert set(range(history["compact"] + 1, history["last"] + 1)) <= revisions
    first = history["compact"] - COMPACT_AT + 2
    assert first not in revisions and first + 1 in revisions
    assert not [key for key in shim[b"key"] if key.endswith(b"t") and int.from_bytes(key[:8], "big") <= history["compact"]]
    assert [key for key in shim[b"key"] if key.endswith(b"t")]
    assert shim[b"lease"] == etcd[b"lease"] and len(shim[b"lease"]) == 1
    for key in (b"finishedCompactRev", b"scheduledCompactRev"):
        assert shim[b"meta"][key] == etcd[b"meta"][key]
    for side, server, database in (("etcd", e2e_etcd, etcd), ("shim", e2e_shim, shim)):
        voters = json.loads(database[b"meta"][b"confState"])["voters"]
        assert voters == [member_id(server.endpoint)], side
    assert shim[b"auth"] == etcd[b"auth"]
    assert shim[b"alarm"] == etcd[b"alarm"] == {}


def test_etcdutl_snapshot_status_reads_it(snapshots, history):
    etcd, shim = status_of(snapshots["etcd"]), status_of(snapshots["shim"])
    assert shim["revision"] == etcd["revision"] == history["last"]
    # etcd's file also lists its member and cluster version; the shim's leaves them to restore.
    membership = {side: sum(len(database_of(snapshots[side])[name]) for name in (b"members", b"cluster"))
                  for side in snapshots}
    assert shim["totalKey"] - membership["shim"] == etcd["totalKey"] - membership["etcd"]


def test_etcdutl_snapshot_restore_serves_the_same_data(snapshots, history, e2e_shim, tmp_path):
    expected = answers(e2e_shim.endpoint, history)
    assert expected["compacted"][0] == "error" and len(expected["now"]) == 6 + MANY - 10
    assert_serves(restore_etcd(snapshots["shim"], tmp_path), expected, history)


@shim_only
@pytest.mark.parametrize("source", ["shim", "etcd"])
def test_cosmos_etcd_restore_serves_the_same_data(source, snapshots, history, e2e_etcd, e2e_shim, tmp_path):
    """From the shim's own snapshot, and from etcd's: a migration with every revision kept."""
    expected = answers({"shim": e2e_shim, "etcd": e2e_etcd}[source].endpoint, history)
    assert_serves(restore_shim(snapshots[source], tmp_path), expected, history)


@shim_only
@pytest.mark.parametrize("source", ["shim", "etcd"])
def test_cosmos_etcd_restore_into_a_cosmos_container(source, snapshots, history, e2e_etcd, e2e_shim, cosmos,
                                                     tmp_path):
    expected = answers({"shim": e2e_shim, "etcd": e2e_etcd}[source].endpoint, history)
    flags = ["--cosmos-endpoint", cosmos.endpoint, "--cosmos-container", f"restore-{uuid.uuid4().hex[:8]}"]
    r = cosmos_etcd_restore(snapshots[source], tmp_path / "unused", "--backend", "cosmos", *flags,
                            env=LOCAL_COSMOS_KEY)
    assert r.returncode == 0, r.stderr
    with cosmos_shims.replicas(tmp_path, cosmos.endpoint, flags[3], "first", "second") as served:
        for replica in served:
            assert answers(replica.endpoint, history) == expected, replica.name


@shim_only
def test_a_restore_refused_half_way_by_cosmos_leaves_a_store_that_is_not_served(snapshots, cosmos, tmp_path):
    """A 403 on the import's first log write (after its checkpoint and meta): the restore fails
    with Cosmos' refusal named, and the half-filled container refuses to be served."""
    container = f"restore-403-{uuid.uuid4().hex[:8]}"
    threaded = ThreadedFaultProxy("127.0.0.1", cosmos.port)
    with threaded as proxy:
        on_proxy(threaded, lambda p: p.add(Rule("status", status=403, times=1, operation="create",
                                                body=b'"kind":"log"')))
        flags = ["--cosmos-endpoint", proxy.endpoint, "--cosmos-container", container]
        r = cosmos_etcd_restore(snapshots["shim"], tmp_path / "unused", "--backend", "cosmos", *flags,
                                env=LOCAL_COSMOS_KEY)
    assert r.returncode == 1 and "403" in r.stderr, r.stderr
    refused = subprocess.run(processes.shim_argv(tmp_path / "data", processes.free_port(),
                                                 ["--backend", "cosmos", "--cosmos-endpoint", cosmos.endpoint,
                                                  "--cosmos-container", container]),
                             capture_output=True, text=True, timeout=60, env={**os.environ, **LOCAL_COSMOS_KEY})
    assert refused.returncode != 0 and "being filled and is not complete" in refused.stderr, refused.stderr


@shim_only
def test_cosmos_etcd_restore_refuses_and_writes_nothing(snapshots, tmp_path):
    data = snapshots["shim"].read_bytes()
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(data[:5000] + bytes([data[5000] ^ 1]) + data[5001:])
    no_hash = tmp_path / "no-hash.db"
    no_hash.write_bytes(data[:-32])
    noise = tmp_path / "noise.db"
    noise.write_bytes(bytes(8192) + hashlib.sha256(bytes(8192)).digest())
    for snapshot, flags, message in ((damaged, (), "SHA-256 does not match"),
                                     (no_hash, (), "has no SHA-256"),
                                     (noise, (), "not an etcd database")):
        data_dir = tmp_path / f"{snapshot.stem}.data"
        r = cosmos_etcd_restore(snapshot, data_dir, *flags)
        assert (r.returncode, r.stdout) == (1, ""), r
        assert message in r.stderr
        assert not data_dir.exists() or not list(data_dir.iterdir())
    occupied = tmp_path / "occupied.data"
    occupied.mkdir()
    (occupied / "keep").write_text("mine")
    r = cosmos_etcd_restore(snapshots["shim"], occupied)
    assert r.returncode == 1 and "is not empty" in r.stderr
    assert [p.name for p in occupied.iterdir()] == ["keep"]
    r = cosmos_etcd_restore(no_hash, tmp_path / "skipped.data", "--skip-hash-check")
    assert r.returncode == 0, r.stderr


def test_raised_alarms_are_in_the_snapshot(history, e2e_etcd, e2e_shim, tmp_path):
    alarm = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=0, alarm=pb.NOSPACE)
    databases = {}
    for side, server in (("etcd", e2e_etcd), ("shim", e2e_shim)):
        with grpc.insecure_channel(server.endpoint) as channel:
            maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
            maintenance.Alarm(alarm, timeout=10)
            try:
                databases[side] = database_of(save(server.endpoint, tmp_path / f"{side}.db"))
            finally:
                maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=0, alarm=pb.NOSPACE),
                                  timeout=10)
    assert databases["shim"][b"alarm"] == databases["etcd"][b"alarm"]
    assert list(databases["shim"][b"alarm"]) == [pb.AlarmMember(memberID=0, alarm=pb.NOSPACE).SerializeToString()]


def test_restored_auth_keeps_users_roles_and_permissions(history, e2e_shim, tmp_path):
    """Last in the module: it enables auth on the shim."""
    endpoint = e2e_shim.endpoint
    for args in (["role", "add", "root"], ["user", "add", "root:rootpw"], ["user", "grant-role", "root", "root"],
                 ["role", "add", "reader"], ["role", "grant-permission", "reader", "read", "a"],
                 ["user", "add", "alice:alicepw"], ["user", "grant-role", "alice", "reader"], ["auth", "enable"]):
        r = processes.etcdctl(endpoint, args)
        assert r.returncode == 0, (args, r.stderr)
    snapshot = save(endpoint, tmp_path / "auth.db", "--user", "root:rootpw")
    restored = [restore_etcd(snapshot, tmp_path / "etcd")]
    if TARGET == "shim":
        restored.append(restore_shim(snapshot, tmp_path / "shim"))
    try:
        for server in restored:
            for user in ("root:rootpw", "alice:alicepw"):
                for key in ("a", "b"):
                    on = {side: processes.etcdctl(side, ["--user", user, "get", key, "--print-value-only"])
                          for side in (endpoint, server.endpoint)}
                    source, copy = on[endpoint], on[server.endpoint]
                    assert (copy.returncode, copy.stdout) == (source.returncode, source.stdout), (server, user, key)
                    assert copy.stderr.splitlines()[-1:] == source.stderr.splitlines()[-1:], (server, user, key)
            denied = processes.etcdctl(server.endpoint, ["--user", "alice:wrong", "get", "a"])
            assert "authentication failed" in denied.stderr
            roles = processes.etcdctl(server.endpoint, ["--user", "root:rootpw", "role", "get", "reader"])
            assert "KV Read:\n\ta\n" in roles.stdout
    finally:
        for server in restored:
            server.stop()


@shim_only
def test_a_second_cosmos_replica_snapshots_what_the_first_wrote(cosmos, tmp_path):
    container = f"snapshot-{uuid.uuid4().hex[:8]}"
    with cosmos_shims.replicas(tmp_path, cosmos.endpoint, container, "first", "second") as (first, second):
        history = write_history(first.endpoint)
        expected = answers(first.endpoint, history)
        snapshot = save(second.endpoint, tmp_path / "second.db")
        assert database_of(snapshot)[b"key"] == database_of(save(first.endpoint, tmp_path / "first.db"))[b"key"]
        assert status_of(snapshot)["revision"] == history["last"]
        assert_serves(restore_etcd(snapshot, tmp_path), expected, history)


@shim_only
def test_the_sqlite_format_is_a_data_directory(tmp_path):
    """``--snapshot-format sqlite``: the store image, which a data directory holds as it is."""
    source = processes.start_shim(tmp_path / "source", extra_args=["--snapshot-format", "sqlite"])
    try:
        history = write_history(source.endpoint)
        snapshot = save(source.endpoint, tmp_path / "store.db")
        assert etcdutl("snapshot", "status", str(snapshot)).returncode != 0  # not etcd's format
        expected = answers(source.endpoint, history)
    finally:
        source.stop()
    restored = restore_shim(snapshot, tmp_path)
    try:
        assert answers(restored.endpoint, history) == expected
    finally:
        restored.stop()
