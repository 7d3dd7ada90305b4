"""The operator's metrics, as the chart's alerts and dashboard read them (issue 15, item 4).

A cluster's life seen on ``/metrics``: ``cosmos_etcd_operator_clusters{ready}`` and the provisioned
RU/s per cluster follow its status (a throughput change, pods becoming unavailable, deletion);
ARM calls are counted by operation and code, and a reconciliation stopped by Azure's error by
cluster, part and code. Every operator metric that the rendered PrometheusRule and dashboard
query is in the scrape. Counters are read as increases: they are per process, and other tests run
operators in this process too.
"""
from __future__ import annotations

from prometheus_client import REGISTRY

from tests.harness.metrics import scrape
from tests.harness.monitoring import PROMETHEUS_SERIES, chart_queries, metric_names, sample_names
from tests.harness.operator import NAMESPACE
from tests.operator.test_operator_lifecycle import ready_cluster

CLUSTER = {"namespace": NAMESPACE, "etcd_cluster": "tenant-a"}


def sample(samples: dict[str, float], name: str, **labels: str) -> float | None:
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    return samples.get(key)


def counted(name: str, **labels: str) -> float:
    """A counter's value in this process now (0 before its first increment)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_cluster_life_on_the_operators_metrics(kube_api, arm_stand_in, arm_service_principal, start_operator):
    conflict = {"name": "cosmos_etcd_operator_reconcile_errors_total", **CLUSTER, "part": "Container",
                "code": "Conflict"}
    refused_create = {"name": "cosmos_etcd_operator_arm_requests_total", "operation": "create_or_update_container",
                      "code": "Conflict"}
    created = {"name": "cosmos_etcd_operator_arm_requests_total", "operation": "create_account", "code": "OK"}
    before = {key: counted(**labels) for key, labels in
              {"conflict": conflict, "refused_create": refused_create, "created": created}.items()}
    arm_stand_in.fail_next("container.create", "Conflict", status=409)

    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    port = int(cluster.operator.config.metrics_address.rpartition(":")[2])
    samples = scrape(port)
    assert sample(samples, "cosmos_etcd_operator_clusters", ready="True") == 1
    assert sample(samples, "cosmos_etcd_operator_clusters", ready="False") == 0
    assert sample(samples, "cosmos_etcd_operator_provisioned_request_units_per_second", **CLUSTER,
                  mode="Manual") == 400
    for key, labels in {"conflict": conflict, "refused_create": refused_create, "created": created}.items():
        assert sample(samples, **labels) == before[key] + 1, key

    # What the chart's rules and dashboard read of the operator is all there.
    queried = {name for queries in chart_queries().values() for query in queries for name in metric_names(query)}
    operator_metrics = {name for name in queried if name.startswith("cosmos_etcd_operator_")}
    assert len(operator_metrics) >= 6
    assert sorted(operator_metrics - sample_names(samples)) == []
    assert queried - PROMETHEUS_SERIES - operator_metrics, "the shim's metrics are checked in tests/e2e"

    await cluster.patch_spec({"throughput": {"mode": "Autoscale", "requestUnits": 4000}})
    await kube_api.wait_for(lambda: cluster.body["status"]["throughput"]["mode"] == "Autoscale", what="autoscale")
    samples = scrape(port)
    assert sample(samples, "cosmos_etcd_operator_provisioned_request_units_per_second", **CLUSTER,
                  mode="Autoscale") == 4000
    assert sample(samples, "cosmos_etcd_operator_provisioned_request_units_per_second", **CLUSTER,
                  mode="Manual") is None

    await cluster.make_pods_available(0)
    await cluster.wait_condition("Ready", "False")
    samples = scrape(port)
    assert (sample(samples, "cosmos_etcd_operator_clusters", ready="True"),
            sample(samples, "cosmos_etcd_operator_clusters", ready="False")) == (0, 1)

    await cluster.delete()
    await cluster.wait_gone()
    samples = scrape(port)
    assert [sample(samples, "cosmos_etcd_operator_clusters", ready=ready) for ready in ("True", "False", "Unknown")] \
        == [0, 0, 0]
    assert not [key for key in samples if key.startswith("cosmos_etcd_operator_provisioned_request_units")]


async def test_a_failed_operation_is_counted_under_its_code(kube_api, arm_stand_in, arm_service_principal,
                                                           start_operator):
    """A long-running operation that ends Failed: its poll is counted under the operation's error
    code, and so is the reconciliation it stopped; the next attempt succeeds."""
    failed_poll = {"name": "cosmos_etcd_operator_arm_requests_total", "operation": "poll_operation",
                   "code": "ServiceUnavailable"}
    stopped = {"name": "cosmos_etcd_operator_reconcile_errors_total", **CLUSTER, "part": "Account",
               "code": "ServiceUnavailable"}
    before = counted(**failed_poll), counted(**stopped)
    arm_stand_in.fail_next("account.create", "ServiceUnavailable", "Regional capacity exhausted")
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    samples = scrape(int(cluster.operator.config.metrics_address.rpartition(":")[2]))
    assert (sample(samples, **failed_poll), sample(samples, **stopped)) == (before[0] + 1, before[1] + 1)
    assert sample(samples, "cosmos_etcd_operator_arm_requests_total", operation="get_account",
                  code="ResourceNotFound") >= 1  # absent before it was created: counted under ARM's code
