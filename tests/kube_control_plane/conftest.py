"""The Kubernetes tests wait for the Kubernetes binaries before pytest-timeout's clock starts.

Under ``.ci/run`` the binaries are built in the background while the suite runs; if the build is
still going when these tests come, waiting for it inside a test would count against the test's
timeout (300 s) and end in a timeout rather than a build result. So the wait happens here, in a
hook wrapped around pytest-timeout's; its outcome (the path, or the failure, remembered) is what
``tests/harness/kube_apiserver.py`` then gives the tests, which skip or fail with it.
"""
from __future__ import annotations

import contextlib

import pytest

from tests.harness import kube_apiserver


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item):
    # a failure is remembered by the harness and reported by the test (skip, or fail with the log)
    with contextlib.suppress(kube_apiserver.KubernetesUnavailable, RuntimeError):
        kube_apiserver.kubernetes_bin()
    yield
