"""Consistency and region failover, end to end (issue 11): the real operator against the Kubernetes
API emulator and the ARM stand-in.

A multi-region account is Strong unless the spec says otherwise; BoundedStaleness with automatic
failover across regions is refused until ``spec.account.acceptDataLossOnFailover`` accepts the loss,
and then the accepted risk stays visible (condition, Warning event, ``status.consistency``).
"""
from __future__ import annotations

import copy

from tests.harness import arm
from tests.harness.kube import CLUSTERS, EVENTS
from tests.harness.operator import NAMESPACE, ClusterDriver
from tests.operator.test_operator_lifecycle import SPEC, ready_cluster

TWO_REGIONS = [{"name": "westeurope", "failoverPriority": 0}, {"name": "northeurope", "failoverPriority": 1}]


def _spec(**account) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["account"].update(account)
    return spec


def _account(arm_stand_in) -> arm.Account:
    return arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")


async def test_a_multi_region_cluster_is_strong_by_default(kube_api, arm_stand_in, arm_service_principal,
                                                           start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator, spec=_spec(locations=TWO_REGIONS))

    account = _account(arm_stand_in)
    assert account.consistency["defaultConsistencyLevel"] == "Strong" and account.automatic_failover is True
    assert [location["locationName"] for location in account.locations] == ["westeurope", "northeurope"]
    assert cluster.body["status"]["consistency"] == "Strong"
    assert cluster.condition("DataLossOnFailover") is None


async def test_a_stored_spec_that_can_lose_writes_waits_for_an_explicit_acceptance(kube_api, arm_stand_in,
                                                                                   arm_service_principal,
                                                                                   start_operator):
    """An object stored before the CRD refused it (the old schema defaulted BoundedStaleness and
    automatic failover): no Azure call, a condition naming the field; accepted, the risk stays in sight."""
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    admission = kube_api.admission.pop(CLUSTERS)
    try:
        await cluster.apply(_spec(locations=TWO_REGIONS, automaticFailover=True,
                                  consistency={"level": "BoundedStaleness", "maxStalenessPrefix": 100000,
                                               "maxIntervalInSeconds": 300}))
    finally:
        kube_api.admission[CLUSTERS] = admission
    await start_operator()

    ready = await cluster.wait_condition("Ready", "False", "InvalidSpec")
    assert "spec.account.acceptDataLossOnFailover: true" in ready["message"]
    assert "spec.account.consistency.level: Strong" in ready["message"]
    assert cluster.condition("Stalled")["message"] == ready["message"]
    await cluster.wait_handled()
    assert arm_stand_in.requests == []  # refused before signing in

    await cluster.patch_spec({"account": {"acceptDataLossOnFailover": True}})
    await cluster.wait_ready()
    account = _account(arm_stand_in)
    assert account.consistency == {"defaultConsistencyLevel": "BoundedStaleness", "maxStalenessPrefix": 100000,
                                   "maxIntervalInSeconds": 300}
    assert account.automatic_failover is True
    assert cluster.body["status"]["consistency"] == "BoundedStaleness"
    risk = cluster.condition("DataLossOnFailover")
    assert (risk["status"], risk["reason"]) == ("True", "Accepted")
    assert "up to 100000 versions or 300 seconds" in risk["message"]
    assert "cosmos-etcd repair" in risk["message"]
    uid = cluster.body["metadata"]["uid"]
    await kube_api.wait_for(lambda: [event for event in kube_api.list(EVENTS, NAMESPACE)
                                     if event["involvedObject"]["uid"] == uid and event["type"] == "Warning"
                                     and event["reason"] == "DataLossOnFailover"
                                     and event["message"] == risk["message"]],
                            what="the Warning event of the accepted data loss")

    # Strong removes the risk, and its signal.
    await cluster.patch_spec({"account": {"consistency": {"level": "Strong"}}})
    await kube_api.wait_for(lambda: cluster.condition("DataLossOnFailover") is None
                            and (cluster.body["status"].get("consistency") == "Strong"),
                            what="the condition gone and Strong in force")
    assert account.consistency["defaultConsistencyLevel"] == "Strong"
