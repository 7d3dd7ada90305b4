"""Watch streams for tests: open an etcd v3 Watch stream, send requests, await responses.

`WatchStream` drives one bidirectional ``Watch`` call over a synchronous gRPC channel: requests are
sent from the test thread, a daemon thread reads the responses into a queue, and the test pumps
that queue while it waits for a condition (always with a deadline, never a fixed sleep). Every
response is kept, in arrival order, overall and per watch id.

`check_atomic` checks the per-response guarantees of etcd's watch: events in revision order, one
revision never split across responses (unless the watcher asked for fragments and the response
says ``fragment``), each response's header revision at or above its events' revisions.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
import typing

import grpc

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc

_END = object()


class WatchStreamClosed(AssertionError):
    """The stream ended (or failed) while a test was waiting on it."""


def is_progress(r: pb.WatchResponse) -> bool:
    """A response that carries no event and is neither a created nor a canceled answer."""
    return not r.events and not r.created and not r.canceled and not r.compact_revision


class WatchStream:
    """One Watch stream on `channel`; `name` only labels failure messages."""

    def __init__(self, channel: grpc.Channel, name: str = "", metadata=None):
        self.name = name
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self.call = rpc_pb2_grpc.WatchStub(channel).Watch(self._request_iterator(), metadata=metadata)
        self.responses: list[pb.WatchResponse] = []  # every response, in arrival order
        self.by_id: dict[int, list[pb.WatchResponse]] = collections.defaultdict(list)
        self._created: collections.deque[pb.WatchResponse] = collections.deque()
        self.error: grpc.RpcError | None = None
        self.ended = False
        self._reader = threading.Thread(target=self._read, name=f"watch-reader-{name}", daemon=True)
        self._reader.start()

    # -- plumbing ---------------------------------------------------------------------------------

    def _request_iterator(self):
        while True:
            request = self._requests.get()
            if request is _END:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put(response)
        except grpc.RpcError as e:
            self._responses.put(e)
        finally:
            self._responses.put(_END)

    def _record(self, item) -> None:
        if item is _END:
            self.ended = True
        elif isinstance(item, grpc.RpcError):
            self.error = item
        else:
            self.responses.append(item)
            if item.created:
                self._created.append(item)
            self.by_id[item.watch_id].append(item)

    def pump(self, timeout: float) -> bool:
        """Record the next response if one arrives within `timeout`; False if none did."""
        try:
            item = self._responses.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        self._record(item)
        # take whatever else is already there without blocking
        while True:
            try:
                self._record(self._responses.get_nowait())
            except queue.Empty:
                return True

    def wait_for(self, condition: typing.Callable[[], bool], timeout: float = 15.0, what: str = "a condition"):
        """Pump responses until `condition()` holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.ended:
                raise WatchStreamClosed(f"{self.name}: the watch stream ended ({self.error!r}) while waiting "
                                        f"for {what}; responses so far:\n{self.dump()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {what} within {timeout}s; responses so far:\n{self.dump()}")
            self.pump(min(remaining, 0.5))
        return True

    def dump(self, last: int = 30) -> str:
        from google.protobuf import text_format

        lines = []
        for r in self.responses[-last:]:
            shown = pb.WatchResponse()
            shown.CopyFrom(r)
            for e in shown.events:
                for kv in (e.kv, e.prev_kv):
                    if len(kv.value) > 40:
                        kv.value = kv.value[:40] + b"..."
            lines.append("  " + text_format.MessageToString(shown, as_one_line=True))
        return "\n".join(lines) or "  (none)"

    # -- requests ---------------------------------------------------------------------------------

    def send(self, request: pb.WatchRequest) -> None:
        self._requests.put(request)

    def send_create(self, create: pb.WatchCreateRequest | None = None, **fields) -> None:
        self.send(pb.WatchRequest(create_request=create or pb.WatchCreateRequest(**fields)))

    def create(self, create: pb.WatchCreateRequest | None = None, timeout: float = 15.0, **fields) -> pb.WatchResponse:
        """Send a create request and return its answer (the next response with ``created``)."""
        self.send_create(create, **fields)
        return self.next_created(timeout)

    def next_created(self, timeout: float = 15.0) -> pb.WatchResponse:
        self.wait_for(lambda: bool(self._created), timeout, "created response")
        return self._created.popleft()

    def cancel(self, watch_id: int) -> None:
        self.send(pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))

    def request_progress(self) -> None:
        self.send(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    def close(self) -> None:
        self._requests.put(_END)
        self.call.cancel()
        self._reader.join(5)

    def __enter__(self) -> "WatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what was received ------------------------------------------------------------------------

    def events(self, watch_id: int) -> list:
        return [e for r in self.by_id.get(watch_id, []) for e in r.events]

    def last_revision(self, watch_id: int) -> int:
        """The last revision whose events `watch_id` has received completely (0 if none): a
        revision still arriving in fragments does not count until its last fragment."""
        for r in reversed(self.by_id.get(watch_id, [])):
            if r.events:
                return r.events[0].kv.mod_revision - 1 if r.fragment else r.events[-1].kv.mod_revision
        return 0

    def wait_events_through(self, watch_id: int, revision: int, timeout: float = 15.0) -> list:
        """Wait until `watch_id` has received an event at `revision` or later; all its events."""
        self.wait_for(lambda: self.last_revision(watch_id) >= revision, timeout,
                      f"event at revision >= {revision} for watch {watch_id}")
        return self.events(watch_id)

    def progress_responses(self, watch_id: int) -> list[pb.WatchResponse]:
        return [r for r in self.by_id.get(watch_id, []) if is_progress(r)]


def check_atomic(responses: typing.Iterable[pb.WatchResponse], *, fragments_allowed: bool = False,
                 label: str = "") -> None:
    """etcd's per-response guarantees for one watcher's responses, in arrival order."""
    seen_revisions: list[int] = []
    last_response_revisions: set[int] = set()
    previous_fragment = False
    problems = []
    for i, r in enumerate(responses):
        revisions = [e.kv.mod_revision for e in r.events]
        if revisions != sorted(revisions):
            problems.append(f"response {i}: events out of revision order {revisions}")
        if r.events and r.header.revision and r.header.revision < max(revisions):
            problems.append(f"response {i}: header revision {r.header.revision} below its events' {max(revisions)}")
        if r.fragment and not fragments_allowed:
            problems.append(f"response {i}: fragment=true for a watcher that did not ask for fragments")
        continues_fragment = previous_fragment and fragments_allowed
        for rev in sorted(set(revisions)):
            if seen_revisions and rev < seen_revisions[-1]:
                problems.append(f"response {i}: revision {rev} after revision {seen_revisions[-1]} (reordered)")
            if rev in seen_revisions and not (continues_fragment and rev in last_response_revisions):
                problems.append(f"response {i}: revision {rev} split across responses")
            if rev not in seen_revisions:
                seen_revisions.append(rev)
        if r.events:
            last_response_revisions = set(revisions)
            previous_fragment = r.fragment
    assert not problems, f"{label}: watch responses break etcd's guarantees:\n  " + "\n  ".join(problems)
