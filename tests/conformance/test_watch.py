"""Watch, compared event by event with a real etcd.

Every scenario opens one Watch stream on each server, sends the same create/cancel/progress
requests and the same writes (through the differential `pair`), and compares:

* created and canceled answers whole (watch_id, created, canceled, cancel_reason, compact_revision,
  and the header revision, which etcd sets deterministically to the current revision there; a
  watch cancelled for compaction carries no header revision at all);
* the flattened event sequence of every watcher (type, kv, prev_kv; revisions relative to the
  scenario base). How a server groups revisions into responses is its own business, so responses
  are not compared one to one; but on each side separately the per-response guarantees are
  checked: events in revision order, one revision never split across responses unless the
  watcher asked for fragments, header revision at or above the events' revisions.

Writes are acknowledged before the next one is sent and every watcher is created (its created
answer received) before the writes it must see, so both servers see the same sequence. Waiting is
always for an awaited response with a deadline, never a fixed sleep.

Servers with other flags (a 1 s progress-notify interval, a small --max-request-bytes) are started
for this module only: `tuned_pair`.
"""
from __future__ import annotations

import difflib
import os

import pytest
from google.protobuf import text_format

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness import backends, processes
from tests.harness.backends import BACKENDS
from tests.harness.differential import Connection, Mismatch, normalise_response, op_delete, op_put, prefix_end
from tests.harness.watch_streams import WatchStream, check_atomic, is_progress

NOPUT = pb.WatchCreateRequest.NOPUT
NODELETE = pb.WatchCreateRequest.NODELETE
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ORACLE_VS_ORACLE = os.environ.get("COSMOS_ETCD_TEST_ORACLE_VS_ORACLE", "") == "1"

# The tuned servers: a progress notification every second, and a small request limit so that a
# watch response can exceed it (etcd fragments a response once it reaches --max-request-bytes plus
# its 512 KiB gRPC allowance).
PROGRESS_INTERVAL_S = 1
MAX_REQUEST_BYTES = 64 * 1024
ETCD_FRAGMENT_THRESHOLD = MAX_REQUEST_BYTES + 512 * 1024


def _text(msg) -> str:
    """The message as text, long values shortened (a megabyte of value helps no diff)."""
    shown = type(msg)()
    shown.CopyFrom(msg)
    for event in getattr(shown, "events", ()):
        for kv in (event.kv, event.prev_kv):
            if len(kv.value) > 40:
                kv.value = kv.value[:20] + b"...[%d bytes]" % len(kv.value)
    return text_format.MessageToString(shown)


