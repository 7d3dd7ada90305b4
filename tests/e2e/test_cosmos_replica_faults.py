"""Two shim replicas on one Cosmos container, one of them behind the fault proxy: compaction is
shared state, every Cosmos answer has an outcome, throttling is back-pressure, compaction does not
stop writes, an idle replica is cheap, and dbSize and the member list are the same everywhere.

Set-up: one local Cosmos server for the module (``@vercel/cosmosdb-server``, plain HTTP); per test
its own container, and shim processes (``tests/harness/cosmos_shims.py``: ``--backend cosmos``,
metrics and health on ``--listen-metrics-urls``) on it, replica A usually through a fault-injecting
proxy (``tests/harness/faultproxy.py``, on a thread of its own), replica B straight on the server.
Shared state is always checked through the *other* replica than the one that changed it, and what
the shim stored is read with the Azure SDK, not through a shim. The real ``etcdctl`` compacts and
reads where the CLI matters.

1. ``Compact`` through A (``etcdctl compaction R``) reaches B within one idle poll: B refuses a
   Range below R with etcd's error (gRPC and ``etcdctl get --rev``), cancels a watch from below R
   with ``compact_revision`` R, serves R itself, and frees the versions below R from memory: the
   gauge ``cosmos_etcd_index_versions`` equals the count expected from the history written (per
   key: the newest version at or below R unless it is a tombstone, plus every version above R), on
   B and on A. The fold follows in the background: ``meta.compact`` reaches R.
2. A single 403, and a single 401, on A's log-document create fails that Put only, promptly, with
   UNAVAILABLE naming the status and what to check; the next Put succeeds, A stays alive and
   ready, B sees the write, and A's log has the refusal with its hint. With ``--cosmos-key-file``,
   a 401 after the file got a new key is retried with it (the Put succeeds, the log says so);
   a 401 with the file unchanged fails the Put as above.
3. 429 on every log create of A: a Put gets RESOURCE_EXHAUSTED ``etcdserver: too many requests``
   while A and B stay ready and A serves serializable reads; once the 429s stop, Puts succeed.
   429 on every query of A: a linearizable Get gets the same, A stays ready.
4. The fold of a compaction hangs (every checkpoint page upsert of A is forwarded, never
   answered): the Compact RPC answers at once, ``meta`` has ``sched`` = R and ``compact`` < R,
   20 Puts through A succeed meanwhile, the failed fold is logged and retried by itself, and once
   the pages are answered again ``meta.compact`` reaches R.
5. Idle cost: two replicas, no client traffic; after a warm-up, each replica's Cosmos requests
   (``cosmos_etcd_cosmos_requests_total``, all labels) over a fixed measurement window are at
   most ``IDLE_MAX_REQUESTS_PER_SECOND``, or ``IDLE_MAX_REQUESTS_PER_SECOND_ELECTED`` when the
   replicas elect a leader (``--listen-peer-urls``); the rate, its breakdown, and an RU/hour
   estimate at typical Cosmos charges are printed (``-s``).
6. Maintenance.Status dbSize and dbSizeInUse are the same on A and B once B has caught up, after
   writes through A, and again after a compaction's fold.
7. A replica stopped with SIGTERM deletes its member record, and the other replica's MemberList
   stops listing it within one member read. Elected replicas write no member records: three of them
   list all three (the leader from the push streams open to it, the followers from the leader
   record they read each round); a follower killed with kill -9 leaves every other replica's list
   within a few rounds, the leader's and the other follower's.

Synchronisation is by polling a condition with a deadline, never by fixed sleeps; the only
measured wait is the idle window of 5 (a measurement, not synchronisation). Figures (times to see
a compaction on B, the idle rates) are printed: run with ``-s``.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import json
import pathlib
import time
import uuid
from collections.abc import Callable

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.storage.cosmos import layout
from tests.harness import cosmos as cosmos_harness
from tests.harness.cosmos_shims import Shim, elected, start_shim
from tests.harness.faultproxy import Rule, throttled
from tests.harness.faultrules import Faults
from tests.harness.processes import etcdctl
from tests.harness.watch_streams import WatchStream

pytestmark = pytest.mark.timeout(120)

RPC_TIMEOUT = 10.0  # what a client waits for an answer (the shim's Cosmos retry deadline is 4 s)
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
TOO_MANY_REQUESTS = "etcdserver: too many requests"
# A compaction through A is seen by B within one idle poll (1 s); the deadline leaves room for a
# loaded two-core machine.
FOLLOW_DEADLINE = 5.0
FOLD_DEADLINE = 30.0
# The other replica reads the member list every 10 s (2 heartbeats of 5 s); a stopped replica
# that only aged out would stay listed for up to 15 s + 10 s.
MEMBER_DEADLINE = 15.0
ELECTED_LEASE_SECONDS = 3.0  # elected replicas' member list follows the leader record's rounds (1 s)
IDLE_WARM_UP_SECONDS = 5.0  # the idle poll interval backs off 0.1 -> 1 s within ~1.5 s
IDLE_WINDOW_SECONDS = 20.0
IDLE_MAX_REQUESTS_PER_SECOND = 3.0
# With an elected leader (issue 12: at most about 1 request/s): its renewal or a follower's read of
# the leader record (which also carries the member list: no heartbeats), lease records, and a tail
# every 5 s (the leader makes every revision, the followers are pushed to).
IDLE_MAX_REQUESTS_PER_SECOND_ELECTED = 1.0
# Typical request charges of a real Cosmos account for this shim's small documents (the local
# server always charges 1): a point read, a query of one partition, an upsert or create.
RU_POINT_READ, RU_QUERY, RU_WRITE = 1.0, 2.9, 6.0
LOG_CREATE = {"operation": "create", "body": b'"kind":"log"'}  # the SDK sends compact JSON
PAGE_UPSERT = {"operation": "upsert", "body": b'"kind":"page"'}
# The local server accepts any (base64) key; these are not secrets.
KEY_ONE = base64.b64encode(b"cosmos-etcd replica fault tests: key one").decode()
KEY_TWO = base64.b64encode(b"cosmos-etcd replica fault tests: key two").decode()


# -- the rig ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Rig:
    cosmos: cosmos_harness.CosmosServer
    workdir: pathlib.Path
    container: str
    proxies: list[Faults] = dataclasses.field(default_factory=list)
    shims: list[Shim] = dataclasses.field(default_factory=list)

    def proxy(self) -> Faults:
        faults = Faults.start(self.cosmos.port)
        self.proxies.append(faults)
        return faults

    def start(self, name: str, via: Faults | None = None, extra_args: list[str] = (),
              env: dict[str, str] | None = None) -> Shim:
        endpoint = via.endpoint if via is not None else self.cosmos.endpoint
        shim = start_shim(self.workdir, endpoint, self.container, name, list(extra_args), env)
        self.shims.append(shim)
        return shim

    def meta(self) -> dict:
        with cosmos_harness.documents(self.cosmos, self.container) as documents:
            return documents.read_item(layout.META_ID, partition_key=layout.LOG_PARTITION)

    def member_names(self) -> set[str]:
        with cosmos_harness.documents(self.cosmos, self.container) as documents:
            found = documents.query_items("SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind",
                                          parameters=[{"name": "@pk", "value": layout.MEMBER_PARTITION},
                                                      {"name": "@kind", "value": layout.KIND_MEMBER}],
                                          partition_key=layout.MEMBER_PARTITION)
            return {json.loads(d["m"])["name"] for d in found}

    def close(self) -> None:
        for shim in self.shims:
            shim.close()
        for faults in self.proxies:
            faults.close()


@pytest.fixture
def rig(cosmos, tmp_path, request):
    container = f"replicas-{uuid.uuid4().hex[:8]}-{request.node.name.removeprefix('test_')[:30]}"
    rig = Rig(cosmos, tmp_path, container)
    try:
        yield rig
    finally:
        rig.close()


# -- helpers ------------------------------------------------------------------------------------

def put(shim: Shim, key: bytes, value: bytes) -> int:
    return shim.kv.Put(pb.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT).header.revision


def get(shim: Shim, key: bytes, *, serializable: bool = False, revision: int = 0) -> pb.RangeResponse:
    return shim.kv.Range(pb.RangeRequest(key=key, serializable=serializable, revision=revision), timeout=RPC_TIMEOUT)


def refused(call: Callable[[], object]) -> tuple[grpc.RpcError, float]:
    """The error ``call()`` fails with (it must fail), and how long it took."""
    started = time.monotonic()
    try:
        answer = call()
    except grpc.RpcError as e:
        return e, time.monotonic() - started
    raise AssertionError(f"expected a refusal, got an answer: {answer}")


def poll(condition: Callable[[], object], deadline: float, what: str, pace: float = 0.05):
    """``condition()``'s first truthy value, polled until ``deadline`` seconds have passed; with the
    time it took."""
    started = time.monotonic()
    while True:
        value = condition()
        if value:
            return value, time.monotonic() - started
        assert time.monotonic() - started < deadline, f"{what}: not within {deadline:g}s"
        time.sleep(pace)  # pacing of the polls


def assert_ready(*shims: Shim) -> None:
    for shim in shims:
        shim.assert_alive()
        readyz = shim.http("/readyz?verbose")
        assert readyz.status == 200, f"{shim.name} ({shim.endpoint}) not ready: {readyz}"
        livez = shim.http("/livez")
        assert livez.status == 200, f"{shim.name} ({shim.endpoint}) not live: {livez}"


def cosmos_requests(shim: Shim) -> dict[tuple[str, str], float]:
    """cosmos_etcd_cosmos_requests_total by (op, status)."""
    found = {}
    for name, value in shim.metrics().items():
        if name.startswith("cosmos_etcd_cosmos_requests_total{"):
            labels = dict(part.split("=", 1) for part in name[name.index("{") + 1:-1].split(","))
            found[(labels["op"].strip('"'), labels["status"].strip('"'))] = value
    return found


def index_versions(shim: Shim) -> int:
    return int(shim.metrics()["cosmos_etcd_index_versions"])


def versions_after_compaction(history: list[tuple[int, bytes, bool]], revision: int) -> int:
    """What a compaction at ``revision`` leaves of ``history`` ((revision, key, is tombstone) per
    write): per key, the newest version at or below it unless it is a tombstone, and every version
    above it."""
    by_key: dict[bytes, list[tuple[int, bool]]] = collections.defaultdict(list)
    for rev, key, tombstone in history:
        by_key[key].append((rev, tombstone))
    kept = 0
    for versions in by_key.values():
        at_or_below = [v for v in versions if v[0] <= revision]
        if at_or_below and not max(at_or_below)[1]:
            kept += 1
        kept += sum(1 for v in versions if v[0] > revision)
    return kept


# -- 1. compaction is shared state --------------------------------------------------------------

def test_compaction_through_one_replica_is_followed_by_the_other(rig):
    a = rig.start("replica-a")
    b = rig.start("replica-b")
    # Writes through A: overwrites, deletes (tombstones), a key deleted and created again.
    script = [("put", b"a", b"1"), ("put", b"b", b"1"), ("put", b"a", b"2"), ("delete", b"b", b""),
              ("put", b"c", b"1"), ("put", b"a", b"3"), ("put", b"d", b"1"), ("delete", b"d", b""),
              ("put", b"c", b"2"), ("put", b"a", b"4"), ("put", b"e", b"1"),  # R: compacted at this revision
              ("put", b"b", b"2"), ("put", b"a", b"5"), ("delete", b"e", b""), ("put", b"c", b"3")]
    history: list[tuple[int, bytes, bool]] = []
    for verb, key, value in script:
        key = b"/compaction/" + key
        if verb == "put":
            revision = put(a, key, value)
        else:
            response = a.kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=RPC_TIMEOUT)
            assert response.deleted == 1
            revision = response.header.revision
        history.append((revision, key, verb == "delete"))
    head = history[-1][0]
    compact_at = history[10][0]  # after ("put", e, 1)
    below = history[8][0]  # a revision the compaction removes
    assert [r for r, _, _ in history] == list(range(history[0][0], head + 1)), history

    # B has caught up (a linearizable read sees the last write): it holds every version.
    assert get(b, b"/compaction/c").kvs[0].mod_revision == head
    assert index_versions(b) == index_versions(a) == len(history)
    assert get(b, b"/compaction/a", serializable=True, revision=below).kvs[0].value == b"3"

    ctl = etcdctl(a.endpoint, ["compaction", str(compact_at)])
    compacted_at = time.monotonic()
    assert (ctl.returncode, ctl.stdout.strip()) == (0, f"compacted revision {compact_at}"), ctl

    # B follows within one poll: a serializable Range (no catch-up of its own) below R is refused.
    def refused_on_b() -> grpc.RpcError | None:
        try:
            get(b, b"/compaction/a", serializable=True, revision=compact_at - 1)
        except grpc.RpcError as e:
            return e
        return None

    error, _ = poll(refused_on_b, FOLLOW_DEADLINE, f"B refusing reads below {compact_at}")
    seen_after = time.monotonic() - compacted_at
    assert (error.code(), error.details()) == (grpc.StatusCode.OUT_OF_RANGE, COMPACTED)
    for revision in (below, 2):
        error, _ = refused(lambda: get(b, b"/compaction/a", revision=revision))
        assert (error.code(), error.details()) == (grpc.StatusCode.OUT_OF_RANGE, COMPACTED)
    ctl = etcdctl(b.endpoint, ["get", "/compaction/a", "--rev", str(below)])
    assert ctl.returncode != 0 and COMPACTED in ctl.stderr, ctl
    # R itself is still there, with the values of R.
    at_r = b.kv.Range(pb.RangeRequest(key=b"/compaction/", range_end=b"/compaction0", revision=compact_at),
                      timeout=RPC_TIMEOUT)
    assert {kv.key: kv.value for kv in at_r.kvs} == {b"/compaction/a": b"4", b"/compaction/c": b"2",
                                                     b"/compaction/e": b"1"}
    ctl = etcdctl(b.endpoint, ["get", "/compaction/a", "--rev", str(compact_at), "--print-value-only"])
    assert (ctl.returncode, ctl.stdout.strip()) == (0, "4"), ctl

    # A watch on B from below R is cancelled with compact_revision R; one from R is served.
    with WatchStream(b.channel, "replica-b") as stream:
        too_old = stream.create(key=b"/compaction/", range_end=b"/compaction0", start_revision=below)
        stream.wait_for(lambda: any(r.canceled for r in stream.by_id[too_old.watch_id]), 15,
                        "the compacted watch's cancellation")
        cancel = next(r for r in stream.by_id[too_old.watch_id] if r.canceled)
        assert cancel.compact_revision == compact_at, cancel
        assert not stream.events(too_old.watch_id)
        from_r = stream.create(key=b"/compaction/", range_end=b"/compaction0", start_revision=compact_at)
        assert from_r.created and not from_r.canceled, from_r
        events = stream.wait_events_through(from_r.watch_id, head)
        assert [e.kv.mod_revision for e in events] == list(range(compact_at, head + 1))

    # Memory: B (and A) hold exactly what the compaction leaves.
    expected = versions_after_compaction(history, compact_at)
    assert expected < len(history)
    assert index_versions(b) == expected, f"B holds {index_versions(b)} versions, expected {expected}"
    assert index_versions(a) == expected, f"A holds {index_versions(a)} versions, expected {expected}"

    # The physical fold, in the background on A: the durable compact revision reaches R.
    meta, _ = poll(lambda: (m := rig.meta())["compact"] == compact_at and m, FOLD_DEADLINE,
                   f"meta.compact reaching {compact_at}")
    folded_by = time.monotonic() - compacted_at
    assert meta["sched"] == compact_at, meta
    print(f"\n[compaction] R={compact_at}: B refused reads below R {seen_after:.2f}s after `etcdctl compaction` "
          f"returned; versions in memory {len(history)} -> {expected}; meta.compact={compact_at} seen "
          f"{folded_by:.2f}s after (first looked for after the checks on B)", flush=True)
    a.assert_alive()
    b.assert_alive()


# -- 2. every Cosmos answer maps to an outcome --------------------------------------------------

def assert_refused_put_fails_alone(rig: Rig, a: Shim, b: Shim, faults: Faults, status: int,
                                   hints: tuple[str, ...], tag: str) -> None:
    """One ``status`` on A's next log create: that Put fails with UNAVAILABLE naming the status
    and ``hints``; the next one succeeds, A stays ready, B sees it, A's log has the refusal."""
    before = put(a, b"/refused/key", f"{tag}-before".encode())
    rule = Rule("status", status=status, times=1, **LOG_CREATE)
    faults.add(rule)
    error, took = refused(lambda: put(a, b"/refused/key", f"{tag}-refused".encode()))
    assert rule.hits == 1, f"the {status} rule was not hit: {faults.log()[-20:]}"
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    details = error.details()
    assert f"HTTP {status}" in details, details
    for hint in hints:
        assert hint in details, f"{hint!r} not in {details!r}"
    after = put(a, b"/refused/key", f"{tag}-after".encode())
    assert after == before + 1, f"the refused Put took a revision: {before} then {after}"
    assert_ready(a, b)
    seen = get(b, b"/refused/key").kvs[0]
    assert (seen.value, seen.mod_revision) == (f"{tag}-after".encode(), after)
    logged = [e for e in a.log_entries() if e.get("msg") == "Cosmos DB refused a request" and e.get("status") == status]
    assert logged, f"no refusal with status {status} in A's log:\n{a.server.log()[-3000:]}"
    for hint in hints:
        assert hint in logged[-1].get("hint", ""), logged[-1]
    print(f"\n[refused {status}] the Put failed after {took * 1000:.0f} ms: {details}", flush=True)


