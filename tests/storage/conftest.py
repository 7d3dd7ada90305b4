"""Fixtures of the storage tests: the local Cosmos server (one per module) and backend instances on
one store (:class:`Logs`), for each backend or the Cosmos one alone."""
from __future__ import annotations

import pathlib
import uuid

import pytest

from cosmos_etcd_shim.storage.cosmos.log import CosmosLog
from cosmos_etcd_shim.storage.embedded import EmbeddedLog
from tests.harness import cosmos as cosmos_harness


@pytest.fixture(scope="module")
def cosmos_server(tmp_path_factory):
    cosmos_harness.require()
    server = cosmos_harness.start_cosmos(tmp_path_factory.mktemp("cosmos"))
    yield server
    server.stop()


class Logs:
    """Makes backend instances on one store: `new()` is another process's (or a restart's) view."""

    def __init__(self, backend: str, tmp_path: pathlib.Path, server=None) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.server = server
        self.container = f"t-{uuid.uuid4().hex[:12]}"
        self.opened: list = []

    def new(self, *, endpoint: str | None = None, **options):
        if self.backend == "embedded":
            log = EmbeddedLog(self.tmp_path / "data")
        else:
            options.setdefault("request_timeout", 5.0)
            options.setdefault("retry_deadline", 10.0)
            log = CosmosLog(endpoint or self.server.endpoint, key=self.server.key, container=self.container,
                            **options)
        self.opened.append(log)
        return log

    async def open(self, **options):
        log = self.new(**options)
        state = await log.open()
        return log, state

    async def restart(self, log, **options):
        await log.close()
        return await self.open(**options)

    async def close_all(self):
        for log in self.opened:
            try:
                await log.close()
            except Exception:  # noqa: BLE001 - closing twice is fine
                pass


@pytest.fixture(params=["embedded", "cosmos"])
async def logs(request, tmp_path):
    server = request.getfixturevalue("cosmos_server") if request.param == "cosmos" else None
    factory = Logs(request.param, tmp_path, server)
    yield factory
    await factory.close_all()


@pytest.fixture
async def cosmos_logs(cosmos_server, tmp_path):
    factory = Logs("cosmos", tmp_path, cosmos_server)
    yield factory
    await factory.close_all()