class DiffWatch:
    """The same Watch stream on both servers of a `pair`, compared answer by answer."""

    def __init__(self, pair):
        self.pair = pair
        self.streams = {side.name: WatchStream(side.channel, side.name) for side in pair.sides}

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()

    def __enter__(self) -> "DiffWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stream(self, side: str) -> WatchStream:
        return self.streams[side]

    # -- comparison -------------------------------------------------------------------------------

    def _same(self, what: str, raw: dict):
        """Normalise each side's message (revisions relative to its base) and require equality."""
        normalised = {name: normalise_response(msg, self.pair.base[name]) for name, msg in raw.items()}
        (a, (ma, za)), (b, (mb, zb)) = normalised.items()
        if ma != mb or za != zb:
            diff = "\n".join(difflib.unified_diff(_text(ma).splitlines(), _text(mb).splitlines(), a, b,
                                                  lineterm="", n=6))
            extra = ""
            if za != zb:
                extra = f"\nrevision fields non-zero only on {a}: {sorted(za - zb)}; only on {b}: {sorted(zb - za)}"
            raise Mismatch(f"{what}: {a} and {b} differ (revisions relative to the scenario base):\n{diff}{extra}\n"
                           + "\n".join(f"--- {n} stream:\n{s.dump()}" for n, s in self.streams.items()))
        return ma

    # -- requests ---------------------------------------------------------------------------------

    def create(self, **fields) -> pb.WatchResponse:
        """Create the same watcher on both streams; their created answers must match."""
        template = pb.WatchCreateRequest(**fields)
        for side in self.pair.sides:
            self.streams[side.name].send_create(self.pair.request_for(side, template))
        raw = {name: stream.next_created() for name, stream in self.streams.items()}
        return self._same(f"created answer to {_text(template)!r}", raw)

    def cancel(self, watch_id: int) -> pb.WatchResponse:
        for stream in self.streams.values():
            stream.cancel(watch_id)
        return self.responses(watch_id, lambda r: r.canceled, "canceled answer")[-1]

    def request_progress(self) -> None:
        for stream in self.streams.values():
            stream.request_progress()

    def responses(self, watch_id: int, last, what: str, timeout: float = 15.0) -> list[pb.WatchResponse]:
        """Wait on both sides until `last(response)` holds for a response of `watch_id`; compare
        every response of that watcher so far, one to one (for control answers, not events)."""
        raw = {}
        for name, stream in self.streams.items():
            stream.wait_for(lambda: any(last(r) for r in stream.by_id.get(watch_id, [])), timeout,
                            f"{what} for watch {watch_id}")
            raw[name] = list(stream.by_id[watch_id])
        (a, ra), (b, rb) = raw.items()
        assert len(ra) == len(rb), f"watch {watch_id}: {a} sent {len(ra)} responses, {b} {len(rb)}:\n" \
                                   f"--- {a}:\n{self.streams[a].dump()}\n--- {b}:\n{self.streams[b].dump()}"
        return [self._same(f"response {i} of watch {watch_id}", {a: x, b: y}) for i, (x, y) in enumerate(zip(ra, rb))]

    def events(self, watch_id: int, through: int, *, fragments: bool = False, timeout: float = 15.0) -> list:
        """Wait until both sides delivered `watch_id`'s events up to the relative revision
        `through`; check each side's responses; compare the flattened event sequences."""
        raw = {}
        for side in self.pair.sides:
            stream = self.streams[side.name]
            stream.wait_events_through(watch_id, self.pair.base[side.name] + through, timeout)
            check_atomic(stream.by_id[watch_id], fragments_allowed=fragments, label=f"{side.name} watch {watch_id}")
            raw[side.name] = pb.WatchResponse(events=stream.events(watch_id))
        return list(self._same(f"events of watch {watch_id} through revision {through}", raw).events)


@pytest.fixture
def watch(pair):
    with DiffWatch(pair) as w:
        yield w


def kinds(events) -> list[tuple[str, bytes, int]]:
    """(type, key, relative mod revision) of each normalised event: readable assertions."""
    return [(pb_event_type(e), e.kv.key, e.kv.mod_revision) for e in events]


def pb_event_type(e) -> str:
    return "DELETE" if e.type == e.DELETE else "PUT"


# ------------------------------------------------------------------------------------------------
# what a watcher sees
# ------------------------------------------------------------------------------------------------

def test_watch_one_key(pair, watch):
    a = pair.k(b"a")
    created = watch.create(key=a)
    assert created.created and created.watch_id == 0 and created.header.revision == 0
    pair.put(a, b"1")  # 1
    pair.put(pair.k(b"b"), b"x")  # 2 (another key)
    pair.put(a + b"\x00", b"x")  # 3 (a key that only starts with a)
    pair.put(a, b"2")  # 4
    pair.delete(a)  # 5
    pair.delete(a)  # no revision: nothing was deleted
    pair.txn(success=[op_put(a, b"3"), op_put(pair.k(b"c"), b"c")])  # 6
    events = watch.events(0, through=6)
    assert kinds(events) == [("PUT", a, 1), ("PUT", a, 4), ("DELETE", a, 5), ("PUT", a, 6)]
    assert [e.kv.version for e in events] == [1, 2, 0, 1]


