"""Prometheus metrics of the operator, served on ``--metrics-address`` at ``/metrics``.

Series about one CosmosEtcdCluster carry its ``namespace`` and its name as ``etcd_cluster``: the
labels the chart's ServiceMonitors give the shims' series too (the operator's ServiceMonitor
honours the operator's own ``namespace``), so that one joins the other, e.g. request units used
by a cluster's shims over the throughput provisioned for it.
"""
from __future__ import annotations

import dataclasses
import threading

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILIATIONS = Counter(
    "cosmos_etcd_operator_reconciliations", "reconciliations of a CosmosEtcdCluster, by trigger and result "
    "(ready, progressing, pending, error, stalled, invalid)", ["trigger", "result"])
RECONCILE_SECONDS = Histogram("cosmos_etcd_operator_reconcile_seconds", "time of one reconciliation",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
AZURE_OPERATIONS = Counter(
    "cosmos_etcd_operator_azure_operations", "Azure steps, by step and result (ready, pending, or Azure's error "
    "code)", ["step", "result"])
ARM_REQUESTS = Counter(
    "cosmos_etcd_operator_arm_requests", "calls to Azure Resource Manager (azure-core's quick retries inside "
    "one), by operation and code (OK, or Azure's error code)", ["operation", "code"])
RECONCILE_ERRORS = Counter(
    "cosmos_etcd_operator_reconcile_errors", "reconciliations stopped by an error, by cluster, part and code "
    "(Azure's error code, or the reason of a credentials or Kubernetes API failure)",
    ["namespace", "etcd_cluster", "part", "code"])
READY_STATES = ("True", "False", "Unknown")


@dataclasses.dataclass(frozen=True)
class ClusterState:
    ready: str  # the Ready condition's status
    throughput_mode: str | None = None  # Manual or Autoscale, once the throughput part was reached
    request_units: int | None = None  # RU/s, or the autoscale maximum


class ClusterStates(Collector):
    """What the operator last wrote in each cluster's status, as gauges computed at each scrape:
    ``cosmos_etcd_operator_clusters{ready}`` and
    ``cosmos_etcd_operator_provisioned_request_units_per_second{namespace,etcd_cluster,mode}``.
    Computed rather than set, so that a deleted cluster leaves no series behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # scrapes come from the metrics server's thread
        self._clusters: dict[tuple[str, str], ClusterState] = {}

    def record(self, namespace: str, name: str, state: ClusterState) -> None:
        with self._lock:
            self._clusters[namespace, name] = state

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._clusters.pop((namespace, name), None)

    def clear(self) -> None:
        with self._lock:
            self._clusters.clear()

    def collect(self):
        with self._lock:
            clusters = dict(self._clusters)
        by_ready = GaugeMetricFamily("cosmos_etcd_operator_clusters", "CosmosEtcdClusters by the status of their "
                                     "Ready condition", labels=["ready"])
        for ready in READY_STATES:
            by_ready.add_metric([ready], sum(state.ready == ready for state in clusters.values()))
        yield by_ready
        throughput = GaugeMetricFamily(
            "cosmos_etcd_operator_provisioned_request_units_per_second", "throughput in force on a cluster's "
            "container (RU/s; with Autoscale, its maximum)", labels=["namespace", "etcd_cluster", "mode"])
        for (namespace, name), state in sorted(clusters.items()):
            if state.request_units is not None:
                throughput.add_metric([namespace, name, state.throughput_mode], state.request_units)
        yield throughput


CLUSTERS = ClusterStates()
REGISTRY.register(CLUSTERS)


def serve_metrics(address: str):
    """Serve ``/metrics`` on ``host:port`` from a background thread (port 0 picks one); returns the
    server (``server_port``, ``shutdown()``)."""
    host, _, port = address.rpartition(":")
    server, _ = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    return server
