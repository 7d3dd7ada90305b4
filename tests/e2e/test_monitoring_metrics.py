"""The shim's side of the chart's monitoring (issue 15, item 4), on a running shim.

A shim on the Cosmos backend (the local Cosmos server) serving TLS from files, after a few puts, a
watch and a range:

* its scrape holds every shim metric that the chart's alert rules and Grafana dashboard query
  (the operator's are checked in tests/operator/test_operator_metrics.py);
* ``cosmos_etcd_tls_certificate_expiration_timestamp_seconds`` is the served certificate's
  notAfter, and follows a rotated certificate from the next handshake on;
* ``cosmos_etcd_watch_delivery_lag_revisions`` observes how far the store is ahead of the last
  event of a watch response when it is sent: a watcher on one key, created from that key's
  revision after ten writes to another key, is sent its event ten revisions late.
"""
from __future__ import annotations

import datetime
import pathlib

import grpc
import trustme

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from tests.harness import processes
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.metrics import scrape
from tests.harness.monitoring import PROMETHEUS_SERIES, chart_queries, metric_names, sample_names

from .conftest import shim_only

pytestmark = shim_only

EXPIRY_METRIC = "cosmos_etcd_tls_certificate_expiration_timestamp_seconds"
FIRST_NOT_AFTER = datetime.datetime(2031, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)
ROTATED_NOT_AFTER = datetime.datetime(2032, 7, 15, 6, 30, tzinfo=datetime.timezone.utc)


def write_certificate(ca: trustme.CA, directory: pathlib.Path, not_after: datetime.datetime) -> None:
    issued = ca.issue_cert("127.0.0.1", "localhost", not_after=not_after)
    issued.cert_chain_pems[0].write_to_path(str(directory / "tls.crt"))
    issued.private_key_pem.write_to_path(str(directory / "tls.key"))


def test_the_shim_serves_what_the_chart_queries(cosmos, tmp_path):
    ca = trustme.CA()
    write_certificate(ca, tmp_path, FIRST_NOT_AFTER)
    ca_pem = ca.cert_pem.bytes()

    def credentials():
        return grpc.ssl_channel_credentials(ca_pem)

    metrics_port = processes.free_port()
    cert_file = str(tmp_path / "tls.crt")
    server = processes.start_shim(
        tmp_path / "shim", backend="cosmos", env=LOCAL_COSMOS_KEY, scheme="https", credentials=credentials,
        extra_args=["--cosmos-endpoint", cosmos.endpoint, "--cosmos-container", "monitoring",
                    "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}",
                    "--cert-file", cert_file, "--key-file", str(tmp_path / "tls.key")])
    try:
        with grpc.secure_channel(server.endpoint, credentials()) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            watched = kv.Put(rpc_pb2.PutRequest(key=b"watched", value=b"v"), timeout=10).header.revision
            for number in range(10):
                kv.Put(rpc_pb2.PutRequest(key=b"other", value=str(number).encode()), timeout=10)
            before = scrape(metrics_port)
            (event,) = watch_once(rpc_pb2_grpc.WatchStub(channel), b"watched", watched)
            assert event.kv.mod_revision == watched
            kv.Range(rpc_pb2.RangeRequest(key=b"watched"), timeout=10)
        samples = scrape(metrics_port)

        lag = "cosmos_etcd_watch_delivery_lag_revisions"
        assert samples[f"{lag}_count"] - before[f"{lag}_count"] == 1
        assert samples[f"{lag}_sum"] - before[f"{lag}_sum"] == 10

        queried = {name for queries in chart_queries().values() for query in queries for name in metric_names(query)}
        shim_metrics = {name for name in queried - PROMETHEUS_SERIES if not name.startswith("cosmos_etcd_operator_")}
        assert {"cosmos_etcd_cosmos_requests_total", "cosmos_etcd_cosmos_request_units_total", EXPIRY_METRIC,
                f"{lag}_bucket", "cosmos_etcd_storage_append_seconds_bucket"} <= shim_metrics
        assert sorted(shim_metrics - sample_names(samples)) == []

        expiry = f'{EXPIRY_METRIC}{{cert_file="{cert_file}"}}'
        assert samples[expiry] == FIRST_NOT_AFTER.timestamp()
        write_certificate(ca, tmp_path, ROTATED_NOT_AFTER)
        with grpc.secure_channel(server.endpoint, credentials()) as channel:  # a handshake reads the files
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"watched"), timeout=10)
        assert scrape(metrics_port)[expiry] == ROTATED_NOT_AFTER.timestamp()
    finally:
        server.stop()


def watch_once(stub: rpc_pb2_grpc.WatchStub, key: bytes, start_revision: int) -> list:
    """The events of the first response with events to a watcher of ``key`` from ``start_revision``."""
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, start_revision=start_revision))
    responses = stub.Watch(iter([create]), timeout=30)
    try:
        for response in responses:
            if response.events:
                return list(response.events)
    finally:
        responses.cancel()
    raise AssertionError("the watch ended without an event")
