"""Keyless mode (spec.azure.dataPlaneAuth: EntraID) through the operator: the rendered shim objects, and
the real operator against the Kubernetes API emulator and the ARM stand-in — the role assignment made
and removed, local auth disabled, and no account key anywhere: no Secret, no Deployment field, no
status, event or log line carries one, and a keys Secret the operator made before is deleted while a
user's is left alone."""
from __future__ import annotations

import base64
import json
import logging

import pytest

from cosmos_etcd_operator import children
from cosmos_etcd_operator.spec import InvalidSpec, parse
from tests.harness import arm
from tests.harness.kube import CLUSTERS, DEPLOYMENTS, EVENTS, SECRETS, SERVICE_ACCOUNTS, Invalid
from tests.harness.manifests import kubernetes_errors, pod_spec_of, restricted_violations
from tests.harness.operator import NAMESPACE, ClusterDriver
from tests.operator.test_operator_drift import DRIFT_INTERVAL
from tests.operator.test_operator_lifecycle import SPEC, ready_cluster

ACCOUNT_ID = (f"/subscriptions/{arm.SUBSCRIPTION}/resourceGroups/{arm.RESOURCE_GROUP}"
              f"/providers/Microsoft.DocumentDB/databaseAccounts/tenant-a-etcd")
OWNER = {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster",
         "metadata": {"name": "tenant-a", "namespace": "control-planes", "uid": "0b4c9d1e-uid"}}
IDENTITY = {"clientId": "0f3c6b1e-5a4d-4e2f-9b8a-7c6d5e4f3a2b", "principalId": "4a1b2c3d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"}
KEYLESS = {**SPEC, "azure": {**SPEC["azure"], "dataPlaneAuth": "EntraID"}, "shim": {"identity": IDENTITY}}


# -- the rendered objects --------------------------------------------------------------------------

def test_the_keyless_shim_has_no_key_and_signs_in_with_workload_identity():
    spec = parse(KEYLESS, name="tenant-a")
    deployment = children.deployment(OWNER, spec, image="img:1", account_endpoint="https://a.documents.azure.com/",
                                     keys_digest="unused", tls=None)
    account = children.service_account(OWNER, spec)
    pod = pod_spec_of(deployment)
    [container] = pod["containers"]

    assert kubernetes_errors([deployment, account]) == [] and restricted_violations(pod) == []
    assert container["args"][container["args"].index("--cosmos-auth") + 1] == "entra-id"
    assert "--cosmos-key-file" not in container["args"]
    assert not any("cosmos-keys" in json.dumps(part) for part in (pod["volumes"], container["volumeMounts"]))
    assert all(set(variable) == {"name", "valueFrom"} and set(variable["valueFrom"]) == {"fieldRef"}
               for variable in container["env"]), "only the pod's own fields, never a key or a Secret"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {}
    assert deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["serviceAccountName"] == "tenant-a" == account["metadata"]["name"]
    assert account["metadata"]["annotations"] == {"azure.workload.identity/client-id": IDENTITY["clientId"]}
    assert account["automountServiceAccountToken"] is False


def test_key_mode_keeps_the_key_file_and_an_unannotated_service_account():
    spec = parse(SPEC, name="tenant-a")
    deployment = children.deployment(OWNER, spec, image="img:1", account_endpoint="https://a.documents.azure.com/",
                                     keys_digest="0123", tls=None)
    account = children.service_account(OWNER, spec)

    assert kubernetes_errors([deployment, account]) == []
    assert "--cosmos-key-file" in pod_spec_of(deployment)["containers"][0]["args"]
    assert "azure.workload.identity/use" not in deployment["spec"]["template"]["metadata"]["labels"]
    assert "annotations" not in account["metadata"]


# -- the operator ----------------------------------------------------------------------------------

def _shim_args(kube_api) -> list[str]:
    return kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")["spec"]["template"]["spec"]["containers"][0]["args"]


def _secret_values(kube_api) -> list[str]:
    return [base64.b64decode(value).decode(errors="replace") for secret in kube_api.list(SECRETS)
            for value in (secret.get("data") or {}).values()]


