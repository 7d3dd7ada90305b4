"""The linearizability checker of tests/harness/linearizability.py, itself tested.

It must accept histories that are linearizable (hand-written ones and random ones produced by a
simulated linearizable store, with overlapping requests and requests of unknown outcome), and
reject the typical failures of a replicated store: a stale read after an acknowledged write, a
lost write, two writes acknowledged at the same revision, a read of a value never written, plus
the rest of its model (compare-and-set decisions, gaps and bookkeeping of the log, real-time order
of writes, deletes nobody asked for).
"""
from __future__ import annotations

import dataclasses
import random

import pytest

from tests.harness import linearizability as lin
from tests.harness.linearizability import DELETE, PUT, Event, Version, cas, check, delete, get, put

K = b"k"


def kinds(report: lin.Report) -> set[str]:
    return {v.kind for v in report.violations}


def put_event(revision, value, create, version, key=K):
    return Event(revision, PUT, key, value, create, version)


# A short valid history on one key: put a@2, put b@3, get at 3, cas(3 -> c)@4, delete@5, get at 5.
def valid_history():
    ops = [
        put("p1", K, b"a", 0.0, 1.0, revision=2),
        put("p2", K, b"b", 2.0, 3.0, revision=3),
        get("p1", K, 4.0, 5.0, 3, Version(b"b", 3, 2, 2)),
        cas("p2", K, 3, b"c", 6.0, 7.0, succeeded=True, revision=4),
        delete("p1", K, 8.0, 9.0, deleted=1, revision=5),
        get("p2", K, 10.0, 11.0, 5, None),
    ]
    log = [put_event(2, b"a", 2, 1), put_event(3, b"b", 2, 2), put_event(4, b"c", 2, 3), Event(5, DELETE, K)]
    return ops, log


@pytest.mark.parametrize("with_log", [True, False])
def test_accepts_a_sequential_history(with_log):
    ops, log = valid_history()
    report = check(ops, log if with_log else None)
    report.assert_ok()
    assert report.head == 5 and report.acknowledged_writes == 4 and report.reads == 2


def test_accepts_concurrent_requests_in_either_order():
    # Two overlapping puts: the one invoked later may take the earlier revision.
    ops = [
        put("p1", K, b"a", 0.0, 3.0, revision=3),
        put("p2", K, b"b", 1.0, 2.0, revision=2),
        # A read overlapping both may see either state: here the one between them.
        get("p3", K, 0.5, 3.5, 2, Version(b"b", 2, 2, 1)),
        get("p3", K, 4.0, 5.0, 3, Version(b"a", 3, 2, 2)),
    ]
    log = [put_event(2, b"b", 2, 1), put_event(3, b"a", 2, 2)]
    check(ops, log).assert_ok()
    check(ops).assert_ok()


def test_accepts_unknown_outcomes_that_did_or_did_not_take_effect():
    ops = [
        put("p1", K, b"a", 0.0, 1.0, revision=2),
        put("p2", K, b"lost-in-flight", 2.0),  # no answer, never applied
        put("p2", K, b"late", 3.0),  # no answer, applied at 3 after everything below was invoked
        cas("p3", K, 2, b"maybe", 3.5),  # no answer; its compare failed, so it never wrote
        get("p1", K, 4.0, 5.0, 2, Version(b"a", 2, 2, 1)),  # the late write had not happened yet
        get("p1", K, 6.0, 7.0, 3, Version(b"late", 3, 2, 2)),
        delete("p3", K, 8.0),  # no answer, applied at 4
        delete("p3", K, 8.5),  # no answer, not applied (nothing left to delete)
        get("p1", K, 9.0, 10.0, 4, None),
    ]
    log = [put_event(2, b"a", 2, 1), put_event(3, b"late", 2, 2), Event(4, DELETE, K)]
    report = check(ops, log)
    report.assert_ok()
    assert report.unknown == 5 and report.unknown_applied == 2


def test_a_failed_cas_and_an_empty_delete_are_reads():
    ops = [
        put("p1", K, b"a", 0.0, 1.0, revision=2),
        cas("p2", K, 0, b"x", 2.0, 3.0, succeeded=False, revision=2, seen=Version(b"a", 2, 2, 1)),
        delete("p1", K, 4.0, 5.0, deleted=1, revision=3),
        delete("p2", K, 6.0, 7.0, deleted=0, revision=3),
        cas("p1", K, 0, b"y", 8.0, 9.0, succeeded=True, revision=4),
    ]
    log = [put_event(2, b"a", 2, 1), Event(3, DELETE, K), put_event(4, b"y", 4, 1)]
    check(ops, log).assert_ok()
    check(ops).assert_ok()


# -- the four failures the brief names ----------------------------------------------------------

@pytest.mark.parametrize("with_log", [True, False])
def test_rejects_a_stale_read_after_an_acknowledged_write(with_log):
    base = [put("p1", K, b"a", 0.0, 1.0, revision=2), put("p1", K, b"b", 2.0, 3.0, revision=3)]
    log = [put_event(2, b"a", 2, 1), put_event(3, b"b", 2, 2)]
    # Served at an old revision although the write had been acknowledged before the read began.
    old_header = base + [get("p2", K, 4.0, 5.0, 2, Version(b"a", 2, 2, 1))]
    report = check(old_header, log if with_log else None)
    assert kinds(report) == {"real-time"}, report.violations
    # Served at the new revision, but with the old value.
    old_value = base + [get("p2", K, 4.0, 5.0, 3, Version(b"a", 2, 2, 1))]
    report = check(old_value, log if with_log else None)
    assert kinds(report) == {"read"}, report.violations
    # The same read overlapping the write is fine.
    check(base[:1] + [put("p1", K, b"b", 2.0, 4.5, revision=3), old_header[-1]], log if with_log else None).assert_ok()


def test_rejects_a_lost_write():
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), put("p2", K, b"b", 2.0, 3.0, revision=3)]
    # The log ends before the acknowledged revision.
    report = check(ops, [put_event(2, b"a", 2, 1)])
    assert kinds(report) == {"lost-write"}, report.violations
    # The log holds it at another revision than the one acknowledged.
    report = check(ops + [put("p3", K, b"c", 4.0, 5.0, revision=4)],
                   [put_event(2, b"a", 2, 1), put_event(3, b"c", 2, 2), put_event(4, b"b", 2, 3)])
    assert "lost-write" in kinds(report), report.violations
    # Without a log: a later read at a newer revision still sees the older value.
    report = check(ops + [get("p1", K, 4.0, 5.0, 3, Version(b"a", 2))])
    assert kinds(report) == {"read"}, report.violations
    # An acknowledged delete that did not happen.
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), delete("p1", K, 2.0, 3.0, deleted=1, revision=3),
           get("p2", K, 4.0, 5.0, 3, Version(b"a", 2, 2, 1))]
    report = check(ops, [put_event(2, b"a", 2, 1)])
    assert {"lost-write", "read"} <= kinds(report), report.violations


@pytest.mark.parametrize("with_log", [True, False])
def test_rejects_two_writes_acknowledged_at_the_same_revision(with_log):
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), put("p2", K, b"b", 0.0, 1.0, revision=2)]
    log = [put_event(2, b"a", 2, 1)]
    report = check(ops, log if with_log else None)
    assert "duplicate-revision" in kinds(report), report.violations
    # Also when the log shows both values in one revision.
    report = check(ops, [put_event(2, b"a", 2, 1), put_event(2, b"b", 2, 1, key=b"other")])
    assert "duplicate-revision" in kinds(report), report.violations


@pytest.mark.parametrize("with_log", [True, False])
def test_rejects_a_read_of_a_value_never_written(with_log):
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), get("p2", K, 2.0, 3.0, 2, Version(b"zzz", 2, 2, 1))]
    log = [put_event(2, b"a", 2, 1)]
    report = check(ops, log if with_log else None)
    assert kinds(report) == {"never-written"}, report.violations
    # A value in the log that no request wrote.
    report = check(ops[:1], log + [put_event(3, b"zzz", 2, 2)])
    assert kinds(report) == {"never-written"}, report.violations


# -- the rest of the model -------------------------------------------------------------------

def test_rejects_a_cas_decided_on_a_stale_state():
    # Succeeded although the key had moved on.
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), put("p1", K, b"b", 2.0, 3.0, revision=3),
           cas("p2", K, 2, b"c", 4.0, 5.0, succeeded=True, revision=4)]
    log = [put_event(2, b"a", 2, 1), put_event(3, b"b", 2, 2), put_event(4, b"c", 2, 3)]
    assert kinds(check(ops, log)) == {"cas"}
    assert kinds(check(ops)) == {"cas"}
    # Failed although the compare held (and what it read agrees with that).
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2),
           cas("p2", K, 2, b"c", 2.0, 3.0, succeeded=False, revision=2, seen=Version(b"a", 2, 2, 1))]
    assert kinds(check(ops, log[:1])) == {"cas"}
    # An unknown-outcome CAS that took effect is checked too.
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), put("p1", K, b"b", 2.0, 3.0, revision=3),
           cas("p2", K, 2, b"c", 4.0)]
    assert kinds(check(ops, log)) == {"cas"}


def test_rejects_writes_ordered_against_real_time():
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=3), put("p2", K, b"b", 2.0, 3.0, revision=2)]
    log = [put_event(2, b"b", 2, 1), put_event(3, b"a", 2, 2)]
    assert kinds(check(ops, log)) == {"real-time"}
    # A read that completed at revision 3 before a write began, which then got revision 3 or less.
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), get("p2", K, 2.0, 3.0, 3, Version(b"a", 2, 2, 1)),
           put("p3", K, b"b", 4.0, 5.0, revision=3)]
    report = check(ops, [put_event(2, b"a", 2, 1), put_event(3, b"b", 2, 2)])
    assert "real-time" in kinds(report), report.violations
    # An unknown-outcome write that took effect must still come after what completed before it began.
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=3), put("p2", K, b"b", 2.0)]
    assert kinds(check(ops, [put_event(2, b"b", 2, 1), put_event(3, b"a", 2, 2)])) == {"real-time"}


def test_rejects_a_log_with_gaps_or_wrong_bookkeeping():
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), put("p1", K, b"b", 2.0, 3.0, revision=4)]
    assert kinds(check(ops, [put_event(2, b"a", 2, 1), put_event(4, b"b", 2, 2)])) == {"gap"}
    assert check(ops, [put_event(2, b"a", 2, 1), put_event(4, b"b", 2, 2)], gapless=False).ok
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), put("p1", K, b"b", 2.0, 3.0, revision=3)]
    assert kinds(check(ops, [put_event(2, b"a", 2, 1), put_event(3, b"b", 3, 1)])) == {"log"}
    ops = [delete("p1", K, 0.0, 1.0, deleted=1, revision=2)]
    assert "log" in kinds(check(ops, [Event(2, DELETE, K)]))


def test_rejects_a_read_served_beyond_the_history():
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), get("p2", K, 2.0, 3.0, 7, Version(b"a", 2, 2, 1))]
    assert kinds(check(ops, [put_event(2, b"a", 2, 1)])) == {"read"}


def test_rejects_a_delete_nobody_asked_for():
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2), get("p2", K, 2.0, 3.0, 3, None)]
    log = [put_event(2, b"a", 2, 1), Event(3, DELETE, K)]
    assert "phantom-write" in kinds(check(ops, log))
    # An unanswered delete explains it, unless it began after something at a later point completed.
    assert check(ops + [delete("p3", K, 1.5)], log).ok
    assert "phantom-write" in kinds(check(ops + [delete("p3", K, 3.5)], log))


def test_rejects_a_write_told_it_wrote_nothing_that_did():
    ops = [put("p1", K, b"a", 0.0, 1.0, revision=2),
           cas("p2", K, 0, b"b", 2.0, 3.0, succeeded=False, revision=2, seen=Version(b"a", 2, 2, 1))]
    assert "phantom-write" in kinds(check(ops, [put_event(2, b"a", 2, 1), put_event(3, b"b", 2, 2)]))


def test_refuses_histories_it_cannot_check():
    with pytest.raises(ValueError, match="unique"):
        check([put("p1", K, b"a", 0.0, 1.0, revision=2), put("p2", K, b"a", 0.0, 1.0, revision=3)])
    with pytest.raises(ValueError, match="log"):
        check([delete("p1", K, 0.0)])


# -- random histories of a simulated linearizable store -----------------------------------------

