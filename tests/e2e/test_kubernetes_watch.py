"""The watch and lease traffic of kube-apiserver's watch cache (storage/etcd3 and cacher), against
the server under test and a real etcd, with the same requests; the observations are compared.

1. List a resource prefix in pages (limit, continuation from the last key + \\x00 at the first
   page's revision), then watch the prefix from list revision + 1 with prev_kv and
   progress_notify, as the reflector does.
2. Writes as kube-apiserver makes them (optimistic Txns on mod_revision) arrive in order with their
   prev_kv.
3. RequestProgress (kube-apiserver's consistent reads from the cache): the answer has watch_id -1
   and a header revision at least the revision a Range read just before it, and at least every
   event already delivered. On the server under test (the shim) the answer is also a bookmark:
   no event at or below its revision may arrive after it. etcd 3.5.1 (the oracle) does not promise
   that (fixed in 3.5.13), so that part is asserted on the shim only.
4. Events: LeaseGrant, then Puts attached to that lease (kube-apiserver's event TTL); the keys are
   the lease's, and revoking it deletes them in one revision, seen by the watch.
"""
from __future__ import annotations

import dataclasses
import time

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from tests.harness.differential import prefix_end
from tests.harness.watch_streams import WatchStream, check_atomic, is_progress

from .conftest import TARGET

PODS = b"/registry/pods/"
EVENTS = b"/registry/events/"


@dataclasses.dataclass
class Client:
    """kube-apiserver's storage calls on one server."""

    channel: grpc.Channel

    def __post_init__(self):
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)

    def create(self, key: bytes, value: bytes, lease: int = 0) -> int:
        r = self.kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]), timeout=10)
        assert r.succeeded, f"create {key!r}: already exists"
        return r.header.revision

    def update(self, key: bytes, value: bytes) -> int:
        current = self.kv.Range(pb.RangeRequest(key=key, limit=1), timeout=10).kvs[0]
        r = self.kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                mod_revision=current.mod_revision)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]), timeout=10)
        assert r.succeeded, f"update {key!r}: conflict"
        return r.header.revision

    def delete(self, key: bytes) -> int:
        current = self.kv.Range(pb.RangeRequest(key=key, limit=1), timeout=10).kvs[0]
        r = self.kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                mod_revision=current.mod_revision)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, prev_kv=True))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]), timeout=10)
        assert r.succeeded, f"delete {key!r}: conflict"
        return r.header.revision

    def list(self, prefix: bytes, page: int = 2) -> tuple[list, int]:
        """Paged list as the reflector does: later pages at the first page's revision."""
        kvs, key, revision = [], prefix, 0
        while True:
            r = self.kv.Range(pb.RangeRequest(key=key, range_end=prefix_end(prefix), limit=page,
                                              revision=revision), timeout=10)
            revision = revision or r.header.revision
            kvs.extend(r.kvs)
            if not r.more:
                return kvs, revision
            key = r.kvs[-1].key + b"\x00"

    def current_revision(self, prefix: bytes) -> int:
        """What kube-apiserver reads before a consistent read from its cache."""
        return self.kv.Range(pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                                             count_only=True), timeout=10).header.revision


def event_view(e, base: int) -> tuple:
    """An event with revisions relative to `base` and lease ids reduced to "has a lease"."""
    def kv(x):
        if not x.key:
            return None
        return (x.key, x.value, x.create_revision - base if x.create_revision else 0,
                x.mod_revision - base if x.mod_revision else 0, x.version, bool(x.lease))
    return ("DELETE" if e.type == e.DELETE else "PUT", kv(e.kv), kv(e.prev_kv))


