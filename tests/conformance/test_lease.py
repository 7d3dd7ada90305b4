"""Lease, compared with a real etcd wherever the answer is deterministic.

Lease ids are chosen by the test (unique per scenario) wherever the test can, so that both servers
answer with the same ids; a server-chosen id differs between servers and is compared by its
properties only. What depends on the clock (a remaining TTL) is checked against bounds on each side.
Every lease a test grants is revoked when it ends, so that no lease expires (and deletes keys,
which makes a revision) in the middle of another test.
"""
from __future__ import annotations

import grpc
import pytest

from cosmos_etcd_shim.proto import kv_pb2
from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.differential import Error, Mismatch, normalise_response, op_put, prefix_end
from tests.harness.watch_streams import WatchStream, check_atomic

NOT_FOUND = grpc.StatusCode.NOT_FOUND
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
DELETE = kv_pb2.Event.DELETE
MIN_TTL = 2  # etcd's minimum with the default 1 s election timeout (3 * 1 s / 2, rounded up)


class Leases:
    """Client-chosen lease ids unique to a scenario, and the cleanup of every lease granted."""

    def __init__(self, pair):
        self.pair = pair
        self.granted: list[tuple[str, int]] = []  # (side, id)
        self._next = 0

    def new_id(self) -> int:
        self._next += 1
        return 0x5EA5E_000000 + self.pair.number * 1000 + self._next

    def grant(self, ttl: int, lease_id: int | None = None) -> int:
        """LeaseGrant with a client-chosen id on both sides; the answers must match."""
        lease_id = self.new_id() if lease_id is None else lease_id
        out = self.pair.call("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl, ID=lease_id))
        if not isinstance(out, Error):
            self.granted.extend((side.name, lease_id) for side in self.pair.sides)
        return out

    def revoke_all(self) -> None:
        for side_name, lease_id in self.granted:
            self.pair.side(side_name).invoke("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))


@pytest.fixture
def leases(pair):
    leases = Leases(pair)
    yield leases
    leases.revoke_all()


def time_to_live(pair, ids: dict[str, int] | int, *, keys: bool = True, granted: int | None = None):
    """LeaseTimeToLive on both sides: keys compared as sets (etcd lists them in map order), the
    remaining TTL checked against bounds (it depends on the clock), everything else compared."""
    if isinstance(ids, int):
        ids = {side.name: ids for side in pair.sides}
    answers = {}
    for side in pair.sides:
        out = side.invoke("Lease", "LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=ids[side.name], keys=keys))
        assert not isinstance(out, Error), f"{side.name}: TimeToLive failed: {out!r}"
        msg, _ = normalise_response(out, pair.base[side.name])
        msg.keys[:] = sorted(msg.keys)
        if msg.TTL != -1:
            top = granted if granted is not None else msg.grantedTTL
            assert top - 2 <= msg.TTL <= top + 1, f"{side.name}: remaining TTL {msg.TTL} of a {top} s lease"
            msg.TTL = 0
        msg.ID = 0
        answers[side.name] = msg
    (a, ma), (b, mb) = answers.items()
    if ma != mb:
        raise Mismatch(f"LeaseTimeToLive: {a} answered {ma}, {b} answered {mb}")
    return ma


def leases_listed(pair, ids: list[int]) -> list[int]:
    """The order in which each side lists the given leases (other tests' leases left out)."""
    wanted = set(ids)
    orders = {}
    for side in pair.sides:
        out = side.invoke("Lease", "LeaseLeases", pb.LeaseLeasesRequest())
        assert not isinstance(out, Error), f"{side.name}: Leases failed: {out!r}"
        orders[side.name] = [status.ID for status in out.leases if status.ID in wanted]
    (a, oa), (b, ob) = orders.items()
    assert oa == ob, f"Leases lists them in different orders: {a} {oa}, {b} {ob}"
    return oa


def keep_alive(pair, ids: list[int]) -> list[pb.LeaseKeepAliveResponse]:
    """One KeepAlive stream per side, one request per id, the answers compared in order."""
    answers = {}
    for side in pair.sides:
        stream = side.stub("Lease").LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=i) for i in ids]), timeout=15)
        answers[side.name] = [normalise_response(r, pair.base[side.name]) for r in stream]
    (a, ra), (b, rb) = answers.items()
    if ra != rb:
        raise Mismatch(f"LeaseKeepAlive: {a} answered {ra}, {b} answered {rb}")
    return [msg for msg, _ in ra]


