"""Two elected replicas (``shim/replication``) under Cosmos answers that are not the usual ones: the
leader record's renewal, read and claim, the leader's log write while a follower forwards to it,
and a follower's own log reads while the leader pushes to it, each refused (401, 403, 400, 413),
throttled (429 with ``x-ms-retry-after-ms``) or failed (503, also after the request ran).

Set-up: one local Cosmos server for the module; per test its own container and two shim processes
with peer listeners and a 3 s leader lease (``elected(3)``: a round every second), each reaching
Cosmos through a fault proxy of its own (``tests/harness/faultrules.Faults``), so that a fault hits
one replica only; each driven through its own gRPC channel.

What the code leaves open is decided in ``shim/replication/election.py`` (its docstring); the
tests hold it to that:

1. A leader whose renewals are refused (403) or throttled past its lease (429 on every attempt)
   stops counting as leader when its lease runs out, and the follower takes over: Status names
   the new leader on both, ``etcdctl endpoint status`` shows one IS LEADER, the metrics
   ``etcd_server_is_leader`` and ``etcd_server_leader_changes_seen_total`` move once, the two
   never both say they lead, the old leader logs that it stepped down and follows, writers on both
   replicas meanwhile get only etcd's retryable errors and lose no acknowledged write.
2. A renewal throttled (429) or failed (503) a few times, or whose answer is lost after it ran (503
   after the replace), is retried within the lease: the same leader stays, nothing changes hands.
3. A follower whose reads of the leader record are refused (400, 401, 413) or throttled (429)
   keeps following the leader it knows and forwarding to it; it does not claim the record.
4. A follower's claim of a released record refused (401) twice, or whose answer is lost after it
   ran, is retried at the next rounds: it becomes the leader once, in the next term.
5. The leader's log write refused (403, 401, 400, 413), throttled (429) or failed (503) while a
   follower forwards a two-key Txn: the follower's client gets exactly the error a client of the
   leader gets; nothing of the Txn is written and the head does not move. A log write that ran
   but whose answer was lost (503 after it) is acknowledged, whole, once.
6. A follower pushed to whose own log queries are all refused (403) still sees every write, through
   the leader and forwarded through itself, in its watch and serializable reads, in order; it stays
   live, and is ready once the log answers again.
7. A follower behind the leader (paused past its queue of pushes) whose log queries are refused
   goes back to reading the log when its new stream says it is behind, instead of its push task
   failing, and catches up once the log answers.

Throughout: no INTERNAL or UNKNOWN reaches a client, no shim exits, and the account key is in no
log. Waits poll a condition with a deadline (proxy hits, Status, metrics), never sleep.
"""
from __future__ import annotations

import dataclasses
import json
import re
import signal
import threading
import uuid

import grpc
import pytest
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.replication.push import QUEUE_BATCHES
from cosmos_etcd_shim.storage.cosmos import layout

from tests.harness import cosmos as cosmos_harness
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.cosmos_shims import Shim, elected, start_shim
from tests.harness.elected_pair import RPC_TIMEOUT, status
from tests.harness.faultproxy import Rule, throttled
from tests.harness.faultrules import Faults
from tests.harness.processes import etcdctl
from tests.harness.waiting import poll
from tests.harness.watch_streams import WatchStream

pytestmark = pytest.mark.timeout(120)