def run(endpoint: str, namespace: bytes, strict_bookmark: bool) -> dict:
    """The whole kube-apiserver sequence on one server; what was observed, normalised."""
    seen: dict = {}
    pods, events = PODS + namespace, EVENTS + namespace
    with grpc.insecure_channel(endpoint) as channel:
        client = Client(channel)
        for i in range(5):
            client.create(pods + b"pod-%d" % i, b'{"kind":"Pod","v":0}')
        listed, list_revision = client.list(pods)
        seen["listed"] = [(kv.key, kv.version) for kv in listed]

        with WatchStream(channel, endpoint) as stream:
            pod_watch = stream.create(key=pods, range_end=prefix_end(pods), start_revision=list_revision + 1,
                                      prev_kv=True, progress_notify=True)
            event_watch = stream.create(key=events, range_end=prefix_end(events), start_revision=list_revision + 1,
                                        prev_kv=True, progress_notify=True)
            assert pod_watch.created and event_watch.created and pod_watch.watch_id != event_watch.watch_id
            seen["created_at"] = pod_watch.header.revision - list_revision

            # writes as kube-apiserver makes them
            client.update(pods + b"pod-1", b'{"kind":"Pod","v":1}')
            client.delete(pods + b"pod-2")
            last_pod_write = client.create(pods + b"pod-5", b'{"kind":"Pod","v":0}')
            grant = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=10)
            assert grant.ID > 0 and grant.TTL == 3600
            for i in range(3):
                last_event_write = client.create(events + b"pod-1.%d" % i, b'{"kind":"Event"}', lease=grant.ID)

            # a consistent read: the revision now, then RequestProgress right away, not waiting
            # for the writes' events first
            read_revision = client.current_revision(pods)
            stream.request_progress()
            stream.wait_for(lambda: stream.by_id.get(-1), 15, "progress answer")
            progress = stream.by_id[-1][0]
            assert is_progress(progress) and progress.header.revision >= read_revision
            position = stream.responses.index(progress)
            before = [e.kv.mod_revision for r in stream.responses[:position] for e in r.events]
            assert all(rev <= progress.header.revision for rev in before)
            seen["progress_at"] = progress.header.revision - list_revision

            pod_events = stream.wait_events_through(pod_watch.watch_id, last_pod_write)
            stream.wait_events_through(event_watch.watch_id, last_event_write)
            if strict_bookmark:
                after = [e.kv.mod_revision for r in stream.responses[position + 1:] for e in r.events]
                late = [rev for rev in after if rev <= progress.header.revision]
                assert not late, f"events at {late} arrived after a progress answer at {progress.header.revision}"
            for watch_id in (pod_watch.watch_id, event_watch.watch_id):
                check_atomic(stream.by_id[watch_id], label=f"{endpoint} watch {watch_id}")
            seen["pod_events"] = [event_view(e, list_revision) for e in pod_events]

            # the events' lease holds their keys; revoking it deletes them in one revision
            ttl = client.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=grant.ID, keys=True), timeout=10)
            seen["lease_keys"] = sorted(ttl.keys)
            assert ttl.grantedTTL == 3600 and 3590 <= ttl.TTL <= 3600
            revoked = client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=grant.ID), timeout=10)
            event_events = stream.wait_events_through(event_watch.watch_id, revoked.header.revision)
            seen["event_events"] = [event_view(e, list_revision) for e in event_events]
            deleting = [r for r in stream.by_id[event_watch.watch_id]
                        if any(e.kv.mod_revision == revoked.header.revision for e in r.events)]
            assert len(deleting) == 1 and len(deleting[0].events) == 3
            # nothing of the events' prefix reached the pods' watcher
            assert all(e.kv.key.startswith(pods) for e in stream.events(pod_watch.watch_id))

            # idle now: another progress request answers at the current revision
            stream.request_progress()
            stream.wait_for(lambda: len(stream.by_id.get(-1, [])) >= 2, 15, "second progress answer")
            seen["idle_progress_at"] = stream.by_id[-1][1].header.revision - list_revision
    return seen


def test_kubernetes_list_watch_progress_and_event_leases(e2e_etcd, e2e_shim):
    namespace = b"ns-%d/" % time.monotonic_ns()
    reference = run(e2e_etcd.endpoint, namespace, strict_bookmark=False)
    # with COSMOS_ETCD_E2E_TARGET=etcd the subject is etcd 3.5.1 too, which does not promise it
    subject = run(e2e_shim.endpoint, namespace, strict_bookmark=TARGET == "shim")
    assert subject == reference
    # what the sequence must have produced, spelled out (relative to the list revision)
    pods = PODS + namespace
    assert [kind for kind, _, _ in reference["pod_events"]] == ["PUT", "DELETE", "PUT"]
    (_, kv, prev), (_, _, deleted), (_, created, none) = reference["pod_events"]
    assert kv[0] == pods + b"pod-1" and prev[1] == b'{"kind":"Pod","v":0}' and kv[3] == 1
    assert deleted[0] == pods + b"pod-2" and created[0] == pods + b"pod-5" and none is None
    assert reference["progress_at"] == 6 and reference["idle_progress_at"] == 7


@pytest.mark.parametrize("server", ["etcd", "subject"])
def test_watch_from_list_revision_sees_nothing_twice(server, e2e_etcd, e2e_shim):
    """A reflector's relist while writes keep coming: list, then watch from list revision + 1;
    every object's state is the list's plus exactly the events after it."""
    endpoint = (e2e_etcd if server == "etcd" else e2e_shim).endpoint
    prefix = PODS + b"relist-%d/" % time.monotonic_ns()
    with grpc.insecure_channel(endpoint) as channel:
        client = Client(channel)
        for i in range(20):
            client.create(prefix + b"p%02d" % i, b"0")
        listed, revision = client.list(prefix, page=7)
        with WatchStream(channel, server) as stream:
            w = stream.create(key=prefix, range_end=prefix_end(prefix), start_revision=revision + 1, prev_kv=True)
            last = 0
            for i in range(20):
                last = client.update(prefix + b"p%02d" % i, b"1")
            for i in range(0, 20, 3):
                last = client.delete(prefix + b"p%02d" % i)
            events = stream.wait_events_through(w.watch_id, last)
            check_atomic(stream.by_id[w.watch_id], label=server)
        state = {kv.key: kv.value for kv in listed}
        for e in events:
            assert e.kv.mod_revision > revision
            assert state.get(e.kv.key) == (e.prev_kv.value if e.prev_kv.key else None), "prev_kv is not the state"
            if e.type == e.DELETE:
                del state[e.kv.key]
            else:
                state[e.kv.key] = e.kv.value
        final, _ = client.list(prefix)
        assert state == {kv.key: kv.value for kv in final}
        assert len(events) == 27