def test_a_client_that_closed_its_side_still_gets_events(pair):
    """A client whose request stream ends after its create (half-closed) keeps receiving events:
    etcd's receive loop ends on EOF without ending the stream (the shim used to end it)."""
    a = pair.k(b"a")
    calls = {side.name: side.stub("Watch").Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=a))]),
                                                  timeout=15)
             for side in pair.sides}
    try:
        for name, call in calls.items():
            assert next(call).created, name
        pair.put(a, b"1")
        pair.put(a, b"2")
        seen = {}
        for name, call in calls.items():
            events = []
            while len(events) < 2:
                events.extend(next(call).events)
            seen[name] = [(e.kv.value, e.kv.mod_revision - pair.base[name]) for e in events]
        assert seen["etcd"] == seen["shim"] == [(b"1", 1), (b"2", 2)]
    finally:
        for call in calls.values():
            call.cancel()


def test_watch_range_end(pair, watch):
    created = watch.create(key=pair.k(b"b"), range_end=pair.k(b"d"))
    assert created.header.revision == 0
    for i, name in enumerate([b"a", b"b", b"bz", b"c", b"d", b"e", b"c"]):
        pair.put(pair.k(name), b"v%d" % i)  # 1..7
    pair.delete(pair.k(b"a"), range_end=pair.k(b"z"))  # 8: deletes a, b, bz, c, d, e in key order
    events = watch.events(0, through=8)
    assert kinds(events) == [
        ("PUT", pair.k(b"b"), 2), ("PUT", pair.k(b"bz"), 3), ("PUT", pair.k(b"c"), 4), ("PUT", pair.k(b"c"), 7),
        ("DELETE", pair.k(b"b"), 8), ("DELETE", pair.k(b"bz"), 8), ("DELETE", pair.k(b"c"), 8),
    ]


def test_watch_prefix(pair, watch):
    prefix = pair.k(b"registry/pods/")
    watch.create(key=prefix, range_end=prefix_end(prefix))
    pair.put(pair.k(b"registry/pods/ns/a"), b"1")  # 1
    pair.put(pair.k(b"registry/pods"), b"not in the prefix")  # 2
    pair.put(pair.k(b"registry/podsx/a"), b"not in the prefix")  # 3
    pair.put(pair.k(b"registry/pods/ns/b"), b"2")  # 4
    pair.delete(pair.k(b"registry/pods/ns/a"))  # 5
    pair.put(pair.k(b"registry/pods/\xff"), b"3")  # 6
    events = watch.events(0, through=6)
    assert [e.kv.mod_revision for e in events] == [1, 4, 5, 6]


def test_watch_from_key(pair, watch):
    """range_end b"\\x00": every key >= key. Later scenarios' keys sort above this one's, but none
    is written while this scenario runs."""
    watch.create(key=pair.k(b"m"), range_end=b"\x00")
    pair.put(pair.k(b"a"), b"below")  # 1
    pair.put(pair.k(b"m"), b"at")  # 2
    pair.put(pair.k(b"zz"), b"above")  # 3
    pair.put(pair.k(b"m\x00"), b"just above")  # 4
    pair.delete(pair.k(b"m"))  # 5
    events = watch.events(0, through=5)
    assert [e.kv.mod_revision for e in events] == [2, 3, 4, 5]


def test_watch_all_keys_from_an_empty_key(pair, watch):
    """key b"\\x00" with range_end b"\\x00": the whole keyspace (what `etcdctl watch --prefix ""` sends)."""
    watch.create(key=b"\x00", range_end=b"\x00")
    pair.put(pair.k(b"a"), b"1")  # 1
    pair.delete(pair.k(b"a"))  # 2
    events = watch.events(0, through=2)
    assert kinds(events) == [("PUT", pair.k(b"a"), 1), ("DELETE", pair.k(b"a"), 2)]


