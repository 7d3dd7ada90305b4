"""NOSPACE from ``--quota-backend-bytes``, compared with a real etcd 3.5.1 (issue 15, item 5).

etcd and the shim are started with the same small quota and go through one scripted scenario:
fill until a write is refused, see what the raised alarm refuses and what still goes on, disarm
while the store is still over its quota (the next write raises the alarm again), compact,
defragment, and disarm again (writes go in again). Their database sizes differ (etcd's bbolt file
grows in large steps, SQLite's write-ahead log in small ones), so the scenario is written in
relative terms, "until refused", "once under the quota", and its transcript is the sequence of
outcomes (gRPC code and message, or what a read found, with member ids replaced by roles), which
must be the same on both.

* Embedded: one shim beside one etcd. Compaction alone does not shrink either database, so the
  transcript also shows a disarm after compaction that is raised again at the next write.
* Cosmos: two replicas A and B on one container. Writes through A hit the quota; B lists A's
  alarm and refuses too; B sees the size drop after the compaction and defragmentation through A
  and still refuses while the alarm is raised; a disarm through B lets writes in through both. On
  the etcd side both roles are the one member. On Cosmos compaction itself frees space (the
  compacted history is deleted), so that run leaves out the step after compaction alone.

Every change of another replica is awaited by polling the condition with a deadline.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import uuid

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from cosmos_etcd_shim.proto.rpc_pb2 import AlarmRequest, AlarmType
from tests.harness import cosmos_shims, processes

pytestmark = pytest.mark.timeout(300)

QUOTA_BYTES = 256 * 1024  # reached by etcd within ~150 puts of VALUE, by the shim within ~20
QUOTA_FLAG = ["--quota-backend-bytes", str(QUOTA_BYTES)]
VALUE = b"x" * 4096
FILL_KEYS = 5  # the fill rewrites these keys: compaction leaves little live data
FILL_KEY = b"/quota/fill/0"  # the first of them; they all cost the same
MAX_FILL_PUTS = 2000
FOLLOWED_WITHIN = 20.0  # seconds: a replica reads the log's tail at least once a second while idle
NO_SPACE = "RESOURCE_EXHAUSTED etcdserver: mvcc: database space exceeded"
OK = "ok"


@dataclasses.dataclass
class Roles:
    """The endpoint writes go through (A) and another one (B); the same server for a single one."""

    writer: grpc.Channel
    other: grpc.Channel

    def member_names(self) -> dict[int, str]:
        other_id, writer_id = status(self.other).header.member_id, status(self.writer).header.member_id
        return {other_id: "B", writer_id: "A"}  # A when both are one member


def status(channel: grpc.Channel) -> pb.StatusResponse:
    return rpc_pb2_grpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=10)


def outcome(call) -> str:
    """"ok", or the refusal's code and message."""
    try:
        call()
    except grpc.RpcError as e:
        return f"{e.code().name} {e.details()}"
    return OK


def put(channel: grpc.Channel, key: bytes, value: bytes = b"v", lease: int = 0) -> str:
    return outcome(lambda: rpc_pb2_grpc.KVStub(channel).Put(pb.PutRequest(key=key, value=value, lease=lease),
                                                          timeout=10))


def txn(channel: grpc.Channel, *ops: pb.RequestOp) -> str:
    return outcome(lambda: rpc_pb2_grpc.KVStub(channel).Txn(pb.TxnRequest(success=ops), timeout=10))


def grant(channel: grpc.Channel) -> str:
    return outcome(lambda: rpc_pb2_grpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=10))


def alarms(channel: grpc.Channel, names: dict[int, str]) -> list[str]:
    """The raised alarms as "<role> <type>" (a member of neither role would show its id)."""
    listed = rpc_pb2_grpc.MaintenanceStub(channel).Alarm(pb.AlarmRequest(action=AlarmRequest.GET), timeout=10).alarms
    return sorted(f"{names.get(a.memberID, a.memberID)} {AlarmType.Name(a.alarm)}" for a in listed)


def disarm_all(channel: grpc.Channel) -> str:
    """What ``etcdctl alarm disarm`` does: list the alarms, deactivate each."""
    maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
    listed = maintenance.Alarm(pb.AlarmRequest(action=AlarmRequest.GET), timeout=10).alarms
    return outcome(lambda: [maintenance.Alarm(pb.AlarmRequest(action=AlarmRequest.DEACTIVATE, memberID=a.memberID,
                                                              alarm=a.alarm), timeout=10) for a in listed])


