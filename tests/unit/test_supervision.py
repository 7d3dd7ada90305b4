"""No background task dies silently (issue 11): a failure the code did not foresee is answered,
logged with its cause, and the task is started again; a core task that keeps failing fails /livez.

The store runs on the real embedded log, with one fault injected into ``append``: an exception
that is not a storage error (what a bug, or an answer nobody classified, looks like to the
committer). The health endpoints are served by the real aiohttp routes.
"""
from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp import web

from cosmos_etcd_shim.health import HealthChecks, http_routes
from cosmos_etcd_shim.mvcc.errors import StorageUnavailableError
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto.rpc_pb2 import PutRequest, RangeRequest
from cosmos_etcd_shim.storage.embedded import EmbeddedLog
from cosmos_etcd_shim.supervision import FAILURES_TO_BE_DOWN, Supervisor

pytestmark = pytest.mark.timeout(60)


class CrashingLog(EmbeddedLog):
    """The embedded log, whose next ``crashes`` appends raise an unexpected exception."""

    crashes = 0

    async def append(self, revisions):
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("injected: an answer nobody classified")
        await super().append(revisions)


@pytest.fixture
async def store(tmp_path):
    store = MVCCStore(CrashingLog(tmp_path / "data"), supervisor=Supervisor())
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def health(store):
    app = web.Application()
    app.router.add_routes(http_routes(HealthChecks(store, store.supervisor)))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_a_committer_crash_answers_the_write_and_the_committer_restarts(store, caplog):
    store.log.crashes = 1
    with caplog.at_level(logging.ERROR, logger="cosmos_etcd_shim.supervision"):
        with pytest.raises(StorageUnavailableError):
            await asyncio.wait_for(store.put(PutRequest(key=b"k", value=b"lost")), 10)
        # Nothing of the failed write is visible, and the next write goes through a new committer.
        assert (await store.range(RangeRequest(key=b"k"))).count == 0
        response = await asyncio.wait_for(store.put(PutRequest(key=b"k", value=b"kept")), 10)
    assert response.header.revision == 2
    assert [kv.value for kv in (await store.range(RangeRequest(key=b"k"))).kvs] == [b"kept"]
    failures = [r for r in caplog.records if r.getMessage() == "background task failed; restarting it"]
    assert [r.task for r in failures] == ["mvcc-committer"]
    assert "injected: an answer nobody classified" in failures[0].error
    assert store.supervisor.failing() == {}  # one failure is not a reason to restart the process


async def test_a_committer_that_keeps_failing_fails_livez(store, health):
    assert (await health.get("/livez")).status == 200
    store.log.crashes = FAILURES_TO_BE_DOWN
    for _ in range(FAILURES_TO_BE_DOWN):
        with pytest.raises(StorageUnavailableError):
            await asyncio.wait_for(store.put(PutRequest(key=b"k", value=b"v")), 10)
    livez = await health.get("/livez?verbose")
    body = await livez.text()
    assert livez.status == 503, body
    assert "[+]serializable_read ok\n" in body
    assert f"[-]background_tasks failed: mvcc-committer failed {FAILURES_TO_BE_DOWN} times" in body
    assert "RuntimeError: injected" in body
    assert (await health.get("/readyz")).status == 503
    # The store still serves once the fault is gone; liveness reports the failures of the last minute.
    await asyncio.wait_for(store.put(PutRequest(key=b"k", value=b"after")), 10)
    assert [kv.value for kv in (await store.range(RangeRequest(key=b"k"))).kvs] == [b"after"]


async def test_a_task_that_returns_is_restarted_too():
    runs = asyncio.Queue()

    async def returns_at_once() -> None:
        runs.put_nowait(1)

    supervisor = Supervisor()
    task = supervisor.start("short-lived", returns_at_once, core=True)
    try:
        for _ in range(FAILURES_TO_BE_DOWN + 1):
            await asyncio.wait_for(runs.get(), 10)
        assert "short-lived" in supervisor.failing()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