def test_history_replay_then_live(pair, watch):
    a, b = pair.k(b"a"), pair.k(b"b")
    pair.put(a, b"1")  # 1
    pair.put(b, b"1")  # 2
    pair.put(a, b"2")  # 3
    pair.delete(b)  # 4
    pair.txn(success=[op_put(a, b"3"), op_put(b, b"2")])  # 5
    key = watch.create(key=a, start_revision=pair.rev(2))
    assert key.header.revision == 5
    prefix = watch.create(key=pair.k(b""), range_end=prefix_end(pair.k(b"")), start_revision=pair.rev(1),
                          prev_kv=True)
    everything = watch.create(key=pair.k(b""), range_end=prefix_end(pair.k(b"")), start_revision=pair.rev(5))
    # history first, before anything new is written
    assert kinds(watch.events(key.watch_id, through=5)) == [("PUT", a, 3), ("PUT", a, 5)]
    watch.events(prefix.watch_id, through=5, fragments=False)
    assert len(watch.events(everything.watch_id, through=5)) == 2
    # then live
    pair.put(a, b"4")  # 6
    pair.delete(pair.k(b""), range_end=prefix_end(pair.k(b"")))  # 7
    assert kinds(watch.events(key.watch_id, through=7)) == [
        ("PUT", a, 3), ("PUT", a, 5), ("PUT", a, 6), ("DELETE", a, 7)]
    events = watch.events(prefix.watch_id, through=7)
    assert [e.kv.mod_revision for e in events] == [1, 2, 3, 4, 5, 5, 6, 7, 7]
    assert [e.prev_kv.value for e in events] == [b"", b"", b"1", b"1", b"2", b"", b"3", b"4", b"2"]
    assert [e.kv.mod_revision for e in watch.events(everything.watch_id, through=7)] == [5, 5, 6, 7, 7]


def test_history_replay_while_writes_continue(pair, watch):
    """A watcher created from history while more revisions commit: it must join the live stream
    without a gap or a repeat."""
    a = pair.k(b"a")
    for i in range(60):
        pair.put(a, b"%d" % i)  # 1..60
    created = watch.create(key=a, start_revision=pair.rev(1), prev_kv=True)
    for i in range(60, 120):
        pair.put(a, b"%d" % i)  # 61..120
    events = watch.events(created.watch_id, through=120)
    assert [e.kv.mod_revision for e in events] == list(range(1, 121))
    assert [e.kv.version for e in events] == list(range(1, 121))


def test_start_revision_in_the_future(pair, watch):
    a = pair.k(b"a")
    pair.put(a, b"1")  # 1
    created = watch.create(key=a, start_revision=pair.rev(4))
    assert created.header.revision == 1
    for i in range(2, 7):
        pair.put(a, b"%d" % i)  # 2..6
    assert [e.kv.mod_revision for e in watch.events(0, through=6)] == [4, 5, 6]


def test_start_revision_below_the_compact_revision(pair, watch):
    a = pair.k(b"a")
    for i in range(1, 6):
        pair.put(a, b"%d" % i)  # 1..5
    pair.compact(4)
    created = watch.create(key=a, start_revision=pair.rev(2), watch_id=7)
    assert created.watch_id == 7 and created.header.revision == 5
    answers = watch.responses(7, lambda r: r.canceled, "canceled answer")
    assert len(answers) == 2
    canceled = answers[1]
    # etcd: canceled with compact_revision, no cancel_reason, and no header revision
    assert canceled.canceled and not canceled.created and canceled.compact_revision == 4
    assert canceled.header.revision == 0
    for side in pair.sides:
        assert watch.stream(side.name).by_id[7][1].header.revision == 0
    # at the compact revision itself: history from there on
    at = watch.create(key=a, start_revision=pair.rev(4))
    pair.put(a, b"6")  # 6
    assert [e.kv.mod_revision for e in watch.events(at.watch_id, through=6)] == [4, 5, 6]