LEASE_SECONDS = 3.0  # a round every second; a leader counts as leader for 2 s after it sent a renewal
# A takeover happens within a lease and two rounds of the last renewal (5 s); the rest is room for
# a loaded machine.
TAKEOVER_DEADLINE = 4 * LEASE_SECONDS
LEADER_DOCUMENT = f"/docs/{layout.LEADER_ID}"
RENEWAL = {"operation": "replace", "path": LEADER_DOCUMENT}  # a renewal, or a claim
LEADER_READ = {"operation": "read", "path": LEADER_DOCUMENT}
# A log write: a create of the next log document (a term's first append replaces the leader's fence
# with it instead, see shim/storage/cosmos/log.py).
LOG_WRITE = {"body": b'"kind":"log"'}
# What a client may be told while leadership moves: etcd's retryable errors.
RETRYABLE = {(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
             (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")}
ACCOUNT_KEY = LOCAL_COSMOS_KEY["COSMOS_ETCD_COSMOS_KEY"]
# A writing Txn whose compare fails: it goes through the leader's commit pipeline and writes nothing.
NO_OP_TXN = pb.TxnRequest(compare=[pb.Compare(key=b"/nothing", target=pb.Compare.VERSION,
                                              result=pb.Compare.EQUAL, version=12345)],
                          success=[pb.RequestOp(request_put=pb.PutRequest(key=b"/nothing", value=b"v"))])


@dataclasses.dataclass
class Replica:
    shim: Shim
    faults: Faults  # between this replica and Cosmos

    @property
    def member_id(self) -> int:
        return status(self.shim).header.member_id

    def leads(self) -> bool:
        answer = status(self.shim)
        return answer.leader == answer.header.member_id

    def names_leader(self, other: Replica) -> bool:
        return status(self.shim).leader == other.member_id

    def is_leader_metric(self) -> float:
        return self.shim.metrics()["etcd_server_is_leader"]

    def leader_changes(self) -> float:
        return self.shim.metrics()["etcd_server_leader_changes_seen_total"]

    def log_messages(self) -> list[str]:
        return [entry.get("msg", "") for entry in self.shim.log_entries()]

    def leader_record_writes(self, since: int = 0) -> list[str]:
        """The proxy's actions on this replica's replaces of the leader record (renewals, claims)."""
        return [action for operation, path, action in self.faults.log()[since:]
                if operation == "replace" and path.rstrip("/").endswith(LEADER_DOCUMENT)]


@dataclasses.dataclass
class Pair:
    cosmos: cosmos_harness.CosmosServer
    container: str
    replicas: list[Replica]

    def roles(self) -> tuple[Replica, Replica]:
        """Once both replicas name the same leader: (leader, follower)."""
        first, second = self.replicas

        def agreed():
            a, b = status(first.shim), status(second.shim)
            return a.leader and a.leader == b.leader and a

        answer = poll(agreed, TAKEOVER_DEADLINE, "both replicas name one leader")
        return (first, second) if answer.leader == answer.header.member_id else (second, first)

    def leader_record(self) -> dict:
        with cosmos_harness.documents(self.cosmos, self.container) as documents:
            return documents.read_item(layout.LEADER_ID, partition_key=layout.MEMBER_PARTITION)

    def assert_healthy(self) -> None:
        """Every replica still runs, and no log holds the account key."""
        for replica in self.replicas:
            replica.shim.assert_alive()
            assert ACCOUNT_KEY not in replica.shim.server.log(), f"{replica.shim.name} logged the account key"


@pytest.fixture
def pair(cosmos, tmp_path):
    container = f"election-faults-{uuid.uuid4().hex[:8]}"
    proxies: list[Faults] = []
    replicas: list[Replica] = []
    try:
        for name in ("first", "second"):
            proxies.append(Faults.start(cosmos.port))
            shim = start_shim(tmp_path, proxies[-1].endpoint, container, name, elected(LEASE_SECONDS))
            replicas.append(Replica(shim, proxies[-1]))
        yield Pair(cosmos, container, replicas)
    finally:
        for replica in replicas:
            replica.shim.close()
        for faults in proxies:
            faults.close()


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def two_key_txn(prefix: str) -> pb.TxnRequest:
    return pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=f"{prefix}/{k}".encode(), value=b"v"))
                                  for k in ("a", "b")])


def keys_under(shim: Shim, prefix: str) -> dict[bytes, int]:
    """Key -> mod revision of every key under ``prefix``, by a linearizable read."""
    answer = shim.kv.Range(pb.RangeRequest(key=prefix.encode(), range_end=prefix.encode() + b"\xff"),
                           timeout=RPC_TIMEOUT)
    return {kv.key: kv.mod_revision for kv in answer.kvs}


