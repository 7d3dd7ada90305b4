"""The chart's RBAC against the operator's real calls: every call it makes is allowed, nothing more
is granted.

The operator runs its whole lifecycle (create until Ready, drift corrected, delete with the
Azure resources) against the API emulator, which records each request. The same chart that
`helm install` applies is rendered for the same mode (cluster-wide, or one watched namespace),
and the recorded calls are matched to its ClusterRole and Roles as the API server's authorizer
matches them: by API group, resource, subresource, verb and namespace.
"""
from __future__ import annotations

import base64

import helm_python
import pytest

from tests.harness import arm
from tests.harness.kube import DEPLOYMENTS, NETWORK_POLICIES, PDBS, SECRETS, SERVICE_ACCOUNTS, SERVICES
from tests.harness.manifests import load_documents
from tests.harness.operator import NAMESPACE
from tests.harness.project import CHART_DIR
from tests.operator.test_operator_lifecycle import SPEC, ready_cluster

# Granted without a call the emulator can see: with the OwnerReferencesPermissionEnforcement
# admission plugin, setting an ownerReference with blockOwnerDeletion (kopf.adopt does) needs
# `update` on the owner's finalizers subresource.
GRANTED_FOR_ADMISSION = {("cosmosetcd.io", "cosmosetcdclusters/finalizers", "update")}

METHOD_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def api_request(method: str, path: str) -> tuple[str, str, str, str | None] | None:
    """(group, resource[/subresource], verb, namespace) of a request, as Kubernetes' authorizer sees
    it; None for discovery, which every authenticated user may read."""
    route, _, query = path.partition("?")
    parts = route.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else ("/".join(parts[1:2]), parts[3:])
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    resource, name, subresource = (rest + ["", ""])[:3]
    verb = METHOD_VERBS.get(method) or ("watch" if "watch=true" in query or "watch=1" in query
                                        else "get" if name else "list")
    return group, f"{resource}/{subresource}" if subresource else resource, verb, namespace


def _rendered_rules(watch_namespaces: list[str]) -> tuple[set, dict[str, set]]:
    """The chart's rules, expanded: ClusterRole grants, and Role grants by namespace."""
    values = {"operator": {"watchNamespaces": watch_namespaces}}
    with helm_python.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(values, name="ce", namespace="cosmos-etcd", is_install=True)
    objects = [obj for path, text in manifests.items() if not path.endswith("NOTES.txt")
               for obj in load_documents(text)]
    bound = {(obj["roleRef"]["kind"], obj["roleRef"]["name"], obj["metadata"].get("namespace"))
             for obj in objects if obj["kind"] in ("ClusterRoleBinding", "RoleBinding")}
    cluster_wide: set = set()
    by_namespace: dict[str, set] = {}
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "Role"):
            continue
        namespace = obj["metadata"].get("namespace")
        assert (obj["kind"], obj["metadata"]["name"], namespace) in bound, f"{obj['kind']} bound to nothing"
        grants = {(group, resource, verb) for rule in obj["rules"] for group in rule["apiGroups"]
                  for resource in rule["resources"] for verb in rule["verbs"]}
        assert "*" not in {part for grant in grants for part in grant}, "no wildcard grants"
        if obj["kind"] == "ClusterRole":
            cluster_wide |= grants
        else:
            by_namespace.setdefault(namespace, set()).update(grants)
    return cluster_wide, by_namespace


@pytest.mark.parametrize("watch_namespaces", [[], [NAMESPACE]], ids=["cluster-wide", "one-namespace"])
async def test_the_charts_rbac_allows_every_call_and_grants_nothing_more(
        watch_namespaces, kube_api, kube_api_calls, arm_stand_in, arm_service_principal, start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator,
                                  {**SPEC, "deletionPolicy": "Delete"}, drift_interval=0.3,
                                  namespaces=tuple(watch_namespaces))
    # Every child changed behind the operator's back, and the account's keys rotated: the drift
    # timer patches each one back.
    await kube_api.patch_object(DEPLOYMENTS, NAMESPACE, "tenant-a", {"spec": {"replicas": 9}})
    await kube_api.patch_object(SERVICES, NAMESPACE, "tenant-a", {"spec": {"ports": [{"name": "client", "port": 1}]}})
    await kube_api.patch_object(PDBS, NAMESPACE, "tenant-a", {"spec": {"maxUnavailable": 5}})
    await kube_api.patch_object(NETWORK_POLICIES, NAMESPACE, "tenant-a", {"spec": {"ingress": []}})
    rotated = arm_stand_in.rotate_keys(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")
    await kube_api.wait_for(lambda: (
        kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")["spec"]["replicas"] == 2
        and kube_api.get(SERVICES, NAMESPACE, "tenant-a")["spec"]["ports"][0]["port"] == 2379
        and kube_api.get(PDBS, NAMESPACE, "tenant-a")["spec"]["maxUnavailable"] == 1
        and kube_api.get(NETWORK_POLICIES, NAMESPACE, "tenant-a")["spec"]["ingress"] != []
        and base64.b64decode(kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys")["data"]["key"]).decode()
        == rotated["primaryMasterKey"]), what="every child set back by the drift timer")
    # Keyless: the ServiceAccount is annotated and the operator's keys Secret deleted.
    identity = arm_stand_in.add_workload_identity("federated-token")
    await cluster.patch_spec({"azure": {"dataPlaneAuth": "EntraID"}, "shim": {"identity": {
        "clientId": identity["clientId"], "principalId": identity["principalId"]}}})
    await kube_api.wait_for(lambda: "entra-id" in kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")["spec"]["template"]
                            ["spec"]["containers"][0]["args"], what="the keyless template")
    await cluster.make_pods_available()  # the rollout ends: no pod uses the keys any more
    await kube_api.wait_for(lambda: kube_api.get(SECRETS, NAMESPACE, "tenant-a-cosmos-keys") is None
                            and kube_api.get(SERVICE_ACCOUNTS, NAMESPACE, "tenant-a")["metadata"].get("annotations"),
                            what="no keys Secret and an annotated ServiceAccount")
    await cluster.delete()
    await cluster.wait_gone()

    cluster_wide, by_namespace = _rendered_rules(watch_namespaces)
    used: set = set()
    requests = [request for request in map(lambda call: api_request(*call), kube_api_calls) if request]
    assert len(requests) > 20, requests
    for group, resource, verb, namespace in requests:
        grant = (group, resource, verb)
        allowed = grant in cluster_wide or grant in by_namespace.get(namespace, set())
        assert allowed, f"{verb} {group or 'core'}/{resource} in {namespace or 'the cluster'} is not granted"
        used.add(grant)
    granted = cluster_wide | set().union(*by_namespace.values())
    assert granted - used == GRANTED_FOR_ADMISSION, f"granted but never used: {sorted(granted - used)}"
    if watch_namespaces:
        assert set(by_namespace) == set(watch_namespaces)
        assert not any(namespace is None for *_, namespace in requests), "namespace mode makes no cluster-wide call"