def test_watch_id_of_a_compacted_watch_stays_taken(pair, watch):
    """etcd keeps the id of a watcher cancelled for compaction registered on its stream: creating
    that id again is a duplicate."""
    a = pair.k(b"a")
    for i in range(1, 4):
        pair.put(a, b"%d" % i)  # 1..3
    pair.compact(3)
    watch.create(key=a, start_revision=pair.rev(1), watch_id=5)
    watch.responses(5, lambda r: r.canceled, "canceled answer")
    again = watch.create(key=a, watch_id=5)
    assert again.watch_id == -1 and again.canceled and again.cancel_reason == DUPLICATE_WATCH_ID


def test_prev_kv(pair, watch):
    a = pair.k(b"a")
    watch.create(key=a, prev_kv=True)
    pair.put(a, b"1", lease=0)  # 1: created, no previous
    pair.put(a, b"2")  # 2
    pair.delete(a)  # 3
    pair.put(a, b"3")  # 4: re-created, no previous
    pair.txn(success=[op_delete(a)])  # 5
    events = watch.events(0, through=5)
    assert [(e.kv.value, e.prev_kv.value, e.prev_kv.mod_revision) for e in events] == [
        (b"1", b"", 0), (b"2", b"1", 1), (b"", b"2", 2), (b"3", b"", 0), (b"", b"3", 4)]


def test_filters(pair, watch):
    a = pair.k(b"a")
    no_put = watch.create(key=a, filters=[NOPUT])
    no_delete = watch.create(key=a, filters=[NODELETE], prev_kv=True)
    neither = watch.create(key=a, filters=[NOPUT, NODELETE])
    everything = watch.create(key=a)
    pair.put(a, b"1")  # 1
    pair.delete(a)  # 2
    pair.put(a, b"2")  # 3
    pair.put(a, b"3")  # 4
    pair.delete(a)  # 5
    pair.put(a, b"4")  # 6
    assert [e.kv.mod_revision for e in watch.events(no_put.watch_id, through=5)] == [2, 5]
    assert [e.kv.mod_revision for e in watch.events(no_delete.watch_id, through=6)] == [1, 3, 4, 6]
    assert len(watch.events(everything.watch_id, through=6)) == 6
    # the watcher that filters everything got nothing at all
    for stream in watch.streams.values():
        assert not stream.events(neither.watch_id)


def test_client_chosen_and_duplicate_watch_ids(pair, watch):
    a = pair.k(b"a")
    assert watch.create(key=a, watch_id=100).watch_id == 100
    duplicate = watch.create(key=a, watch_id=100)
    assert duplicate.watch_id == -1 and duplicate.created and duplicate.canceled
    assert duplicate.cancel_reason == DUPLICATE_WATCH_ID
    assert duplicate.header.revision == 0
    # server-chosen ids skip the ones taken
    assert watch.create(key=a, watch_id=1).watch_id == 1
    assert watch.create(key=a).watch_id == 0
    assert watch.create(key=a).watch_id == 2
    pair.put(a, b"1")  # 1
    for watch_id in (100, 1, 0, 2):
        assert len(watch.events(watch_id, through=1)) == 1
    for stream in watch.streams.values():
        assert stream.events(-1) == []


def test_cancel(pair, watch):
    a = pair.k(b"a")
    cancelled = watch.create(key=a)
    witness = watch.create(key=a)
    pair.put(a, b"1")  # 1
    watch.events(cancelled.watch_id, through=1)
    answer = watch.cancel(cancelled.watch_id)
    assert answer.canceled and not answer.created and answer.watch_id == cancelled.watch_id
    assert answer.header.revision == 1 and not answer.cancel_reason
    pair.put(a, b"2")  # 2
    watch.events(witness.watch_id, through=2)
    for stream in watch.streams.values():
        assert [e.kv.value for e in stream.events(cancelled.watch_id)] == [b"1"]
    # cancelling an unknown id answers nothing: the next answer on the stream is the next create's
    for stream in watch.streams.values():
        stream.cancel(12345)
    assert watch.create(key=a, watch_id=77).watch_id == 77
    for stream in watch.streams.values():
        assert 12345 not in stream.by_id