@pytest.mark.parametrize("status, hints", [
    (403, ("firewall", "data-plane role")),
    (413, ("larger than Cosmos DB accepts",)),
    (400, ("does not expect",)),
])
def test_a_refusal_of_a_log_write_fails_that_put_only(rig, status, hints):
    faults = rig.proxy()
    a = rig.start("replica-a", via=faults)
    b = rig.start("replica-b")
    assert_refused_put_fails_alone(rig, a, b, faults, status, hints, str(status))


def test_a_401_fails_that_put_unless_the_key_file_has_a_new_key(rig):
    faults = rig.proxy()
    key_file = rig.workdir / "cosmos-key"
    key_file.write_text(KEY_ONE + "\n")
    a = rig.start("replica-a", via=faults, extra_args=["--cosmos-key-file", str(key_file)], env={})
    b = rig.start("replica-b")
    reconnected = "Cosmos answered 401: reconnecting with the key read again from its file"

    # The file unchanged: the 401 is the Put's answer.
    assert_refused_put_fails_alone(rig, a, b, faults, 401, ("rotated",), "401")
    assert not [e for e in a.log_entries() if e.get("msg") == reconnected]

    # A new key in the file (a rotated key in a mounted Secret): read again, reconnected, retried.
    key_file.write_text(KEY_TWO + "\n")
    before = put(a, b"/refused/key", b"before-rotation")
    rule = Rule("status", status=401, times=1, **LOG_CREATE)
    faults.add(rule)
    rotated = put(a, b"/refused/key", b"after-rotation")
    assert rule.hits == 1, f"the 401 rule was not hit: {faults.log()[-20:]}"
    assert rotated == before + 1
    assert [e for e in a.log_entries() if e.get("msg") == reconnected], a.server.log()[-3000:]
    assert put(a, b"/refused/key", b"on-the-new-client") == rotated + 1
    seen = get(b, b"/refused/key").kvs[0]
    assert (seen.value, seen.mod_revision) == (b"on-the-new-client", rotated + 1)
    assert_ready(a, b)


