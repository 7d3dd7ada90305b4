"""Background tasks that must not die silently: the committer, lease expiry, heartbeats, upkeep.

Each one runs under :class:`Supervisor`: when it fails, the failure is logged with its cause and
counted (``cosmos_etcd_background_task_failures``), and the task is started again after a short
delay that grows while it keeps failing. A *core* task (one without which requests hang: the
committer, lease expiry) that failed :data:`FAILURES_TO_BE_DOWN` times within
:data:`FAILURE_WINDOW_SECONDS` makes :meth:`Supervisor.failing` report it, and ``/livez`` fails,
so that Kubernetes restarts a process that cannot recover by itself. One failure is not enough:
a restart of the task is cheaper than a restart of the process, which reloads the whole store.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from cosmos_etcd_shim import metrics

logger = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 0.2
RESTART_DELAY_MAX_SECONDS = 5.0
FAILURE_WINDOW_SECONDS = 60.0
FAILURES_TO_BE_DOWN = 3


class Supervisor:
    """Runs named background tasks for the life of the server, restarting those that fail."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._last_error: dict[str, str] = {}
        self._core: set[str] = set()

    def start(self, name: str, run: Callable[[], Awaitable[None]], *, core: bool = False) -> asyncio.Task:
        """Run ``run()`` under supervision; cancel the returned task to stop it for good."""
        if core:
            self._core.add(name)
        self._failures.setdefault(name, collections.deque())
        metrics.TASK_FAILURES.labels(name)  # a series at 0 from the start, so that the first failure is an increase
        return asyncio.create_task(self._supervise(name, run), name=name)

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        delay = RESTART_DELAY_SECONDS
        while True:
            try:
                await run()
                error = "returned, but should run for the life of the server"
                logger.error("background task ended; restarting it", extra={"task": name})
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever it was, the task must run again
                error = f"{type(e).__name__}: {e}"
                logger.error("background task failed; restarting it", exc_info=e,
                             extra={"task": name, "error": error, "restart_in_seconds": delay})
            metrics.TASK_FAILURES.labels(name).inc()
            self._record_failure(name, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)

    def _record_failure(self, name: str, error: str) -> None:
        failures = self._failures[name]
        failures.append(self.clock())
        self._last_error[name] = error
        self._forget_old(failures)

    def _forget_old(self, failures: collections.deque[float]) -> None:
        horizon = self.clock() - FAILURE_WINDOW_SECONDS
        while failures and failures[0] < horizon:
            failures.popleft()

    def failing(self) -> dict[str, str]:
        """The core tasks that keep failing, each with why: what ``/livez`` reports."""
        failing = {}
        for name in sorted(self._core):
            failures = self._failures[name]
            self._forget_old(failures)
            if len(failures) >= FAILURES_TO_BE_DOWN:
                failing[name] = (f"{name} failed {len(failures)} times in {FAILURE_WINDOW_SECONDS:g} s "
                                 f"(last: {self._last_error[name]})")
        return failing
