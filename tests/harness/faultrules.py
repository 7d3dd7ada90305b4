"""Additions to the fault-injecting proxy (:mod:`tests.harness.faultproxy`) for outage tests.

* :class:`SampledRule`: a :class:`~tests.harness.faultproxy.Rule` that applies to a seeded random
  fraction of the requests it matches ("30 % of log creates answer 429"). Seeded; which requests
  are hit still depends on the order concurrent requests arrive in.
* :func:`on_proxy`: run a function on the proxy's own event loop thread and wait until it ran
  (rule changes, ``refuse``, ``reset_connections`` are not thread-safe from the test thread).
* :class:`Faults`: a proxy on a thread of its own in front of the Cosmos server, driven from the
  test's thread through :func:`on_proxy` (one per shim process, so that faults reach that one only).
"""
from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Callable

from tests.harness.faultproxy import FaultProxy, Rule, ThreadedFaultProxy


@dataclasses.dataclass
class SampledRule(Rule):
    """A rule that applies to ``fraction`` of the requests it would match (seeded random draws)."""

    fraction: float = 1.0
    seed: int = 0
    skipped: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def matches(self, operation: str, method: str, path: str, body: bytes) -> bool:
        if not super().matches(operation, method, path, body):
            return False
        if self._rng.random() < self.fraction:
            return True
        self.skipped += 1
        return False


def on_proxy(threaded: ThreadedFaultProxy, fn: Callable[[FaultProxy], object], timeout: float = 10.0) -> None:
    """Run ``fn(proxy)`` on the proxy's event loop thread; return once it has run."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run(proxy: FaultProxy) -> None:
        try:
            fn(proxy)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(e)
        finally:
            done.set()

    threaded.call(run)
    if not done.wait(timeout):
        raise TimeoutError(f"the fault proxy did not run {fn!r} within {timeout}s")
    if failure:
        raise failure[0]


@dataclasses.dataclass
class Faults:
    """A fault proxy in front of the Cosmos server, on its own thread."""

    threaded: ThreadedFaultProxy
    proxy: FaultProxy

    @classmethod
    def start(cls, upstream_port: int) -> Faults:
        threaded = ThreadedFaultProxy("127.0.0.1", upstream_port)
        return cls(threaded, threaded.__enter__())

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    def add(self, *rules: Rule) -> None:
        on_proxy(self.threaded, lambda p: p.add(*rules))

    def clear(self) -> None:
        on_proxy(self.threaded, lambda p: p.clear())

    def log(self) -> list[tuple[str, str, str]]:
        entries: list = []
        on_proxy(self.threaded, lambda p: entries.extend(p.log))
        return entries

    def close(self) -> None:
        self.threaded.__exit__(None, None, None)
