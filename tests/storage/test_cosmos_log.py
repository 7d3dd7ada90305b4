"""The storage contract (`RevisionLog`), held against both backends, and the Cosmos backend's own
promises: several writers on one log, the stale-writer fence, faults of the network and the
service, cost per operation.

Cosmos runs on the in-memory `@vercel/cosmosdb-server` (started once for the module; each test
gets a container of its own). Everything goes through the `RevisionLog` interface, except a few
checks that read the container's raw documents to prove what was (not) written.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time

import pytest

from cosmos_etcd_shim.proto.kv_pb2 import KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Lease, Revision
from cosmos_etcd_shim.storage import (
    AuthConflictError,
    AuthRecord,
    LogConflictError,
    LogFencedError,
    StorageError,
    StoredAlarm,
)
from cosmos_etcd_shim.storage.base import fold
from cosmos_etcd_shim.storage.embedded import DATABASE_FILE, EmbeddedLog
from tests.harness import cosmos as cosmos_harness
from tests.harness.records import delete, put, simple_batch
from tests.harness.faultproxy import FaultProxy, Rule, throttled

from cosmos_etcd_shim.storage.cosmos import layout
from cosmos_etcd_shim.storage.cosmos.log import CosmosLog, LogCompactedError

MiB = 1024 * 1024
pytestmark = pytest.mark.timeout(60)
# Fault-proxy match for the create of a log document (the SDK sends compact JSON).
LOG_CREATE = {"operation": "create", "body": b'"kind":"log"'}


# -- fixtures ---------------------------------------------------------------------------------



# -- a reference model ------------------------------------------------------------------------

class Model:
    """What a log must hold: every record, the compact revision, the base below it."""

    def __init__(self) -> None:
        self.records: list[Revision] = []
        self.compact = -1
        self.base: dict[bytes, KeyValue] = {}
        self.live: dict[bytes, KeyValue] = {}
        self.head = 1

    def applied(self, records: list[Revision]) -> None:
        for record in records:
            fold(self.live, record)
            self.records.append(record)
            self.head = record.revision

    def compacted(self, revision: int) -> None:
        for record in self.records:
            if record.revision < revision:
                fold(self.base, record)
        self.records = [r for r in self.records if r.revision >= revision]
        self.compact = revision

    def check(self, state) -> None:
        assert state.compact_revision == self.compact
        assert list(state.base) == [self.base[k] for k in sorted(self.base)]
        assert list(state.revisions) == self.records


def random_batch(model: Model, rng: random.Random, size: int, keys: list[bytes]) -> list[Revision]:
    live = dict(model.live)
    batch = []
    for i in range(size):
        revision = model.head + 1 + i
        key = rng.choice(keys)
        if key in live and rng.random() < 0.3:
            events = [delete(revision, key)]
            live.pop(key)
        else:
            previous = live.get(key)
            event = put(revision, key, rng.randbytes(rng.randint(0, 64)),
                        version=previous.version + 1 if previous else 1,
                        create=previous.create_revision if previous else revision)
            events = [event]
            live[key] = event.kv
        batch.append(Revision(revision=revision, events=events))
    return batch


def revisions_of(records) -> list[int]:
    return [r.revision for r in records]


# -- the shared contract ----------------------------------------------------------------------

async def test_open_empty(logs):
    log, state = await logs.open()
    assert log.shared == (logs.backend == "cosmos")  # other replicas append to a Cosmos log
    assert state.compact_revision == -1
    assert list(state.base) == [] and list(state.revisions) == [] and list(state.leases) == []
    assert await log.read_after(0) == []


async def test_append_and_read_after(logs):
    log, _ = await logs.open()
    await log.append(simple_batch(2, 1))
    await log.append(simple_batch(3, 5))  # a group commit
    await log.append(simple_batch(8, 1))
    assert revisions_of(await log.read_after(0)) == list(range(2, 9))
    assert revisions_of(await log.read_after(4)) == list(range(5, 9))
    assert revisions_of(await log.read_after(4, limit=2)) == [5, 6]
    assert revisions_of(await log.read_after(2, limit=1)) == [3]
    assert await log.read_after(8) == []
    assert list(await log.read_after(1)) == simple_batch(2, 1) + simple_batch(3, 5) + simple_batch(8, 1)


async def test_append_must_start_at_head_plus_one(logs):
    log, _ = await logs.open()
    await log.append(simple_batch(2, 3))
    with pytest.raises(LogConflictError):
        await log.append(simple_batch(4, 1))  # exists already
    with pytest.raises(LogConflictError):
        await log.append(simple_batch(2, 1))
    with pytest.raises(LogConflictError):
        await log.append(simple_batch(6, 1))  # would leave a hole
    assert revisions_of(await log.read_after(0)) == [2, 3, 4]
    await log.append(simple_batch(5, 2))
    assert revisions_of(await log.read_after(0)) == [2, 3, 4, 5, 6]


async def test_restart_recovers_the_same_state(logs):
    rng = random.Random(4)
    model = Model()
    keys = [b"a", b"b", b"c", b"d/e", b"\x00", b"\xff"]
    log, state = await logs.open()
    model.check(state)
    for size in (1, 3, 1, 7, 2):
        batch = random_batch(model, rng, size, keys)
        await log.append(batch)
        model.applied(batch)
    await log.save_lease(Lease(id=5, ttl=30))
    log, state = await logs.restart(log)
    model.check(state)
    assert list(state.leases) == [Lease(id=5, ttl=30)]
    # the reopened log continues at head+1
    batch = random_batch(model, rng, 2, keys)
    await log.append(batch)
    model.applied(batch)
    log, state = await logs.restart(log)
    model.check(state)


async def test_compaction_folds_records_before_the_revision(logs):
    log, _ = await logs.open()
    model = Model()
    batches = [
        [Revision(revision=2, events=[put(2, b"a", b"1")])],
        [Revision(revision=3, events=[put(3, b"b", b"1")]), Revision(revision=4, events=[put(4, b"a", b"2", version=2, create=2)])],
        [Revision(revision=5, events=[delete(5, b"b")])],
        [Revision(revision=6, events=[put(6, b"c", b"1"), put(6, b"d", b"1")])],
        [Revision(revision=7, events=[put(7, b"b", b"again")])],
    ]
    for batch in batches:
        await log.append(batch)
        model.applied(batch)
    await log.compact(4)  # inside the group commit 3..4: record 4 stays
    model.compacted(4)
    assert revisions_of(await log.read_after(0)) == [4, 5, 6, 7]
    assert revisions_of(await log.read_after(3)) == [4, 5, 6, 7]
    log, state = await logs.restart(log)
    model.check(state)
    assert {kv.key: kv.value for kv in state.base} == {b"a": b"1", b"b": b"1"}
    await log.compact(7)
    model.compacted(7)
    log, state = await logs.restart(log)
    model.check(state)
    assert {kv.key: kv.value for kv in state.base} == {b"a": b"2", b"c": b"1", b"d": b"1"}
    await log.append([Revision(revision=8, events=[put(8, b"e", b"1")])])
    assert revisions_of(await log.read_after(0)) == [7, 8]


async def test_many_compactions_and_restarts_match_the_model(logs):
    """Random batches, compactions at random revisions (deltas, then full checkpoints), restarts."""
    rng = random.Random(11)
    model = Model()
    keys = [bytes([rng.randrange(256) for _ in range(rng.randint(1, 4))]) for _ in range(12)]
    log, _ = await logs.open()
    for step in range(40):
        batch = random_batch(model, rng, rng.randint(1, 4), keys)
        await log.append(batch)
        model.applied(batch)
        if step % 2 == 1:
            revision = rng.randint(max(model.compact + 1, 2), model.head)
            await log.compact(revision)
            model.compacted(revision)
        if step % 10 == 9:
            log, state = await logs.restart(log)
            model.check(state)
    log, state = await logs.restart(log)
    model.check(state)
    assert revisions_of(await log.read_after(model.compact - 1)) == revisions_of(model.records)


async def test_leases(logs):
    log, _ = await logs.open()
    await log.save_lease(Lease(id=1, ttl=10))
    await log.save_lease(Lease(id=2, ttl=20))
    await log.save_lease(Lease(id=1, ttl=15))  # renewed with another TTL
    await log.save_lease(Lease(id=0x7FFF_FFFF_FFFF_FFFF, ttl=5))
    await log.delete_lease(2)
    await log.delete_lease(99)  # not there: nothing to do
    log, state = await logs.restart(log)
    assert sorted(state.leases, key=lambda lease: lease.id) == [Lease(id=1, ttl=15),
                                                                Lease(id=0x7FFF_FFFF_FFFF_FFFF, ttl=5)]


async def test_auth_record_is_saved_by_compare_and_swap(logs):
    log, _ = await logs.open()
    assert await log.load_auth() is None
    with pytest.raises(AuthConflictError):
        await log.save_auth(AuthRecord(version=2, data=b"skips version 1"))
    await log.save_auth(AuthRecord(version=1, data=b"first"))
    await log.save_auth(AuthRecord(version=2, data=b"\x00second"))
    with pytest.raises(AuthConflictError):
        await log.save_auth(AuthRecord(version=2, data=b"again at 2"))
    log, _ = await logs.restart(log)
    assert await log.load_auth() == AuthRecord(version=2, data=b"\x00second")
    await log.save_auth(AuthRecord(version=3, data=b"third"))
    assert await log.load_auth() == AuthRecord(version=3, data=b"third")


NOSPACE, CORRUPT = 1, 2  # etcd's AlarmType numbers
HIGHEST_MEMBER_ID = 2**64 - 1  # a uint64 member id SQLite can only hold as a negative number


async def test_alarms_are_durable_and_carried_by_snapshots(logs, tmp_path):
    log, _ = await logs.open()
    assert log.alarms == frozenset()
    raised = {StoredAlarm(0, NOSPACE), StoredAlarm(HIGHEST_MEMBER_ID, CORRUPT), StoredAlarm(12345, NOSPACE)}
    for alarm in raised:
        await log.activate_alarm(alarm)
    await log.activate_alarm(StoredAlarm(0, NOSPACE))  # raised already: nothing changes
    assert await log.deactivate_alarm(StoredAlarm(777, NOSPACE)) is False
    assert await log.deactivate_alarm(StoredAlarm(12345, NOSPACE)) is True
    raised.discard(StoredAlarm(12345, NOSPACE))
    assert log.alarms == raised
    log, _ = await logs.restart(log)
    assert log.alarms == raised
    snapshot = tmp_path / "snapshot.db"
    await log.snapshot(snapshot)
    with contextlib.closing(sqlite3.connect(snapshot)) as db:  # what etcd-format converters read
        rows = set(db.execute("SELECT member_id, alarm FROM alarms"))
    assert rows == {(0, NOSPACE), (-1, CORRUPT)}
    seeded_dir = tmp_path / "seeded"
    seeded_dir.mkdir()
    snapshot.rename(seeded_dir / DATABASE_FILE)
    seeded = EmbeddedLog(seeded_dir)
    try:
        await seeded.open()
        assert seeded.alarms == raised
    finally:
        await seeded.close()


async def test_replicas_follow_alarms_from_the_tail(cosmos_logs):
    """An alarm raised or disarmed through one replica reaches the other with its tail query (no
    request of its own); changes made through both at once are all kept (etag compare-and-swap)."""
    a, _ = await cosmos_logs.open()
    b, _ = await cosmos_logs.open()
    await a.activate_alarm(StoredAlarm(0, NOSPACE))
    assert b.alarms == frozenset()
    before = b.stats.snapshot()
    await b.tail(1)
    assert b.alarms == {StoredAlarm(0, NOSPACE)}
    requests = sum(s.requests for s in b.stats.snapshot().values()) - sum(s.requests for s in before.values())
    assert requests == 1  # the tail query alone
    await asyncio.gather(b.activate_alarm(StoredAlarm(5, CORRUPT)), a.activate_alarm(StoredAlarm(6, NOSPACE)))
    assert await b.deactivate_alarm(StoredAlarm(0, NOSPACE)) is True
    await a.tail(1)
    assert a.alarms == b.alarms == {StoredAlarm(5, CORRUPT), StoredAlarm(6, NOSPACE)}
    await b.tail(1)  # nothing newer: the replica keeps what it has
    assert b.alarms == {StoredAlarm(5, CORRUPT), StoredAlarm(6, NOSPACE)}


async def test_snapshot_seeds_an_embedded_store(logs, tmp_path):
    log, _ = await logs.open()
    model = Model()
    rng = random.Random(3)
    for size in (2, 3, 4):
        batch = random_batch(model, rng, size, [b"x", b"y", b"z", b"\x00\xff"])
        await log.append(batch)
        model.applied(batch)
    await log.compact(5)
    model.compacted(5)
    await log.save_lease(Lease(id=9, ttl=60))
    snapshot = tmp_path / "snapshot.db"
    await log.snapshot(snapshot)
    seeded_dir = tmp_path / "seeded"
    seeded_dir.mkdir()
    snapshot.rename(seeded_dir / DATABASE_FILE)
    seeded = EmbeddedLog(seeded_dir)
    try:
        state = await seeded.open()
        model.check(state)
        assert list(state.leases) == [Lease(id=9, ttl=60)]
        await seeded.append([Revision(revision=model.head + 1, events=[put(model.head + 1, b"new", b"1")])])
    finally:
        await seeded.close()


async def test_large_values(logs):
    rng = random.Random(5)
    incompressible = rng.randbytes(int(1.5 * MiB))
    compressible = b"0123456789abcdef" * (int(1.5 * MiB) // 16)
    log, _ = await logs.open()
    batch = [Revision(revision=2, events=[put(2, b"big/random", incompressible)]),
             Revision(revision=3, events=[put(3, b"big/text", compressible)]),
             Revision(revision=4, events=[put(4, b"small", b"s")])]
    await log.append(batch[:1])
    await log.append(batch[1:])  # one group commit of 1.5 MiB + small
    await log.append([Revision(revision=5, events=[put(5, b"big/random2", incompressible[::-1])])])
    assert list(await log.read_after(1)) == batch + [
        Revision(revision=5, events=[put(5, b"big/random2", incompressible[::-1])])]
    await log.compact(5)
    log, state = await logs.restart(log)
    assert {kv.key: kv.value for kv in state.base} == {b"big/random": incompressible, b"big/text": compressible,
                                                        b"small": b"s"}
    assert [r.events[0].kv.value for r in state.revisions] == [incompressible[::-1]]


async def test_binary_keys_keep_bytewise_order(logs):
    keys = [b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"a\xff", b"b", b"\x7f", b"\x80", b"\xff",
            b"\xff\xff", b"/registry/pods/default/x", "é".encode()]
    log, _ = await logs.open()
    shuffled = list(keys)
    random.Random(1).shuffle(shuffled)
    records = [Revision(revision=2 + i, events=[put(2 + i, key, key + b"=value")]) for i, key in enumerate(shuffled)]
    end = 2 + len(records)
    records.append(Revision(revision=end, events=[put(end, b"\x01end", b"")]))
    await log.append(records)
    await log.compact(end)  # every key but the last revision's is in the base now
    log, state = await logs.restart(log)
    assert [kv.key for kv in state.base] == sorted(keys)
    assert all(kv.value == kv.key + b"=value" for kv in state.base)


async def test_size_and_defragment(logs):
    log, _ = await logs.open()
    before_total, before_used = log.size()
    await log.append([Revision(revision=2, events=[put(2, b"k", b"v" * 100_000)])])
    total, used = log.size()
    assert 0 <= used <= total
    assert used > before_used
    await log.append([Revision(revision=3, events=[put(3, b"k", b"w", version=2, create=2)])])
    await log.compact(3)
    await log.defragment()
    total, used = log.size()
    assert 0 <= used <= total


# -- Cosmos: several writers on one log -------------------------------------------------------

async def test_two_writers_race_for_the_auth_record(cosmos_logs):
    a, _ = await cosmos_logs.open()
    b, _ = await cosmos_logs.open()
    for version in range(1, 11):
        await asyncio.gather(a.load_auth(), b.load_auth())
        results = await asyncio.gather(a.save_auth(AuthRecord(version, b"a%d" % version)),
                                       b.save_auth(AuthRecord(version, b"b%d" % version)), return_exceptions=True)
        outcomes = sorted("ok" if r is None else type(r).__name__ for r in results)
        assert outcomes == ["AuthConflictError", "ok"], outcomes
        stored = await a.load_auth()
        assert stored.version == version and stored.data == (b"a%d" if results[0] is None else b"b%d") % version


async def test_two_writers_race_for_the_same_head(cosmos_logs):
    a, _ = await cosmos_logs.open()
    b, _ = await cosmos_logs.open()
    head = 1
    rounds = 25
    rng = random.Random(8)
    wins = {"a": 0, "b": 0}
    for _ in range(rounds):
        size_a, size_b = rng.randint(1, 3), rng.randint(1, 3)
        batch_a = simple_batch(head + 1, size_a, b"a")
        batch_b = simple_batch(head + 1, size_b, b"b")
        results = await asyncio.gather(a.append(batch_a), b.append(batch_b), return_exceptions=True)
        outcomes = ["ok" if r is None else type(r).__name__ for r in results]
        assert sorted(outcomes) == ["LogConflictError", "ok"], outcomes
        winner, loser, batch = (a, b, batch_a) if results[0] is None else (b, a, batch_b)
        wins["a" if winner is a else "b"] += 1
        caught_up = await loser.read_after(head)
        assert list(caught_up) == batch  # the loser sees exactly the winner's records
        head = batch[-1].revision
    reader, state = await cosmos_logs.open()
    assert revisions_of(state.revisions) == list(range(2, head + 1))
    # each revision exactly once, in contiguous documents
    documents = await raw_documents(reader, layout.LOG_PARTITION, layout.KIND_LOG)
    spans = sorted((d["r"], d["e"]) for d in documents)
    assert all(s[0] == p[1] + 1 for p, s in zip(spans, spans[1:])) and spans[0][0] == 2 and spans[-1][1] == head


async def test_a_fence_refuses_a_former_leaders_append(cosmos_logs):
    """A new leader, caught up, fences head+1: the former leader's append of head+1 (prepared before
    it knew) fails with LogFencedError and writes nothing; the new leader's own append replaces the
    fence. Without the fence the former leader's append would land unknown to the new leader."""
    former, _ = await cosmos_logs.open()
    await former.fence_next(1)  # it led
    await former.append(simple_batch(2, 2))
    leader, state = await cosmos_logs.open()
    assert revisions_of(state.revisions) == [2, 3]
    await leader.fence_next(2)
    with pytest.raises(LogFencedError):
        await former.append(simple_batch(4, 1, b"former"))
    await leader.append(simple_batch(4, 2, b"leader"))
    fences = await raw_documents(leader, layout.LOG_PARTITION, layout.KIND_FENCE)
    assert fences == []  # replaced by the leader's append
    await assert_log_is(cosmos_logs, simple_batch(2, 2) + simple_batch(4, 2, b"leader"))


