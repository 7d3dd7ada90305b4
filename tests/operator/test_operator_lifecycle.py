"""A CosmosEtcdCluster from kubectl apply to Ready, and its changes: the real kopf operator against
the Kubernetes API emulator and the ARM stand-in (the real azure-mgmt-cosmosdb client, the real
service-principal sign-in)."""
from __future__ import annotations

import base64

from cosmos_etcd_shim.storage.cosmos.layout import INDEXING_POLICY, PARTITION_KEY
from tests.harness import arm
from tests.harness.kube import DEPLOYMENTS, EVENTS, PDBS, SECRETS, SERVICES
from tests.harness.operator import NAMESPACE, SHIM_IMAGE, ClusterDriver
from tests.operator.test_operator_children import (MTLS_ARGS, SHIM_ENV, SHIM_MOUNTS, SHIM_VOLUMES, TLS_MOUNT,
                                                   serve_args, tls_volume)

SPEC = {
    "azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP, "location": "westeurope",
              "credentials": {"servicePrincipalSecretRef": {"name": "azure-sp"}}},
    "account": {"name": "tenant-a-etcd", "tags": {"team": "platform"}},
    "throughput": {"mode": "Manual", "requestUnits": 400},
}
ACCOUNT_ENDPOINT = "https://tenant-a-etcd.documents.azure.com:443/"
LABELS = {"app.kubernetes.io/name": "cosmos-etcd", "cosmosetcd.io/cluster": "tenant-a",
          "app.kubernetes.io/component": "etcd", "app.kubernetes.io/part-of": "cosmos-etcd",
          "app.kubernetes.io/managed-by": "cosmos-etcd-operator"}
SELECTOR = {"app.kubernetes.io/name": "cosmos-etcd", "cosmosetcd.io/cluster": "tenant-a"}


async def ready_cluster(kube_api, arm_service_principal, start_operator, spec=SPEC, **options) -> ClusterDriver:
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    cluster.operator = await start_operator(**options)
    await cluster.apply(spec)
    await cluster.wait_ready()
    return cluster


