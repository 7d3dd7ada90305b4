"""The operator against a real kube-apiserver (v1.36, on the embedded shim) and the ARM stand-in,
as a whole lifecycle (issue 14, item 3). tests/operator runs the same operator against kmock, the
fast inner loop; here admission, defaulting, CEL, the status subresource, server-side apply,
finalizers, discovery, namespaces and events are the real server's.

One kube-apiserver per module, on the shim's embedded store, with the CosmosEtcdCluster CRD from
``crds/`` established; one local Cosmos server (``@vercel/cosmosdb-server``) per module, which every
account the ARM stand-in makes names as its document endpoint. Each test has its own namespace
(mirrored by :class:`tests.harness.kube_live.LiveKubeAPI`), its own ARM stand-in, and operators
(``cosmos_etcd_operator.main.run`` with the custom cloud at the stand-in) that watch only that
namespace, so objects other tests leave behind are never touched.

There is no kubelet and no Deployment controller: :class:`tests.harness.kubelet.Kubelet` runs the
shim's pods from the Deployment's own command, args, env and volumes (the keys Secret, and the
TLS Secret when the shim serves TLS), on the database and container that ARM made (made on the
local Cosmos server first, with ARM's partition key and indexing policy); a client connects as the
cluster's status says (its endpoint, and its client Secret with TLS), and the test reports the
Deployment's availability through its status subresource, as the Deployment controller would.
Other tests that only need a Ready cluster report the pods available without running them.

Waiting is on the API's watch events (the mirror). ARM has no watch and a readiness probe no
event: the stand-in's request log and the pods' probes are asked at a short pace, with a deadline.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import pathlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import yaml
from azure.cosmos import PartitionKey
from azure.cosmos.aio import CosmosClient
from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc

from tests.harness import arm, kube_apiserver, processes
from tests.harness import cosmos as cosmos_harness
from tests.harness.kube import CLUSTERS, DEPLOYMENTS, EVENTS, PDBS, SECRETS, SERVICES, load_crd
from tests.harness.kube_apiserver import ApiServer, start_apiserver
from tests.harness.kube_controllers import write_kubeconfig
from tests.harness.kube_live import LiveKubeAPI, Refused, install_crd
from tests.harness.kubelet import Kubelet, Pod
from tests.harness.operator import ClusterDriver, operators
from tests.operator.test_operator_lifecycle import SPEC

pytestmark = pytest.mark.timeout(300)

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
MIRRORED = (CLUSTERS, DEPLOYMENTS, SECRETS, SERVICES, PDBS, EVENTS)
CLUSTERS_PATH = "/apis/cosmosetcd.io/v1alpha1/namespaces/{namespace}/cosmosetcdclusters"
FINALIZER = "cosmosetcd.io/finalizer"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
AZURE = {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP, "location": "westeurope"}
TWO_REGIONS = [{"name": "westeurope", "failoverPriority": 0}, {"name": "northeurope", "failoverPriority": 1}]
DRIFT_INTERVAL = 0.3


# -- the module's servers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apiserver(tmp_path_factory) -> Iterator[ApiServer]:
    """kube-apiserver on the embedded shim, with the CosmosEtcdCluster CRD established."""
    kube_apiserver.require()
    workdir = tmp_path_factory.mktemp("operator-apiserver")
    datastore = processes.start_shim(workdir / "datastore")
    try:
        server = start_apiserver(workdir / "kube-apiserver", [datastore.endpoint])
        try:
            install_crd(server.client, load_crd())
            yield server
        finally:
            server.stop()
    finally:
        datastore.stop()


@pytest.fixture(scope="module")
def cosmos(tmp_path_factory) -> Iterator[cosmos_harness.CosmosServer]:
    cosmos_harness.require()
    server = cosmos_harness.start_cosmos(tmp_path_factory.mktemp("cosmos"))
    yield server
    server.stop()


# -- each test's namespace, ARM and operators -----------------------------------------------------

@pytest.fixture
async def kube(apiserver, tmp_path, monkeypatch) -> LiveKubeAPI:
    """A fresh namespace of the real API server, mirrored; ``KUBECONFIG`` names the server."""
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", apiserver)))
    async with LiveKubeAPI(apiserver, f"cp-{uuid.uuid4().hex[:8]}", MIRRORED) as api:
        yield api
    apiserver.assert_alive()


@pytest.fixture
async def arm_stand_in(cosmos):
    """The ARM stand-in; every account it makes has the local Cosmos server as its document endpoint."""
    async with arm.ArmStandIn(document_endpoint=lambda _: cosmos.endpoint) as stand_in:
        stand_in.add_resource_group(arm.SUBSCRIPTION, arm.RESOURCE_GROUP)
        yield stand_in


@pytest.fixture
async def start_operator(kube, arm_stand_in):
    async with operators(arm_stand_in, namespaces=(kube.namespace,)) as start:
        yield start


@pytest.fixture
async def cluster(kube, arm_stand_in) -> ClusterDriver:
    """CosmosEtcdCluster ``tenant-a`` of the test's namespace (not applied yet), with the Secret of a
    service principal that the stand-in knows."""
    driver = ClusterDriver(kube, namespace=kube.namespace)
    await driver.add_secret("azure-sp", arm_stand_in.add_service_principal())
    return driver


async def ready_cluster(cluster: ClusterDriver, start_operator, spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    """An operator, the cluster applied, and Ready (its pods reported available)."""
    await start_operator()
    await cluster.apply(spec)
    return await cluster.wait_ready()


def account(arm_stand_in: arm.ArmStandIn) -> arm.Account | None:
    return arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, SPEC["account"]["name"])


def arm_calls(arm_stand_in: arm.ArmStandIn, method: str, path_end: str) -> int:
    return sum(1 for request in arm_stand_in.requests if request.method == method and request.path.endswith(path_end))


def manifest(namespace: str, spec: dict[str, Any], name: str = "tenant-a") -> dict[str, Any]:
    return ClusterDriver.manifest(name, namespace, spec)


# -- the CRD, the examples and admission ------------------------------------------------------------

def examples() -> list[tuple[str, dict[str, Any]]]:
    """Every document of examples/*.yaml (examples/gitops holds Argo CD and Flux objects, whose CRDs
    are those projects')."""
    return [(f"{path.name}:{document['kind']}/{document['metadata']['name']}", document)
            for path in sorted(EXAMPLES.glob("*.yaml")) for document in yaml.safe_load_all(path.read_text())]


async def test_the_crd_is_served_as_kopf_and_kubectl_discover_it(kube):
    reply = await kube.request("GET", "/apis/cosmosetcd.io/v1alpha1")
    resources = {item["name"]: item for item in reply.expect(200)["resources"]}
    assert resources["cosmosetcdclusters"]["kind"] == "CosmosEtcdCluster"
    assert resources["cosmosetcdclusters"]["shortNames"] == ["cec"]
    assert resources["cosmosetcdclusters"]["categories"] == load_crd()["spec"]["names"]["categories"]
    assert resources["cosmosetcdclusters"]["namespaced"] is True
    assert set(resources["cosmosetcdclusters/status"]["verbs"]) == {"get", "patch", "update"}


@pytest.mark.parametrize("document", [document for _, document in examples()], ids=[name for name, _ in examples()])
async def test_every_example_is_admitted(kube, document):
    """Server-side dry run: admitted (defaults applied, schema and CEL passed), nothing stored."""
    body = copy.deepcopy(document)
    body["metadata"]["namespace"] = kube.namespace
    collection = (CLUSTERS_PATH.format(namespace=kube.namespace) if body["kind"] == "CosmosEtcdCluster"
                  else f"/api/v1/namespaces/{kube.namespace}/secrets")
    admitted = (await kube.request("POST", collection, body, params={"dryRun": "All"})).expect(201)
    if body["kind"] == "CosmosEtcdCluster":
        assert admitted["spec"]["deletionPolicy"] == body["spec"].get("deletionPolicy", "Retain")
        assert admitted["spec"]["cosmos"] == {"database": "EtcdDB", "container": "EtcdData"}
    assert (await kube.request("GET", f"{collection}/{body['metadata']['name']}")).status == 404


def cel_rules(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    """(message, the field a refusal names) of every x-kubernetes-validations rule in the schema."""
    for rule in schema.get("x-kubernetes-validations", ()):
        yield " ".join(rule["message"].split()), path + rule.get("fieldPath", "")
    for name, child in schema.get("properties", {}).items():
        yield from cel_rules(child, f"{path}.{name}" if path else name)
    for child in (schema.get("items"), schema.get("additionalProperties")):
        if isinstance(child, dict):
            yield from cel_rules(child, f"{path}[*]")


CEL_RULES = dict(cel_rules(load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))


# Each CEL rule of the CRD, broken on create: (spec, the rule's message).
CEL_REFUSED_ON_CREATE = {
    "write region not listed": (
        {"azure": AZURE, "account": {"locations": [{"name": "northeurope", "failoverPriority": 0}]}},
        "spec.account.locations must list spec.azure.location with failoverPriority 0 (the write region)"),
    "bounded staleness with automatic failover across regions": (
        {"azure": AZURE, "account": {"consistency": {"level": "BoundedStaleness"}, "locations": TWO_REGIONS}},
        ("BoundedStaleness with automaticFailover on a multi-region account can lose the last acknowledged writes "
         "when Azure fails over: set spec.account.consistency.level: Strong (or remove it; Strong is the "
         "multi-region default), or spec.account.automaticFailover: false, or "
         "spec.account.acceptDataLossOnFailover: true to accept that loss")),
    "failover priority gap": (
        {"azure": AZURE, "account": {"locations": [{"name": "westeurope", "failoverPriority": 0},
                                                   {"name": "northeurope", "failoverPriority": 2}]}},
        "failover priorities must be 0, 1, ... without gaps or repeats"),
    "continuous backup with an interval": (
        {"azure": AZURE, "account": {"backup": {"type": "Continuous", "intervalInMinutes": 60}}},
        "intervalInMinutes, retentionInHours and storageRedundancy only apply to type Periodic"),
    "periodic backup with a tier": (
        {"azure": AZURE, "account": {"backup": {"type": "Periodic", "tier": "Continuous7Days"}}},
        "tier only applies to type Continuous"),
    "retention under two backups": (
        {"azure": AZURE, "account": {"backup": {"type": "Periodic", "intervalInMinutes": 600}}},
        "retentionInHours must keep at least two backups (at least twice intervalInMinutes)"),
    "keyless without an identity": (
        {"azure": {**AZURE, "dataPlaneAuth": "EntraID"}},
        "spec.azure.dataPlaneAuth EntraID needs spec.shim.identity (clientId and principalId)"),
    "TLS from a Secret without its name": (
        {"azure": AZURE, "shim": {"tls": {"mode": "Secret"}}}, "secretName is required with mode Secret"),
    "managed TLS with a Secret's name": (
        {"azure": AZURE, "shim": {"tls": {"mode": "Managed", "secretName": "tenant-a-tls"}}},
        "secretName is only for mode Secret"),
    "manual throughput not a multiple of 100": (
        {"azure": AZURE, "throughput": {"mode": "Manual", "requestUnits": 450}},
        "requestUnits must be a multiple of 100 (Manual) or a multiple of 1000 of at least 1000 (Autoscale)"),
}

# Each transition rule (oldSelf), broken by an update of a stored object: (spec before, merge patch, message).
STORED = {"azure": AZURE, "account": {"name": "tenant-a-etcd", "backup": {"type": "Continuous"}}}
CEL_REFUSED_ON_UPDATE = {
    "subscriptionId": ({"azure": {"subscriptionId": "11111111-1111-1111-1111-111111111111"}},
                       "spec.azure.subscriptionId is immutable"),
    "resourceGroup": ({"azure": {"resourceGroup": "rg-other"}}, "spec.azure.resourceGroup is immutable"),
    "location": ({"azure": {"location": "northeurope"}}, "spec.azure.location is immutable"),
    "database": ({"cosmos": {"database": "OtherDB"}}, "spec.cosmos.database is immutable"),
    "container": ({"cosmos": {"container": "OtherData"}}, "spec.cosmos.container is immutable"),
    "account name": ({"account": {"name": "renamed-etcd"}},
                     "spec.account.name is immutable (it defaults to metadata.name); an account cannot be renamed"),
    "backup back to periodic": ({"account": {"backup": {"type": "Periodic"}}},
                                "Azure cannot turn continuous backup back into periodic"),
}

# The OpenAPI schema's own refusals (no CEL): (spec, a phrase of the server's message).
SCHEMA_REFUSED = {
    "no azure section": ({"throughput": {"mode": "Manual"}}, "spec.azure: Required value"),
    "unknown throughput mode": ({"azure": AZURE, "throughput": {"mode": "Serverless"}},
                                'spec.throughput.mode: Unsupported value: "Serverless"'),
    "no replicas": ({"azure": AZURE, "shim": {"replicas": 0}}, "spec.shim.replicas: Invalid value: 0"),
    "subscription not a GUID": ({"azure": {**AZURE, "subscriptionId": "not-a-guid"}},
                                'spec.azure.subscriptionId: Invalid value: "not-a-guid"'),
}


def test_every_cel_rule_has_a_refusal_case():
    """A rule added to the CRD without a case here fails this test."""
    covered = {message for _, message in (*CEL_REFUSED_ON_CREATE.values(), *CEL_REFUSED_ON_UPDATE.values())}
    assert set(CEL_RULES) == covered


def assert_refused(refusal: Refused, message: str) -> None:
    assert (refusal.status, refusal.reason) == (422, "Invalid"), refusal.body
    assert message in str(refusal), str(refusal)


@pytest.mark.parametrize("case", CEL_REFUSED_ON_CREATE.values(), ids=CEL_REFUSED_ON_CREATE.keys())
async def test_cel_rules_refuse_on_create(kube, case):
    spec, message = case
    with pytest.raises(Refused) as refused:
        await kube.put_object(CLUSTERS, manifest(kube.namespace, spec))
    assert_refused(refused.value, message)
    # The field the rule names (its schema node and fieldPath), as kubectl shows it.
    assert [cause["field"] for cause in refused.value.body["details"]["causes"]] == [CEL_RULES[message]]
    assert (await kube.request("GET", CLUSTERS_PATH.format(namespace=kube.namespace) + "/tenant-a")).status == 404


@pytest.mark.parametrize("case", CEL_REFUSED_ON_UPDATE.values(), ids=CEL_REFUSED_ON_UPDATE.keys())
async def test_cel_transition_rules_refuse_on_update(kube, case):
    patch, message = case
    stored = await kube.put_object(CLUSTERS, manifest(kube.namespace, STORED))
    with pytest.raises(Refused) as refused:
        await kube.patch_object(CLUSTERS, kube.namespace, "tenant-a", {"spec": patch})
    assert_refused(refused.value, message)
    assert [cause["field"] for cause in refused.value.body["details"]["causes"]] == [CEL_RULES[message] or "<nil>"]
    after = (await kube.request("GET", CLUSTERS_PATH.format(namespace=kube.namespace) + "/tenant-a")).expect(200)
    assert after["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


@pytest.mark.parametrize("case", SCHEMA_REFUSED.values(), ids=SCHEMA_REFUSED.keys())
async def test_the_schema_refuses_on_create(kube, case):
    spec, phrase = case
    with pytest.raises(Refused) as refused:
        await kube.put_object(CLUSTERS, manifest(kube.namespace, spec))
    assert_refused(refused.value, phrase)


# -- the lifecycle --------------------------------------------------------------------------------

async def make_arms_container(cosmos: cosmos_harness.CosmosServer, container: arm.Container, database: str) -> None:
    """The database and container that ARM made, on the local Cosmos server, as ARM describes them."""
    partition_key = container.partition_key
    async with CosmosClient(cosmos.endpoint, credential=cosmos.key, enable_endpoint_discovery=False) as client:
        made = await client.create_database_if_not_exists(database)
        await made.create_container_if_not_exists(
            container.name, partition_key=PartitionKey(path=partition_key["paths"][0], kind=partition_key["kind"],
                                                       version=partition_key.get("version", 2)),
            indexing_policy=container.indexing_policy)


@contextlib.asynccontextmanager
async def etcd_kv(kube: LiveKubeAPI, cluster: ClusterDriver, pod: Pod) -> AsyncIterator[rpc_pb2_grpc.KVStub]:
    """An etcd client of ``pod`` as the cluster's status tells clients to connect: plain for an
    ``http://`` endpoint; for ``https://``, with the client Secret that status names, verifying the
    server's certificate for the endpoint's host name (the Service's), as kube-apiserver would."""
    status = cluster.body["status"]
    endpoint = urllib.parse.urlsplit(status["endpoint"])
    if endpoint.scheme == "http":
        channel = grpc.aio.insecure_channel(pod.endpoint("client"))
    else:
        reply = await kube.request("GET", f"/api/v1/namespaces/{kube.namespace}/secrets/{status['tls']['clientSecret']}")
        files = {key: base64.b64decode(value) for key, value in reply.expect(200)["data"].items()}
        credentials = grpc.ssl_channel_credentials(root_certificates=files["ca.crt"], private_key=files["tls.key"],
                                                   certificate_chain=files["tls.crt"])
        channel = grpc.aio.secure_channel(pod.endpoint("client"), credentials,
                                          options=[("grpc.ssl_target_name_override", endpoint.hostname)])
    async with channel:
        yield rpc_pb2_grpc.KVStub(channel)


async def test_create_until_ready_runs_the_shim_from_its_deployment(kube, cluster, start_operator, arm_stand_in,
                                                                    cosmos, tmp_path):
    await start_operator()
    await cluster.apply(SPEC)
    await cluster.wait_condition("Keys", "True")
    await cluster.wait_condition("Shim", "False", "Unavailable")
    made = arm_stand_in.container(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, SPEC["account"]["name"], "EtcdDB",
                                  "EtcdData")
    await make_arms_container(cosmos, made, "EtcdDB")

    deployment = kube.get(DEPLOYMENTS, kube.namespace, "tenant-a")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--cosmos-endpoint") + 1] == cosmos.endpoint
    kubelet = Kubelet(kube, tmp_path / "kubelet")
    try:
        first, second = await kubelet.run(deployment)
        # Both pods serve etcd on the one container: a write through one is read through the other.
        async with etcd_kv(kube, cluster, first) as kv:
            put = await kv.Put(rpc_pb2.PutRequest(key=b"/registry/probe", value=b"from-the-first-pod"), timeout=30)
        async with etcd_kv(kube, cluster, second) as kv:
            got = await kv.Range(rpc_pb2.RangeRequest(key=b"/registry/probe"), timeout=30)
        assert [(item.value, item.mod_revision) for item in got.kvs] == \
            [(b"from-the-first-pod", put.header.revision)]
        assert f"--name {first.name} " in " ".join(first.argv)  # $(POD_NAME) from the pod's own name
        await cluster.make_pods_available(2)
        await cluster.wait_condition("Ready", "True")
        for pod in (first, second):
            pod.assert_alive()
    finally:
        kubelet.stop()

    body = cluster.body
    status = body["status"]
    assert status["observedGeneration"] == body["metadata"]["generation"] == 1
    endpoint = urllib.parse.urlsplit(status["endpoint"])
    assert endpoint.netloc == f"tenant-a.{kube.namespace}.svc:2379"
    assert endpoint.scheme == ("https" if "--cert-file" in container["args"] else "http")  # as the pods serve
    assert status["accountEndpoint"] == cosmos.endpoint
    assert status["throughput"] == {"mode": "Manual", "requestUnits": 400}
    assert cluster.condition("Shim")["message"] == "2 of 2 replicas available"
    assert body["metadata"]["finalizers"] == [FINALIZER]
    assert body["spec"]["deletionPolicy"] == "Retain"  # the CRD's default, applied by the server

    # The children: owned by the cluster, and every field of theirs but status by the operator's
    # server-side apply (created by apply too, so that an apply that drops a field removes it).
    uid = body["metadata"]["uid"]
    for resource, name in ((DEPLOYMENTS, "tenant-a"), (SERVICES, "tenant-a"), (PDBS, "tenant-a"),
                           (SECRETS, "tenant-a-cosmos-keys")):
        child = kube.get(resource, kube.namespace, name)
        assert [owner["uid"] for owner in child["metadata"]["ownerReferences"]] == [uid]
        assert {(entry["manager"], entry["operation"]) for entry in child["metadata"]["managedFields"]
                if entry.get("subresource") != "status"} == {("cosmos-etcd-operator", "Apply")}, resource

    # kubectl get cec: the printer columns, evaluated by the server.
    table = (await kube.request("GET", CLUSTERS_PATH.format(namespace=kube.namespace), accept=TABLE)).expect(200)
    columns = [column["name"] for column in table["columnDefinitions"]]
    [row] = table["rows"]
    cells = dict(zip(columns, row["cells"]))
    assert (cells["Ready"], cells["Endpoint"], cells["Throughput"]) == ("True", status["endpoint"], 400)

    # kubectl describe: the events, real Events of the namespace.
    def events():
        return [(event["type"], event["reason"]) for event in kube.list(EVENTS, kube.namespace)
                if event["involvedObject"]["uid"] == uid]
    await kube.wait_for(lambda: ("Normal", "Ready") in events(), what="the Ready event")
    assert ("Normal", "InProgress") in events()


async def test_throughput_switched_from_manual_to_autoscale(kube, cluster, start_operator, arm_stand_in):
    await ready_cluster(cluster, start_operator)
    await cluster.patch_spec({"throughput": {"mode": "Autoscale", "requestUnits": 4000}})
    await kube.wait_for(lambda: (cluster.body["status"].get("observedGeneration") == 2
                                 and cluster.body["status"]["throughput"] == {"mode": "Autoscale", "requestUnits": 4000}
                                 and cluster.condition("Ready")["status"] == "True"), what="Autoscale 4000 in force")
    made = arm_stand_in.container(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, SPEC["account"]["name"], "EtcdDB",
                                  "EtcdData")
    assert (made.throughput.mode, made.throughput.request_units) == ("Autoscale", 4000)
    assert arm_calls(arm_stand_in, "POST", "/throughputSettings/default/migrateToAutoscale") == 1
    assert cluster.condition("Throughput")["message"] == "Autoscale 4000 RU/s (maximum)"


async def test_an_immutable_field_is_refused_and_the_cluster_stays_ready(kube, cluster, start_operator):
    before = await ready_cluster(cluster, start_operator)
    with pytest.raises(Refused) as refused:
        await cluster.patch_spec({"cosmos": {"database": "OtherDB"}})
    assert_refused(refused.value, "spec.cosmos.database is immutable")
    after = (await kube.request("GET", CLUSTERS_PATH.format(namespace=kube.namespace) + "/tenant-a")).expect(200)
    assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1
    assert after["spec"] == before["spec"]
    assert cluster.condition("Ready")["status"] == "True"


async def test_delete_with_retain_keeps_the_account(kube, cluster, start_operator, arm_stand_in):
    await ready_cluster(cluster, start_operator)
    await cluster.delete()
    await cluster.wait_gone()
    # The server held the object (deletionTimestamp set) until the operator removed its finalizer.
    assert any(version["metadata"].get("deletionTimestamp") and version["metadata"].get("finalizers") == [FINALIZER]
               for version in cluster.history())
    assert account(arm_stand_in) is not None
    assert not any(request.method == "DELETE" for request in arm_stand_in.requests)


async def test_delete_with_delete_deletes_the_account(kube, cluster, start_operator, arm_stand_in):
    await ready_cluster(cluster, start_operator, {**SPEC, "deletionPolicy": "Delete"})
    await cluster.delete()
    await cluster.wait_gone()
    assert any(version["metadata"].get("deletionTimestamp") and version["metadata"].get("finalizers") == [FINALIZER]
               for version in cluster.history())
    assert account(arm_stand_in) is None
    deletes = [request for request in arm_stand_in.requests if request.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].path.endswith(f"/databaseAccounts/{SPEC['account']['name']}")
    assert any("deletion" in (version.get("status") or {}).get("pendingOperations", {})
               for version in cluster.history())


async def test_an_operator_restarted_mid_operation_resumes_it(kube, cluster, start_operator, arm_stand_in):
    arm_stand_in.hold("account.create")
    first = await start_operator()
    await cluster.apply(SPEC)
    pending = await kube.wait_for(lambda: (cluster.body.get("status") or {}).get("pendingOperations", {}).get("account"),
                                  what="the account creation's token in status")
    [operation] = arm_stand_in.pending_operations("account.create")
    assert operation in pending["token"] and pending["operation"] == f"create account {SPEC['account']['name']}"
    await first.stop()
    polls_before = sum(1 for request in arm_stand_in.requests if operation in request.path)

    await start_operator()
    await kube.wait_for(lambda: sum(1 for request in arm_stand_in.requests if operation in request.path) > polls_before,
                        what="the new operator polling the same operation")
    arm_stand_in.release("account.create")
    await cluster.wait_ready()
    assert arm_calls(arm_stand_in, "PUT", f"/databaseAccounts/{SPEC['account']['name']}") == 1
    assert cluster.body["status"]["pendingOperations"] == {}


def changed_fields(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, old value, new value) of every field that differs, managedFields and resourceVersion aside."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(old.keys() | new.keys()) if key not in ("managedFields", "resourceVersion")
                for change in changed_fields(old.get(key), new.get(key), f"{path}.{key}")]
    return [] if old == new else [(path, old, new)]


async def arm_calls_reach(arm_stand_in: arm.ArmStandIn, method: str, path_end: str, count: int,
                          timeout: float = 60) -> None:
    """Until the stand-in has seen ``count`` such requests. ARM has no watch: its request log is
    asked every 0.1 s, as the operator's drift timer, not an event, makes the calls."""
    async def until():
        while arm_calls(arm_stand_in, method, path_end) < count:
            await asyncio.sleep(0.1)
    try:
        await asyncio.wait_for(until(), timeout)
    except TimeoutError:
        raise AssertionError(f"fewer than {count} {method} ...{path_end} after {timeout} s") from None


async def test_a_settled_cluster_costs_no_write(kube, cluster, start_operator, arm_stand_in):
    """The drift pass compares what the real server stores (its defaults added, quantities and
    ports as it serialises them) with what the operator renders: equal, so nothing is written, in
    Kubernetes or in Azure. And no Deployment event handled late sets an older availability back
    (one did: Ready went False and True again after the cluster settled)."""
    await start_operator(drift_interval=DRIFT_INTERVAL)
    await cluster.apply(SPEC)
    await cluster.wait_ready()
    await cluster.wait_handled()  # kopf's own record of the handled spec is written last
    objects = [(CLUSTERS, "tenant-a"), (DEPLOYMENTS, "tenant-a"), (SERVICES, "tenant-a"), (PDBS, "tenant-a"),
               (SECRETS, "tenant-a-cosmos-keys")]
    versions = {key: kube.get(key[0], kube.namespace, key[1])["metadata"]["resourceVersion"] for key in objects}
    # Events are posted after the status write that they tell of: the last one is Ready's.
    await kube.wait_for(lambda: any(event["reason"] == "Ready" for event in kube.list(EVENTS, kube.namespace)),
                        what="the Ready event")
    events = len(kube.list(EVENTS, kube.namespace))
    arm_writes = sum(1 for request in arm_stand_in.requests if request.method in ("PUT", "PATCH", "DELETE"))
    # Each pass lists the keys once, after reading every Azure part; passes of one object never
    # overlap: once the second pass from now has listed them, the first has written all it would.
    list_keys = arm_calls(arm_stand_in, "POST", "/listKeys")
    await arm_calls_reach(arm_stand_in, "POST", "/listKeys", list_keys + 2)
    for key, version in versions.items():
        history = kube.history(key[0], kube.namespace, key[1])
        writes = [changed_fields(before, after) for before, after in zip(history, history[1:])
                  if int(after["metadata"]["resourceVersion"]) > int(version)]
        assert not writes, f"{key} written after it settled: {writes}"
    assert len(kube.list(EVENTS, kube.namespace)) == events
    assert sum(1 for request in arm_stand_in.requests if request.method in ("PUT", "PATCH", "DELETE")) == arm_writes