async def test_a_fence_moves_on_when_the_head_moved(cosmos_logs):
    leader, _ = await cosmos_logs.open()
    other, _ = await cosmos_logs.open()
    await other.fence_next(1)  # a former leader
    await other.append(simple_batch(2, 1))  # lands after the leader's last read
    with pytest.raises(LogConflictError):
        await leader.fence_next(2)
    await leader.read_after(1)
    await leader.fence_next(2)
    with pytest.raises(LogFencedError):
        await other.append(simple_batch(3, 1, b"other"))
    await leader.append(simple_batch(3, 1))
    await assert_log_is(cosmos_logs, simple_batch(2, 2))


async def test_a_later_leaders_fence_replaces_an_unused_one(cosmos_logs):
    first, _ = await cosmos_logs.open()
    second, _ = await cosmos_logs.open()
    await first.fence_next(1)
    await second.fence_next(2)  # the first leader never appended: its fence is replaced
    with pytest.raises(LogFencedError):
        await first.append(simple_batch(2, 1, b"first"))
    with pytest.raises(LogFencedError):  # an earlier term's fence, sent late, replaces nothing
        await first.fence_next(1)
    await second.append(simple_batch(2, 1, b"second"))
    await assert_log_is(cosmos_logs, simple_batch(2, 1, b"second"))


