"""The CosmosEtcdCluster CRD (crds/) and the example objects (examples/).

* crds/ is the one source of truth; the chart's crds/ is a byte-for-byte copy
  (`python helm/sync_crds.py` makes it, `--check` proves it) and Helm loads it from there.
* The CRD is valid for Kubernetes 1.33 (kubernetes-validate, strict) and is what the project
  promises: group cosmosetcd.io, kind CosmosEtcdCluster, short name cec, a status subresource.
* Every CosmosEtcdCluster in examples/*.yaml validates against the CRD's schema (jsonschema,
  unknown fields being errors as with kubectl's strict field validation), and the check does catch
  a bad one; the other example objects (Secrets) are valid for Kubernetes.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from tests.harness.manifests import custom_resource_errors, kubernetes_errors, load_documents
from tests.harness.project import CRDS_DIR, EXAMPLES_DIR, REPO

CRD_FILE = CRDS_DIR / "cosmosetcd.io_cosmosetcdclusters.yaml"


@pytest.fixture(scope="module")
def crd() -> dict:
    assert CRD_FILE.is_file(), f"{CRD_FILE.relative_to(REPO)} is missing"
    (only,) = load_documents(CRD_FILE.read_text())
    return only


def example_objects() -> list[dict]:
    return [obj for path in sorted(EXAMPLES_DIR.glob("*.yaml")) for obj in load_documents(path.read_text())]


def test_the_crd_is_what_the_project_promises(crd):
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "cosmosetcdclusters.cosmosetcd.io"
    assert (spec["group"], spec["names"]["kind"], spec["scope"]) == ("cosmosetcd.io", "CosmosEtcdCluster", "Namespaced")
    assert "cec" in spec["names"]["shortNames"]
    (stored,) = [v for v in spec["versions"] if v["storage"]]
    assert stored["name"] == "v1alpha1" and stored["served"]
    assert stored["subresources"]["status"] == {}


def test_the_crd_is_valid_for_kubernetes(crd):
    assert kubernetes_errors([crd]) == []


def test_the_charts_crds_are_a_copy_of_crds():
    result = subprocess.run([sys.executable, str(REPO / "helm" / "sync_crds.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_helm_installs_the_crds(chart):
    installed = {entry["filename"].rpartition("/")[2]: entry["data"] for entry in chart.crds}
    assert installed == {path.name: path.read_text() for path in CRDS_DIR.glob("*.yaml")}
    assert CRD_FILE.name in installed


def test_every_example_validates(crd):
    """CosmosEtcdClusters against the CRD; what goes with them (a Secret...) against Kubernetes."""
    examples = example_objects()
    clusters = [obj for obj in examples if obj["kind"] == crd["spec"]["names"]["kind"]]
    assert clusters, f"no CosmosEtcdCluster in {EXAMPLES_DIR.relative_to(REPO)}/*.yaml"
    assert [problem for obj in clusters for problem in custom_resource_errors(obj, crd)] == []
    assert kubernetes_errors([obj for obj in examples if obj not in clusters]) == []


def test_a_bad_example_is_caught(crd):
    """The check above can fail: an unknown field, a wrong type, another kind."""
    (first, *_) = [obj for obj in example_objects() if obj["kind"] == crd["spec"]["names"]["kind"]]
    unknown_field = copy.deepcopy(first)
    unknown_field["spec"]["throughputt"] = 400
    wrong_type = copy.deepcopy(first)
    wrong_type["spec"] = "everything"
    other_kind = {**first, "kind": "EtcdCluster"}
    for bad, mention in ((unknown_field, "throughputt"), (wrong_type, "'everything' is not of type"),
                         (other_kind, "EtcdCluster")):
        problems = custom_resource_errors(bad, crd)
        assert problems and mention in "\n".join(problems), yaml.safe_dump(bad)