def test_a_401_moves_to_the_other_key_in_the_key_file(rig):
    """Both of the account's keys in the file (what the operator mounts): a 401 on the first one
    is answered by the second, without waiting for the file to change."""
    faults = rig.proxy()
    key_file = rig.workdir / "cosmos-keys"
    key_file.write_text(f"{KEY_ONE}\n{KEY_TWO}\n")
    a = rig.start("replica-a", via=faults, extra_args=["--cosmos-key-file", str(key_file)], env={})
    before = put(a, b"/refused/two-keys", b"before")
    rule = Rule("status", status=401, times=1, **LOG_CREATE)
    faults.add(rule)
    assert put(a, b"/refused/two-keys", b"after") == before + 1
    assert rule.hits == 1, f"the 401 rule was not hit: {faults.log()[-20:]}"
    reconnected = [e for e in a.log_entries() if e.get("msg", "").startswith("Cosmos answered 401: reconnecting")]
    assert len(reconnected) == 1, a.server.log()[-3000:]
    # Refused once, the first key is not used again: a second 401 has no key left to try.
    faults.add(Rule("status", status=401, times=1, **LOG_CREATE))
    error, _ = refused(lambda: put(a, b"/refused/two-keys", b"refused"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "HTTP 401" in error.details(), error.details()


# -- 3. throttling is back-pressure -------------------------------------------------------------

def test_throttled_log_writes_answer_too_many_requests_and_every_replica_stays_ready(rig):
    faults = rig.proxy()
    a = rig.start("replica-a", via=faults)
    b = rig.start("replica-b")
    first = put(a, b"/throttled/key", b"before")

    # 429 on every log create of A, for as long as the rule stays.
    creates = throttled(0.2, times=-1, **LOG_CREATE)
    faults.add(creates)
    error, took = refused(lambda: put(a, b"/throttled/key", b"throttled"))
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_REQUESTS), \
        (error.code(), error.details(), took)
    assert creates.hits >= 2, f"the shim did not retry the throttled create ({creates.hits} attempts)"
    hits = creates.hits
    assert_ready(a, b)  # while A's creates are still throttled
    assert get(a, b"/throttled/key", serializable=True).kvs[0].value == b"before"
    assert get(a, b"/throttled/key").kvs[0].value == b"before"  # the log still answers reads
    # Still throttling: another Put is refused the same way, and the rule was still answering.
    error, _ = refused(lambda: put(a, b"/throttled/key", b"throttled-again"))
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_REQUESTS)
    assert creates.hits > hits
    assert_ready(a, b)
    print(f"\n[throttled creates] the Put was refused after {took:.2f}s and {hits} throttled attempts", flush=True)

    faults.clear()
    after = put(a, b"/throttled/key", b"after")
    assert after == first + 1, f"a throttled Put took a revision: {first} then {after}"
    assert get(b, b"/throttled/key").kvs[0].value == b"after"