def fill(channel: grpc.Channel) -> str:
    """Put VALUE until a put is refused: the refusal, once some puts went in. The size is then at
    least the quota less the cost of such a put: the same put is refused again until the size
    drops (neither etcd's size nor the shim's drops before a defragmentation)."""
    for accepted in range(MAX_FILL_PUTS):
        refusal = put(channel, FILL_KEY[:-1] + b"%d" % (accepted % FILL_KEYS), VALUE)
        if refusal != OK:
            return f"refused after {'some' if accepted else 'no'} puts: {refusal}"
    return f"never refused in {MAX_FILL_PUTS} puts"


def refused_exactly_over_quota(channel: grpc.Channel, op: pb.RequestOp) -> bool:
    """Whether a Txn of ``op`` (which costs nothing) is refused when the size is at or over the
    quota and served when under it. Where the first refused write left the size (just under the
    quota or past it) depends on how the database grew, so the comparison is of the rule."""
    size = status(channel).dbSize
    return txn(channel, op) == (NO_SPACE if size >= QUOTA_BYTES else OK)


def under_quota(channel: grpc.Channel) -> bool:
    """Whether the server's dbSize comes under the quota within FOLLOWED_WITHIN (a replica learns
    another's compaction at its next read of the log's tail)."""
    deadline = time.monotonic() + FOLLOWED_WITHIN
    while status(channel).dbSize >= QUOTA_BYTES:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # pacing of the polls
    return True


RANGE_OP = pb.RequestOp(request_range=pb.RangeRequest(key=FILL_KEY))
PUT_OP = pb.RequestOp(request_put=pb.PutRequest(key=b"/quota/txn", value=b"v"))
DELETE_OP = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"/quota/absent"))


def scenario(roles: Roles, compaction_alone_frees_space: bool) -> list[tuple[str, object]]:
    """Run the scenario; its transcript, (step, outcome) in order."""
    a, b = roles.writer, roles.other
    names = roles.member_names()
    kv_a = rpc_pb2_grpc.KVStub(a)
    lease_b = rpc_pb2_grpc.LeaseStub(b)
    transcript: list[tuple[str, object]] = []

    def step(name: str, result: object) -> None:
        transcript.append((name, result))

    step("alarms at start", alarms(b, names))
    lease = rpc_pb2_grpc.LeaseStub(a).LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=10).ID
    step("put with a lease", put(a, b"/quota/leased", lease=lease))

    step("fill through A", fill(a))
    step("alarms through B", alarms(b, names))
    step("Status errors through A", sorted(e.replace(f"memberID:{status(a).header.member_id} ", "memberID:A ")
                                          for e in status(a).errors))
    step("put through B", put(b, b"/quota/b"))
    step("NOSPACE listed through B after its refusal", "A NOSPACE" in alarms(b, names))
    step("Txn with a put", txn(b, PUT_OP))
    step("read-only Txn refused exactly when over the quota", refused_exactly_over_quota(b, RANGE_OP))
    step("Txn with a delete refused exactly when over the quota", refused_exactly_over_quota(b, DELETE_OP))
    step("LeaseGrant", grant(b))
    step("Range", outcome(lambda: rpc_pb2_grpc.KVStub(b).Range(pb.RangeRequest(key=FILL_KEY), timeout=10)))
    step("DeleteRange", outcome(lambda: rpc_pb2_grpc.KVStub(b).DeleteRange(
        pb.DeleteRangeRequest(key=b"/quota/fill/4"), timeout=10)))
    step("keep-alive", next(lease_b.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)]), timeout=10)).TTL > 0)
    step("LeaseRevoke", outcome(lambda: lease_b.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=10)))
    step("the leased key after the revoke",
         rpc_pb2_grpc.KVStub(b).Range(pb.RangeRequest(key=b"/quota/leased"), timeout=10).count)

    step("disarm over the quota", disarm_all(b))
    step("alarms after the disarm", alarms(b, names))
    step("put through A over the quota", put(a, FILL_KEY, VALUE))
    step("alarms raised again", alarms(b, names))

    revision = kv_a.Range(pb.RangeRequest(key=b"/quota/"), timeout=10).header.revision
    step("compact", outcome(lambda: kv_a.Compact(pb.CompactionRequest(revision=revision, physical=True), timeout=30)))
    if not compaction_alone_frees_space:
        step("disarm after compaction alone", disarm_all(b))
        step("put after compaction alone", put(a, FILL_KEY, VALUE))
        step("alarms raised again after compaction alone", alarms(b, names))
    for channel in (a, b):  # etcd defragments the member asked; a Cosmos replica, the shared store
        step("defragment", outcome(functools.partial(rpc_pb2_grpc.MaintenanceStub(channel).Defragment,
                                                     pb.DefragmentRequest(), timeout=60)))
    step("under the quota through B", under_quota(b))

    step("put while NOSPACE is raised", put(b, b"/quota/b"))
    step("LeaseGrant while NOSPACE is raised", grant(b))
    step("Txn with a put while NOSPACE is raised", txn(b, PUT_OP))
    step("read-only Txn under the quota", txn(b, RANGE_OP))
    step("Txn with a delete under the quota", txn(b, DELETE_OP))

    step("disarm under the quota", disarm_all(b))
    step("alarms after the last disarm", alarms(b, names))
    # A replica learns a disarm through another at its next read of the log's tail: a linearizable
    # read makes one (etcd's single member has nothing to learn).
    step("Range through A", outcome(lambda: kv_a.Range(pb.RangeRequest(key=b"/quota/a"), timeout=10)))
    step("put through A", put(a, b"/quota/a"))
    step("put through B", put(b, b"/quota/b"))
    step("Txn with a put through B", txn(b, PUT_OP))
    step("LeaseGrant through B", grant(b))
    step("alarms at the end", alarms(a, names))
    return transcript


