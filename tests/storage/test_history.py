"""Bounded history: superseded values leave memory and are read back from the store, on both backends.

The store runs with no history cache, so every value below the newest version of a key comes
from the log by revision (`RevisionLog.read_revisions`) or, once a compaction folded its record,
from the base by key (`RevisionLog.read_base`); the answers are checked against a model of
every write, before and after a restart.
"""
from __future__ import annotations

import asyncio
import json
import sys

import pytest

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc.errors import CompactedError
from cosmos_etcd_shim.mvcc.history import Superseded
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto.rpc_pb2 import (
    CompactionRequest,
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from tests.harness.records import simple_batch

pytestmark = pytest.mark.timeout(120)
KEYS = [b"h/a", b"h/b", b"h/c"]


class History:
    """Every write made through the store, to say what a read at any revision must answer."""

    def __init__(self) -> None:
        self.states: dict[int, dict[bytes, bytes]] = {}
        self.live: dict[bytes, bytes] = {}

    def wrote(self, revision: int) -> None:
        self.states[revision] = dict(self.live)

    def at(self, revision: int) -> dict[bytes, bytes]:
        return self.states[max(r for r in self.states if r <= revision)]


async def write(store: MVCCStore, history: History, rounds: int) -> None:
    for n in range(rounds):
        for i, key in enumerate(KEYS):
            if n % 4 == 3 and i == 1:
                response = await store.delete_range(DeleteRangeRequest(key=key))
                history.live.pop(key, None)
            else:
                value = b"%s=%d" % (key, n)
                response = await store.put(PutRequest(key=key, value=value))
                history.live[key] = value
            history.wrote(response.header.revision)


async def read_at(store: MVCCStore, revision: int) -> dict[bytes, bytes]:
    response = await store.range(RangeRequest(key=b"h/", range_end=b"h0", revision=revision))
    return {kv.key: kv.value for kv in response.kvs}


def superseded_in_index(store: MVCCStore) -> int:
    return sum(1 for kv in store.index.versions(store.revision) if type(kv) is Superseded)


async def open_store(logs) -> MVCCStore:
    store = MVCCStore(logs.new(), history_cache_bytes=0)
    await store.open()
    return store


async def test_old_revisions_are_read_back_after_their_values_left_memory(logs):
    history = History()
    store = await open_store(logs)
    history.wrote(store.revision)
    await write(store, history, 12)
    compact_at = store.revision - 10
    await write(store, history, 4)
    assert superseded_in_index(store) > 30  # the values of the older versions are gone from memory

    fetched_before = metrics.HISTORY_FETCHED_REVISIONS._value.get()
    for revision in range(2, store.revision + 1):
        assert await read_at(store, revision) == history.at(revision), revision
    assert metrics.HISTORY_FETCHED_REVISIONS._value.get() > fetched_before  # read from the log

    # After a compaction, the versions visible at the compact revision whose records were folded
    # come from the base; below it, etcd's error.
    await store.compact(CompactionRequest(revision=compact_at))
    for revision in range(compact_at, store.revision + 1):
        assert await read_at(store, revision) == history.at(revision), revision
    with pytest.raises(CompactedError):
        await read_at(store, compact_at - 1)

    # A restart: the index is rebuilt without the superseded values; reads fetch them again.
    await store.close()
    store = await open_store(logs)
    try:
        assert superseded_in_index(store) > 10
        for revision in range(compact_at, store.revision + 1):
            assert await read_at(store, revision) == history.at(revision), revision
    finally:
        await store.close()


async def test_a_txn_reads_an_old_revision_and_writes(logs):
    store = await open_store(logs)
    try:
        first = (await store.put(PutRequest(key=b"t", value=b"one"))).header.revision
        await store.put(PutRequest(key=b"t", value=b"two"))
        await store.put(PutRequest(key=b"u", value=b"x"))
        response = await store.txn(TxnRequest(
            compare=[Compare(key=b"t", target=Compare.VALUE, result=Compare.EQUAL, value=b"two")],
            success=[RequestOp(request_range=RangeRequest(key=b"t", revision=first)),
                     RequestOp(request_put=PutRequest(key=b"t", value=b"three"))]))
        assert response.succeeded
        assert [kv.value for kv in response.responses[0].response_range.kvs] == [b"one"]
        assert [kv.value for kv in (await store.range(RangeRequest(key=b"t"))).kvs] == [b"three"]
        sorted_by_value = await store.range(RangeRequest(key=b"t", range_end=b"v", revision=first + 2,
                                                         sort_target=RangeRequest.VALUE,
                                                         sort_order=RangeRequest.DESCEND))
        assert [kv.value for kv in sorted_by_value.kvs] == [b"x", b"two"]
        keys_only = await store.range(RangeRequest(key=b"t", revision=first, keys_only=True))
        assert [(kv.key, kv.value, kv.mod_revision) for kv in keys_only.kvs] == [(b"t", b"", first)]
    finally:
        await store.close()


async def test_read_revisions_and_read_base(logs):
    log, _ = await logs.open()
    await log.append(simple_batch(2, 30))
    found = await log.read_revisions([3, 17, 18, 31, 99])
    assert sorted(found) == [3, 17, 18, 31]
    assert all(found[r].events[0].kv.value == b"v%d" % r for r in found)
    await log.compact(20)
    if hasattr(log, "defragment"):
        await log.defragment()  # Cosmos folds in the background: finish it now
    found = await log.read_revisions([3, 20, 25])  # 3 only while its log document stays (Cosmos)
    assert {20, 25} <= found.keys() <= {3, 20, 25}
    assert all(found[r].events[0].kv.value == b"v%d" % r for r in found)
    base = await log.read_base([b"k3", b"k19", b"k25", b"absent"])
    assert {key: kv.value for key, kv in base.items()} == {b"k3": b"v3", b"k19": b"v19"}


async def test_a_restart_reads_the_newest_checkpoint_and_a_short_tail(logs):
    history = History()
    store = MVCCStore(logs.new(), history_cache_bytes=0, checkpoint_interval=50)
    await store.open()
    history.wrote(store.revision)
    await write(store, history, 40)  # 120 revisions: checkpoints at 51 and 101 or later
    await store.compact(CompactionRequest(revision=30))
    await write(store, history, 30)  # 210 revisions in all
    await store._checkpointing
    head = store.revision
    await store.close()

    log, state = await logs.open()
    assert state.checkpoint is not None and state.checkpoint.revision > head - 50
    assert [r.revision for r in state.revisions] == list(range(state.checkpoint.revision + 1, head + 1))
    await log.close()

    store = await open_store(logs)
    try:
        assert store.revision == head
        for revision in range(30, head + 1):
            assert await read_at(store, revision) == history.at(revision), revision
        with pytest.raises(CompactedError):
            await read_at(store, 29)
    finally:
        await store.close()


# A writer of an index checkpoint that stops for good after its third page (to be killed there):
# the pages hold a wrong value for every key, so a start that used them would be caught.
HALF_CHECKPOINT_WRITER = """
import asyncio, json, sys
from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Revision
from cosmos_etcd_shim.storage.cosmos.log import CosmosLog
from cosmos_etcd_shim.storage.embedded import EmbeddedLog

args = json.loads(sys.argv[1])

async def main():
    if args["backend"] == "embedded":
        log = EmbeddedLog(args["data_dir"])
    else:
        log = CosmosLog(args["endpoint"], key=args["key"], container=args["container"])
    await log.open()
    revision = args["revision"]

    async def pages():
        for number in range(10):
            if number == 3:
                print("three pages written", flush=True)
                await asyncio.Event().wait()
            yield Revision(revision=revision, events=[Event(type=Event.PUT, kv=KeyValue(
                key=key.encode(), create_revision=2, mod_revision=2, version=1, value=b"wrong"))
                for key in args["keys"]]).SerializeToString()

    await log.save_checkpoint(revision, pages())

asyncio.run(main())
"""


async def test_a_checkpoint_killed_half_way_is_never_used(logs):
    history = History()
    store = await open_store(logs)
    history.wrote(store.revision)
    await write(store, history, 10)
    head = store.revision
    await store.close()

    log = logs.new()
    target = {"backend": logs.backend, "revision": head, "keys": [k.decode() for k in KEYS],
              "data_dir": str(logs.tmp_path / "data")}
    if logs.backend == "cosmos":
        target.update(endpoint=logs.server.endpoint, key=logs.server.key, container=logs.container)
    writer = await asyncio.create_subprocess_exec(sys.executable, "-c", HALF_CHECKPOINT_WRITER, json.dumps(target),
                                                  stdout=asyncio.subprocess.PIPE)
    try:
        assert await writer.stdout.readline() == b"three pages written\n"
    finally:
        writer.kill()  # SIGKILL, by its pid
        await writer.wait()

    log, state = await logs.open()
    assert state.checkpoint is None
    await log.close()
    store = await open_store(logs)
    try:
        for revision in range(2, head + 1):
            assert await read_at(store, revision) == history.at(revision), revision
        # A later checkpoint is written and used, the half-written one's pages notwithstanding.
        store.checkpoint_interval = 1
        await write(store, history, 1)
        await store._checkpointing
        killed_at, head = head, store.revision
    finally:
        await store.close()
    log, state = await logs.open()
    assert state.checkpoint is not None and killed_at < state.checkpoint.revision <= head
    await log.close()
    store = await open_store(logs)
    try:
        for revision in range(2, head + 1):
            assert await read_at(store, revision) == history.at(revision), revision
    finally:
        await store.close()