def test_throttled_queries_answer_too_many_requests_and_the_replica_stays_ready(rig):
    faults = rig.proxy()
    a = rig.start("replica-a", via=faults)
    b = rig.start("replica-b")
    first = put(a, b"/throttled/key", b"before")

    # 429 on every query of A: a linearizable read cannot learn the head.
    queries = throttled(0.2, times=-1, operation="query")
    faults.add(queries)
    error, took = refused(lambda: get(a, b"/throttled/key"))
    assert (error.code(), error.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY_REQUESTS), \
        (error.code(), error.details(), took)
    assert queries.hits >= 2, f"the shim did not retry the throttled query ({queries.hits} attempts)"
    print(f"\n[throttled queries] the linearizable Get was refused after {took:.2f}s", flush=True)
    assert get(a, b"/throttled/key", serializable=True).kvs[0].value == b"before"
    assert_ready(a, b)  # while A's queries are still throttled

    faults.clear()
    assert get(a, b"/throttled/key").kvs[0].value == b"before"
    assert put(a, b"/throttled/key", b"after") == first + 1
    assert get(b, b"/throttled/key").kvs[0].value == b"after"
    assert_ready(a, b)


# -- 4. compaction does not stop writes ---------------------------------------------------------

def test_writes_go_on_while_the_fold_of_a_compaction_hangs(rig):
    faults = rig.proxy()
    a = rig.start("replica-a", via=faults)
    revisions = [put(a, f"/fold/k{i % 3}".encode(), f"v{i}".encode()) for i in range(10)]
    compact_at = revisions[5]
    meta = rig.meta()
    assert meta["compact"] < compact_at and meta.get("sched", -1) < compact_at, meta

    # Every checkpoint page upsert of A runs in Cosmos and is never answered.
    hang = Rule("hang_after", times=-1, **PAGE_UPSERT)
    faults.add(hang)
    started = time.monotonic()
    a.kv.Compact(pb.CompactionRequest(revision=compact_at), timeout=RPC_TIMEOUT)
    compact_took = time.monotonic() - started
    # Less than one Cosmos request timeout of the shim (2.5 s): it waited for no fold.
    assert compact_took < 2.5, f"Compact took {compact_took:.2f}s"
    meta = rig.meta()
    assert meta["sched"] == compact_at and meta["compact"] < compact_at, meta
    error, _ = refused(lambda: get(a, b"/fold/k0", revision=compact_at - 1))
    assert (error.code(), error.details()) == (grpc.StatusCode.OUT_OF_RANGE, COMPACTED)

    started = time.monotonic()
    more = [put(a, f"/fold/k{i % 3}".encode(), f"w{i}".encode()) for i in range(20)]
    puts_took = time.monotonic() - started
    assert more == list(range(revisions[-1] + 1, revisions[-1] + 21))
    meta = rig.meta()
    assert meta["compact"] < compact_at, f"the fold finished before the Puts did: {meta}"

    failed = "compaction fold failed; retrying"
    poll(lambda: [e for e in a.log_entries() if e.get("msg") == failed], FOLD_DEADLINE, f"{failed!r} in A's log")
    assert hang.hits >= 1
    faults.clear()
    meta, folded_after = poll(lambda: (m := rig.meta())["compact"] == compact_at and m, FOLD_DEADLINE,
                              f"meta.compact reaching {compact_at} once the pages are answered")
    assert meta["sched"] == compact_at
    assert put(a, b"/fold/k0", b"last") == more[-1] + 1
    assert_ready(a)
    print(f"\n[fold] Compact answered in {compact_took * 1000:.0f} ms while its fold hung; 20 Puts took "
          f"{puts_took:.2f}s meanwhile; fold retried and done {folded_after:.2f}s after the pages answered "
          f"({hang.hits} page upserts held)", flush=True)


