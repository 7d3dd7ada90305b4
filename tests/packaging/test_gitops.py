"""GitOps: the Argo CD and Flux examples point at what exists, and both tools read the status right.

Argo CD's health check (examples/gitops/argocd/argocd-cm-health.yaml) is Lua run by gopher-lua
(Lua 5.1): it runs here in Lua 5.1 (lupa) on statuses that the operator's own condition code
writes. Flux reads health with kstatus; `kstatus_reading` below is kstatus' documented rule for
custom resources, and the two readings must agree on every status.
"""
from __future__ import annotations

import json

import lupa.lua51
import pytest
import yaml

from cosmos_etcd_operator import conditions
from tests.harness.project import CRDS_DIR, EXAMPLES_DIR, REPO

GITOPS = EXAMPLES_DIR / "gitops"
CRD = yaml.safe_load((CRDS_DIR / "cosmosetcd.io_cosmosetcdclusters.yaml").read_text())


def _documents(path):
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _argocd_health_script() -> str:
    (patch,) = _documents(GITOPS / "argocd" / "argocd-cm-health.yaml")
    key = f"resource.customizations.health.{CRD['spec']['group']}_{CRD['spec']['names']['kind']}"
    assert set(patch["data"]) == {key}, "Argo CD finds a health check by <group>_<Kind>"
    return patch["data"][key]


def argocd_health(obj: dict) -> dict:
    """What Argo CD's health check says of ``obj``, run as Argo CD runs it (a chunk reading ``obj``)."""
    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD hands the object over as nested tables, as JSON decodes it.
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(_argocd_health_script())
    return {"status": result["status"], "message": result["message"]}


def kstatus_reading(obj: dict) -> str:
    """kstatus' status of a custom resource (sigs.k8s.io/cli-utils/pkg/kstatus, its README's rules)."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return "InProgress"
    by_type = {condition["type"]: condition for condition in status.get("conditions", [])}
    if by_type.get("Reconciling", {}).get("status") == "True":
        return "InProgress"
    if by_type.get("Stalled", {}).get("status") == "True":
        return "Failed"
    if by_type.get("Ready", {}).get("status") == "False":
        return "InProgress"
    return "Current"


def _cluster(generation: int, status: dict | None, **metadata) -> dict:
    obj = {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster",
           "metadata": {"name": "tenant-a", "namespace": "control-planes", "generation": generation, **metadata}}
    if status is not None:
        obj["status"] = status
    return obj


def _status(generation: int, **summary) -> dict:
    """A status as the operator writes it: parts set in order, then summarised."""
    states = conditions.Conditions([], generation)
    ready_parts = summary.pop("ready_parts", len(conditions.PARTS))
    for part in conditions.PARTS[:ready_parts]:
        states.set(conditions.Condition(part, conditions.TRUE, "Ready", f"{part} is ready"))
    if ready_parts < len(conditions.PARTS):
        part = conditions.PARTS[ready_parts]
        states.set(conditions.Condition(part, conditions.FALSE, summary.pop("reason", "OperationInProgress"),
                                        f"{part} is being created"))
        states.wait_after(part)
    states.summarize(**summary)
    return {"observedGeneration": generation, "conditions": states.as_list()}


STATES = {
    # name: (object, Argo CD health, kstatus)
    "new object": (_cluster(1, None), "Progressing", "InProgress"),
    "account being created": (_cluster(1, _status(1, ready_parts=1)), "Progressing", "InProgress"),
    "ready": (_cluster(3, _status(3)), "Healthy", "Current"),
    "ready for an older generation": (_cluster(4, _status(3)), "Progressing", "InProgress"),
    "invalid spec": (_cluster(2, _status(2, invalid_spec="spec.throughput.requestUnits must be ...")),
                     "Degraded", "Failed"),
    "Azure refuses for good": (_cluster(2, _status(2, ready_parts=1, reason="AuthorizationFailed", stalled=True)),
                               "Degraded", "Failed"),
    "deleting": (_cluster(3, _status(3), deletionTimestamp="2026-11-27T08:00:00Z"), "Progressing", "Terminating"),
}


@pytest.mark.parametrize("state", STATES)
def test_argo_cd_and_flux_read_the_status_alike(state):
    obj, argocd_expected, kstatus_expected = STATES[state]
    health = argocd_health(obj)
    assert health["status"] == argocd_expected, health
    assert kstatus_reading(obj) == kstatus_expected
    # Healthy in Argo CD exactly when Current in kstatus.
    assert (health["status"] == "Healthy") == (kstatus_expected == "Current")


def test_argo_cd_health_says_why_it_is_not_healthy():
    obj, _, _ = STATES["invalid spec"]
    assert "requestUnits" in argocd_health(obj)["message"]
    obj, _, _ = STATES["account being created"]
    assert argocd_health(obj)["message"].startswith("Account:")


def test_the_argo_cd_application_installs_this_chart_with_valid_values(render):
    operator_app, clusters_app = _documents(GITOPS / "argocd" / "applications.yaml")
    source = operator_app["spec"]["source"]
    assert (REPO / source["path"] / "Chart.yaml").is_file()
    assert render(source["helm"]["valuesObject"]), "Helm checks the values against values.schema.json"
    # The operator (and its CRD) sync before the clusters.
    wave = int(operator_app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
    assert wave < int(clusters_app["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", 0))


def test_the_flux_release_installs_this_chart_with_valid_values(render):
    by_kind = {}
    for document in _documents(GITOPS / "flux" / "cosmos-etcd.yaml"):
        by_kind.setdefault(document["kind"], []).append(document)
    (release,) = by_kind["HelmRelease"]
    assert (REPO / release["spec"]["chart"]["spec"]["chart"] / "Chart.yaml").is_file()
    assert render(release["spec"]["values"])
    # The CRD is installed and upgraded with the release (Helm alone never upgrades crds/).
    assert release["spec"]["install"]["crds"] == release["spec"]["upgrade"]["crds"] == "CreateReplace"
    kustomizations = {document["metadata"]["name"]: document for document in by_kind["Kustomization"]}
    clusters = kustomizations["control-plane-etcds"]
    assert clusters["spec"]["wait"] is True, "Flux must wait for the clusters' kstatus to be Current"
    assert {dependency["name"] for dependency in clusters["spec"]["dependsOn"]} <= set(kustomizations)