class Writers:
    """A client per replica writing new keys one after another until stopped: what each was told."""

    def __init__(self, *replicas: Replica) -> None:
        self.acknowledged: dict[bytes, int] = {}
        self.errors: list[tuple[grpc.StatusCode, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(r.shim,)) for r in replicas]

    def _write(self, shim: Shim) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"/during/{shim.name}/{i}".encode()
            i += 1
            try:
                revision = shim.kv.Put(pb.PutRequest(key=key, value=b"v"), timeout=RPC_TIMEOUT).header.revision
            except grpc.RpcError as e:
                self.errors.append((e.code(), e.details()))
                continue
            self.acknowledged[key] = revision

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2 * RPC_TIMEOUT)


def assert_one_leader_in_etcdctl(pair: Pair, leader: Replica) -> None:
    endpoints = ",".join(r.shim.endpoint for r in pair.replicas)
    answer = etcdctl(endpoints, ["endpoint", "status", "-w", "json"])
    assert answer.returncode == 0, answer.stderr
    leading = [row["Endpoint"] for row in json.loads(answer.stdout)
               if row["Status"]["leader"] == row["Status"]["header"]["member_id"]]
    assert leading == [leader.shim.endpoint], answer.stdout


# -- 1. a leader that cannot renew ----------------------------------------------------------------

@pytest.mark.parametrize("answer", ["403", "429"])
def test_a_leader_that_cannot_renew_steps_down_and_the_follower_takes_over(pair, answer):
    leader, follower = pair.roles()
    leader_id, follower_id = leader.member_id, follower.member_id
    changes = leader.leader_changes(), follower.leader_changes()
    renewals = (throttled(0.2, times=-1, **RENEWAL) if answer == "429"
                else Rule("status", status=int(answer), times=-1, **RENEWAL))
    both_led = []

    def taken_over() -> bool:
        old, new = status(leader.shim), status(follower.shim)
        if old.leader == leader_id and new.leader == follower_id:
            both_led.append((old, new))
        return old.leader == new.leader == follower_id

    with Writers(leader, follower) as writers:
        leader.faults.add(renewals)
        poll(taken_over, TAKEOVER_DEADLINE, "the follower takes over, and the old leader follows it")
        poll(lambda: len(writers.acknowledged) > 10, TAKEOVER_DEADLINE, "writes go on through the new leader")
    assert not both_led, f"both replicas said they lead at once: {both_led}"
    assert renewals.hits >= 2, f"the leader did not try to renew again ({renewals.hits} renewals)"
    assert "stepping down: the leader lease ran out before a renewal succeeded" in leader.log_messages()
    assert (leader.is_leader_metric(), follower.is_leader_metric()) == (0, 1)
    assert (leader.leader_changes(), follower.leader_changes()) == (changes[0], changes[1] + 1)
    assert_one_leader_in_etcdctl(pair, follower)
    assert set(writers.errors) <= RETRYABLE, writers.errors
    stored = {**keys_under(follower.shim, "/during/"), **keys_under(leader.shim, "/during/")}
    assert {k: stored.get(k) for k in writers.acknowledged} == writers.acknowledged, "an acknowledged write was lost"

    # The old leader, still unable to write the record, is a follower: its writes go to the new leader.
    written = leader.shim.kv.Put(pb.PutRequest(key=b"/after", value=b"v"), timeout=RPC_TIMEOUT).header.revision
    assert keys_under(follower.shim, "/after") == {b"/after": written}
    pair.assert_healthy()
    print(f"\n[renewal {answer}] {renewals.hits} refused renewals; {len(writers.acknowledged)} writes acknowledged, "
          f"{len(writers.errors)} refused meanwhile: {sorted(set(writers.errors))}", flush=True)


# -- 2. renewals retried within the lease ---------------------------------------------------------

