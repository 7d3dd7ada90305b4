"""The Prometheus endpoint (--listen-metrics-urls): calls, revisions and commits are counted."""
import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from tests.harness.metrics import scrape
from tests.harness.processes import free_port, start_shim


@pytest.fixture
def shim_with_metrics(tmp_path):
    port = free_port()
    server = start_shim(tmp_path, extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{port}"])
    yield server, port
    server.stop()


def test_metrics_count_calls_and_revisions(shim_with_metrics):
    server, port = shim_with_metrics
    before = scrape(port)
    with grpc.insecure_channel(server.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for i in range(3):
            kv.Put(rpc_pb2.PutRequest(key=b"m%d" % i, value=b"v"))
        with pytest.raises(grpc.RpcError):
            kv.Put(rpc_pb2.PutRequest(key=b""))
        revision = kv.Range(rpc_pb2.RangeRequest(key=b"m0")).header.revision
    after = scrape(port)
    put_ok = 'cosmos_etcd_grpc_requests_total{code="OK",method="Put"}'
    assert after[put_ok] - before.get(put_ok, 0) == 3
    assert after['cosmos_etcd_grpc_requests_total{code="INVALID_ARGUMENT",method="Put"}'] == 1
    assert after["cosmos_etcd_revision"] == revision
    assert after["cosmos_etcd_commit_batch_requests_sum"] - before.get("cosmos_etcd_commit_batch_requests_sum", 0) == 3
