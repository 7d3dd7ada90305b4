"""1,000 watchers on 20 streams under 4 concurrent writers: every watcher receives exactly the
history of its range from its start revision, in order, nothing lost, nothing repeated.

* Key space: 10 groups of 20 keys under ``stress/``. Watchers: the whole prefix, a group prefix,
  a key range inside a group, or a single key; some with prev_kv, some with a NOPUT or NODELETE
  filter; some from history (start_revision in the past), the others from "now". Most are created
  before the writers start, 100 more (again partly from history) while they write.
* Writers: a prefill, then 4 concurrent writers doing puts, deletes, range deletes and multi-key
  Txns (puts and deletes) for a fixed number of operations. Every answer is kept.
* The expected history is rebuilt from the writers' acknowledged answers alone: every operation
  that made a revision has its revision in its answer; the revisions must be exactly the
  contiguous range from the first to the last (nothing else writes on this server), and replaying
  the operations in revision order through a model of the key space gives each revision's events
  (with create_revision, version, and the previous value for prev_kv), checked against the
  answers' deleted counts on the way.
* A watcher's expected events are the model's events of its range from its start revision (its
  start_revision, or the created answer's header revision + 1 for a watcher from "now": etcd
  starts such a watcher there). Received and expected are compared exactly, field by field, and
  each response is checked for etcd's per-response guarantees (one revision never split).
* One stream (on its own connection) is a deliberately slow consumer: it sends its creates and
  then reads nothing until every other watcher has received everything. The others must complete
  meanwhile (a slow client does not hold them back); then the slow one must catch up completely.
* The server is this test's own: once every stream is cancelled it is stopped, and its log must
  not report a task destroyed while pending (work a stream dropped without cancelling it).
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import grpc
import pytest

from cosmos_etcd_shim.proto import kv_pb2
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from tests.e2e.conftest import Subject
from tests.harness.differential import prefix_end
from tests.harness.watch_streams import check_atomic

PREFIX = b"stress/"
GROUPS, KEYS_PER_GROUP = 10, 20
STREAMS = 20
SLOW_STREAM = STREAMS - 1
EARLY_WATCHERS, LATE_WATCHERS = 900, 100
WRITERS, OPS_PER_WRITER, PREFILL_OPS = 4, 400, 200
DEADLINE_S = 45

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
# The slow consumer's connection keeps HTTP/2's default 64 KiB stream window (no BDP growth), so that
# what it does not read backs up into the server instead of the client's transport buffers.
SLOW_CHANNEL_OPTIONS = CHANNEL_OPTIONS + [("grpc.http2.bdp_probe", 0)]
HEAVY_SLOW_WATCHERS = 3  # whole-prefix prev_kv watchers on the slow stream: megabytes it does not read


def key(group: int, n: int) -> bytes:
    return PREFIX + b"g%d/k%02d" % (group, n)


# ------------------------------------------------------------------------------------------------
# the writers and the model of what they did
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Op:
    """One write request and its answer. `steps`: ("put", key, value) or ("delete", key, end)."""

    steps: list
    response: object = None

    def revision(self) -> int | None:
        """The revision this operation made, or None if it changed nothing."""
        r = self.response
        if isinstance(r, pb.PutResponse):
            return r.header.revision
        if isinstance(r, pb.DeleteRangeResponse):
            return r.header.revision if r.deleted else None
        changed = any(step[0] == "put" for step in self.steps) or any(
            resp.response_delete_range.deleted for resp in r.responses)
        return r.header.revision if changed else None

    def deleted_counts(self) -> list[int]:
        r = self.response
        if isinstance(r, pb.DeleteRangeResponse):
            return [r.deleted]
        if isinstance(r, pb.TxnResponse):
            return [resp.response_delete_range.deleted for resp in r.responses
                    if resp.WhichOneof("response") == "response_delete_range"]
        return []


def random_op(rng: random.Random, tag: bytes) -> Op:
    roll = rng.random()
    any_key = lambda: key(rng.randrange(GROUPS), rng.randrange(KEYS_PER_GROUP))  # noqa: E731
    if roll < 0.55:
        return Op([("put", any_key(), tag + b"." * rng.randrange(100, 900))])
    if roll < 0.75:
        return Op([("delete", any_key(), b"")])
    if roll < 0.78:  # a range delete: every key of a group between two keys
        g, a = rng.randrange(GROUPS), rng.randrange(KEYS_PER_GROUP - 5)
        return Op([("delete", key(g, a), key(g, a + rng.randrange(2, 6)))])
    keys = rng.sample([key(g, n) for g in range(GROUPS) for n in range(KEYS_PER_GROUP)], rng.randrange(2, 5))
    return Op([("put", k, tag + b"/%d" % i) if rng.random() < 0.7 else ("delete", k, b"")
               for i, k in enumerate(keys)])


async def execute(kv, op: Op) -> None:
    if len(op.steps) == 1 and op.steps[0][0] == "put":
        _, k, v = op.steps[0]
        op.response = await kv.Put(pb.PutRequest(key=k, value=v), timeout=30)
    elif len(op.steps) == 1:
        _, k, end = op.steps[0]
        op.response = await kv.DeleteRange(pb.DeleteRangeRequest(key=k, range_end=end), timeout=30)
    else:
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=v)) if kind == "put"
               else pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k))
               for kind, k, v in op.steps]
        op.response = await kv.Txn(pb.TxnRequest(success=ops), timeout=30)
        assert op.response.succeeded


@dataclasses.dataclass(frozen=True)
class Ev:
    """An event as compared: PUT/DELETE, the kv's fields, and the previous kv's (or None)."""

    type: int
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    prev: tuple | None = None

    @classmethod
    def of(cls, e) -> "Ev":
        prev = None
        if e.HasField("prev_kv"):
            p = e.prev_kv
            prev = (p.key, p.value, p.create_revision, p.mod_revision, p.version)
        kv = e.kv
        assert kv.lease == 0
        return cls(e.type, kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, prev)


def build_history(ops: list[Op]) -> tuple[int, int, dict[int, list[tuple[Ev, tuple | None]]]]:
    """(first revision, last revision, revision -> [(event, previous kv)]) from the answers."""
    made = sorted(((op.revision(), op) for op in ops if op.revision() is not None), key=lambda x: x[0])
    revisions = [rev for rev, _ in made]
    first, last = revisions[0], revisions[-1]
    assert revisions == list(range(first, last + 1)), \
        "acknowledged revisions are not one contiguous sequence (a revision used twice, or a gap): " \
        f"{len(revisions)} revisions from {first} to {last}"
    state: dict[bytes, tuple] = {}  # key -> (value, create_revision, mod_revision, version)
    history: dict[int, list] = {}
    for rev, op in made:
        events = []
        counts = iter(op.deleted_counts())
        for kind, k, arg in op.steps:
            if kind == "put":
                old = state.get(k)
                new = (arg, old[1] if old else rev, rev, old[3] + 1 if old else 1)
                events.append((Ev(PUT, k, arg, new[1], rev, new[3]), (k, *old) if old else None))
                state[k] = new
            else:
                end = arg or k + b"\x00"
                doomed = sorted(x for x in state if k <= x < end)
                assert next(counts) == len(doomed), f"revision {rev}: the server deleted another number of keys " \
                                                    f"than the model holds ({doomed})"
                for x in doomed:
                    events.append((Ev(DELETE, x, b"", 0, rev, 0), (x, *state.pop(x))))
        history[rev] = events
    return first, last, history


# ------------------------------------------------------------------------------------------------
# the watchers
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Watcher:
    id: int  # client-chosen, unique across the test
    stream: int
    key: bytes
    range_end: bytes  # b"": the single key
    start_revision: int  # 0: from "now"
    prev_kv: bool
    filters: tuple = ()
    created_revision: int = 0
    responses: list = dataclasses.field(default_factory=list)
    received: int = 0

    def request(self) -> pb.WatchRequest:
        return pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=self.key, range_end=self.range_end, start_revision=self.start_revision, prev_kv=self.prev_kv,
            filters=list(self.filters), watch_id=self.id))

    def matches(self, k: bytes) -> bool:
        return k == self.key if not self.range_end else self.key <= k < self.range_end

    def expected(self, history: dict[int, list], last: int) -> list[Ev]:
        start = self.start_revision or self.created_revision + 1
        out = []
        for rev in range(start, last + 1):
            for ev, prev in history.get(rev, ()):
                if not self.matches(ev.key):
                    continue
                if (ev.type == PUT and pb.WatchCreateRequest.NOPUT in self.filters) or \
                        (ev.type == DELETE and pb.WatchCreateRequest.NODELETE in self.filters):
                    continue
                out.append(dataclasses.replace(ev, prev=prev) if self.prev_kv and prev else ev)
        return out

    def events(self) -> list[Ev]:
        return [Ev.of(e) for r in self.responses for e in r.events]


def make_watchers(rng: random.Random, first_id: int, count: int, history_from: int, history_to: int) -> list[Watcher]:
    watchers = []
    for n in range(count):
        i = first_id + n
        g = rng.randrange(GROUPS)
        roll = rng.random()
        if roll < 0.02:
            k, end = PREFIX, prefix_end(PREFIX)
        elif roll < 0.2:
            k = PREFIX + b"g%d/" % g
            end = prefix_end(k)
        elif roll < 0.3:
            a = rng.randrange(KEYS_PER_GROUP - 4)
            k, end = key(g, a), key(g, a + rng.randrange(2, 5))
        else:
            k, end = key(g, rng.randrange(KEYS_PER_GROUP)), b""
        start = rng.randint(history_from, history_to) if rng.random() < 0.2 else 0
        roll = rng.random()
        filters = (pb.WatchCreateRequest.NOPUT,) if roll < 0.05 else (pb.WatchCreateRequest.NODELETE,) if roll < 0.1 else ()
        watchers.append(Watcher(id=i, stream=i % STREAMS, key=k, range_end=end, start_revision=start,
                                prev_kv=rng.random() < 0.25, filters=filters))
    return watchers


class Stream:
    """One Watch stream and its watchers; a reader task unless it is the slow consumer."""

    def __init__(self, channel: grpc.aio.Channel, index: int):
        self.index = index
        self.call = rpc_pb2_grpc.WatchStub(channel).Watch()
        self.watchers: dict[int, Watcher] = {}
        self.created = 0
        self.reader: asyncio.Task | None = None
        self.responses_read = 0
        self.bytes_read = 0

    async def create(self, watchers: list[Watcher]) -> None:
        for w in watchers:
            self.watchers[w.id] = w
            await self.call.write(w.request())

    def start_reading(self) -> None:
        self.reader = asyncio.create_task(self._read(), name=f"watch-stream-{self.index}")

    async def _read(self) -> None:
        while True:
            r = await self.call.read()
            if r is grpc.aio.EOF:
                return
            self.responses_read += 1
            self.bytes_read += r.ByteSize()
            w = self.watchers.get(r.watch_id)
            assert w is not None, f"stream {self.index}: response for unknown watch id {r}"
            if r.created:
                assert not r.canceled, f"watch {r.watch_id} refused: {r}"
                w.created_revision = r.header.revision
                self.created += 1
            elif r.canceled:
                raise AssertionError(f"stream {self.index}: watch {r.watch_id} cancelled by the server: {r}")
            elif r.events:
                w.responses.append(r)
                w.received += len(r.events)


async def wait_until(condition, timeout: float, what: str) -> float:
    """Poll `condition` until it holds; fail after `timeout`. Returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def verify(watchers: list[Watcher], history: dict, last: int) -> None:
    problems = []
    for w in watchers:
        expected = w.expected(history, last)
        got = w.events()
        check_atomic(w.responses, label=f"watch {w.id}")
        if got != expected:
            i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            problems.append(f"watch {w.id} (stream {w.stream}, key {w.key!r}..{w.range_end!r}, start "
                            f"{w.start_revision or w.created_revision + 1}, filters {w.filters}): "
                            f"{len(got)} events, expected {len(expected)}; first difference at {i}: "
                            f"got {got[i] if i < len(got) else None}, expected {expected[i] if i < len(expected) else None}")
    assert not problems, f"{len(problems)} watcher(s) did not receive exactly their history:\n  " + \
        "\n  ".join(problems[:20])