# -- 5. idle cost -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["every replica writes", "elected leader"])
def test_an_idle_replica_costs_little(rig, mode):
    # Each replica through a proxy of its own (no rules), so that its requests can be told apart by
    # kind (query, point read, upsert) for the RU estimate; the assertion uses the shim's counter.
    proxies = {"replica-a": rig.proxy(), "replica-b": rig.proxy()}
    election = mode == "elected leader"
    shims = {name: rig.start(name, via=faults, extra_args=elected() if election else ())
             for name, faults in proxies.items()}
    put(shims["replica-a"], b"/idle/key", b"a")
    assert get(shims["replica-b"], b"/idle/key").kvs[0].value == b"a"
    warm = time.monotonic() + IDLE_WARM_UP_SECONDS
    while time.monotonic() < warm:  # the idle poll interval backs off to its maximum (measurement set-up)
        time.sleep(warm - time.monotonic())

    before = {name: cosmos_requests(shim) for name, shim in shims.items()}
    logged_before = {name: len(faults.log()) for name, faults in proxies.items()}
    started = time.monotonic()
    end = started + IDLE_WINDOW_SECONDS
    while time.monotonic() < end:  # the measurement window
        time.sleep(end - time.monotonic())
    after = {name: cosmos_requests(shim) for name, shim in shims.items()}
    window = time.monotonic() - started
    kinds = {name: collections.Counter(entry[0] for entry in faults.log()[logged_before[name]:])
             for name, faults in proxies.items()}

    lines = [f"\n[idle, {mode}] {window:.1f}s window, no client traffic, after {IDLE_WARM_UP_SECONDS:g}s warm-up"]
    rates = {}
    for name, shim in shims.items():
        shim.assert_alive()
        delta = {label: after[name][label] - before[name].get(label, 0) for label in after[name]}
        delta = {label: n for label, n in delta.items() if n}
        rates[name] = sum(delta.values()) / window
        by_op = ", ".join(f"{op}/{status} {n:g} ({n / window:.2f}/s)" for (op, status), n in sorted(delta.items()))
        kind = kinds[name]
        per_second = {k: n / window for k, n in kind.items()}
        ru_per_hour = 3600 * (per_second.get("query", 0) * RU_QUERY + per_second.get("read", 0) * RU_POINT_READ
                              + sum(per_second.get(k, 0) for k in ("upsert", "create", "replace")) * RU_WRITE)
        lines.append(f"  {name}: {rates[name]:.2f} requests/s; by op/status: {by_op}")
        lines.append(f"  {name}: by HTTP kind (proxy): " + ", ".join(f"{k} {n} ({n / window:.2f}/s)"
                                                                    for k, n in sorted(kind.items()))
                     + f"; ~{ru_per_hour:,.0f} RU/hour")
    lines.append(f"  RU assumptions (typical real Cosmos charges for these small documents; the local server "
                 f"charges 1): point read {RU_POINT_READ:g} RU, query of one partition {RU_QUERY:g} RU, "
                 f"upsert/create {RU_WRITE:g} RU")
    print("\n".join(lines), flush=True)
    bound = IDLE_MAX_REQUESTS_PER_SECOND_ELECTED if election else IDLE_MAX_REQUESTS_PER_SECOND
    for name, rate in rates.items():
        assert 0 < rate <= bound, f"{name}: {rate:.2f} Cosmos requests/s while idle"