# What etcd 3.5.1 answers at the steps that matter (the comparison checks every step).
EXPECTED_OF_ETCD = {
    "fill through A": f"refused after some puts: {NO_SPACE}",
    "alarms through B": ["A NOSPACE"],
    "Status errors through A": ["memberID:A alarm:NOSPACE "],
    "put through B": NO_SPACE,
    "read-only Txn refused exactly when over the quota": True,
    "DeleteRange": OK,
    "alarms after the disarm": [],
    "alarms raised again": ["A NOSPACE"],
    "under the quota through B": True,
    "read-only Txn under the quota": OK,
    "put through A": OK,
    "alarms at the end": [],
}


def run_on_etcd(workdir, compaction_alone_frees_space: bool) -> list[tuple[str, object]]:
    etcd = processes.start_etcd(workdir, extra_args=QUOTA_FLAG)
    try:
        with grpc.insecure_channel(etcd.endpoint) as channel:
            transcript = scenario(Roles(channel, channel), compaction_alone_frees_space)
    finally:
        etcd.stop()
    for name, expected in EXPECTED_OF_ETCD.items():
        assert (name, expected) in transcript, f"etcd at {name!r}: {transcript}"
    return transcript


def assert_same(shim: list, etcd: list) -> None:
    differences = [(s, e) for s, e in zip(shim, etcd) if s != e]
    assert not differences and len(shim) == len(etcd), f"shim vs etcd: {differences}\nshim: {shim}\netcd: {etcd}"


def test_nospace_embedded_as_etcd(tmp_path):
    etcd = run_on_etcd(tmp_path / "etcd", compaction_alone_frees_space=False)
    shim = processes.start_shim(tmp_path / "shim", extra_args=QUOTA_FLAG)
    try:
        with grpc.insecure_channel(shim.endpoint) as channel:
            transcript = scenario(Roles(channel, channel), compaction_alone_frees_space=False)
    finally:
        shim.stop()
    assert_same(transcript, etcd)


def test_nospace_cosmos_two_replicas_as_etcd(tmp_path, cosmos):
    etcd = run_on_etcd(tmp_path / "etcd", compaction_alone_frees_space=True)
    container = f"quota-{uuid.uuid4().hex[:8]}"
    with cosmos_shims.replicas(tmp_path, cosmos.endpoint, container, "replica-a", "replica-b",
                               extra_args=QUOTA_FLAG) as (a, b):
        transcript = scenario(Roles(a.channel, b.channel), compaction_alone_frees_space=True)
        a.assert_alive()
        b.assert_alive()
    assert_same(transcript, etcd)
