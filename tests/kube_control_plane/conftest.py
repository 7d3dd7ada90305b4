"""The Kubernetes tests' control planes, shared by this package's modules, and their wait for the
Kubernetes binaries before pytest-timeout's clock starts.

``etcd_stack`` (the oracle) and ``shim_stack`` (embedded, then Cosmos with two replicas) are
package fixtures: one kube-apiserver per datastore kind for all the modules here (pytest runs the
tests of one ``shim_stack`` kind together and stops that stack before it starts the next, and stops
the last one after this package's last test, not at the end of the session). The controllers join a
stack when a test first asks for them (``Stack.start_controllers``). The tests that use the stacks
run after this package's other tests, so that the stacks stop right after their last test rather
than idle through other modules (an idle Cosmos stack with its controllers takes ~40 % of a core),
and the kill -9 test, which makes its own Cosmos stack, runs before the shared ones start.

The binaries: under ``.ci/run`` they are built in the background while the suite runs; if the build is
still going when these tests come, waiting for it inside a test would count against the test's
timeout (300 s) and end in a timeout rather than a build result. So the wait happens here, in a
hook wrapped around pytest-timeout's; its outcome (the path, or the failure, remembered) is what
``tests/harness/kube_apiserver.py`` then gives the tests, which skip or fail with it.
"""
from __future__ import annotations

import contextlib
import pathlib

import pytest

from tests.harness import kube_apiserver
from tests.harness.kube_stacks import start_stack


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item):
    # a failure is remembered by the harness and reported by the test (skip, or fail with the log)
    with contextlib.suppress(kube_apiserver.KubernetesUnavailable, RuntimeError):
        kube_apiserver.kubernetes_bin()
    yield


def stack_order(item: pytest.Item) -> int:
    """Tests without the stacks first, then those on etcd's alone, then those on a shim's (which
    pytest has grouped by datastore kind: a stable sort keeps the groups)."""
    return 2 if "shim_stack" in item.fixturenames else 1 if "etcd_stack" in item.fixturenames else 0


@pytest.hookimpl(trylast=True)  # after pytest's own grouping of the tests by fixture parameter
def pytest_collection_modifyitems(items):
    here = pathlib.Path(__file__).parent
    positions = [i for i, item in enumerate(items) if here in item.path.parents]
    ordered = sorted((items[i] for i in positions), key=stack_order)
    for position, item in zip(positions, ordered, strict=True):
        items[position] = item


@pytest.fixture(scope="package")
def etcd_stack(tmp_path_factory):
    stack = start_stack("etcd", tmp_path_factory.mktemp("kube-etcd"))
    yield stack
    stack.stop()


@pytest.fixture(scope="package", params=["embedded", "cosmos"])
def shim_stack(request, tmp_path_factory):
    stack = start_stack(request.param, tmp_path_factory.mktemp(f"kube-{request.param}"))
    yield stack
    stack.stop()