async def test_a_server_without_election_takes_over_a_fence_left_behind(cosmos_logs):
    leader, _ = await cosmos_logs.open()
    await leader.fence_next(1)
    await leader.close()
    alone, _ = await cosmos_logs.open()  # never fences: no election where it runs
    await alone.append(simple_batch(2, 1))
    await assert_log_is(cosmos_logs, simple_batch(2, 1))


async def test_lost_answer_of_the_append_that_replaces_a_fence(cosmos_logs, proxy):
    leader, _ = await cosmos_logs.open(endpoint=proxy.endpoint)
    await leader.fence_next(1)
    proxy.add(Rule("status_after", status=503, operation="replace", body=b'"kind":"log"'))
    await leader.append(simple_batch(2, 2))  # replaced, told 503: the retry's 412 is read back, ours
    assert [a for _, _, a in proxy.log].count("status_after") == 1
    await assert_log_is(cosmos_logs, simple_batch(2, 2))


async def test_stale_writer_cannot_recreate_a_compacted_log_id(cosmos_logs):
    """Fence horizon 1 s: compaction frees ids older than 1 s; a writer that has not heard from
    the log for 0.5 s checks before it writes, so it cannot land in the freed range."""
    stale, _ = await cosmos_logs.open(fence_seconds=1.0)
    busy, _ = await cosmos_logs.open(fence_seconds=1.0)
    await busy.append(simple_batch(2, 1))
    await busy.append(simple_batch(3, 1))
    await busy.append(simple_batch(4, 3))
    await asyncio.sleep(2.2)  # older than the horizon
    await busy.append(simple_batch(7, 1))
    await busy.compact(6)
    await busy.defragment()  # collect now rather than in the background
    remaining = await raw_documents(busy, layout.LOG_PARTITION, layout.KIND_LOG)
    assert sorted(d["r"] for d in remaining) == [4, 7]  # 2 and 3 are gone; 4..6 holds the compact revision
    # `stale` still believes the head is 1: log-2 is free again, but it must not be re-created.
    with pytest.raises(LogConflictError):
        await stale.append(simple_batch(2, 1, b"stale"))
    ids = {d["id"] for d in await raw_documents(busy, layout.LOG_PARTITION, layout.KIND_LOG)}
    assert layout.log_id(2) not in ids
    # Catching up across the compaction cannot be done from the log: it says so.
    with pytest.raises(LogCompactedError):
        await stale.read_after(1)
    # A fresh view is consistent, and so is the stale one once it reloads.
    _, state = await cosmos_logs.open(fence_seconds=1.0)
    assert state.compact_revision == 6 and revisions_of(state.revisions) == [6, 7]
    reloaded = await stale.reload()
    assert reloaded.compact_revision == 6 and list(reloaded.base) == list(state.base)
    await stale.append(simple_batch(8, 1, b"stale"))