# -- 6. dbSize ----------------------------------------------------------------------------------

def db_sizes(shim: Shim) -> tuple[int, int]:
    status = shim.maintenance.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT)
    return status.dbSize, status.dbSizeInUse


def test_db_size_is_the_same_on_every_replica(rig):
    a = rig.start("replica-a")
    b = rig.start("replica-b")
    empty = db_sizes(b)
    revision = 0
    for i in range(30):
        revision = put(a, f"/size/k{i % 7}".encode(), b"x" * (10 + 97 * i))
    deleted = a.kv.DeleteRange(pb.DeleteRangeRequest(key=b"/size/k3"), timeout=RPC_TIMEOUT)
    last = put(a, b"/size/last", b"y" * 500)
    assert last == deleted.header.revision + 1
    assert get(b, b"/size/last").kvs[0].mod_revision == last  # B has caught up
    sizes = db_sizes(a), db_sizes(b)
    assert sizes[0] == sizes[1], f"dbSize, dbSizeInUse: A {sizes[0]}, B {sizes[1]}"
    assert sizes[1][0] > empty[0], f"B's dbSize did not grow with the writes: {empty} -> {sizes[1]}"

    # After a compaction through A and its fold, both count the same remaining log and checkpoint.
    a.kv.Compact(pb.CompactionRequest(revision=revision), timeout=RPC_TIMEOUT)
    poll(lambda: rig.meta()["compact"] == revision, FOLD_DEADLINE, f"meta.compact reaching {revision}")
    last = put(a, b"/size/last", b"z" * 100)
    assert get(b, b"/size/last").kvs[0].mod_revision == last
    folded = db_sizes(a), db_sizes(b)
    assert folded[0] == folded[1], f"after the fold: dbSize, dbSizeInUse: A {folded[0]}, B {folded[1]}"
    print(f"\n[dbSize] empty {empty}; after writes A=B={sizes[0]}; after the fold A=B={folded[0]}", flush=True)