def expected_total(watchers, history, last) -> dict[int, int]:
    return {w.id: len(w.expected(history, last)) for w in watchers}


async def await_complete(watchers, history, last, what: str) -> tuple[float, int]:
    """Wait until every watcher has as many events as its history holds, then compare exactly.
    On a timeout, report what differs. Returns (seconds waited, events expected)."""
    want = expected_total(watchers, history, last)
    try:
        took = await wait_until(lambda: all(w.received >= want[w.id] for w in watchers), DEADLINE_S, what)
    except AssertionError:
        verify(watchers, history, last)
        raise
    verify(watchers, history, last)
    return took, sum(want.values())


@pytest.fixture
def subject(tmp_path):
    subject = Subject(tmp_path)
    subject.start()
    yield subject
    subject.stop()


@pytest.mark.timeout(240)
async def test_thousand_watchers_under_concurrent_writers(subject):
    started = time.monotonic()
    rng = random.Random(20261127)
    endpoint = subject.server.endpoint
    write_channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    fast_channels = [grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) for _ in range(2)]
    slow_channel = grpc.aio.insecure_channel(endpoint, options=SLOW_CHANNEL_OPTIONS)
    streams: list[Stream] = []
    try:
        kv = rpc_pb2_grpc.KVStub(write_channel)
        ops: list[Op] = []

        # history before any watcher exists
        for i in range(PREFILL_OPS):
            op = random_op(rng, b"prefill-%d" % i)
            await execute(kv, op)
            ops.append(op)
        history_from = min(op.revision() for op in ops if op.revision())
        now = (await kv.Range(pb.RangeRequest(key=PREFIX, limit=1), timeout=10)).header.revision

        streams = [Stream(slow_channel if i == SLOW_STREAM else fast_channels[i % 2], i) for i in range(STREAMS)]
        for s in streams:
            if s.index != SLOW_STREAM:
                s.start_reading()
        early = make_watchers(rng, 1, EARLY_WATCHERS, history_from, now)
        for w in [w for w in early if w.stream == SLOW_STREAM][:HEAVY_SLOW_WATCHERS]:
            w.key, w.range_end, w.prev_kv, w.filters, w.start_revision = PREFIX, prefix_end(PREFIX), True, (), 0
        for s in streams:
            await s.create([w for w in early if w.stream == s.index])
        fast = [s for s in streams if s.index != SLOW_STREAM]
        await wait_until(lambda: all(s.created == len(s.watchers) for s in fast), 30, "every early watch created")

        # four writers; more watchers join halfway, partly from history
        acked = 0
        halfway = asyncio.Event()

        async def writer(n: int) -> None:
            nonlocal acked
            wrng = random.Random(n)
            for i in range(OPS_PER_WRITER):
                op = random_op(wrng, b"w%d-%d" % (n, i))
                await execute(kv, op)
                ops.append(op)
                acked += 1
                if acked >= WRITERS * OPS_PER_WRITER // 2:
                    halfway.set()

        writers = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
        await halfway.wait()
        now = (await kv.Range(pb.RangeRequest(key=PREFIX, limit=1), timeout=10)).header.revision
        late = make_watchers(rng, 1 + EARLY_WATCHERS, LATE_WATCHERS, history_from, now)
        for s in streams:
            await s.create([w for w in late if w.stream == s.index])
        await asyncio.gather(*writers)
        writes_done = time.monotonic()
        await wait_until(lambda: all(s.created == len(s.watchers) for s in fast), 30, "every late watch created")

        first, last, history = build_history(ops)
        assert first == history_from and last - first + 1 >= 0.8 * (PREFILL_OPS + WRITERS * OPS_PER_WRITER)

        # every watcher but the slow stream's receives everything while the slow one reads nothing
        fast_watchers = [w for s in fast for w in s.watchers.values()]
        took, total_fast = await await_complete(fast_watchers, history, last, "every fast watcher received its history")
        slow = streams[SLOW_STREAM]
        assert slow.responses_read == 0

        # now the slow consumer reads: everything is there, complete
        slow_started = time.monotonic()
        slow.start_reading()
        await wait_until(lambda: slow.created == len(slow.watchers), 30, "the slow stream's created answers")
        slow_watchers = list(slow.watchers.values())
        _, total_slow = await await_complete(slow_watchers, history, last, "the slow stream caught up")
        slow_took = time.monotonic() - slow_started
        assert len(fast_watchers) + len(slow_watchers) == EARLY_WATCHERS + LATE_WATCHERS
        print(f"\n{len(ops)} writes ({last - first + 1} revisions), {total_fast + total_slow} events "
              f"to {EARLY_WATCHERS + LATE_WATCHERS} watchers; fast watchers complete {took:.1f}s after the last "
              f"write, slow stream caught up in {slow_took:.1f}s ({slow.responses_read} responses, "
              f"{slow.bytes_read / 1e6:.1f} MB); "
              f"total {time.monotonic() - started:.1f}s (writes took {writes_done - started:.1f}s)")
    finally:
        for s in streams:
            s.call.cancel()
            if s.reader is not None:
                s.reader.cancel()
        for channel in (write_channel, slow_channel, *fast_channels):
            await channel.close()
    assert subject.server.stop() == 0
    leaked = [line for line in subject.server.log().splitlines() if "destroyed but it is pending" in line]
    assert not leaked, f"{len(leaked)} tasks dropped while pending: {leaked[:3]}"
