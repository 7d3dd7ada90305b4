"""Deleting a CosmosEtcdCluster: the finalizer holds it until Azure is dealt with as
deletionPolicy says (Retain, the default: the account and its data stay; Delete: it is deleted)."""
from __future__ import annotations

from tests.harness import arm
from tests.operator.test_operator_lifecycle import SPEC, ready_cluster


async def test_delete_with_retain_keeps_the_account(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    assert cluster.body["metadata"]["finalizers"] == ["cosmosetcd.io/finalizer"]
    assert cluster.body["spec"]["deletionPolicy"] == "Retain"
    await cluster.delete()
    await cluster.wait_gone()
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd") is not None
    assert not any(request.method == "DELETE" for request in arm_stand_in.requests)


async def test_delete_with_delete_deletes_the_account(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator,
                                  {**SPEC, "deletionPolicy": "Delete"})
    await cluster.delete()
    await cluster.wait_gone()
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd") is None
    deletes = [request for request in arm_stand_in.requests if request.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].path.endswith("/databaseAccounts/tenant-a-etcd")
    # The deletion is long-running like any other operation: it went through the status.
    assert cluster.ever("Account", "False", "InProgress")
    assert any("deletion" in (version.get("status") or {}).get("pendingOperations", {})
               for version in cluster.history())


async def test_switching_to_retain_lets_a_stuck_deletion_go(kube_api, arm_stand_in, arm_service_principal,
                                                            start_operator):
    """A deletion Azure refuses keeps the object (and says why) until someone decides."""
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator,
                                  {**SPEC, "deletionPolicy": "Delete"})
    arm_stand_in.fail_next("account.delete", "AuthorizationFailed", "The client has no delete permission.",
                           status=403)
    await cluster.delete()
    await cluster.wait_condition("Account", "False", "AuthorizationFailed")
    assert cluster.body is not None
    await cluster.patch_spec({"deletionPolicy": "Retain"})
    await cluster.wait_gone()
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd") is not None