@pytest.mark.parametrize("answer", ["429 three times", "503 three times", "503 after the replace ran"])
def test_a_renewal_retried_within_the_lease_keeps_the_leader(pair, answer):
    leader, follower = pair.roles()
    leader_id = leader.member_id
    changes = leader.leader_changes(), follower.leader_changes()
    term = pair.leader_record()["t"]
    rule = {"429 three times": throttled(0.2, times=3, **RENEWAL),
            "503 three times": Rule("status", status=503, times=3, **RENEWAL),
            "503 after the replace ran": Rule("status_after", status=503, times=1, **RENEWAL)}[answer]
    seen = len(leader.faults.log())
    leader.faults.add(rule)
    # Until the rule is used up, and two renewals after that went through untouched.
    poll(lambda: rule.times == 0 and leader.leader_record_writes(seen)[rule.hits:].count("pass") >= 2,
             TAKEOVER_DEADLINE, f"renewals meeting {answer}, then more")
    assert status(leader.shim).leader == status(follower.shim).leader == leader_id
    assert (leader.leader_changes(), follower.leader_changes()) == changes, "the leadership changed hands"
    assert leader.is_leader_metric() == 1
    assert pair.leader_record()["t"] == term
    messages = leader.log_messages()
    assert "lost the leadership: another server took the leader record" not in messages
    assert "stepping down: the leader lease ran out before a renewal succeeded" not in messages
    if answer.startswith("503 after"):
        assert "the leader record holds this server's write, whose answer was lost" in messages
    assert "became the leader" not in follower.log_messages()
    pair.assert_healthy()


# -- 3. a follower that cannot read the record ----------------------------------------------------

def test_a_follower_that_cannot_read_the_leader_record_keeps_following(pair):
    leader, follower = pair.roles()
    leader_id = leader.member_id
    changes = leader.leader_changes(), follower.leader_changes()
    seen = len(follower.faults.log())
    for answer in (400, 401, 413, 429):
        reads = (throttled(0.2, times=-1, **LEADER_READ) if answer == 429
                 else Rule("status", status=answer, times=-1, **LEADER_READ))
        follower.faults.add(reads)
        poll(lambda: reads.hits >= 2, TAKEOVER_DEADLINE, f"reads of the record answered {answer}")
        assert status(follower.shim).leader == leader_id
        key = f"/forwarded/{answer}"
        written = follower.shim.kv.Put(pb.PutRequest(key=key.encode(), value=b"v"), timeout=RPC_TIMEOUT)
        assert keys_under(leader.shim, key) == {key.encode(): written.header.revision}
        if answer != 429:  # a refusal is logged with its status and hint; throttling is retried
            refused = [e for e in follower.shim.log_entries() if e.get("msg") == "Cosmos DB refused a request"]
            assert refused and refused[-1]["status"] == answer, refused
        follower.faults.clear()
    assert follower.leader_record_writes(seen) == [], "the follower tried to claim a record it could not read"
    assert (leader.leader_changes(), follower.leader_changes()) == changes
    pair.assert_healthy()


# -- 4. a claim refused, or its answer lost -------------------------------------------------------

@pytest.mark.parametrize("answer", ["401 twice", "503 after the replace ran"])
def test_a_failed_claim_is_tried_again_and_taken_once(pair, answer):
    leader, follower = pair.roles()
    follower_id = follower.member_id
    changes = follower.leader_changes()
    term = pair.leader_record()["t"]
    rule = (Rule("status", status=401, times=2, **RENEWAL) if answer == "401 twice"
            else Rule("status_after", status=503, times=1, **RENEWAL))
    follower.faults.add(rule)
    assert leader.shim.server.stop() == 0  # SIGTERM: it releases the record, the follower claims it
    poll(lambda: status(follower.shim).leader == follower_id, TAKEOVER_DEADLINE, "the follower takes over")
    assert rule.times == 0, f"the claim did not meet {answer}: {follower.faults.log()[-10:]}"
    assert follower.leader_changes() == changes + 1
    assert pair.leader_record()["t"] == term + 1, "a claim whose answer was lost was made again, in another term"
    assert follower.shim.kv.Put(pb.PutRequest(key=b"/claimed", value=b"v"), timeout=RPC_TIMEOUT).header.revision
    follower.shim.assert_alive()
    assert ACCOUNT_KEY not in follower.shim.server.log()