def test_many_watchers_on_one_stream(pair, watch):
    keys = [pair.k(b"k%02d" % i) for i in range(12)]
    watchers = []  # (watch id, matches(key) -> bool, filters)
    for i, key in enumerate(keys):
        watchers.append((watch.create(key=key, prev_kv=i % 2 == 0).watch_id, lambda k, key=key: k == key))
    for lo, hi in [(0, 4), (3, 9), (8, 12)]:
        watchers.append((watch.create(key=keys[lo], range_end=keys[hi - 1] + b"\x00").watch_id,
                         lambda k, lo=lo, hi=hi: keys[lo] <= k <= keys[hi - 1]))
    watchers.append((watch.create(key=pair.k(b""), range_end=prefix_end(pair.k(b""))).watch_id, lambda k: True))
    written = []  # (relative revision, keys touched)
    revision = 0
    for step in range(40):
        key = keys[(step * 7) % len(keys)]
        revision += 1
        if step % 5 == 4:
            other = keys[(step * 3 + 1) % len(keys)]
            touched = [key] if other == key else [key, other]
            pair.txn(success=[op_put(k, b"t%d" % step) for k in touched])
        else:
            touched = [key]
            pair.put(key, b"s%d" % step)
        written.append((revision, touched))
    for watch_id, matches in watchers:
        expected = [rev for rev, touched in written for k in touched if matches(k)]
        if not expected:
            continue
        events = watch.events(watch_id, through=expected[-1])
        assert [e.kv.mod_revision for e in events] == expected


def test_txn_revision_arrives_in_one_response(pair, watch):
    prefix = pair.k(b"")
    for name in (b"x", b"y"):
        pair.put(pair.k(name), b"old")  # 1, 2
    created = watch.create(key=prefix, range_end=prefix_end(prefix), prev_kv=True)
    pair.txn(success=[op_put(pair.k(b"t%d" % i), b"v" * 100) for i in range(8)]
             + [op_delete(pair.k(b"x")), op_delete(pair.k(b"y"))])  # 3
    pair.put(pair.k(b"after"), b"1")  # 4
    events = watch.events(created.watch_id, through=4)
    assert [e.kv.mod_revision for e in events] == [3] * 10 + [4]
    for side in pair.sides:
        responses = [r for r in watch.stream(side.name).by_id[created.watch_id] if r.events]
        holding = [r for r in responses if any(e.kv.mod_revision == pair.base[side.name] + 3 for e in r.events)]
        assert len(holding) == 1 and len(holding[0].events) >= 10, f"{side.name}: revision 3 split"


# ------------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------------

def test_progress_request_on_a_synced_stream(pair, watch):
    """Every watcher synced: one answer with watch_id -1 and the current revision. etcd 3.5.1
    answers this way too (it answers at once even when a watcher is behind; see the next test)."""
    a = pair.k(b"a")
    first = watch.create(key=a)
    watch.create(key=pair.k(b"b"), progress_notify=True)
    pair.put(a, b"1")  # 1
    pair.put(pair.k(b"elsewhere"), b"1")  # 2
    watch.events(first.watch_id, through=1)
    watch.request_progress()
    (progress,) = watch.responses(-1, is_progress, "progress answer")
    assert progress.watch_id == -1 and not progress.events and progress.header.revision == 2


