"""Maintenance, Cluster and gRPC health: member ids, sizes and raft indexes differ between servers,
so these answers are checked for etcd's shape on each side (etcd itself included, which proves
the expectations), not compared field by field."""
from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from cosmos_etcd_shim.proto import rpc_pb2 as pb

SIDES = ["etcd", "shim"]


def kv_revision(side) -> int:
    return side.stub("KV").Range(pb.RangeRequest(key=b"\x00probe"), timeout=10).header.revision


@pytest.mark.parametrize("side_name", SIDES)
def test_status(pair, side_name):
    side = pair.side(side_name)
    pair.put(pair.k(b"a"), b"1")  # something in the store
    before = kv_revision(side)
    status = side.stub("Maintenance").Status(pb.StatusRequest(), timeout=10)
    assert kv_revision(side) == before
    assert status.version.startswith("3."), status.version
    assert status.dbSize > 0
    assert status.header.member_id != 0
    assert status.leader == status.header.member_id
    assert status.raftIndex > 0
    assert status.header.revision == before
    assert not status.errors
    assert not status.isLearner


@pytest.mark.parametrize("side_name", SIDES)
def test_alarm_get_is_empty(pair, side_name):
    side = pair.side(side_name)
    before = kv_revision(side)
    r = side.stub("Maintenance").Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET, memberID=0,
                                                       alarm=pb.NONE), timeout=10)
    assert list(r.alarms) == []
    assert r.header.revision == before


@pytest.mark.parametrize("side_name", SIDES)
def test_member_list(pair, side_name):
    side = pair.side(side_name)
    before = kv_revision(side)
    r = side.stub("Cluster").MemberList(pb.MemberListRequest(), timeout=10)
    assert len(r.members) == 1
    member = r.members[0]
    assert list(member.clientURLs) == [side.server.url]
    assert member.ID != 0
    assert not member.isLearner
    assert r.header.member_id == member.ID
    # as etcd: the Cluster service's header carries cluster, member and term but no revision
    assert r.header.revision == 0
    assert kv_revision(side) == before
    status = side.stub("Maintenance").Status(pb.StatusRequest(), timeout=10)
    assert status.leader == member.ID
    # every service names the same cluster and member
    kv_header = side.stub("KV").Range(pb.RangeRequest(key=b"\x00probe"), timeout=10).header
    assert (kv_header.cluster_id, kv_header.member_id) == (r.header.cluster_id, member.ID)
    assert (status.header.cluster_id, status.header.member_id) == (r.header.cluster_id, member.ID)
    assert r.header.cluster_id != 0


@pytest.mark.parametrize("side_name", SIDES)
def test_header_revision_follows_writes(pair, side_name):
    side = pair.side(side_name)
    pair.put(pair.k(b"x"), b"1")
    pair.put(pair.k(b"x"), b"2")
    rev = kv_revision(side)
    assert rev == pair.base[side_name] + 2
    status = side.stub("Maintenance").Status(pb.StatusRequest(), timeout=10)
    members = side.stub("Cluster").MemberList(pb.MemberListRequest(), timeout=10)
    assert status.header.revision == rev
    assert members.header.revision == 0  # as etcd: Cluster headers carry no revision
    alarms = side.stub("Maintenance").Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), timeout=10)
    assert alarms.header.revision == rev


@pytest.mark.parametrize("side_name", SIDES)
def test_grpc_health_serving(pair, side_name):
    """The standard grpc.health.v1 service (etcd 3.5 serves it too)."""
    side = pair.side(side_name)
    r = side.stub("Health").Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING
