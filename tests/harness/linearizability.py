"""A linearizability checker for a key-value store whose writes carry revisions (etcd's model).

The model
---------
The store is a map ``key -> version record`` (value, ``mod_revision``, ``create_revision``,
``version``). Every request that changes something creates exactly one new *revision*, the next
integer, and reports it in its response header: the revisions are a total order of the writes,
chosen by the system and told to the clients. A request that changes nothing (a Range, a Txn whose
compares failed, a DeleteRange that found nothing) is *served at* a revision, its header revision:
it observes the state after that revision's write and before the next one.

So the linearization order needs no search (the general problem, solved by Knossos or Porcupine by
searching for an order, is NP-complete): the system names it. Each request gets a *point* on the
revision axis, a write its revision ``r``, a request that wrote nothing its header revision
``h + 1/2`` (after write ``h``, before write ``h + 1``), and the checker verifies that this order
is a linearization:

1. **Real time.** If request A completed before request B was invoked, A's point is not after B's
   (a write acknowledged at 7 before a read began makes every later read's header revision >= 7;
   a read that returned at header 9 makes every later write's revision > 9).
2. **Sequential results.** Replaying the writes in revision order gives the state after every
   revision; each request's result must be the sequential store's result at its point: a read
   returns exactly the record (value, mod/create revision, version) of the latest write of the key
   at or below its header revision, or nothing if that was a delete; a conditional write
   (compare-and-set) whose compares held wrote at ``r`` only if they held in the state at
   ``r - 1``, and one that reported failure at ``h`` had compares that did not hold at ``h``; a
   delete that deleted nothing found the key absent at ``h``.
3. **The writes are the requested ones.** Every revision is the effect of exactly one request (a
   put's value identifies it: values must be unique per key), no two requests are acknowledged at
   the same revision, no revision holds a value nobody wrote, no write is applied twice, and every
   acknowledged write is in the history at the revision it was acknowledged with (else it was lost).

This is the property etcd promises, which is stronger than "some linearization exists": a read
whose header revision is older than what it returned is a violation here even if a register
checker could place it elsewhere.

The history of writes
---------------------
``check(operations, log)`` takes the *log*, the write history as the system reports it afterwards
(e.g. a watch from the first revision, or Range at every revision): a list of :class:`Event`.
It holds every event of the keys it covers since the store was empty (a log filtered to
some keys is fine: pass ``gapless=False``). The log is cross-checked, not trusted: it must be
gapless from ``first_revision`` to its head (when ``gapless``), keep etcd's bookkeeping
(``create_revision`` and ``version`` of every put, no delete of an absent key, one event per key
and revision), and agree with what every client was told. Without a log
(``log=None``), it is rebuilt from the acknowledged writes and the values reads returned; that
mode cannot place deletes of unknown outcome (``ValueError``) and cannot see a write that nobody
acknowledged nor read, so it finds fewer violations but never a false one.

Unknown outcomes
----------------
A request that failed or timed out (``ok=False``) may or may not have taken effect, at any time
after it was invoked: it completes "at infinity". A put or compare-and-set of unknown outcome
that appears in the history (by its value) is placed at its revision, checked like any write
(including its compares) and must still come after everything that completed before it was
invoked. A delete of unknown outcome explains a delete event in the log that no acknowledged
request claims, on a key it named (matched greedily; with no deadline on the right, any fitting
candidate is as good as another). A read of unknown outcome tells nothing and is ignored.

Cost: O(n log n) in the number of operations plus the size of the log.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

PUT = "PUT"
DELETE = "DELETE"


@dataclasses.dataclass(frozen=True)
class Version:
    """A live key's record, as read or as the model holds it. ``None`` fields are not compared."""

    value: bytes
    mod_revision: int
    create_revision: int | None = None
    version: int | None = None

    def describe(self) -> str:
        extra = ""
        if self.create_revision is not None or self.version is not None:
            extra = f", create {self.create_revision}, version {self.version}"
        return f"{self.value!r}@{self.mod_revision}{extra}"


@dataclasses.dataclass(frozen=True)
class Event:
    """One change in the log: a put (with its record) or a delete of ``key`` at ``revision``."""

    revision: int
    type: str  # PUT or DELETE
    key: bytes
    value: bytes = b""
    create_revision: int | None = None
    version: int | None = None

    def record(self) -> Version | None:
        if self.type == DELETE:
            return None
        return Version(self.value, self.revision, self.create_revision, self.version)

    def describe(self) -> str:
        if self.type == DELETE:
            return f"DELETE {self.key!r}@{self.revision}"
        return f"PUT {self.key!r}={self.value!r}@{self.revision}"


@dataclasses.dataclass(eq=False)
class Operation:
    """One client request: what it asked, when, and what it was told.

    What it asked: ``puts`` (key -> value), ``deletes`` (keys), and for a compare-and-set a
    ``guard`` (key -> the ``mod_revision`` the key must have before the write; 0 = absent). A read
    asks for none of these.

    What it was told (``ok=True``): ``revision``, the response header's revision; ``wrote``,
    whether the request created that revision (a put; a compare-and-set that succeeded; a delete
    that deleted something); ``observed``, what a request that wrote nothing read at ``revision``
    (key -> :class:`Version`, or ``None`` for absent). ``ok=False``: no answer, outcome unknown.
    """

    process: str
    invoke: float
    complete: float | None = None
    ok: bool = False
    puts: Mapping[bytes, bytes] = dataclasses.field(default_factory=dict)
    deletes: Sequence[bytes] = ()
    guard: Mapping[bytes, int] | None = None
    revision: int | None = None
    wrote: bool = False
    observed: Mapping[bytes, Version | None] = dataclasses.field(default_factory=dict)
    label: str = ""

    @property
    def is_write(self) -> bool:
        return bool(self.puts or self.deletes)

    def describe(self) -> str:
        what = self.label
        if not what:
            parts = [f"put {k!r}={v!r}" for k, v in self.puts.items()]
            parts += [f"delete {k!r}" for k in self.deletes]
            if self.guard is not None:
                parts.insert(0, "if " + " and ".join(f"mod({k!r})=={m}" for k, m in self.guard.items()) + ":")
            what = " ".join(parts) or "read " + " ".join(repr(k) for k in self.observed)
        if not self.ok:
            told = "no answer (outcome unknown)"
        elif self.wrote:
            told = f"wrote revision {self.revision}"
        else:
            seen = ", ".join(f"{k!r}: {v.describe() if v else 'absent'}" for k, v in self.observed.items())
            told = f"at revision {self.revision}" + (f" saw {{{seen}}}" if seen else "")
            if self.guard is not None:
                told = "compare failed " + told
        done = f"{self.complete:.6f}" if self.complete is not None else "-"
        return f"[{self.process} {self.invoke:.6f}..{done}] {what} -> {told}"


# -- builders for the common requests ----------------------------------------------------------

def put(process: str, key: bytes, value: bytes, invoke: float, complete: float | None = None,
        revision: int | None = None) -> Operation:
    """A Put; ``revision`` None means no answer."""
    ok = revision is not None
    return Operation(process, invoke, complete if ok else None, ok, puts={key: value}, revision=revision, wrote=ok)


def get(process: str, key: bytes, invoke: float, complete: float | None, revision: int | None,
        seen: Version | None) -> Operation:
    """A linearizable Range of one key: ``seen`` is its record at ``revision`` (None: absent)."""
    ok = revision is not None
    return Operation(process, invoke, complete if ok else None, ok, revision=revision,
                     observed={key: seen} if ok else {})


def cas(process: str, key: bytes, expected_mod: int, value: bytes, invoke: float, complete: float | None = None,
        *, succeeded: bool | None = None, revision: int | None = None, seen: Version | None = None) -> Operation:
    """Txn(compare mod(key) == expected_mod, put key=value, else range key). ``succeeded`` None: no answer."""
    ok = succeeded is not None
    return Operation(process, invoke, complete if ok else None, ok, puts={key: value}, guard={key: expected_mod},
                     revision=revision, wrote=bool(succeeded),
                     observed={key: seen} if ok and not succeeded else {})


def delete(process: str, key: bytes, invoke: float, complete: float | None = None, *,
           deleted: int | None = None, revision: int | None = None) -> Operation:
    """DeleteRange of one key. ``deleted`` None: no answer; 0: found nothing at ``revision``."""
    ok = deleted is not None
    return Operation(process, invoke, complete if ok else None, ok, deletes=(key,), revision=revision,
                     wrote=bool(deleted), observed={key: None} if ok and not deleted else {})


# -- the checker --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Violation:
    kind: str  # gap, log, duplicate-revision, lost-write, never-written, phantom-write, read, cas, real-time
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclasses.dataclass
class Report:
    violations: list[Violation]
    operations: int
    acknowledged_writes: int
    reads: int
    unknown: int
    unknown_applied: int
    head: int

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        return (f"{self.operations} operations ({self.acknowledged_writes} acknowledged writes, {self.reads} "
                f"answered non-writes, {self.unknown} of unknown outcome of which {self.unknown_applied} took "
                f"effect); head revision {self.head}; {len(self.violations)} violations")

    def assert_ok(self, limit: int = 25) -> None:
        if self.violations:
            shown = "\n".join(f"  {v}" for v in self.violations[:limit])
            more = f"\n  ... and {len(self.violations) - limit} more" if len(self.violations) > limit else ""
            raise AssertionError(f"history is not linearizable: {self.summary()}\n{shown}{more}")


class _Timelines:
    """Per key, the records after each write: the sequential store's state at any revision."""

    def __init__(self) -> None:
        self._revisions: dict[bytes, list[int]] = defaultdict(list)
        self._records: dict[bytes, list[Version | None]] = defaultdict(list)

    def add(self, key: bytes, revision: int, record: Version | None) -> None:
        revisions = self._revisions[key]
        i = bisect.bisect_left(revisions, revision)
        if i < len(revisions) and revisions[i] == revision:
            return  # the first writer of a revision wins; conflicts are reported where they are found
        revisions.insert(i, revision)
        self._records[key].insert(i, record)

    def at(self, key: bytes, revision: int) -> Version | None:
        revisions = self._revisions.get(key)
        if not revisions:
            return None
        i = bisect.bisect_right(revisions, revision)
        return self._records[key][i - 1] if i else None

    def mod_at(self, key: bytes, revision: int) -> int:
        record = self.at(key, revision)
        return record.mod_revision if record else 0


def _same(seen: Version | None, expected: Version | None) -> bool:
    if seen is None or expected is None:
        return seen is None and expected is None
    if seen.value != expected.value or seen.mod_revision != expected.mod_revision:
        return False
    for field in ("create_revision", "version"):
        a, b = getattr(seen, field), getattr(expected, field)
        if a is not None and b is not None and a != b:
            return False
    return True


def _describe(record: Version | None) -> str:
    return record.describe() if record else "absent"


def check(operations: Iterable[Operation], log: Iterable[Event] | None = None, *,
          first_revision: int = 2, gapless: bool = True) -> Report:
    """Check a history; see the module docstring for the model. Returns every violation found.

    ``log``: the write history as the system reports it (every event of the keys it covers, from
    ``first_revision``, the first revision of an empty store, on), or None to rebuild it from the
    operations. ``gapless``: the log must hold every revision from ``first_revision`` to its head
    (turn off for a log filtered to some keys).
    """
    ops = list(operations)
    log = list(log) if log is not None else None
    violations: list[Violation] = []

    def report(kind: str, message: str) -> None:
        violations.append(Violation(kind, message))

    # Inputs a checker cannot work with are the test's mistake, not the system's.
    owner: dict[tuple[bytes, bytes], Operation] = {}
    for op in ops:
        if op.ok and (op.revision is None or op.complete is None):
            raise ValueError(f"an answered operation needs a revision and a completion time: {op.describe()}")
        if op.ok and op.wrote and not op.is_write:
            raise ValueError(f"a read cannot have written: {op.describe()}")
        for key, value in op.puts.items():
            if (key, value) in owner:
                raise ValueError(f"value {value!r} is put to {key!r} by two operations: values must be unique per key")
            owner[(key, value)] = op

    acked = [op for op in ops if op.ok and op.wrote]
    served = [op for op in ops if op.ok and not op.wrote]
    unknown = [op for op in ops if not op.ok and op.is_write]

    claimed: dict[int, list[Operation]] = defaultdict(list)
    for op in acked:
        claimed[op.revision].append(op)
    for revision, claimers in sorted(claimed.items()):
        if len(claimers) > 1:
            report("duplicate-revision", f"{len(claimers)} writes acknowledged at revision {revision}: "
                   + "; ".join(c.describe() for c in claimers))

    timelines = _Timelines()
    applied: dict[int, int] = {}  # id(op) -> the revision holding its write
    orphan_deletes: list[tuple[int, list[bytes]]] = []  # log revisions no request claims (deletes only)

    if log is not None:
        head = _replay_log(log, first_revision, gapless, timelines, report)
        records: dict[int, list[Event]] = defaultdict(list)
        for event in log:
            records[event.revision].append(event)
        lost: set[int] = set()  # ids of acknowledged writes already reported lost
        for revision in sorted(records):
            events = records[revision]
            claimers = claimed.get(revision, [])
            value_owners: list[Operation] = []
            for event in events:
                if event.type != PUT:
                    continue
                writer = owner.get((event.key, event.value))
                if writer is None:
                    report("never-written", f"the log holds {event.describe()}: no request put that value")
                elif writer not in value_owners:
                    value_owners.append(writer)
            if len(claimers) > 1:
                continue  # reported as a duplicate already
            if len(value_owners) > 1:
                report("duplicate-revision", f"revision {revision} holds the writes of {len(value_owners)} "
                       "requests: " + "; ".join(o.describe() for o in value_owners))
                continue
            if claimers and value_owners and claimers[0] is not value_owners[0]:
                report("lost-write", f"acknowledged at revision {revision}, which holds another request's write "
                       f"({'; '.join(e.describe() for e in events)}): {claimers[0].describe()}")
                lost.add(id(claimers[0]))
                writer = value_owners[0]
            elif claimers:
                writer = claimers[0]
            elif value_owners:
                writer = value_owners[0]
            else:
                if all(e.type == DELETE for e in events):
                    orphan_deletes.append((revision, [e.key for e in events]))
                continue
            if id(writer) in applied:
                report("duplicate-write", f"applied twice, at revisions {applied[id(writer)]} and {revision}: "
                       f"{writer.describe()}")
                continue
            if writer.ok and not writer.wrote:
                report("phantom-write", f"revision {revision} holds the write of a request told it wrote nothing: "
                       f"{writer.describe()}")
            elif writer.ok and writer.revision != revision and id(writer) not in lost:
                report("lost-write", f"acknowledged at revision {writer.revision} but its write is at revision "
                       f"{revision}: {writer.describe()}")
                lost.add(id(writer))
            _check_effects(writer, revision, events, timelines, report)
            applied[id(writer)] = revision
        for op in acked:
            if id(op) not in applied and id(op) not in lost and len(claimed[op.revision]) < 2:
                there = "; ".join(e.describe() for e in records.get(op.revision, [])) or \
                    f"nothing (the log's head is {head})"
                report("lost-write", f"acknowledged at revision {op.revision}, where the log holds {there}: "
                       f"{op.describe()}")
    else:
        if any(op.deletes for op in unknown):
            raise ValueError("a delete of unknown outcome can only be placed with the log: pass log=")
        for op in acked:
            for key in op.deletes:
                timelines.add(key, op.revision, None)
            for key, value in op.puts.items():
                timelines.add(key, op.revision, Version(value, op.revision))
            applied.setdefault(id(op), op.revision)
        # Unknown-outcome puts that some read saw took effect at the revision the read reports.
        for op in served:
            for key, seen in op.observed.items():
                if seen is None:
                    continue
                writer = owner.get((key, seen.value))
                if writer is not None and not writer.ok and id(writer) not in applied:
                    applied[id(writer)] = seen.mod_revision
                    for k, v in writer.puts.items():
                        timelines.add(k, seen.mod_revision, Version(v, seen.mod_revision))
        head = max(applied.values(), default=first_revision - 1)

    # Points on the revision axis; the latest point among requests completed before time t.
    points: dict[int, float] = {}
    for op in acked:
        points[id(op)] = op.revision
    for op in served:
        points[id(op)] = op.revision + 0.5
    finished = sorted((op for op in ops if op.ok), key=lambda o: o.complete)
    finish_times = [op.complete for op in finished]
    running_max: list[tuple[float, Operation | None]] = []
    best: tuple[float, Operation | None] = (-math.inf, None)
    for op in finished:
        if points[id(op)] > best[0]:
            best = (points[id(op)], op)
        running_max.append(best)

    def latest_before(t: float) -> tuple[float, Operation | None]:
        i = bisect.bisect_left(finish_times, t)  # completed strictly before t
        return running_max[i - 1] if i else (-math.inf, None)

    # Deletes in the log that no acknowledged request claims: deletes of unknown outcome.
    for revision, keys in orphan_deletes:
        candidates = [op for op in unknown if op.deletes and not op.puts and id(op) not in applied
                      and set(keys) <= set(op.deletes) and latest_before(op.invoke)[0] < revision]
        if not candidates:
            report("phantom-write", f"revision {revision} deletes {keys!r}, and no request that may have done it "
                   "is unanswered (or all were invoked after a request at a later point completed)")
            continue
        writer = min(candidates, key=lambda o: o.invoke)
        applied[id(writer)] = revision
        _check_effects(writer, revision, [Event(revision, DELETE, k) for k in keys], timelines, report)

    for op in unknown:
        if id(op) in applied:
            points[id(op)] = applied[id(op)]

    # Sequential results.
    for op in ops:
        if id(op) not in applied or op.guard is None:
            continue
        revision = applied[id(op)]
        for key, expected in op.guard.items():
            actual = timelines.mod_at(key, revision - 1)
            if actual != expected:
                report("cas", f"wrote revision {revision} although mod_revision({key!r}) was {actual} at "
                       f"revision {revision - 1}, not {expected}: {op.describe()}")
    for op in served:
        h = op.revision
        if log is not None and gapless and h > head:  # (a filtered log's head says nothing of other keys)
            report("read", f"served at revision {h}, beyond the history's head {head}: {op.describe()}")
        for key, seen in op.observed.items():
            expected = timelines.at(key, h)
            if _same(seen, expected):
                continue
            if seen is not None and (key, seen.value) not in owner:
                report("never-written", f"read a value nobody wrote ({_describe(seen)}; the model holds "
                       f"{_describe(expected)} at revision {h}): {op.describe()}")
            elif seen is not None and seen.mod_revision > h:
                report("read", f"read {_describe(seen)}, written after its header revision {h}: {op.describe()}")
            else:
                report("read", f"read {_describe(seen)} but the latest write of {key!r} at or before revision {h} "
                       f"is {_describe(expected)}: {op.describe()}")
        if op.guard is not None and all(timelines.mod_at(k, h) == m for k, m in op.guard.items()):
            report("cas", f"reported its compare failed at revision {h}, where it held: {op.describe()}")

    # Real time: nothing that completed before a request was invoked may lie after it.
    for op in sorted((o for o in ops if id(o) in points), key=lambda o: o.invoke):
        latest, earlier = latest_before(op.invoke)
        if latest > points[id(op)]:
            report("real-time", f"{earlier.describe()} completed before {op.describe()} was invoked, but is "
                   f"ordered after it (point {_point(latest)} > {_point(points[id(op)])})")

    return Report(violations, len(ops), len(acked), len(served), len(unknown),
                  sum(1 for op in unknown if id(op) in applied), head)


def _point(p: float) -> str:
    return str(int(p)) if p == int(p) else f"{int(p)}+"


def _check_effects(writer: Operation, revision: int, events: list[Event], timelines: _Timelines, report) -> None:
    """The events of a revision are exactly what its request asked for."""
    puts = {e.key: e.value for e in events if e.type == PUT}
    deleted = {e.key for e in events if e.type == DELETE}
    if puts != dict(writer.puts):
        report("log", f"revision {revision} puts {puts!r}, the request put {dict(writer.puts)!r}: {writer.describe()}")
    if not deleted <= set(writer.deletes):
        report("log", f"revision {revision} deletes {sorted(deleted)!r}, not asked by {writer.describe()}")
    for key in writer.deletes:
        if key not in deleted and timelines.at(key, revision - 1) is not None:
            report("log", f"revision {revision} leaves {key!r} live, which its request deleted: {writer.describe()}")


def _replay_log(log: list[Event], first_revision: int, gapless: bool, timelines: _Timelines, report) -> int:
    """Check the log's own consistency (gaps, bookkeeping) and fill the timelines; returns its head."""
    revisions = sorted({e.revision for e in log})
    head = revisions[-1] if revisions else first_revision - 1
    if revisions and revisions[0] < first_revision:
        report("log", f"the log holds revision {revisions[0]}, before the first revision {first_revision}")
    if gapless:
        present = set(revisions)
        missing = [r for r in range(first_revision, head + 1) if r not in present]
        if missing:
            report("gap", f"{len(missing)} revisions missing between {first_revision} and head {head}: "
                   f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")
    live: dict[bytes, Version] = {}
    for event in sorted(log, key=lambda e: e.revision):  # stable: a revision's events keep their order
        previous = live.get(event.key)
        if event.type == DELETE:
            if previous is None:
                report("log", f"{event.describe()} deletes a key that is not live")
            live.pop(event.key, None)
        elif event.type == PUT:
            create = previous.create_revision if previous else event.revision
            version = (previous.version or 0) + 1 if previous else 1
            if (event.create_revision is not None and event.create_revision != create) or \
                    (event.version is not None and event.version != version):
                report("log", f"{event.describe()} has create_revision {event.create_revision} and version "
                       f"{event.version}; after {_describe(previous)} they must be {create} and {version}")
            live[event.key] = event.record()
        else:
            raise ValueError(f"unknown event type {event.type!r}")
        timelines.add(event.key, event.revision, event.record())
    # Two events of one key in one revision.
    seen: set[tuple[int, bytes]] = set()
    for event in log:
        if (event.revision, event.key) in seen:
            report("log", f"revision {event.revision} changes {event.key!r} twice")
        seen.add((event.revision, event.key))
    return head