def simulate(seed: int, processes: int = 5, per_process: int = 60, keys: int = 3):
    """A linearizable store under concurrent clients: each request takes effect at one instant
    inside its interval (its linearization point); some requests lose their answer."""
    rng = random.Random(seed)
    key_names = [f"k{i}".encode() for i in range(keys)]
    # Each process issues requests back to back; every request has a linearization point.
    plans = []
    for p in range(processes):
        t = rng.random()
        for i in range(per_process):
            invoke = t
            point = invoke + rng.expovariate(2.0)
            complete = point + rng.expovariate(2.0)
            plans.append((point, invoke, complete, f"p{p}", i))
            t = complete + rng.expovariate(4.0)
    plans.sort()
    state: dict[bytes, Version] = {}
    revision = 1
    log: list[Event] = []
    ops = []
    seen_mod: dict[tuple[str, bytes], int] = {}
    for point, invoke, complete, process, i in plans:
        key = rng.choice(key_names)
        kind = rng.choice(["put", "put", "get", "get", "cas", "delete"])
        answered = rng.random() > 0.05
        current = state.get(key)
        value = f"{process}-{i}".encode()

        def write(record: Version | None):
            nonlocal revision
            revision += 1
            if record is None:
                state.pop(key)
                log.append(Event(revision, DELETE, key))
            else:
                record = dataclasses.replace(record, mod_revision=revision,
                                             create_revision=current.create_revision if current else revision,
                                             version=current.version + 1 if current else 1)
                state[key] = record
                log.append(Event(revision, PUT, key, record.value, record.create_revision, record.version))
            return revision

        done = complete if answered else None
        if kind == "put":
            r = write(Version(value, 0))
            ops.append(put(process, key, value, invoke, done, revision=r if answered else None))
        elif kind == "get":
            ops.append(get(process, key, invoke, done, revision if answered else None, current))
            seen_mod[(process, key)] = current.mod_revision if current else 0
        elif kind == "cas":
            expected = seen_mod.get((process, key), 0)
            if (current.mod_revision if current else 0) == expected:
                r = write(Version(value, 0))
                ops.append(cas(process, key, expected, value, invoke, done, succeeded=True if answered else None,
                               revision=r if answered else None))
            else:
                ops.append(cas(process, key, expected, value, invoke, done, succeeded=False if answered else None,
                               revision=revision if answered else None, seen=current))
        else:
            if current is not None:
                r = write(None)
                ops.append(delete(process, key, invoke, done, deleted=1 if answered else None,
                                  revision=r if answered else None))
            else:
                ops.append(delete(process, key, invoke, done, deleted=0 if answered else None,
                                  revision=revision if answered else None))
    return ops, log


@pytest.mark.parametrize("seed", range(20))
def test_accepts_random_linearizable_histories(seed):
    ops, log = simulate(seed)
    report = check(ops, log)
    report.assert_ok()
    assert report.head == log[-1].revision


@pytest.mark.parametrize("seed", range(20))
def test_rejects_random_histories_with_one_corruption(seed):
    """Corrupt one answered request of a valid history: the checker must notice."""
    ops, log = simulate(seed)
    rng = random.Random(seed * 7 + 1)
    reads = [op for op in ops if op.ok and not op.wrote and op.observed and op.guard is None]
    writes = [op for op in ops if op.ok and op.wrote and op.puts and op.guard is None]
    corruption = seed % 4
    if corruption == 0:  # a read that returned the key's previous record: a stale read
        candidates = [r for r in reads if next(iter(r.observed.values())) is not None
                      and next(iter(r.observed.values())).version > 1]
        op = rng.choice(candidates)
        key, seen = next(iter(op.observed.items()))
        previous = max((e for e in log if e.key == key and e.revision < seen.mod_revision), key=lambda e: e.revision)
        op.observed = {key: previous.record()}
    elif corruption == 1:  # an acknowledged write vanishes from the log
        op = rng.choice(writes)
        victim = next(e for e in log if e.revision == op.revision)
        log[:] = [e for e in log if e is not victim]
    elif corruption == 2:  # two writes claim one revision
        a, b = rng.sample(writes, 2)
        b.revision = a.revision
    else:  # a read of a value nobody wrote
        op = rng.choice(reads)
        key = next(iter(op.observed))
        op.observed = {key: Version(b"nobody", op.revision)}
    report = check(ops, log)
    assert not report.ok, f"corruption {corruption} went unnoticed"


def test_is_fast_on_large_histories():
    import time

    ops, log = simulate(99, processes=20, per_process=1000, keys=10)
    started = time.perf_counter()
    check(ops, log).assert_ok()
    assert time.perf_counter() - started < 10