def test_progress_request_waits_for_unsynced_watchers(pair, oracle_vs_oracle):
    """The shim's contract (DESIGN.md; etcd >= 3.5.13 and 3.4.31 do the same): a progress request
    while a watcher is still replaying history is answered once every watcher on the stream is
    synced, so the answer's revision is a bookmark: every event up to it was sent before it.

    etcd 3.5.1 (the oracle here) answers at once, even before the history (the bug 3.5.13 fixed),
    so this is asserted on the shim alone; with COSMOS_ETCD_TEST_ORACLE_VS_ORACLE=1 (the "shim" is
    then etcd 3.5.1) only the weaker, old behaviour is asserted: an answer at the current revision.
    """
    # history that takes a while to replay (20 revisions of 100 keys of 4 KB: 8 MB), written to
    # the side under test only
    a = pair.k(b"big/")
    for i in range(20):
        out = pair.call_side("shim", "KV", "Txn", pb.TxnRequest(
            success=[op_put(a + b"%03d" % n, b"%d" % i * 4000) for n in range(100)]))  # 1..20
        assert out.header.revision == i + 1, out
    out = pair.call_side("shim", "KV", "Put", pb.PutRequest(key=pair.k(b"elsewhere"), value=b"1"))  # 21
    side = pair.side("shim")
    base = pair.base["shim"]
    with WatchStream(side.channel, "shim") as stream:
        live = stream.create(key=pair.k(b"live"))
        # the progress request right behind the create, without awaiting the created answer: the
        # history watcher cannot have caught up yet when the server reads it
        stream.send_create(key=a, range_end=prefix_end(a), start_revision=base + 1)
        stream.request_progress()
        behind = stream.next_created()
        stream.wait_for(lambda: stream.by_id.get(-1), 15, "progress answer (watch_id -1)")
        answer = stream.by_id[-1][0]
        assert is_progress(answer) and answer.header.revision == base + 21
        if oracle_vs_oracle:
            return
        position = stream.responses.index(answer)
        sent_before = [e.kv.mod_revision for r in stream.responses[:position] if r.watch_id == behind.watch_id
                       for e in r.events]
        assert sent_before == [base + rev for rev in range(1, 21) for _ in range(100)], \
            "the progress answer came before the history it vouches for"
        assert live.watch_id != behind.watch_id


def test_progress_notify(tuned_pair):
    """progress_notify: an idle synced watcher gets an empty response with the current revision
    every --watch-progress-notify-interval (1 s here; etcd's flag is
    --experimental-watch-progress-notify-interval)."""
    pair = tuned_pair
    a = pair.k(b"a")
    with DiffWatch(pair) as watch:
        notified = watch.create(key=a, progress_notify=True)
        quiet = watch.create(key=a)
        # How many notifications each side has sent by now depends on its timer's phase: compare
        # the first one of each side, not the counts.
        for stream in watch.streams.values():
            stream.wait_for(lambda: stream.progress_responses(notified.watch_id), 10, "progress notification")
        first = watch._same("first progress notification",
                            {name: stream.progress_responses(notified.watch_id)[0]
                             for name, stream in watch.streams.items()})
        assert first.header.revision == 0 and first.watch_id == notified.watch_id
        pair.put(a, b"1")  # 1
        pair.put(pair.k(b"b"), b"1")  # 2
        watch.events(notified.watch_id, through=1)
        # the next notification after the writes carries the new current revision
        for name, stream in watch.streams.items():
            base = pair.base[name]
            stream.wait_for(lambda: any(r.header.revision == base + 2 for r in stream.progress_responses(notified.watch_id)),
                            10, "progress notification at revision 2")
            assert stream.progress_responses(quiet.watch_id) == [], f"{name}: notified a watcher that did not ask"
            check_atomic(stream.by_id[notified.watch_id], label=name)


# ------------------------------------------------------------------------------------------------
# fragments
# ------------------------------------------------------------------------------------------------