async def test_young_log_documents_outlive_compaction_but_are_not_read(cosmos_logs):
    """With the default horizon (300 s) nothing young is deleted; readers still start at the
    compact revision."""
    log, _ = await cosmos_logs.open()
    await log.append(simple_batch(2, 3))
    await log.append(simple_batch(5, 2))
    await log.compact(6)
    await log.defragment()
    assert len(await raw_documents(log, layout.LOG_PARTITION, layout.KIND_LOG)) == 2
    _, state = await cosmos_logs.open()
    assert state.compact_revision == 6 and revisions_of(state.revisions) == [6]
    assert revisions_of(await log.read_after(0)) == [6]


async def test_a_reader_sees_another_writers_compaction(cosmos_logs):
    writer, _ = await cosmos_logs.open()
    reader, _ = await cosmos_logs.open()
    await writer.append(simple_batch(2, 4))
    assert revisions_of(await reader.read_after(1)) == [2, 3, 4, 5]
    await writer.compact(4)
    await writer.append(simple_batch(6, 1))
    # the reader's view is behind: it still reads what is there, in order
    assert revisions_of(await reader.read_after(5)) == [6]
    with pytest.raises(LogConflictError):
        await reader.append(simple_batch(6, 1, b"r"))
    assert revisions_of(await reader.read_after(5)) == [6]
    await reader.append(simple_batch(7, 1, b"r"))
    _, state = await cosmos_logs.open()
    assert state.compact_revision == 4 and revisions_of(state.revisions) == [4, 5, 6, 7]


