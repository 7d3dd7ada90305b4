"""Fixtures of the end-to-end tests: a real etcd (the oracle) and the server under test.

The server under test is the shim (`python -m cosmos_etcd_shim serve --backend embedded`). To prove
the tests themselves sound, set ``COSMOS_ETCD_E2E_TARGET=etcd``: the "shim" is then a second real
etcd 3.5, every differential test must pass and the crash test runs against etcd. Tests of the
shim's own command line are skipped in that mode.

Every server runs in a temporary directory (logs and data), never in the repository.
"""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import cosmos as cosmos_harness  # noqa: E402
from tests.harness import processes  # noqa: E402

TARGET = os.environ.get("COSMOS_ETCD_E2E_TARGET", "shim")
if TARGET not in ("shim", "etcd"):
    raise RuntimeError(f"COSMOS_ETCD_E2E_TARGET must be 'shim' or 'etcd', not {TARGET!r}")

shim_only = pytest.mark.skipif(TARGET != "shim", reason="tests the shim's own command line")


def start_etcd_at(workdir: pathlib.Path, data_dir: pathlib.Path, client_port: int,
                  peer_port: int, name: str = "subject", extra_args: list[str] = ()) -> processes.Server:
    """A real etcd on a given data dir and ports, so that it can be killed and restarted in place."""
    argv = [
        str(processes.ETCD), "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", f"http://127.0.0.1:{client_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"{name}=http://127.0.0.1:{peer_port}",
        "--log-level", "error",
        *extra_args,
    ]
    return processes._spawn("etcd-subject", argv, workdir, f"127.0.0.1:{client_port}", data_dir)


class Subject:
    """Starts (and restarts in place) the server under test: the shim, or etcd in validation mode."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.data_dir = workdir / ("shim.data" if TARGET == "shim" else "subject.etcd")
        self.port = processes.free_port()
        self.peer_port = processes.free_port()
        self.server: processes.Server | None = None

    def start(self) -> processes.Server:
        if TARGET == "shim":
            self.server = processes.start_shim(self.workdir, data_dir=self.data_dir, port=self.port)
        else:
            self.server = start_etcd_at(self.workdir, self.data_dir, self.port, self.peer_port)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="module")
def e2e_etcd(tmp_path_factory):
    """A fresh real etcd per test module."""
    server = processes.start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def e2e_shim(tmp_path_factory):
    """A fresh server under test per test module (the shim, or a real etcd in validation mode)."""
    subject = Subject(tmp_path_factory.mktemp("shim"))
    server = subject.start()
    yield server
    subject.stop()


@pytest.fixture(scope="module")
def cosmos(tmp_path_factory, request):
    """One local Cosmos DB server per test module that asks for it (each test its own container)."""
    cosmos_harness.require()
    server = cosmos_harness.start_cosmos(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))
    yield server
    server.stop()
