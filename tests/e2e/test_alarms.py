"""Alarms end to end: the real etcdctl's ``alarm list`` / ``alarm disarm`` against etcd and the
shim, an alarm that survives a restart of the shim (embedded), and two shim replicas on one Cosmos
container that share their alarms (raised through one, enforced by the other; disarmed through
the other, writable again through the first). Status' ``errors``, ``/health``, ``/readyz`` and the
``cosmos_etcd_alarms`` metric follow the raised alarms.

A replica learns an alarm raised elsewhere at its next read of the log's tail: the tests wait for
that by polling the condition with a deadline, never by sleeping a fixed time.
"""
from __future__ import annotations

import time
import uuid

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from tests.e2e.conftest import shim_only
from tests.harness import cosmos_shims, processes
from tests.harness.health import ask

pytestmark = pytest.mark.timeout(180)

GET, ACTIVATE = pb.AlarmRequest.GET, pb.AlarmRequest.ACTIVATE
NO_SPACE = (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
FOLLOWED_WITHIN = 20.0  # seconds: a replica's idle poll of the log is at most 1 s
NOSPACE_METRIC = 'cosmos_etcd_alarms{alarm="NOSPACE"}'


def member_id(channel: grpc.Channel) -> int:
    return rpc_pb2_grpc.MaintenanceStub(channel).Status(pb.StatusRequest(), timeout=10).header.member_id


def put_outcome(channel: grpc.Channel, key: bytes) -> tuple | None:
    """None if the Put succeeds, else its (code, message)."""
    try:
        rpc_pb2_grpc.KVStub(channel).Put(pb.PutRequest(key=key, value=b"v"), timeout=10)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None


def eventually(condition, what: str, within: float = FOLLOWED_WITHIN):
    """Poll ``condition()`` until it returns something true; that value."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.1)


def etcdctl_text(server: processes.Server, own_id: int, *args: str) -> tuple[int, str]:
    """etcdctl's exit code and output, the server's own member id (decimal) replaced by SELF."""
    done = processes.etcdctl(server.endpoint, list(args))
    return done.returncode, done.stdout.replace(str(own_id), "SELF")


def test_etcdctl_alarm_list_and_disarm(e2e_etcd, e2e_shim):
    outputs = {}
    for name, server in (("etcd", e2e_etcd), ("shim", e2e_shim)):
        with grpc.insecure_channel(server.endpoint) as channel:
            own = member_id(channel)
            maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
            try:
                for member in (0, own):
                    maintenance.Alarm(pb.AlarmRequest(action=ACTIVATE, memberID=member, alarm=pb.NOSPACE), timeout=10)
                listed = etcdctl_text(server, own, "alarm", "list")
                refused = processes.etcdctl(server.endpoint, ["put", "/alarms/k", "v"])
                disarmed = etcdctl_text(server, own, "alarm", "disarm")
            finally:
                for raised in maintenance.Alarm(pb.AlarmRequest(action=GET), timeout=10).alarms:
                    maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=raised.memberID,
                                                      alarm=raised.alarm), timeout=10)
            outputs[name] = {
                "list": (listed[0], sorted(listed[1].splitlines())),
                "put refused": (refused.returncode, NO_SPACE[1] in refused.stderr),
                "disarm": (disarmed[0], sorted(disarmed[1].splitlines())),
                "list after": etcdctl_text(server, own, "alarm", "list"),
                "put after": processes.etcdctl(server.endpoint, ["put", "/alarms/k", "v"]).stdout,
            }
    both_alarms = ["alarm:NOSPACE ", "memberID:SELF alarm:NOSPACE "]
    assert outputs["etcd"] == {"list": (0, both_alarms), "put refused": (1, True), "disarm": (0, both_alarms),
                               "list after": (0, ""), "put after": "OK\n"}
    assert outputs["shim"] == outputs["etcd"]


@shim_only
def test_alarm_survives_a_restart(tmp_path):
    metrics_port = processes.free_port()
    metrics = ["--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}"]
    server = processes.start_shim(tmp_path, extra_args=metrics)
    with processes.running(server), grpc.insecure_channel(server.endpoint) as channel:
        own = member_id(channel)
        rpc_pb2_grpc.MaintenanceStub(channel).Alarm(
            pb.AlarmRequest(action=ACTIVATE, memberID=own, alarm=pb.NOSPACE), timeout=10)
        rpc_pb2_grpc.MaintenanceStub(channel).Alarm(
            pb.AlarmRequest(action=ACTIVATE, memberID=0, alarm=pb.CORRUPT), timeout=10)
    server = processes.start_shim(tmp_path, extra_args=metrics, data_dir=server.data_dir,
                                  port=int(server.endpoint.rpartition(":")[2]))
    with processes.running(server), grpc.insecure_channel(server.endpoint) as channel:
        maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        listed = maintenance.Alarm(pb.AlarmRequest(action=GET), timeout=10).alarms
        assert [(a.memberID, a.alarm) for a in listed] == [(own, pb.NOSPACE), (0, pb.CORRUPT)]
        assert list(maintenance.Status(pb.StatusRequest(), timeout=10).errors) == \
            [f"memberID:{own} alarm:NOSPACE ", "alarm:CORRUPT "]
        assert put_outcome(channel, b"k") == (grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")
        health = ask(metrics_port, "/health")
        assert (health.status, health.json()) == (503, {"health": "false", "reason": "ALARM NOSPACE"})
        excluded = ask(metrics_port, "/health?exclude=NOSPACE")
        assert (excluded.status, excluded.json()) == (503, {"health": "false", "reason": "ALARM CORRUPT"})
        assert ask(metrics_port, "/health?exclude=NOSPACE&exclude=CORRUPT").status == 200
        readyz = ask(metrics_port, "/readyz")
        assert readyz.status == 503 and b"[-]data_corruption failed: alarm activated: CORRUPT\n" in readyz.body
        assert ask(metrics_port, "/livez").status == 200
        maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, alarm=pb.CORRUPT), timeout=10)
        assert put_outcome(channel, b"k") == NO_SPACE
        assert ask(metrics_port, "/readyz").status == 200
        assert processes.etcdctl(server.endpoint, ["alarm", "disarm"]).returncode == 0
        assert put_outcome(channel, b"k") is None
        assert ask(metrics_port, "/health").status == 200


@shim_only
def test_replicas_share_alarms(cosmos, tmp_path):
    container = f"alarms-{uuid.uuid4().hex[:8]}"
    with cosmos_shims.replicas(tmp_path, cosmos.endpoint, container, "replica-a", "replica-b") as (a, b):
        assert put_outcome(b.channel, b"/shared/k") is None
        a.maintenance.Alarm(pb.AlarmRequest(action=ACTIVATE, memberID=0, alarm=pb.NOSPACE), timeout=10)
        # A GET catches up with the log first: it lists the alarm at once.
        listed = b.maintenance.Alarm(pb.AlarmRequest(action=GET), timeout=10).alarms
        assert [(x.memberID, x.alarm) for x in listed] == [(0, pb.NOSPACE)]
        eventually(lambda: put_outcome(b.channel, b"/shared/k") == NO_SPACE, "replica B refuses a Put")
        assert list(b.maintenance.Status(pb.StatusRequest(), timeout=10).errors) == ["alarm:NOSPACE "]
        assert b.http("/health").json() == {"health": "false", "reason": "ALARM NOSPACE"}
        assert b.metrics()[NOSPACE_METRIC] == 1
        disarmed = b.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=0,
                                                       alarm=pb.NOSPACE), timeout=10).alarms
        assert [(x.memberID, x.alarm) for x in disarmed] == [(0, pb.NOSPACE)]
        assert put_outcome(b.channel, b"/shared/k") is None
        eventually(lambda: put_outcome(a.channel, b"/shared/k") is None, "replica A writes again")
        assert a.http("/health").status == 200
        assert a.metrics()[NOSPACE_METRIC] == 0
        a.assert_alive()
        b.assert_alive()