async def test_open_during_another_replicas_compaction_is_consistent(cosmos_logs, proxy):
    """The opener's log query is held back while another replica compacts and collects: the
    opener notices that meta changed under it and reads again, never a base from one compaction
    with a log from another."""
    writer, _ = await cosmos_logs.open(fence_seconds=0)
    model = Model()
    rng = random.Random(2)
    for size in (2, 3, 2):
        batch = random_batch(model, rng, size, [b"a", b"b", b"c"])
        await writer.append(batch)
        model.applied(batch)
    await writer.compact(3)
    model.compacted(3)
    proxy.add(Rule("delay", operation="query", body=b"c.r >= @cdoc", seconds=1.0))
    opening = asyncio.create_task(cosmos_logs.open(endpoint=proxy.endpoint))
    while not any(action == "delay" for _, _, action in proxy.log):
        await asyncio.sleep(0.01)
    await writer.compact(6)
    model.compacted(6)
    await writer.defragment()  # fence 0: the log documents below the new cdoc go at once
    _, state = await opening
    model.check(state)
    assert [action for _, _, action in proxy.log].count("delay") == 1


async def test_a_create_that_lands_late_in_a_freed_range_is_withdrawn(cosmos_logs, proxy):
    """The rare path of the fence: a writer checked that nothing followed its head, then its
    create was held up for longer than half the horizon, during which others wrote, compacted
    and freed that very id. The create succeeds on the server, but the writer sees it was
    answered late, checks meta, withdraws the document and reports a conflict."""
    late, _ = await cosmos_logs.open(endpoint=proxy.endpoint, fence_seconds=1.0, request_timeout=8.0)
    other, _ = await cosmos_logs.open(fence_seconds=1.0)
    proxy.add(Rule("delay", **LOG_CREATE, seconds=4.0))
    appending = asyncio.create_task(late.append(simple_batch(2, 1, b"late")))
    while not any(action == "delay" for _, _, action in proxy.log):
        await asyncio.sleep(0.01)
    await other.append(simple_batch(2, 1))
    await other.append(simple_batch(3, 1))
    await asyncio.sleep(2.2)
    await other.append(simple_batch(4, 1))
    await other.compact(4)
    await other.defragment()
    assert layout.log_id(2) not in {d["id"] for d in await raw_documents(other, layout.LOG_PARTITION, layout.KIND_LOG)}
    with pytest.raises(LogConflictError):
        await appending
    documents = await raw_documents(other, layout.LOG_PARTITION, layout.KIND_LOG)
    assert sorted(d["r"] for d in documents) == [4]  # the late document was withdrawn
    _, state = await cosmos_logs.open()
    assert state.compact_revision == 4 and list(state.revisions) == simple_batch(4, 1)


