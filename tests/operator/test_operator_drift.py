"""Drift: what changes behind the operator's back is set back by its timer, and the shim's pods move
the Ready condition as they come and go."""
from __future__ import annotations

import base64

from tests.harness import arm
from tests.harness.kube import DEPLOYMENTS, SECRETS, SERVICES
from tests.harness.operator import NAMESPACE
from tests.operator.test_operator_lifecycle import ready_cluster

DRIFT_INTERVAL = 0.3


async def test_throughput_changed_in_azure_is_set_back(kube_api, arm_stand_in, arm_service_principal,
                                                       start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator, drift_interval=DRIFT_INTERVAL)
    arm_stand_in.set_throughput(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd", "EtcdDB", "EtcdData",
                                mode="Autoscale", request_units=10000)
    # The correction is an operation like any other: Throughput goes InProgress, then back to True.
    await kube_api.wait_for(lambda: cluster.ever("Throughput", "False", "InProgress")
                            and cluster.condition("Throughput")["status"] == "True", what="throughput set back")
    container = arm_stand_in.container(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd", "EtcdDB", "EtcdData")
    assert (container.throughput.mode, container.throughput.request_units) == ("Manual", 400)
    assert cluster.body["status"]["throughput"] == {"mode": "Manual", "requestUnits": 400}


async def test_rotated_keys_are_rewritten_and_roll_the_pods(kube_api, arm_stand_in, arm_service_principal,
                                                            start_operator):
    await ready_cluster(kube_api, arm_service_principal, start_operator, drift_interval=DRIFT_INTERVAL)
    checksum = kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")["spec"]["template"]["metadata"]["annotations"]
    new_keys = arm_stand_in.rotate_keys(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")

    def key_in_secret():
        return base64.b64decode(kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys")["data"]["key"]).decode()
    await kube_api.wait_for(lambda: key_in_secret() == new_keys["primaryMasterKey"], what="the new key")
    await kube_api.wait_for(lambda: kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")["spec"]["template"]["metadata"]
                            ["annotations"] != checksum, what="a new pod template")


async def test_missing_or_edited_children_are_restored(kube_api, arm_stand_in, arm_service_principal,
                                                       start_operator):
    await ready_cluster(kube_api, arm_service_principal, start_operator, drift_interval=DRIFT_INTERVAL)
    service = kube_api.get(SERVICES, NAMESPACE, "tenant-a")
    await kube_api.delete_object(SERVICES, NAMESPACE, "tenant-a")
    await kube_api.wait_for(lambda: kube_api.get(SERVICES, NAMESPACE, "tenant-a"), what="the Service again")
    assert kube_api.get(SERVICES, NAMESPACE, "tenant-a")["spec"] == service["spec"]
    await kube_api.patch_object(DEPLOYMENTS, NAMESPACE, "tenant-a", {"spec": {"replicas": 7}})
    await kube_api.wait_for(lambda: kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")["spec"]["replicas"] == 2,
                            what="replicas set back to the spec's")


async def test_ready_follows_the_shims_pods(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    await cluster.make_pods_available(0)
    ready = await cluster.wait_condition("Ready", "False", "ShimNotReady")
    assert ready["message"] == "Shim: 0 of 2 replicas available"
    assert cluster.condition("Reconciling")["reason"] == "Unavailable"
    await cluster.make_pods_available(1)
    await cluster.wait_condition("Ready", "True")
    assert cluster.condition("Shim")["message"] == "1 of 2 replicas available"