async def test_a_keyless_cluster_has_no_key_anywhere(kube_api, arm_stand_in, arm_service_principal, start_operator,
                                                     caplog):
    caplog.set_level(logging.DEBUG)
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator, KEYLESS)
    account = arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")
    status = cluster.body["status"]

    # Azure: local auth off, the identity's role on the database, and the keys never asked for.
    assert account.disable_local_auth is True and status["disableLocalAuth"] is True
    [(assignment_id, assignment)] = account.role_assignments.items()
    assert assignment == {"roleDefinitionId": f"{ACCOUNT_ID}/sqlRoleDefinitions/00000000-0000-0000-0000-000000000002",
                          "scope": f"{ACCOUNT_ID}/dbs/EtcdDB", "principalId": IDENTITY["principalId"]}
    assert status["roleAssignment"] == {"id": assignment_id, **{key: assignment[key] for key in (
        "principalId", "scope", "roleDefinitionId")}}
    assert not [request for request in arm_stand_in.requests if request.path.endswith("/listKeys")]
    assert (cluster.condition("Keys")["reason"], cluster.condition("RoleAssignment")["reason"]) == (
        "Keyless", "Assigned")

    # Kubernetes: no keys Secret, no key in the shim's objects, its ServiceAccount federated.
    assert kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys") is None
    keys = list(account.keys.values())
    everything = json.dumps([kube_api.list(kind, NAMESPACE) for kind in (DEPLOYMENTS, SERVICE_ACCOUNTS, EVENTS)]
                            + [cluster.history()])
    assert not any(key in everything or key in _secret_values(kube_api) or key in caplog.text for key in keys)
    [container] = kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")["spec"]["template"]["spec"]["containers"]
    assert "--cosmos-key-file" not in container["args"]
    assert container["args"][container["args"].index("--cosmos-auth") + 1] == "entra-id"
    assert kube_api.get(SERVICE_ACCOUNTS, NAMESPACE, "tenant-a")["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": IDENTITY["clientId"]}


async def test_switching_to_entra_id_keeps_keys_working_until_the_rollout_and_back_to_key_removes_the_role(
        kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator, drift_interval=DRIFT_INTERVAL)
    assert kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys") is not None
    account = arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")

    await cluster.patch_spec({"azure": {"dataPlaneAuth": "EntraID"}, "shim": {"identity": IDENTITY}})
    await kube_api.wait_for(lambda: account.role_assignments and "entra-id" in _shim_args(kube_api),
                            what="the role assigned and the keyless template rolling out")
    await kube_api.wait_for(lambda: "switching" in cluster.condition("Keys")["message"], what="the Keys condition")
    # Pods of the old template still sign in with the keys: they keep working until the rollout ends.
    assert account.disable_local_auth is False
    assert kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys") is not None
    await cluster.make_pods_available()
    await kube_api.wait_for(lambda: kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys") is None
                            and account.disable_local_auth,
                            what="after the rollout, the keys Secret deleted and local auth off")
    await kube_api.wait_for(lambda: ("KeysRemoved", "Secret tenant-a-cosmos-keys deleted: with dataPlaneAuth EntraID "
                                     "no account key is kept in the cluster") in
                            {(event["reason"], event["message"]) for event in kube_api.list(EVENTS, NAMESPACE)},
                            what="the KeysRemoved event")

    await cluster.patch_spec({"azure": {"dataPlaneAuth": "Key"}})
    await kube_api.wait_for(lambda: not account.role_assignments and not account.disable_local_auth
                            and kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys") is not None,
                            what="the role removed, local auth on, the keys Secret back")
    await kube_api.wait_for(lambda: "roleAssignment" not in cluster.body["status"]
                            and cluster.condition("RoleAssignment")["reason"] == "NotUsed", what="status updated")


async def test_a_users_secret_of_the_same_name_is_left_alone(kube_api, arm_stand_in, arm_service_principal,
                                                             start_operator):
    await kube_api.put_object(SECRETS, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                        "metadata": {"name": "tenant-a-cosmos-keys", "namespace": NAMESPACE},
                                        "data": {"note": base64.b64encode(b"mine").decode()}})
    await ready_cluster(kube_api, arm_service_principal, start_operator, KEYLESS)
    assert kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys")["data"] == {
        "note": base64.b64encode(b"mine").decode()}


async def test_delete_removes_the_role_assignment_before_the_account(kube_api, arm_stand_in, arm_service_principal,
                                                                     start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator,
                                  {**KEYLESS, "deletionPolicy": "Delete"})
    assignment = cluster.body["status"]["roleAssignment"]["id"]

    await cluster.delete()
    await cluster.wait_gone()

    deletes = [request.path for request in arm_stand_in.requests if request.method == "DELETE"]
    assert deletes[0].endswith(f"/sqlRoleAssignments/{assignment}") and deletes[-1].endswith("/tenant-a-etcd")
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd") is None


async def test_entra_id_without_an_identity_is_refused_at_admission_and_by_the_operator(kube_api):
    without_identity = {**SPEC, "azure": {**SPEC["azure"], "dataPlaneAuth": "EntraID"}}
    with pytest.raises(Invalid, match="spec.azure.dataPlaneAuth EntraID needs spec.shim.identity"):
        await kube_api.put_object(CLUSTERS, ClusterDriver.manifest("tenant-a", NAMESPACE, without_identity))
    with pytest.raises(InvalidSpec, match="spec.azure.dataPlaneAuth EntraID needs spec.shim.identity"):
        parse(without_identity, name="tenant-a")
    with pytest.raises(InvalidSpec, match="spec.shim.identity.principalId must be a GUID"):
        parse({**KEYLESS, "shim": {"identity": {**IDENTITY, "principalId": "kube-apiserver"}}}, name="tenant-a")