def _fragment_scenario(pair, watch):
    """A Txn whose events (with prev_kv) far exceed etcd's fragment threshold."""
    prefix = pair.k(b"big/")
    keys = [prefix + b"%02d" % i for i in range(24)]
    for key in keys:
        pair.put(key, b"p" * 40_000)  # 1..24 (each request under --max-request-bytes)
    fragmented = watch.create(key=prefix, range_end=prefix_end(prefix), prev_kv=True, fragment=True)
    whole = watch.create(key=prefix, range_end=prefix_end(prefix), prev_kv=True)
    pair.txn(success=[op_put(key, b"n") for key in keys])  # 25: events of ~1 MB with their prev_kv
    events = watch.events(fragmented.watch_id, through=25, fragments=True)
    assert [e.kv.mod_revision for e in events] == [25] * len(keys)
    assert [e.kv.key for e in watch.events(whole.watch_id, through=25)] == keys
    return fragmented.watch_id, whole.watch_id


def test_fragment(tuned_pair):
    pair = tuned_pair
    with DiffWatch(pair) as watch:
        fragmented, whole = _fragment_scenario(pair, watch)
        for name, stream in watch.streams.items():
            pieces = [r for r in stream.by_id[fragmented] if r.events]
            assert len(pieces) >= 2, f"{name}: a response over the limit was not fragmented"
            assert all(r.fragment for r in pieces[:-1]) and not pieces[-1].fragment, \
                f"{name}: fragment flags {[r.fragment for r in pieces]}"
            assert all(r.watch_id == fragmented for r in pieces)
            # etcd's rule: a fragment stays under the threshold unless it holds a single event
            assert all(r.ByteSize() < ETCD_FRAGMENT_THRESHOLD or len(r.events) == 1 for r in pieces)
            # the watcher that did not ask gets the revision whole, in one response
            (one,) = [r for r in stream.by_id[whole] if r.events and r.events[0].kv.value == b"n"]
            assert len(one.events) == 24 and not one.fragment


def test_fragment_boundaries_match_etcd(tuned_pair):
    """Where a response is cut is deterministic in etcd: it fragments only a response of at least
    --max-request-bytes + 512 KiB (its gRPC allowance), and cuts before the event that would bring
    a fragment to that size. A client reading raw responses sees the same cuts on both."""
    pair = tuned_pair
    with DiffWatch(pair) as watch:
        fragmented, _ = _fragment_scenario(pair, watch)
        shape = {name: [len(r.events) for r in stream.by_id[fragmented] if r.events and r.events[0].kv.value == b"n"]
                 for name, stream in watch.streams.items()}
        assert shape["etcd"] == shape[pair.sides[1].name], f"events per fragment differ: {shape}"


# ------------------------------------------------------------------------------------------------
# servers with a short progress interval and a small request limit, for this module only
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["etcd-oracle"] if ORACLE_VS_ORACLE else list(BACKENDS))
def tuned_connection(request, tmp_path_factory):
    etcd_args = ["--unsafe-no-fsync", f"--experimental-watch-progress-notify-interval={PROGRESS_INTERVAL_S}s",
                 f"--max-request-bytes={MAX_REQUEST_BYTES}"]
    shim_args = [f"--watch-progress-notify-interval={PROGRESS_INTERVAL_S}s", f"--max-request-bytes={MAX_REQUEST_BYTES}"]
    etcd = processes.start_etcd(tmp_path_factory.mktemp("tuned-etcd"), extra_args=etcd_args)
    try:
        workdir = tmp_path_factory.mktemp(f"tuned-{request.param}")
        if ORACLE_VS_ORACLE:
            subject = processes.start_etcd(workdir, extra_args=etcd_args)
        else:
            subject = backends.start_shim_on(request.param, workdir, extra_args=shim_args)
    except BaseException:
        etcd.stop()
        raise
    connection = Connection(etcd, subject)
    yield connection
    connection.close()
    subject.stop_with_companions()
    etcd.stop()


@pytest.fixture
def tuned_pair(tuned_connection):
    return tuned_connection.new_pair()