async def test_existing_container_without_create(cosmos_logs):
    log, _ = await cosmos_logs.open()
    await log.append(simple_batch(2, 1))
    _, state = await cosmos_logs.open(create=False)
    assert revisions_of(state.revisions) == [2]
    missing = CosmosLog(cosmos_logs.server.endpoint, key=cosmos_logs.server.key, container="absent", create=False,
                        retry_deadline=2)
    with pytest.raises(StorageError):
        await missing.open()
    await missing.close()


async def test_https_with_a_token_credential(tmp_path):
    """A self-signed server (insecure_skip_tls_verify) and an azure-identity style async
    credential (the local server accepts any token), which closing the log closes."""
    from azure.core.credentials import AccessToken

    class FakeCredential:
        scopes: list = []
        closed = False

        async def get_token(self, *scopes, **kwargs):
            self.scopes.extend(scopes)
            return AccessToken("not-a-real-token", int(time.time()) + 3600)

        async def close(self):
            self.closed = True

    credential = FakeCredential()
    with cosmos_harness.running_cosmos(tmp_path, ssl=True) as server:
        log = CosmosLog(server.endpoint, credential=credential, insecure_skip_tls_verify=True, retry_deadline=5)
        try:
            await log.open()
            await log.append(simple_batch(2, 1))
            assert revisions_of(await log.read_after(0)) == [2]
        finally:
            await log.close()
    assert credential.scopes and credential.closed


async def test_member_heartbeats(cosmos_logs):
    a, _ = await cosmos_logs.open()
    b, _ = await cosmos_logs.open()
    member_a = {"id": 0x7123_4567_89AB_CDEF, "name": "a", "clientURLs": ["http://127.0.0.1:1"]}
    member_b = {"id": 2, "name": "b", "clientURLs": ["http://127.0.0.1:2"]}
    await a.heartbeat(member_a)
    await b.heartbeat(member_b)
    assert sorted(m["name"] for m in await a.members(max_age_seconds=30)) == ["a", "b"]
    assert any(m["id"] == 0x7123_4567_89AB_CDEF for m in await b.members(max_age_seconds=30))  # 64-bit exact
    await asyncio.sleep(2.1)
    await a.heartbeat(member_a)
    assert [m["name"] for m in await a.members(max_age_seconds=0)] == ["a"]
    await a.remove_member(member_a["id"])
    assert [m["name"] for m in await b.members(max_age_seconds=30)] == ["b"]


# -- Cosmos: faults ---------------------------------------------------------------------------

@pytest.fixture
async def proxy(cosmos_server):
    async with FaultProxy(*cosmos_server.host_port) as running:
        yield running