def _container(arm_stand_in, database="EtcdDB", container="EtcdData"):
    return arm_stand_in.container(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd", database, container)


def _arm_calls(arm_stand_in, method: str, path_end: str) -> int:
    return sum(1 for request in arm_stand_in.requests if request.method == method and request.path.endswith(path_end))


async def test_create_until_ready(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    body = cluster.body
    uid = body["metadata"]["uid"]
    owner = [{"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster", "name": "tenant-a", "uid": uid,
              "controller": True, "blockOwnerDeletion": True}]

    # Status, as kstatus reads it: Current.
    status = body["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"] == 1
    assert status["endpoint"] == "https://tenant-a.control-planes.svc:2379"  # managed mutual TLS by default
    assert status["tls"]["mode"] == "Managed" and status["tls"]["clientSecret"] == "tenant-a-etcd-client"
    assert status["accountEndpoint"] == ACCOUNT_ENDPOINT
    assert status["throughput"] == {"mode": "Manual", "requestUnits": 400}
    assert status["consistency"] == "BoundedStaleness"  # one region: the default stays as it was
    assert status["pendingOperations"] == {}
    conditions = {item["type"]: item for item in status["conditions"]}
    assert set(conditions) == {"Ready", "Credentials", "Account", "Database", "Container", "Throughput",
                               "RoleAssignment", "Keys", "NetworkPolicy",
                               "TLS", "Shim"}
    assert all(item["status"] == "True" and item["observedGeneration"] == 1 for item in conditions.values())
    assert conditions["Account"]["reason"] == "Created"
    assert conditions["Shim"]["message"] == "2 of 2 replicas available"
    assert arm_service_principal["clientId"] in conditions["Credentials"]["message"]

    # Events for kubectl describe: one per transition, not one per pass.
    def events():
        return [(event["type"], event["reason"], event["message"]) for event in kube_api.list(EVENTS, NAMESPACE)
                if event["involvedObject"]["uid"] == uid]
    await kube_api.wait_for(lambda: ("Normal", "Ready", "every part is ready") in events(), what="the Ready event")
    assert events() == [("Normal", "InProgress", "Account: create account tenant-a-etcd: in progress"),
                      ("Normal", "InProgress", "Database: create database EtcdDB: in progress"),
                      ("Normal", "InProgress", "Container: create container EtcdData: in progress"),
                      ("Normal", "Unavailable", "Shim: 0 of 2 replicas available"),
                      ("Normal", "Ready", "every part is ready")]

    # Azure: what the spec asked for, with the shim's own partition key and indexing policy.
    account = arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")
    assert account.kind == "GlobalDocumentDB" and account.tags == {"team": "platform"}
    assert account.consistency["defaultConsistencyLevel"] == "BoundedStaleness"
    assert account.automatic_failover is True
    container = _container(arm_stand_in)
    assert container.partition_key["paths"] == PARTITION_KEY["paths"]
    assert container.indexing_policy["includedPaths"] == INDEXING_POLICY["includedPaths"]
    assert (container.throughput.mode, container.throughput.request_units) == ("Manual", 400)
    assert {request.principal for request in arm_stand_in.requests if request.principal} == \
        {arm_service_principal["clientId"]}

    # The keys Secret.
    secret = kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys")
    assert secret["metadata"]["ownerReferences"] == owner and secret["metadata"]["labels"] == LABELS
    assert secret["type"] == "Opaque"
    assert {key: base64.b64decode(value).decode() for key, value in secret["data"].items()} == {
        "endpoint": ACCOUNT_ENDPOINT, "key": account.keys["primaryMasterKey"],
        "keys": f"{account.keys['primaryMasterKey']}\n{account.keys['secondaryMasterKey']}\n"}

    # The Service: the endpoint's name.
    service = kube_api.get(SERVICES, NAMESPACE, "tenant-a")
    assert service["metadata"]["ownerReferences"] == owner and service["metadata"]["labels"] == LABELS
    assert service["spec"] == {"type": "ClusterIP", "selector": SELECTOR, "ports": [
        {"name": "client", "port": 2379, "targetPort": "client", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "metrics", "port": 2381, "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"}]}

    # The PodDisruptionBudget.
    pdb = kube_api.get(PDBS, NAMESPACE, "tenant-a")
    assert pdb["metadata"]["ownerReferences"] == owner and pdb["metadata"]["labels"] == LABELS
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}

    # The Deployment, field by field.
    deployment = kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")
    assert deployment["metadata"]["ownerReferences"] == owner and deployment["metadata"]["labels"] == LABELS
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["selector"] == {"matchLabels": SELECTOR}
    assert spec["template"]["metadata"]["labels"] == LABELS
    assert set(spec["template"]["metadata"]["annotations"]) == {"cosmosetcd.io/keys-checksum"}
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["affinity"] == {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                           "labelSelector": {"matchLabels": SELECTOR}}}]}}
    assert pod["volumes"] == [*SHIM_VOLUMES, tls_volume("tenant-a-etcd-server")]
    [shim] = pod["containers"]
    assert shim["name"] == "shim" and shim["image"] == SHIM_IMAGE and shim["imagePullPolicy"] == "IfNotPresent"
    assert shim["command"] == ["cosmos-etcd"]
    assert shim["args"] == serve_args(ACCOUNT_ENDPOINT, "https") + MTLS_ARGS
    assert shim["env"] == SHIM_ENV
    assert shim["ports"] == [{"name": "client", "containerPort": 2379, "protocol": "TCP"},
                             {"name": "peer", "containerPort": 2380, "protocol": "TCP"},
                             {"name": "metrics", "containerPort": 2381, "protocol": "TCP"}]
    assert shim["readinessProbe"] == {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5,
                                      "failureThreshold": 3, "timeoutSeconds": 3}
    assert shim["livenessProbe"] == {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10,
                                     "failureThreshold": 6, "timeoutSeconds": 5}
    assert shim["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert shim["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    assert shim["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                       "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert shim["volumeMounts"] == [*SHIM_MOUNTS, TLS_MOUNT]


async def test_tls_and_shim_settings_reach_the_deployment(kube_api, arm_stand_in, arm_service_principal,
                                                          start_operator):
    spec = {**SPEC, "shim": {"replicas": 3, "image": "mine/cosmos-etcd:2", "tls": {"secretName": "tenant-a-tls"},
                             "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}
    await ClusterDriver(kube_api).add_secret("tenant-a-tls", {"tls.crt": "-", "tls.key": "-", "ca.crt": "-"})
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator, spec)
    assert cluster.body["status"]["tls"] == {"mode": "Secret"}
    assert cluster.body["status"]["endpoint"] == "https://tenant-a.control-planes.svc:2379"
    deployment = kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")
    [shim] = deployment["spec"]["template"]["spec"]["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert shim["image"] == "mine/cosmos-etcd:2"
    assert shim["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}}
    assert "--client-cert-auth" in shim["args"] and "https://0.0.0.0:2379" in shim["args"]
    assert {"name": "tls", "secret": {"secretName": "tenant-a-tls", "defaultMode": 0o440}} in \
        deployment["spec"]["template"]["spec"]["volumes"]
    assert cluster.condition("Shim")["message"] == "3 of 3 replicas available"


async def test_throughput_change_is_applied(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    await cluster.patch_spec({"throughput": {"mode": "Manual", "requestUnits": 1000}})
    await kube_api.wait_for(lambda: (cluster.body["status"].get("observedGeneration") == 2
                                     and cluster.body["status"]["throughput"]["requestUnits"] == 1000
                                     and cluster.condition("Ready")["status"] == "True"), what="1000 RU/s in force")
    container = _container(arm_stand_in)
    assert (container.throughput.mode, container.throughput.request_units) == ("Manual", 1000)
    assert cluster.condition("Throughput")["message"] == "Manual 1000 RU/s"
    assert cluster.condition("Throughput")["observedGeneration"] == 2


async def test_manual_to_autoscale_and_back(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)

    async def switch(mode: str, units: int, generation: int) -> None:
        await cluster.patch_spec({"throughput": {"mode": mode, "requestUnits": units}})
        await kube_api.wait_for(lambda: (cluster.body["status"].get("observedGeneration") == generation
                                         and cluster.body["status"]["throughput"] == {"mode": mode,
                                                                                      "requestUnits": units}
                                         and cluster.condition("Ready")["status"] == "True"),
                                what=f"{mode} {units} in force")
        container = _container(arm_stand_in)
        assert (container.throughput.mode, container.throughput.request_units) == (mode, units)

    await switch("Autoscale", 4000, 2)
    assert _arm_calls(arm_stand_in, "POST", "/throughputSettings/default/migrateToAutoscale") == 1
    assert cluster.condition("Throughput")["message"] == "Autoscale 4000 RU/s (maximum)"
    await switch("Manual", 500, 3)
    assert _arm_calls(arm_stand_in, "POST", "/throughputSettings/default/migrateToManualThroughput") == 1
    assert cluster.condition("Throughput")["reason"] == "Manual"


async def test_existing_account_is_adopted(kube_api, arm_stand_in, arm_service_principal, start_operator):
    existing = arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd", consistency="Session",
                                        tags={"team": "platform"})
    keys_before = dict(existing.keys)
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    assert cluster.condition("Account")["reason"] == "Adopted"
    account_path = "/databaseAccounts/tenant-a-etcd"
    assert _arm_calls(arm_stand_in, "PUT", account_path) == 0  # never recreated
    assert _arm_calls(arm_stand_in, "PATCH", account_path) == 1  # its consistency set to the spec's
    account = arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")
    assert account.consistency["defaultConsistencyLevel"] == "BoundedStaleness"
    assert account.keys == keys_before
    secret = kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys")
    assert base64.b64decode(secret["data"]["key"]).decode() == keys_before["primaryMasterKey"]


async def test_workload_identity_when_no_secret_is_named(kube_api, arm_stand_in, start_operator, tmp_path,
                                                         monkeypatch):
    """Without servicePrincipalSecretRef the operator signs in as itself: the federated token that the
    workload identity webhook mounts, exchanged at the authority (DefaultAzureCredential)."""
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("projected-service-account-token")
    identity = arm_stand_in.add_workload_identity("projected-service-account-token")
    monkeypatch.setenv("AZURE_CLIENT_ID", identity["clientId"])
    monkeypatch.setenv("AZURE_TENANT_ID", identity["tenantId"])
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    spec = {**SPEC, "azure": {key: value for key, value in SPEC["azure"].items() if key != "credentials"}}
    cluster = ClusterDriver(kube_api)
    await start_operator()
    await cluster.apply(spec)
    await cluster.wait_ready()
    assert cluster.condition("Credentials")["message"].endswith("as the operator's own identity")
    assert {request.principal for request in arm_stand_in.requests if request.principal} == {identity["clientId"]}


async def test_namespaced_operator_leaves_other_namespaces_alone(kube_api, arm_stand_in, arm_service_principal,
                                                                 start_operator):
    elsewhere = ClusterDriver(kube_api, name="tenant-z", namespace="other")
    await elsewhere.apply({**SPEC, "account": {"name": "tenant-z-etcd"}})
    await ready_cluster(kube_api, arm_service_principal, start_operator, namespaces=(NAMESPACE,))
    assert "status" not in elsewhere.body
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-z-etcd") is None
    assert not any("/namespaces/other/" in path for _, path in kube_api.calls if not path.endswith("/cosmosetcdclusters"))
