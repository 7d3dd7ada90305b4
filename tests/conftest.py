"""Session fixtures shared by the test suites: a real etcd (the oracle), the shim, and the
differential `pair` that sends every request to both.

* `etcd_server`: a real etcd 3.5 for the whole session.
* `shim_server`: the shim, once per backend of `tests/harness/backends.py` (test ids carry the
  backend name).
* `pair`: a fresh `DifferentialPair` scenario (its own key namespace) per test;
  `pair_factory()` makes more of them (one per hypothesis example).

Set ``COSMOS_ETCD_TEST_ORACLE_VS_ORACLE=1`` to make the "shim" side a second real etcd: every
differential test must then pass, which proves the tests themselves sound.

Servers run in temporary directories and are stopped by their process id at session end.
"""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness import processes  # noqa: E402
from tests.harness import backends  # noqa: E402
from tests.harness.backends import BACKENDS  # noqa: E402
from tests.harness.differential import Connection  # noqa: E402

ORACLE_VS_ORACLE = os.environ.get("COSMOS_ETCD_TEST_ORACLE_VS_ORACLE", "") == "1"

# Durability is not under test here: skip fsync so that the oracle answers fast.
ETCD_ARGS = ["--unsafe-no-fsync"]

_SHIM_PARAMS = ["etcd-oracle"] if ORACLE_VS_ORACLE else list(BACKENDS)


def pytest_report_header(config):
    mode = "oracle-vs-oracle (the 'shim' side is a second real etcd)" if ORACLE_VS_ORACLE \
        else f"etcd vs shim, backends {BACKENDS}"
    return f"cosmos-etcd differential tests: {mode}"


@pytest.fixture(scope="session")
def oracle_vs_oracle() -> bool:
    return ORACLE_VS_ORACLE


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """The reference: a real single-member etcd for the whole session."""
    server = processes.start_etcd(tmp_path_factory.mktemp("etcd"), extra_args=ETCD_ARGS)
    yield server
    server.stop()


@pytest.fixture(scope="session", params=_SHIM_PARAMS)
def shim_server(request, tmp_path_factory):
    """The server under test, once per backend (or a second etcd in oracle-vs-oracle mode)."""
    workdir = tmp_path_factory.mktemp(f"shim-{request.param}")
    if ORACLE_VS_ORACLE:
        server = processes.start_etcd(workdir, extra_args=ETCD_ARGS)
    else:
        # No history cache: every read at an old revision and every prev_kv of a past event
        # fetches its value from the store, and is still compared with etcd's answer.
        server = backends.start_shim_on(request.param, workdir, ["--history-cache-bytes", "0"])
    yield server
    server.stop_with_companions()


@pytest.fixture(scope="session")
def differential_connection(etcd_server, shim_server):
    connection = Connection(etcd_server, shim_server)
    yield connection
    connection.close()


@pytest.fixture
def pair_factory(differential_connection):
    """Makes fresh scenarios (a new namespace each) on the session's servers."""
    return differential_connection.new_pair


@pytest.fixture
def pair(differential_connection):
    """A fresh differential scenario: its own key namespace, revisions relative to its base."""
    return differential_connection.new_pair()
