"""What the operator writes, and where secrets may go: only into the keys Secret. No client secret,
account key or bearer token in any stored object (status, events, children), log line or metric;
on the CosmosEtcdCluster only its status and its finalizer change (GitOps owns the rest)."""
from __future__ import annotations

import base64
import logging
import urllib.request

import kmock

from tests.harness import arm
from tests.harness.kube import CLUSTERS, EVENTS, SECRETS
from tests.harness.operator import NAMESPACE
from tests.operator.test_operator_lifecycle import SPEC, ready_cluster

CLUSTER_PATH = f"/apis/cosmosetcd.io/v1alpha1/namespaces/{NAMESPACE}/cosmosetcdclusters/tenant-a"


async def test_no_secret_in_status_events_objects_or_logs(kube_api, arm_stand_in, arm_service_principal,
                                                          start_operator, caplog):
    caplog.set_level(logging.DEBUG)
    keys = [dict(arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd").keys)]
    arm_stand_in.fail_next("container.create", "Conflict", status=409)
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator,
                                  {**SPEC, "deletionPolicy": "Delete"}, drift_interval=0.3)
    keys.append(arm_stand_in.rotate_keys(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd"))
    await kube_api.wait_for(lambda: cluster.ever("Keys", "True") and _secret_holds(kube_api, keys[-1]),
                            what="the rotated key in the Secret")
    await cluster.patch_spec({"throughput": {"mode": "Autoscale", "requestUnits": 1000}})
    await kube_api.wait_for(lambda: cluster.body["status"]["throughput"]["mode"] == "Autoscale", what="autoscale")
    metrics = _get(f"http://{cluster.operator.config.metrics_address}/metrics")
    await cluster.delete()
    await cluster.wait_gone()

    secrets = {arm_service_principal["clientSecret"], *arm_stand_in.issued_tokens,
               *(value for generation in keys for value in generation.values())}
    assert len(secrets) >= 6 and all(len(value) >= 20 for value in secrets)

    stored = [(key, version) for key, obj in kube_api.objects.items() if key[0] != kmock.resource(SECRETS)
              for version in obj.history if version is not None]
    events = [version for key, version in stored if key[0] == kmock.resource(EVENTS)]
    assert events and any(key[0] == kmock.resource(CLUSTERS) for key, _ in stored)
    logs = [record.getMessage() for record in caplog.records]
    assert len(logs) > 100
    writes = [repr(body) for method, path, body in kube_api.writes if "/secrets" not in path]
    texts = {"stored objects": [repr(version.raw) for _, version in stored], "log lines": logs,
             "API writes": writes, "metrics": [metrics]}
    for where, items in texts.items():
        for text in items:
            for secret in secrets:
                assert secret not in text, f"a secret value in {where}: {text[:200]}"


def _secret_holds(kube_api, keys: dict[str, str]) -> bool:
    secret = kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys")
    return base64.b64decode(secret["data"]["key"]).decode() == keys["primaryMasterKey"]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


async def test_only_status_and_the_finalizer_are_written_on_the_cluster(kube_api, arm_stand_in,
                                                                        arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    change = {"spec": {"throughput": {"mode": "Manual", "requestUnits": 600}}}
    await cluster.patch_spec(change["spec"])
    await kube_api.wait_for(lambda: cluster.body["status"]["throughput"]["requestUnits"] == 600, what="600 RU/s")
    await cluster.delete()
    await cluster.wait_gone()
    collection = CLUSTER_PATH.rsplit("/", 1)[0]
    writes = [(method, path.split("?")[0], body) for method, path, body in kube_api.writes
              if path.split("?")[0] in (collection, CLUSTER_PATH, CLUSTER_PATH + "/status")]
    # Take away the test's own three writes: what is left is the operator's.
    for own in (lambda method, path, body: method == "POST" and path == collection,
                lambda method, path, body: method == "PATCH" and body == change,
                lambda method, path, body: method == "DELETE"):
        writes.remove(next(write for write in writes if own(*write)))
    assert writes
    for method, path, body in writes:
        assert method == "PATCH", (method, path)
        if path.endswith("/status"):
            assert set(body) == {"status"}, body
        else:  # kopf's finalizer, as a JSON patch guarded by the resourceVersion
            assert isinstance(body, list) and all(
                op["path"] == "/metadata/resourceVersion" and op["op"] == "test"
                or op["path"].startswith("/metadata/finalizers") for op in body), body


async def test_metrics_and_liveness(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    config = cluster.operator.config
    _get(f"http://{config.liveness_address}/healthz")
    metrics = _get(f"http://{config.metrics_address}/metrics")
    assert 'cosmos_etcd_operator_reconciliations_total{result="ready",trigger="change"}' in metrics
    assert 'cosmos_etcd_operator_azure_operations_total{result="pending",step="Account"}' in metrics
    assert "cosmos_etcd_operator_reconcile_seconds_bucket" in metrics
