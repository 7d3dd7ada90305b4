"""Linearizable reads on elected replicas (``shim/replication/reads.py`` and ``fencing.py``), each
replica driven through its own connection, on the local Cosmos server.

1. The leader answers linearizable reads from its store (it holds its term's fence), and a
   follower's linearizable Range and read-only Txn ask the leader for its read index; both see
   every write the leader acknowledged before they began, and neither queries the log for it
   (without these each read is a query of the log), as their read counters by path say too.
2. A follower behind the leader's compaction refuses a read below it, as the leader does: the read
   index carries the leader's compact revision.
3. With the leader paused (SIGSTOP), a follower's linearizable reads go on through the log, and
   show every acknowledged write.
4. A former leader's append cannot land after the next leader took over: its log create is held
   by a fault proxy while its renewals fail, the other replica takes over (and fences the log),
   and the held create then reaches Cosmos. It is refused: the log holds nothing the new leader
   does not have, and the client was not told the write succeeded. Without the fence the create
   would land behind the new leader's back, and its reads from memory would miss a write that
   the log (and any replica reading it) shows.
"""
from __future__ import annotations

import signal
import uuid

import grpc
import pytest
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.storage.cosmos import layout

from tests.harness.cosmos import documents
from tests.harness.cosmos_shims import elected, start_shim
from tests.harness.elected_pair import (
    LEASE_SECONDS,
    RPC_TIMEOUT,
    TAKEOVER_DEADLINE,
    leader_and_follower,
    put,
    running_pair,
    status,
)
from tests.harness.faultproxy import Rule, ThreadedFaultProxy
from tests.harness.waiting import poll

pytestmark = pytest.mark.timeout(120)

READS = 50


@pytest.fixture
def container() -> str:
    return f"reads-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pair(tmp_path, cosmos, container):
    with running_pair(tmp_path, cosmos, container) as shims:
        yield shims


def cosmos_log_documents(server, container: str) -> list[dict]:
    """The log documents as stored (Azure SDK straight to the Cosmos server, no shim)."""
    with documents(server, container) as stored:
        return list(stored.query_items("SELECT c.r, c.e FROM c WHERE c.pk = @pk AND c.kind = @kind",
                                       parameters=[{"name": "@pk", "value": layout.LOG_PARTITION},
                                                   {"name": "@kind", "value": layout.KIND_LOG}],
                                       partition_key=layout.LOG_PARTITION))


def log_reads(shim) -> float:
    """Queries of the log (its tail, its head): what a linearizable read without a read index costs."""
    return sum(v for k, v in shim.metrics().items() if k.startswith("cosmos_etcd_cosmos_requests_total{")
               and ('op="read"' in k or 'op="head"' in k))


def reads_through(shim, path: str) -> float:
    return shim.metrics().get(f'cosmos_etcd_linearizable_reads_total{{through="{path}"}}', 0.0)


def test_linearizable_reads_ask_the_leader_not_cosmos(pair):
    leader, follower = leader_and_follower(*pair)
    poll(lambda: put(leader, b"/reads/warm-up") and follower.metrics().get("cosmos_etcd_pushed_revisions_total"),
             TAKEOVER_DEADLINE, "the follower is pushed to")
    follower.kv.Range(pb.RangeRequest(key=b"/reads/warm-up"), timeout=RPC_TIMEOUT)  # the leader's first of its term
    before = {shim.name: (log_reads(shim), reads_through(shim, "read_index"), reads_through(shim, "lease"))
              for shim in (leader, follower)}
    for i in range(READS):
        key = f"/reads/{i}".encode()
        written = put(leader, key, f"v{i}".encode()).header.revision
        seen = follower.kv.Range(pb.RangeRequest(key=key), timeout=RPC_TIMEOUT)
        assert [kv.value for kv in seen.kvs] == [f"v{i}".encode()] and seen.header.revision >= written
        txn = follower.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]),
                              timeout=RPC_TIMEOUT)
        assert txn.responses[0].response_range.kvs[0].mod_revision == written
        assert leader.kv.Range(pb.RangeRequest(key=key), timeout=RPC_TIMEOUT).kvs[0].mod_revision == written
    queries = {shim.name: log_reads(shim) - before[shim.name][0] for shim in (leader, follower)}
    print(f"\n{2 * READS} linearizable reads through the follower and {READS} through the leader, with "
          f"{READS} writes: queries of the log {queries}")
    assert reads_through(follower, "read_index") - before[follower.name][1] >= 2 * READS
    assert reads_through(leader, "lease") - before[leader.name][2] >= READS
    # One query of the log per read otherwise; what remains is the slow tail of a replica that
    # learns every revision by itself or by push (every 5 s).
    assert queries[follower.name] < 10 and queries[leader.name] < 10, queries