# -- 5. the leader's log write fails while a follower forwards ------------------------------------

def normalized(error: tuple[grpc.StatusCode, str]) -> tuple[grpc.StatusCode, str]:
    """How many attempts a retried request took is not part of the answer."""
    return error[0], re.sub(r"after \d+ attempts", "after N attempts", error[1])


def test_a_failed_log_write_on_the_leader_reaches_a_followers_client_unchanged(pair):
    leader, follower = pair.roles()
    head = follower.shim.kv.Put(pb.PutRequest(key=b"/first", value=b"v"), timeout=RPC_TIMEOUT).header.revision
    answers = {
        "403": (Rule, {"status": 403, "times": 1}, grpc.StatusCode.UNAVAILABLE),
        "401": (Rule, {"status": 401, "times": 1}, grpc.StatusCode.UNAVAILABLE),
        "400": (Rule, {"status": 400, "times": 1}, grpc.StatusCode.UNAVAILABLE),
        "413": (Rule, {"status": 413, "times": 1}, grpc.StatusCode.UNAVAILABLE),
        "429": (throttled, {"times": -1}, grpc.StatusCode.RESOURCE_EXHAUSTED),
        "503": (Rule, {"status": 503, "times": -1}, grpc.StatusCode.UNAVAILABLE),
    }
    for name, (make, options, code) in answers.items():
        told = {}
        for client in (leader, follower):
            rule = make("status", **options, **LOG_WRITE) if make is Rule else make(0.2, **options, **LOG_WRITE)
            leader.faults.add(rule)
            told[client is follower] = refusal(lambda: client.shim.kv.Txn(two_key_txn(f"/refused/{name}"),
                                                                          timeout=RPC_TIMEOUT))
            leader.faults.clear()
            assert rule.hits >= 1, f"{name}: the leader's log write did not meet the fault"
            # After 503s the leader counts the log as down, and refuses writes at once until its
            # next read of the log: a write that writes nothing makes it read.
            poll(lambda: _txn_or_none(leader.shim, NO_OP_TXN), TAKEOVER_DEADLINE, "the leader writes again")
        through_leader, through_follower = told[False], told[True]
        assert normalized(through_follower) == normalized(through_leader), name
        assert through_follower[0] == code, (name, through_follower)
        if name == "429":
            assert through_follower[1] == "etcdserver: too many requests"
        else:
            assert through_follower[1].startswith("cosmos-etcd: storage unavailable: "), through_follower
            assert "Traceback" not in through_follower[1]
        # Nothing of it written.
        assert keys_under(follower.shim, f"/refused/{name}") == keys_under(leader.shim, f"/refused/{name}") == {}
        assert status(leader.shim).header.revision == head, f"{name}: a refused write moved the head"
        print(f"\n[log write {name}] a follower's client is told {through_follower[0].name}: {through_follower[1]}",
              flush=True)

    # Answered 503 after it ran: the write is resolved by reading it back, and acknowledged.
    lost_answer = Rule("status_after", status=503, times=1, **LOG_WRITE)
    leader.faults.add(lost_answer)
    written = follower.shim.kv.Txn(two_key_txn("/ran"), timeout=RPC_TIMEOUT)
    assert lost_answer.hits == 1
    revision = written.header.revision
    assert revision == head + 1
    assert keys_under(leader.shim, "/ran/") == keys_under(follower.shim, "/ran/") == \
        {b"/ran/a": revision, b"/ran/b": revision}
    assert follower.shim.kv.Put(pb.PutRequest(key=b"/next", value=b"v"), timeout=RPC_TIMEOUT).header.revision == \
        revision + 1, "the write took two revisions"
    pair.assert_healthy()


