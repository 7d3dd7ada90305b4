"""Cost accounting: Cosmos requests, request units (``x-ms-request-charge``) and latency per operation.

Every HTTP response the SDK receives (including its own retries and metadata reads) is counted
under the operation label in force (a context variable the backend sets around each of its
operations: ``append``, ``read``, ``compact`` ...). A caller may set a label of its own around a
call with :func:`operation` (e.g. the etcd method), which then takes precedence.

The figures go to Prometheus (``cosmos_etcd_cosmos_requests_total{op,status}``,
``cosmos_etcd_cosmos_request_units_total{op}``, ``cosmos_etcd_cosmos_operation_seconds{op}``)
and to a :class:`CosmosStats` object that tests and benchmarks read directly.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
from collections import defaultdict

from prometheus_client import Counter, Histogram

COSMOS_REQUESTS = Counter("cosmos_etcd_cosmos_requests", "Cosmos DB HTTP requests, by operation and status",
                          ["op", "status"])
COSMOS_REQUEST_UNITS = Counter("cosmos_etcd_cosmos_request_units", "Cosmos DB request units charged, by operation",
                               ["op"])
COSMOS_OPERATION_SECONDS = Histogram("cosmos_etcd_cosmos_operation_seconds",
                                     "time of one storage operation on Cosmos DB, retries included", ["op"],
                                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

_operation: contextvars.ContextVar[str | None] = contextvars.ContextVar("cosmos_etcd_operation", default=None)
_caller_operation: contextvars.ContextVar[str | None] = contextvars.ContextVar("cosmos_etcd_caller_operation",
                                                                              default=None)


@contextlib.contextmanager
def operation(name: str):
    """Count the Cosmos requests made inside this block under ``name`` (e.g. an etcd method)."""
    token = _caller_operation.set(name)
    try:
        yield
    finally:
        _caller_operation.reset(token)


@contextlib.contextmanager
def backend_operation(name: str):
    """The backend's own label; a caller's :func:`operation` label wins."""
    token = _operation.set(name)
    try:
        yield
    finally:
        _operation.reset(token)


def current_operation() -> str:
    return _caller_operation.get() or _operation.get() or "other"


@dataclasses.dataclass
class OperationStats:
    requests: int = 0
    request_units: float = 0.0
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)


class CosmosStats:
    """Running totals per operation label, for tests, benchmarks and Status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_op: dict[str, OperationStats] = defaultdict(OperationStats)

    def record(self, op: str, status: str, request_units: float) -> None:
        with self._lock:
            stats = self._by_op[op]
            stats.requests += 1
            stats.request_units += request_units
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
        COSMOS_REQUESTS.labels(op, status).inc()
        if request_units:
            COSMOS_REQUEST_UNITS.labels(op).inc(request_units)

    def snapshot(self) -> dict[str, OperationStats]:
        with self._lock:
            return {op: dataclasses.replace(s, statuses=dict(s.statuses)) for op, s in self._by_op.items()}

    def reset(self) -> None:
        with self._lock:
            self._by_op.clear()

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(s.requests for s in self._by_op.values())

    @property
    def request_units(self) -> float:
        with self._lock:
            return sum(s.request_units for s in self._by_op.values())