# ------------------------------------------------------------------------------------------------
# Grant
# ------------------------------------------------------------------------------------------------

def test_grant_with_a_server_chosen_id(pair):
    ids = {}
    try:
        for side in pair.sides:
            out = side.invoke("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=60))
            assert not isinstance(out, Error), f"{side.name}: {out!r}"
            assert out.ID > 0 and out.TTL == 60 and not out.error, f"{side.name}: {out}"
            assert out.header.revision == pair.base[side.name], "a grant makes no revision"
            ids[side.name] = out.ID
        ttl = time_to_live(pair, ids, granted=60)
        assert ttl.grantedTTL == 60 and not ttl.keys
        for side in pair.sides:
            listed = side.invoke("Lease", "LeaseLeases", pb.LeaseLeasesRequest())
            assert ids[side.name] in [s.ID for s in listed.leases]
    finally:
        for side in pair.sides:
            if side.name in ids:
                side.invoke("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=ids[side.name]))


def test_grant_with_a_client_chosen_id(pair, leases):
    lease_id = leases.new_id()
    granted = leases.grant(60, lease_id)
    assert granted.ID == lease_id and granted.TTL == 60 and granted.header.revision == 0
    pair.expect_error("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=60, ID=lease_id),
                      grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
    # a different TTL does not make it a different lease
    pair.expect_error("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=5, ID=lease_id),
                      grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
    # etcd takes a negative id as it is
    negative = -leases.new_id()
    assert leases.grant(30, negative).ID == negative
    assert time_to_live(pair, negative, granted=30).grantedTTL == 30


@pytest.mark.parametrize("ttl", [0, 1, -5, -9_000_000_001])
def test_ttl_below_the_minimum_becomes_the_minimum(pair, leases, ttl):
    granted = leases.grant(ttl)
    assert granted.TTL == MIN_TTL
    assert time_to_live(pair, granted.ID, granted=MIN_TTL).grantedTTL == MIN_TTL


def test_ttl_too_large(pair, leases):
    pair.expect_error("Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=9_000_000_001, ID=leases.new_id()),
                      grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
    assert leases.grant(9_000_000_000).TTL == 9_000_000_000


# ------------------------------------------------------------------------------------------------
# Put with a lease, TimeToLive, Leases
# ------------------------------------------------------------------------------------------------

def test_put_with_a_lease_and_time_to_live(pair, leases):
    lease_id = leases.grant(100).ID
    for name in (b"c", b"a", b"b"):
        r = pair.put(pair.k(name), b"v", lease=lease_id, prev_kv=True)
    pair.put(pair.k(b"other"), b"v")
    state = pair.state()
    assert [kv.lease for kv in state.kvs] == [lease_id, lease_id, lease_id, 0]
    ttl = time_to_live(pair, lease_id, granted=100)
    assert ttl.grantedTTL == 100 and list(ttl.keys) == [pair.k(b"a"), pair.k(b"b"), pair.k(b"c")]
    assert ttl.header.revision == 4
    without_keys = time_to_live(pair, lease_id, keys=False, granted=100)
    assert not without_keys.keys
    assert r.header.revision == 3


def test_put_with_an_unknown_lease(pair, leases):
    pair.expect_error("KV", "Put", pb.PutRequest(key=pair.k(b"a"), value=b"v", lease=leases.new_id()),
                      NOT_FOUND, LEASE_NOT_FOUND)
    pair.expect_error("KV", "Txn", pb.TxnRequest(success=[op_put(pair.k(b"a"), b"v", lease=leases.new_id())]),
                      NOT_FOUND, LEASE_NOT_FOUND)
    assert pair.revision() == 0


def test_time_to_live_of_an_unknown_lease(pair, leases):
    unknown = leases.new_id()
    out = pair.call("Lease", "LeaseTimeToLive", pb.LeaseTimeToLiveRequest(ID=unknown, keys=True))
    assert out.ID == unknown and out.TTL == -1 and out.grantedTTL == 0 and not out.keys


def test_leases_lists_by_expiry(pair, leases):
    ids = [leases.grant(ttl).ID for ttl in (300, 100, 200)]
    assert leases_listed(pair, ids) == [ids[1], ids[2], ids[0]]


# ------------------------------------------------------------------------------------------------
# Revoke and expiry: the attached keys go in one revision
# ------------------------------------------------------------------------------------------------

def watch_both(pair, key: bytes, range_end: bytes) -> dict[str, WatchStream]:
    streams = {}
    for side in pair.sides:
        stream = streams[side.name] = WatchStream(side.channel, side.name)
        created = stream.create(key=key, range_end=range_end, prev_kv=True)
        assert created.created and created.watch_id == 0
    return streams


def deletions(pair, streams: dict[str, WatchStream], through: int, timeout: float = 15.0) -> list:
    """Each side's events up to the relative revision `through`, compared; the revision of the
    lease's deletions must arrive in one response."""
    seen = {}
    for name, stream in streams.items():
        stream.wait_events_through(0, pair.base[name] + through, timeout)
        check_atomic(stream.by_id[0], label=name)
        holding = [r for r in stream.by_id[0] if any(e.kv.mod_revision == pair.base[name] + through for e in r.events)]
        assert len(holding) == 1, f"{name}: the lease's deletions came in {len(holding)} responses"
        seen[name] = normalise_response(pb.WatchResponse(events=stream.events(0)), pair.base[name])
    (a, sa), (b, sb) = seen.items()
    if sa != sb:
        raise Mismatch(f"watch events differ:\n--- {a}:\n{sa[0]}\n--- {b}:\n{sb[0]}")
    return list(sa[0].events)


def test_revoke_deletes_the_attached_keys_in_one_revision(pair, leases):
    prefix = pair.k(b"")
    streams = watch_both(pair, prefix, prefix_end(prefix))
    try:
        lease_id = leases.grant(100).ID
        for name in (b"b", b"c", b"a"):
            pair.put(pair.k(name), b"v-" + name, lease=lease_id)  # 1..3
        pair.put(pair.k(b"d"), b"no lease")  # 4
        revoked = pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))
        assert revoked.header.revision == 5
        events = deletions(pair, streams, through=5)
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events[4:]] == [
            (DELETE, pair.k(b"a"), 5), (DELETE, pair.k(b"b"), 5), (DELETE, pair.k(b"c"), 5)]
        assert [e.prev_kv.value for e in events[4:]] == [b"v-a", b"v-b", b"v-c"]
        assert [kv.key for kv in pair.state().kvs] == [pair.k(b"d")]
        assert time_to_live(pair, lease_id).TTL == -1
        pair.expect_error("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id), NOT_FOUND, LEASE_NOT_FOUND)
        pair.expect_error("KV", "Put", pb.PutRequest(key=pair.k(b"a"), lease=lease_id), NOT_FOUND, LEASE_NOT_FOUND)
    finally:
        for stream in streams.values():
            stream.close()


def test_revoke_a_lease_without_keys_makes_no_revision(pair, leases):
    lease_id = leases.grant(100).ID
    pair.put(pair.k(b"a"), b"1")  # 1
    revoked = pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id))
    assert revoked.header.revision == 1
    assert pair.revision() == 1


def test_revoke_an_unknown_lease(pair, leases):
    pair.expect_error("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=leases.new_id()), NOT_FOUND, LEASE_NOT_FOUND)
    pair.expect_error("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=0), NOT_FOUND, LEASE_NOT_FOUND)


def test_expiry_deletes_the_attached_keys_in_one_revision(pair, leases):
    prefix = pair.k(b"")
    streams = watch_both(pair, prefix, prefix_end(prefix))
    try:
        lease_id = leases.grant(MIN_TTL).ID
        for name in (b"events/1", b"events/3", b"events/2"):
            pair.put(pair.k(name), b"e", lease=lease_id)  # 1..3
        pair.put(pair.k(b"kept"), b"k")  # 4
        # nothing else writes meanwhile: the expiry is revision 5 on both servers
        events = deletions(pair, streams, through=5, timeout=20)
        assert [(e.type, e.kv.key) for e in events[4:]] == [
            (DELETE, pair.k(name)) for name in (b"events/1", b"events/2", b"events/3")]
        assert {e.kv.mod_revision for e in events[4:]} == {5}
        assert [kv.key for kv in pair.state().kvs] == [pair.k(b"kept")]
        assert time_to_live(pair, lease_id).TTL == -1
        assert lease_id not in leases_listed(pair, [lease_id])
    finally:
        for stream in streams.values():
            stream.close()


# ------------------------------------------------------------------------------------------------
# KeepAlive
# ------------------------------------------------------------------------------------------------

def test_keep_alive(pair, leases):
    lease_id = leases.grant(50).ID
    short = leases.grant(MIN_TTL).ID
    unknown = leases.new_id()
    answers = keep_alive(pair, [lease_id, unknown, short, 0, lease_id])
    assert [(a.ID, a.TTL) for a in answers] == [(lease_id, 50), (unknown, 0), (short, MIN_TTL), (0, 0), (lease_id, 50)]
    assert all(a.header.revision == 0 for a in answers)
    assert time_to_live(pair, lease_id, granted=50).grantedTTL == 50


def test_keep_alive_keeps_a_lease_past_its_ttl(pair, leases):
    """Renewing a 2 s lease every ~0.5 s for over 2 TTLs: its key stays (waiting is on the clock of
    the renewals, which is the point of the test)."""
    import time

    lease_id = leases.grant(MIN_TTL).ID
    pair.put(pair.k(b"a"), b"v", lease=lease_id)  # 1
    deadline = time.monotonic() + 2.5 * MIN_TTL
    while time.monotonic() < deadline:
        assert [a.TTL for a in keep_alive(pair, [lease_id])] == [MIN_TTL]
        time.sleep(0.5)
    assert [kv.key for kv in pair.state().kvs] == [pair.k(b"a")]
    assert list(time_to_live(pair, lease_id, granted=MIN_TTL).keys) == [pair.k(b"a")]


# ------------------------------------------------------------------------------------------------
# attaching and detaching keys
# ------------------------------------------------------------------------------------------------

def test_ignore_lease_keeps_the_lease(pair, leases):
    lease_id = leases.grant(100).ID
    a = pair.k(b"a")
    pair.put(a, b"1", lease=lease_id)  # 1
    pair.put(a, b"2", ignore_lease=True, prev_kv=True)  # 2
    (kv,) = pair.range(a).kvs
    assert kv.lease == lease_id and kv.value == b"2"
    assert list(time_to_live(pair, lease_id).keys) == [a]
    pair.expect_error("KV", "Put", pb.PutRequest(key=a, value=b"3", ignore_lease=True, lease=lease_id),
                      grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided")
    pair.expect_error("KV", "Put", pb.PutRequest(key=pair.k(b"missing"), value=b"3", ignore_lease=True),
                      grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
    pair.ok("KV", "Txn", pb.TxnRequest(success=[op_put(a, b"4", ignore_lease=True)]))  # 3
    assert pair.range(a).kvs[0].lease == lease_id
    # the lease still owns the key: revoking it deletes the key
    assert pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id)).header.revision == 4
    assert not pair.range(a).kvs


def test_put_without_a_lease_detaches_the_key(pair, leases):
    lease_id = leases.grant(100).ID
    a, b = pair.k(b"a"), pair.k(b"b")
    pair.put(a, b"1", lease=lease_id)  # 1
    pair.put(b, b"1", lease=lease_id)  # 2
    pair.put(a, b"2")  # 3: a leaves the lease
    assert list(time_to_live(pair, lease_id).keys) == [b]
    pair.delete(b)  # 4: b leaves it too
    assert list(time_to_live(pair, lease_id).keys) == []
    # revoking the lease now deletes nothing and makes no revision
    assert pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease_id)).header.revision == 4
    assert [kv.key for kv in pair.state().kvs] == [a]


def test_put_moves_a_key_to_another_lease(pair, leases):
    first, second = leases.grant(100).ID, leases.grant(100).ID
    a = pair.k(b"a")
    pair.put(a, b"1", lease=first)  # 1
    pair.put(a, b"2", lease=second)  # 2
    assert list(time_to_live(pair, first).keys) == []
    assert list(time_to_live(pair, second).keys) == [a]
    assert pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=first)).header.revision == 2
    assert pair.range(a).kvs[0].lease == second
    assert pair.ok("Lease", "LeaseRevoke", pb.LeaseRevokeRequest(ID=second)).header.revision == 3
    assert not pair.range(a).kvs
