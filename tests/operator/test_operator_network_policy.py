"""The NetworkPolicy of a CosmosEtcdCluster: who is admitted to which port (operator/network_policy.py),
valid for Kubernetes, refused when the spec's selectors are not, and set back by the operator when
edited or deleted."""
from __future__ import annotations

import pytest

from cosmos_etcd_operator import network_policy
from cosmos_etcd_operator.spec import InvalidSpec, parse
from tests.harness.kube import EVENTS, NETWORK_POLICIES
from tests.harness.manifests import kubernetes_errors
from tests.harness.operator import NAMESPACE
from tests.operator.test_operator_drift import DRIFT_INTERVAL
from tests.operator.test_operator_lifecycle import SELECTOR, ready_cluster

OWNER = {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster",
         "metadata": {"name": "tenant-a", "namespace": "control-planes", "uid": "0b4c9d1e-uid"}}
AZURE = {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "location": "westeurope"}
CLIENTS = {"protocol": "TCP", "port": 2379}
METRICS = {"protocol": "TCP", "port": 2381}
# The replicas' leader election: followers forward writes to the leader, and only they may.
REPLICAS = {"from": [{"podSelector": {"matchLabels": SELECTOR}}], "ports": [{"protocol": "TCP", "port": 2380}]}


def _policy(**shim) -> dict:
    return network_policy.network_policy(OWNER, parse({"azure": AZURE, "shim": shim}, name="tenant-a"))


def test_by_default_clients_of_its_namespace_and_scrapers_of_labelled_namespaces():
    policy = _policy()

    assert policy["metadata"]["name"] == "tenant-a" and policy["metadata"]["namespace"] == "control-planes"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "0b4c9d1e-uid"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": SELECTOR},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": {}}], "ports": [CLIENTS]},
            REPLICAS,
            {"from": [{"namespaceSelector": {"matchLabels": {"cosmosetcd.io/scrape-metrics": "true"}}}],
             "ports": [METRICS]},
        ]}
    assert kubernetes_errors([policy]) == []


def test_the_spec_widens_or_narrows_each_port():
    apiservers = {"podSelector": {"matchLabels": {"component": "kube-apiserver"}}}
    tenants = {"namespaceSelector": {"matchExpressions": [{"key": "tenant", "operator": "In", "values": ["a", "b"]}]},
               "podSelector": {"matchExpressions": [{"key": "etcd-client", "operator": "Exists"}]}}
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

    policy = _policy(allowedClients=[apiservers, tenants], metrics={"allowedFrom": [prometheus]})

    assert policy["spec"]["ingress"] == [{"from": [apiservers, tenants], "ports": [CLIENTS]}, REPLICAS,
                                         {"from": [prometheus], "ports": [METRICS]}]
    assert kubernetes_errors([policy]) == []


def test_an_empty_list_admits_nobody_rather_than_everybody():
    """A NetworkPolicy rule without peers admits every source: an empty list drops the port's rule."""
    assert _policy(metrics={"allowedFrom": []})["spec"]["ingress"] == [{"from": [{"podSelector": {}}],
                                                                        "ports": [CLIENTS]}, REPLICAS]
    closed = _policy(allowedClients=[], metrics={"allowedFrom": []})
    assert closed["spec"]["ingress"] == [REPLICAS] and closed["spec"]["policyTypes"] == ["Ingress"]
    assert kubernetes_errors([closed]) == []


@pytest.mark.parametrize("shim, message", [
    ({"allowedClients": {"podSelector": {}}}, "spec.shim.allowedClients must be a list"),
    ({"allowedClients": [{}]}, "spec.shim.allowedClients[0] must have a podSelector and/or a namespaceSelector"),
    ({"allowedClients": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}, "spec.shim.allowedClients[0] must have a podSelector"),
    ({"allowedClients": [{"podSelector": {"matchLabels": {"a": 1}}}]},
     "spec.shim.allowedClients[0].podSelector.matchLabels must map label names to strings"),
    ({"metrics": {"allowedFrom": [{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]}},
     "spec.shim.metrics.allowedFrom[0].namespaceSelector.matchExpressions[0].operator must be one of"),
    ({"metrics": {"allowedFrom": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}},
     "values must be a non-empty list of strings with operator In"),
    ({"allowedClients": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                                                  "values": ["x"]}]}}]},
     "values must be empty with operator Exists"),
])
def test_bad_selectors_are_refused_with_the_field_named(shim, message):
    with pytest.raises(InvalidSpec, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse({"azure": AZURE, "shim": shim}, name="tenant-a")


async def test_the_operator_keeps_the_policy_as_the_spec_says(kube_api, arm_stand_in, arm_service_principal,
                                                              start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator, drift_interval=DRIFT_INTERVAL)
    stored = kube_api.get(NETWORK_POLICIES, NAMESPACE, "tenant-a")
    assert stored["spec"] == _policy()["spec"]
    condition = cluster.condition("NetworkPolicy")
    assert (condition["status"], condition["reason"]) == ("True", "Enforced")
    assert condition["message"] == ("client port 2379 open to the pods of its own namespace; peer port 2380 open to "
                                    "its own replicas; metrics port 2381 open to namespaces labelled "
                                    "cosmosetcd.io/scrape-metrics=true")

    # Opened to everyone behind the operator's back: set back by the drift timer, with an event.
    await kube_api.patch_object(NETWORK_POLICIES, NAMESPACE, "tenant-a",
                                {"spec": {"ingress": [{"ports": [CLIENTS]}]}})
    await kube_api.wait_for(lambda: kube_api.get(NETWORK_POLICIES, NAMESPACE, "tenant-a")["spec"] == stored["spec"],
                            what="the policy set back")
    # Deleted: created again.
    await kube_api.delete_object(NETWORK_POLICIES, NAMESPACE, "tenant-a")
    await kube_api.wait_for(lambda: (kube_api.get(NETWORK_POLICIES, NAMESPACE, "tenant-a") or {}).get("spec")
                            == stored["spec"], what="the policy created again")

    def reasons():
        return {(event["reason"], event["message"]) for event in kube_api.list(EVENTS, NAMESPACE)}
    await kube_api.wait_for(lambda: {("Restored", "NetworkPolicy tenant-a differed from the spec: set back"),
                                     ("Restored", "NetworkPolicy tenant-a was missing: created again")} <= reasons(),
                            what="an event for each restoration")

    # The spec changes who is admitted: the policy follows.
    await cluster.patch_spec({"shim": {"allowedClients": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}]}})
    await kube_api.wait_for(lambda: kube_api.get(NETWORK_POLICIES, NAMESPACE, "tenant-a")["spec"]["ingress"][0]
                            == {"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}], "ports": [CLIENTS]},
                            what="the policy of the new spec")
    await kube_api.wait_for(lambda: cluster.condition("NetworkPolicy")["message"].startswith(
        "client port 2379 open to 1 selector of the spec"), what="the condition of the new spec")
