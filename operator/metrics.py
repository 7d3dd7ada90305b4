"""Prometheus metrics of the operator, served on ``--metrics-address`` at ``/metrics``."""
from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILIATIONS = Counter(
    "cosmos_etcd_operator_reconciliations", "reconciliations of a CosmosEtcdCluster, by trigger and result "
    "(ready, progressing, pending, error, stalled, invalid)", ["trigger", "result"])
RECONCILE_SECONDS = Histogram("cosmos_etcd_operator_reconcile_seconds", "time of one reconciliation",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
AZURE_OPERATIONS = Counter(
    "cosmos_etcd_operator_azure_operations", "Azure steps, by step and result (ready, pending, or Azure's error "
    "code)", ["step", "result"])


def serve_metrics(address: str):
    """Serve ``/metrics`` on ``host:port`` from a background thread (port 0 picks one); returns the
    server (``server_port``, ``shutdown()``)."""
    host, _, port = address.rpartition(":")
    server, _ = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    return server