async def assert_log_is(cosmos_logs, expected: list[Revision]) -> None:
    """A fresh reader finds exactly these records, each in one document, nothing twice."""
    reader, state = await cosmos_logs.open()
    assert list(state.revisions) == expected
    documents = await raw_documents(reader, layout.LOG_PARTITION, layout.KIND_LOG)
    covered = [r for d in documents for r in range(d["r"], d["e"] + 1)]
    assert sorted(covered) == [r.revision for r in expected]


async def test_lost_response_of_an_append_is_neither_duplicated_nor_lost(cosmos_logs, proxy):
    log, _ = await cosmos_logs.open(endpoint=proxy.endpoint)
    first = simple_batch(2, 2)
    proxy.add(Rule("reset_after", **LOG_CREATE))
    await log.append(first)  # the create ran, its answer was lost: resolved by reading it back
    assert [a for _, _, a in proxy.log].count("reset_after") == 1
    proxy.add(Rule("status_after", status=503, **LOG_CREATE))
    second = simple_batch(4, 1)
    await log.append(second)  # the create ran, the client was told 503
    proxy.add(Rule("status_after", status=408, **LOG_CREATE))
    third = simple_batch(5, 3)
    await log.append(third)
    await assert_log_is(cosmos_logs, first + second + third)
    statuses = log.stats.snapshot()["append"].statuses
    assert statuses.get("503") == 1 and statuses.get("408") == 1


async def test_append_not_executed_is_retried(cosmos_logs, proxy):
    log, _ = await cosmos_logs.open(endpoint=proxy.endpoint)
    proxy.add(Rule("reset_before", **LOG_CREATE))
    await log.append(simple_batch(2, 1))
    proxy.add(Rule("status", status=503, **LOG_CREATE, times=2))
    await log.append(simple_batch(3, 1))
    await assert_log_is(cosmos_logs, simple_batch(2, 2))


async def test_timeout_with_the_request_still_in_flight(cosmos_logs, proxy):
    """The first create is held back past the client's timeout and lands after the retry: the
    retry wins, the late original fails with 409 on the server, and the log holds it once."""
    log, _ = await cosmos_logs.open(endpoint=proxy.endpoint, request_timeout=0.5)
    proxy.add(Rule("delay", **LOG_CREATE, seconds=1.5))
    await log.append(simple_batch(2, 1))
    await asyncio.sleep(1.5)  # let the held-back create arrive (it is answered 409)
    proxy.add(Rule("hang_after", **LOG_CREATE))
    await log.append(simple_batch(3, 2))  # ran, never answered: timeout, read back, ours
    await assert_log_is(cosmos_logs, simple_batch(2, 3))


async def test_a_retry_that_finds_its_own_earlier_create(cosmos_logs, proxy):
    """Attempt 1 is held back past the timeout; the read-back finds nothing; attempt 2 arrives
    after attempt 1 finally landed and gets 409: reading the id back shows our own nonce, so the
    append succeeded (once)."""
    log, _ = await cosmos_logs.open(endpoint=proxy.endpoint, request_timeout=0.6)
    proxy.add(Rule("delay", **LOG_CREATE, seconds=0.8), Rule("delay", **LOG_CREATE, seconds=0.35))
    await log.append(simple_batch(2, 1))
    assert log.stats.snapshot()["append"].statuses.get("409") == 1
    await assert_log_is(cosmos_logs, simple_batch(2, 1))


async def test_throttling_honours_retry_after(cosmos_logs, proxy):
    log, _ = await cosmos_logs.open(endpoint=proxy.endpoint)
    proxy.add(throttled(0.3, operation="create", times=2))  # x-ms-retry-after-ms and Retry-After
    started = time.monotonic()
    await log.append(simple_batch(2, 1))
    assert time.monotonic() - started >= 0.6
    proxy.add(throttled(0.4, ms_header=False, operation="query"))  # Retry-After (seconds) only
    started = time.monotonic()
    assert revisions_of(await log.read_after(0)) == [2]
    assert time.monotonic() - started >= 0.4
    stats = log.stats.snapshot()
    assert stats["append"].statuses.get("429") == 2 and stats["read"].statuses.get("429") == 1
    await assert_log_is(cosmos_logs, simple_batch(2, 1))


async def test_outage_fails_promptly_and_recovers(cosmos_logs, proxy):
    log, _ = await cosmos_logs.open(endpoint=proxy.endpoint, retry_deadline=1.5, request_timeout=0.5)
    await log.append(simple_batch(2, 1))
    proxy.refuse = True
    proxy.reset_connections()
    started = time.monotonic()
    with pytest.raises(StorageError):
        await log.append(simple_batch(3, 1))
    with pytest.raises(StorageError):
        await log.read_after(0)
    assert time.monotonic() - started < 6
    proxy.refuse = False
    await log.append(simple_batch(3, 1))  # the same revision again: it never landed
    assert revisions_of(await log.read_after(0)) == [2, 3]
    await assert_log_is(cosmos_logs, simple_batch(2, 2))