# -- 7. member records --------------------------------------------------------------------------

def member_names(shim: Shim) -> set[str]:
    return {m.name for m in shim.cluster.MemberList(pb.MemberListRequest(), timeout=RPC_TIMEOUT).members}


def test_a_replica_that_stops_leaves_the_member_list(rig):
    a = rig.start("replica-a")
    b = rig.start("replica-b")
    assert rig.member_names() == {"replica-a", "replica-b"}
    poll(lambda: member_names(b) == {"replica-a", "replica-b"}, MEMBER_DEADLINE, "B listing both replicas")

    code = a.server.stop()  # SIGTERM
    stopped = time.monotonic()
    assert code == 0, a.server.log()[-3000:]
    assert rig.member_names() == {"replica-b"}, "the stopped replica left its member record"
    poll(lambda: member_names(b) == {"replica-b"}, MEMBER_DEADLINE, "B no longer listing replica-a", pace=0.2)
    print(f"\n[members] B stopped listing replica-a {time.monotonic() - stopped:.1f}s after it exited", flush=True)
    b.assert_alive()


def test_elected_replicas_list_every_live_replica_without_member_records(rig):
    names = ("replica-a", "replica-b", "replica-c")
    shims = {name: rig.start(name, extra_args=elected(ELECTED_LEASE_SECONDS)) for name in names}
    for name, shim in shims.items():
        poll(lambda: member_names(shim) == set(names), MEMBER_DEADLINE, f"{name} listing every replica")
    listed = shims["replica-a"].cluster.MemberList(pb.MemberListRequest(), timeout=RPC_TIMEOUT).members
    ids = {shim.name: shim.maintenance.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT).header.member_id
           for shim in shims.values()}
    assert {(m.name, m.ID, tuple(m.clientURLs)) for m in listed} == \
        {(name, ids[name], (f"http://{shim.endpoint}",)) for name, shim in shims.items()}
    assert rig.member_names() == set(), "elected replicas wrote member records"

    leader_id = shims["replica-a"].maintenance.Status(pb.StatusRequest(), timeout=RPC_TIMEOUT).leader
    killed = next(name for name in names if ids[name] != leader_id)
    shims[killed].server.kill()
    stopped = time.monotonic()
    for name, shim in shims.items():
        if name != killed:
            poll(lambda: member_names(shim) == set(names) - {killed}, MEMBER_DEADLINE,
                 f"{name} no longer listing the killed {killed}", pace=0.2)
    print(f"\n[members, elected] every replica stopped listing the killed follower "
          f"{time.monotonic() - stopped:.1f}s after kill -9", flush=True)