def test_a_follower_behind_the_leaders_compaction_refuses_reads_below_it(pair):
    leader, follower = leader_and_follower(*pair)
    revisions = [put(leader, b"/compacted/key", f"v{i}".encode()).header.revision for i in range(3)]
    follower.kv.Range(pb.RangeRequest(key=b"/compacted/key"), timeout=RPC_TIMEOUT)  # it has them all
    leader.kv.Compact(pb.CompactionRequest(revision=revisions[-1]), timeout=RPC_TIMEOUT)
    for shim in (follower, leader):
        with pytest.raises(grpc.RpcError) as refused:
            shim.kv.Range(pb.RangeRequest(key=b"/compacted/key", revision=revisions[0]), timeout=RPC_TIMEOUT)
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"), shim.name


def test_reads_go_on_through_the_log_while_the_leader_is_paused(pair):
    leader, follower = leader_and_follower(*pair)
    written = [put(leader, f"/paused/{i}".encode()).header.revision for i in range(5)]
    before = reads_through(follower, "log")
    leader.server.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(5):
            seen = follower.kv.Range(pb.RangeRequest(key=b"/paused/", range_end=b"/paused0"), timeout=RPC_TIMEOUT)
            assert sorted(kv.mod_revision for kv in seen.kvs) == written
        assert reads_through(follower, "log") > before
        poll(lambda: status(follower).leader == status(follower).header.member_id, TAKEOVER_DEADLINE,
                 "the follower takes over")
        resumed = put(follower, b"/paused/after").header.revision
        assert follower.kv.Range(pb.RangeRequest(key=b"/paused/after"), timeout=RPC_TIMEOUT).kvs[0].mod_revision == resumed
    finally:
        leader.server.process.send_signal(signal.SIGCONT)



def test_a_former_leaders_append_cannot_land_after_the_takeover(tmp_path, cosmos, container):
    proxies = {name: ThreadedFaultProxy("127.0.0.1", cosmos.port) for name in ("first", "second")}
    shims = []
    with proxies["first"] as first, proxies["second"] as second:
        try:
            for name, endpoint in (("first", first.endpoint), ("second", second.endpoint)):
                shims.append(start_shim(tmp_path, endpoint, container, name, elected(LEASE_SECONDS)))
            leader, follower = leader_and_follower(*shims)
            put(leader, b"/late/warm-up")
            held = Rule("delay", operation="create", body=b'"kind":"log"', seconds=4 * LEASE_SECONDS, times=-1)
            failed_renewals = Rule("status", operation="replace", path="/docs/leader", status=503, times=-1)
            proxies[leader.name].call(lambda p: p.add(held, failed_renewals))
            assert status(leader).leader == status(leader).header.member_id, "the leader changed before the write"
            with pytest.raises(grpc.RpcError) as refused:  # its log append never answers in time
                leader.kv.Put(pb.PutRequest(key=b"/late/key", value=b"v"), timeout=60)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            poll(lambda: status(follower).leader == status(follower).header.member_id, 2 * TAKEOVER_DEADLINE,
                     "the other replica takes over")
            assert not follower.kv.Range(pb.RangeRequest(key=b"/late/key"), timeout=RPC_TIMEOUT).kvs
            poll(lambda: held.hits and held.answered == held.hits, 2 * TAKEOVER_DEADLINE,
                     "the held creates reach Cosmos")
            revision = status(follower).header.revision
            stored = cosmos_log_documents(cosmos, container)
            assert max(d["e"] for d in stored) == revision, (stored, revision)
            assert not follower.kv.Range(pb.RangeRequest(key=b"/late/key"), timeout=RPC_TIMEOUT).kvs
            assert put(follower, b"/late/after").header.revision == revision + 1
        finally:
            for shim in shims:
                shim.close()
