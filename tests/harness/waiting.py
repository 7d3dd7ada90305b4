"""Waiting for a condition in a test: poll it, with a deadline, rather than sleep a guessed time."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def poll(condition: Callable[[], Any], timeout: float, what: str, pace: float = 0.05) -> Any:
    """The first truthy value of ``condition()``, asked every ``pace`` seconds; fails the test after
    ``timeout`` seconds, naming ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(pace)