def _txn_or_none(shim: Shim, request: pb.TxnRequest) -> pb.TxnResponse | None:
    """The answer, or None if the shim refused it at once as unavailable (its breaker was open)."""
    try:
        return shim.kv.Txn(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
        return None


# -- 6. a follower pushed to, its own log reads refused -------------------------------------------

def test_a_follower_whose_log_reads_are_refused_still_sees_every_write_pushed(pair):
    leader, follower = pair.roles()
    queries = Rule("status", status=403, times=-1, operation="query")
    follower.faults.add(queries)
    written = []
    with WatchStream(follower.shim.channel, "follower") as watch:
        watch_id = watch.create(pb.WatchCreateRequest(key=b"/pushed/", range_end=b"/pushed0")).watch_id
        for i in range(10):
            shim = leader.shim if i % 2 else follower.shim  # forwarded through the follower, or not
            key = f"/pushed/{i}".encode()
            written.append((key, shim.kv.Put(pb.PutRequest(key=key, value=b"v"), timeout=RPC_TIMEOUT).header.revision))
        events = watch.wait_events_through(watch_id, written[-1][1], timeout=RPC_TIMEOUT)
    assert [(e.kv.key, e.kv.mod_revision) for e in events] == written
    served = follower.shim.kv.Range(pb.RangeRequest(key=b"/pushed/", range_end=b"/pushed0", serializable=True),
                                    timeout=RPC_TIMEOUT)
    assert [(kv.key, kv.mod_revision) for kv in served.kvs] == sorted(written)
    # Its periodic tail of the log (every 5 s while pushed to) meets the refusal, and changes nothing.
    poll(lambda: queries.hits >= 1, 2 * TAKEOVER_DEADLINE, "the follower's tail of the log is refused")
    assert follower.shim.http("/livez").status == 200
    assert status(follower.shim).leader == leader.member_id
    follower.faults.clear()
    poll(lambda: follower.shim.http("/readyz").status == 200, TAKEOVER_DEADLINE, "the follower is ready again")
    assert keys_under(follower.shim, "/pushed/") == keys_under(leader.shim, "/pushed/") == dict(written)
    pair.assert_healthy()


# -- 7. a follower behind the leader that cannot read the log -------------------------------------

def test_a_follower_behind_and_unable_to_read_the_log_keeps_its_push_task(pair):
    """A follower paused while the leader commits more batches than it queues for one follower: on
    waking, its stream has gone silent or been cut off, and it follows again. The new stream's first
    message says it is behind; it reads the log for the rest, and that read is refused (403). It must
    go back to reading the log (and follow again later), not fail its push task (as it did), and
    catch up once the log answers."""
    leader, follower = pair.roles()
    follower.faults.add(Rule("status", status=403, times=-1, operation="query"))
    follower.shim.server.process.send_signal(signal.SIGSTOP)  # too slow to take the pushes
    try:
        # One batch per Put: more than the leader queues for one follower (push.QUEUE_BATCHES).
        for i in range(QUEUE_BATCHES + 50):
            head = leader.shim.kv.Put(pb.PutRequest(key=b"/behind", value=str(i).encode()),
                                      timeout=RPC_TIMEOUT).header.revision
    finally:
        follower.shim.server.process.send_signal(signal.SIGCONT)
    # Silent while paused, its stream is given up on; connected again, the first message says it is
    # behind, and its read of the log is refused: it gives that stream up too (or, before, its push
    # task failed).
    not_pushed = "not pushed to by the leader; reading the log"
    poll(lambda: follower.log_messages().count(not_pushed) >= 2 or push_task_failures(follower),
             TAKEOVER_DEADLINE, "the follower, behind and unable to read the log, reads the log instead")
    assert push_task_failures(follower) == 0
    follower.faults.clear()
    poll(lambda: [kv.mod_revision for kv in follower.shim.kv.Range(
        pb.RangeRequest(key=b"/behind", serializable=True), timeout=RPC_TIMEOUT).kvs] == [head],
        TAKEOVER_DEADLINE, "the follower catches up once the log answers")
    assert push_task_failures(follower) == 0
    pair.assert_healthy()


def push_task_failures(replica: Replica) -> float:
    return replica.shim.metrics().get('cosmos_etcd_background_task_failures_total{task="leader-push"}', 0)