async def test_lost_answer_while_another_writer_competes(cosmos_logs, proxy):
    """A's create lands but its answer is lost; B then tries the same revision and loses; A
    resolves its own create as a success. Never two records for one revision."""
    a, _ = await cosmos_logs.open(endpoint=proxy.endpoint)
    b, _ = await cosmos_logs.open()  # direct
    proxy.add(Rule("reset_after", **LOG_CREATE),
              Rule("delay", operation="query", seconds=0.3))  # A's read-back is slow
    batch_a, batch_b = simple_batch(2, 1, b"a"), simple_batch(2, 1, b"b")
    task_a = asyncio.create_task(a.append(batch_a))
    while not any(action == "reset_after" for _, _, action in proxy.log):
        await asyncio.sleep(0.01)
    with pytest.raises(LogConflictError):
        await b.append(batch_b)
    await task_a
    assert list(await b.read_after(1)) == batch_a
    await assert_log_is(cosmos_logs, batch_a)


async def test_faults_in_compaction_and_restart(cosmos_logs, proxy):
    log, _ = await cosmos_logs.open(endpoint=proxy.endpoint)
    model = Model()
    rng = random.Random(21)
    for size in (3, 2, 4):
        batch = random_batch(model, rng, size, [b"p", b"q", b"r", b"s"])
        await log.append(batch)
        model.applied(batch)
    proxy.add(Rule("reset_after", operation="replace"),  # the meta update ran; its answer is lost
              Rule("status", operation="upsert", status=503),
              Rule("reset_before", operation="query"))
    await log.compact(7)
    model.compacted(7)
    proxy.add(Rule("reset_before", operation="query", times=2), Rule("status", operation="read", status=503))
    log, state = await cosmos_logs.restart(log, endpoint=proxy.endpoint)
    model.check(state)


# -- Cosmos: cost per operation ---------------------------------------------------------------

async def test_requests_per_operation(cosmos_logs, capsys):
    """One request per append whatever its size (group commit), one per tail read; compaction
    and restart cost in proportion to documents, not to history. The local server charges 1 RU
    per request, so RU equals requests here; on a real account read the same counters."""
    log, _ = await cosmos_logs.open()
    stats = log.stats
    figures = {}

    def measure(name, before):
        after = stats.snapshot()
        requests = sum(after[op].requests - before.get(op, _zero()).requests for op in after)
        units = sum(after[op].request_units - before.get(op, _zero()).request_units for op in after)
        figures[name] = (requests, units)
        return requests

    await log.append(simple_batch(2, 1))  # warm the SDK's caches
    before = stats.snapshot()
    await log.append(simple_batch(3, 1))
    assert measure("append 1 revision", before) == 1
    before = stats.snapshot()
    await log.append(simple_batch(4, 100))
    assert measure("append 100 revisions (one group commit)", before) == 1
    before = stats.snapshot()
    await log.read_after(3)
    assert measure("read_after (tail, 2 documents)", before) == 1
    before = stats.snapshot()
    await log.read_after(103)
    assert measure("read_after (nothing new)", before) == 1
    before = stats.snapshot()
    await log.head()
    assert measure("head", before) == 1
    before = stats.snapshot()
    await log.save_lease(Lease(id=1, ttl=5))
    assert measure("save_lease", before) == 1
    keys = 200
    await log.append([Revision(revision=104 + i, events=[put(104 + i, b"key/%d" % i, b"v")]) for i in range(keys)])
    before = stats.snapshot()
    await log.compact(103 + keys)
    assert measure("compact: schedule (meta read + replace)", before) == 2
    before = stats.snapshot()
    await log._fold(103 + keys)  # waits for the background fold the schedule started
    folding = measure(f"compact: fold ({keys + 103} records, {keys + 103} keys, first: full checkpoint)", before)
    assert folding <= 5
    await log._gc_task  # the background collection the fold started
    before = stats.snapshot()
    await log.defragment()
    measure("garbage collection (nothing old enough under the default horizon)", before)
    await log.append(simple_batch(104 + keys, 1, b"key/"))
    before = stats.snapshot()
    await log.compact(104 + keys)
    await log.defragment()  # schedule, then fold and collect now
    measure("compact of 1 record, 1 key (delta checkpoint) + defragment", before)
    before = stats.snapshot()
    await cosmos_logs.open(stats=stats)
    measure("open (restart: account read + client set-up 4, meta x3, 2 page sets, log, leases)", before)
    with capsys.disabled():
        print("\nCosmos requests / RU per operation (local server: 1 RU per request):")
        for name, (requests, units) in figures.items():
            print(f"  {name:<70} {requests:>3} requests {units:>6.1f} RU")


def _zero():
    from cosmos_etcd_shim.storage.cosmos.stats import OperationStats
    return OperationStats()


# -- helpers ----------------------------------------------------------------------------------

async def raw_documents(log, partition: str, kind: str) -> list[dict]:
    """The container's documents of one kind, read around the interface (for proofs only)."""
    return await log.conn.query("test", "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind",
                                {"@pk": partition, "@kind": kind}, partition)
