"""The CosmosEtcdCluster CRD: valid for a current Kubernetes, its examples admitted, its CEL rules
keeping immutable what Azure cannot change in place, and in agreement with operator/spec.py.

Admission is what tests/harness/kube.py's CrdAdmission does (structural defaults, the OpenAPI
schema through jsonschema, every x-kubernetes-validations rule through a real CEL interpreter).
"""
from __future__ import annotations

import copy
import pathlib
import subprocess

import pytest
import yaml

from cosmos_etcd_operator.spec import InvalidSpec, parse
from tests.harness.kube import CRD_FILE, CrdAdmission, Invalid, load_crd

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
AZURE = {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg-control-planes",
         "location": "westeurope"}


@pytest.fixture(scope="module")
def admission() -> CrdAdmission:
    return CrdAdmission(load_crd())


def _cluster(spec: dict, name: str = "tenant-a") -> dict:
    return {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster",
            "metadata": {"name": name, "namespace": "control-planes"}, "spec": spec}


def _examples() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found.append((path.name, document))
    return found


def test_crd_is_valid_for_kubernetes():
    result = subprocess.run(["kubernetes-validate", "--strict", "-k", "1.33.0", str(CRD_FILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_crd_names_and_columns():
    crd = load_crd()
    assert crd["spec"]["group"] == "cosmosetcd.io"
    assert crd["spec"]["names"]["kind"] == "CosmosEtcdCluster"
    assert crd["spec"]["names"]["shortNames"] == ["cec"]
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Endpoint"] == ".status.endpoint"
    assert columns["Throughput"] == ".status.throughput.requestUnits"
    assert columns["Age"] == ".metadata.creationTimestamp"


@pytest.mark.parametrize("name, document", _examples(), ids=lambda value: value if isinstance(value, str) else "")
def test_examples_are_admitted_and_parse(admission, name, document):
    if document["kind"] == "Secret":
        assert set(document["stringData"]) == {"clientId", "clientSecret", "tenantId"}
        return
    admitted = admission.admit(document)
    spec = parse(admitted["spec"], name=admitted["metadata"]["name"])
    assert spec.subscription_id == document["spec"]["azure"]["subscriptionId"]


def test_defaults_are_the_specs(admission):
    admitted = admission.admit(_cluster({"azure": AZURE}))["spec"]
    assert admitted["throughput"] == {"mode": "Manual"}
    assert admitted["cosmos"] == {"database": "EtcdDB", "container": "EtcdData"}
    assert admitted["shim"] == {"replicas": 2}
    assert admitted["deletionPolicy"] == "Retain"
    assert admitted["account"]["consistency"] == {"level": "BoundedStaleness", "maxStalenessPrefix": 100000,
                                                  "maxIntervalInSeconds": 300}
    from_schema = parse(admitted, name="tenant-a")
    from_parse = parse({"azure": AZURE}, name="tenant-a")
    assert from_schema == from_parse


IMMUTABLE = [
    ("azure", "subscriptionId", "11111111-1111-1111-1111-111111111111", "spec.azure.subscriptionId is immutable"),
    ("azure", "resourceGroup", "rg-other", "spec.azure.resourceGroup is immutable"),
    ("azure", "location", "northeurope", "spec.azure.location is immutable"),
    ("cosmos", "database", "OtherDB", "spec.cosmos.database is immutable"),
    ("cosmos", "container", "OtherData", "spec.cosmos.container is immutable"),
    ("account", "name", "renamed-account", "spec.account.name is immutable"),
]


@pytest.mark.parametrize("section, field, value, message", IMMUTABLE, ids=[item[1] for item in IMMUTABLE])
def test_immutable_fields_cannot_change(admission, section, field, value, message):
    old = admission.admit(_cluster({"azure": dict(AZURE), "account": {"name": "tenant-a-etcd"}}))
    new = copy.deepcopy(old)
    new["spec"].setdefault(section, {})[field] = value
    with pytest.raises(Invalid, match=message):
        admission.admit(new, old)


def test_account_name_defaults_to_the_object_name_and_stays_it(admission):
    old = admission.admit(_cluster({"azure": AZURE}))
    same = copy.deepcopy(old)
    same["spec"]["account"]["name"] = "tenant-a"  # spelling out the default changes nothing
    admission.admit(same, old)
    other = copy.deepcopy(old)
    other["spec"]["account"]["name"] = "tenant-b"
    with pytest.raises(Invalid, match="spec.account.name is immutable"):
        admission.admit(other, old)


def test_a_default_account_name_azure_would_refuse_may_be_replaced(admission):
    old = admission.admit(_cluster({"azure": AZURE}, name="tenant.a"))
    fixed = copy.deepcopy(old)
    fixed["spec"]["account"]["name"] = "tenant-a-etcd"
    admission.admit(fixed, old)
    renamed = copy.deepcopy(fixed)
    renamed["spec"]["account"]["name"] = "tenant-a-other"
    with pytest.raises(Invalid, match="spec.account.name is immutable"):
        admission.admit(renamed, fixed)
    dropped = copy.deepcopy(fixed)
    del dropped["spec"]["account"]["name"]
    with pytest.raises(Invalid, match="spec.account.name is immutable"):
        admission.admit(dropped, fixed)


def test_immutable_fields_may_be_set_on_create(admission):
    admission.admit(_cluster({"azure": AZURE, "account": {"name": "x-etcd"},
                              "cosmos": {"database": "D", "container": "C"}}))


MUTABLE = [
    {"throughput": {"mode": "Autoscale", "requestUnits": 4000}},
    {"throughput": {"mode": "Manual", "requestUnits": 1200}},
    {"shim": {"replicas": 5, "image": "mine:1", "tls": {"secretName": "t"}}},
    {"account": {"consistency": {"level": "Session"}, "tags": {"a": "b"}, "automaticFailover": False,
                 "locations": [{"name": "westeurope", "failoverPriority": 0},
                               {"name": "northeurope", "failoverPriority": 1}]}},
    {"deletionPolicy": "Delete"},
    {"azure": {**AZURE, "credentials": {"servicePrincipalSecretRef": {"name": "sp"}}}},
]


@pytest.mark.parametrize("change", MUTABLE, ids=lambda change: next(iter(change)))
def test_mutable_fields_can_change(admission, change):
    old = admission.admit(_cluster({"azure": AZURE}))
    new = copy.deepcopy(old)
    for key, value in change.items():
        new["spec"][key] = {**new["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    parse(admission.admit(new, old)["spec"], name="tenant-a")


REJECTED_BY_BOTH = {
    "manual not a multiple of 100": {"throughput": {"mode": "Manual", "requestUnits": 450}},
    "manual under 400": {"throughput": {"mode": "Manual", "requestUnits": 300}},
    "autoscale under 1000": {"throughput": {"mode": "Autoscale", "requestUnits": 400}},
    "autoscale not a multiple of 1000": {"throughput": {"mode": "Autoscale", "requestUnits": 1500}},
    "unknown mode": {"throughput": {"mode": "Serverless", "requestUnits": 400}},
    "unknown consistency": {"account": {"consistency": {"level": "Linearizable"}}},
    "staleness interval too short": {"account": {"consistency": {"maxIntervalInSeconds": 1}}},
    "region twice": {"account": {"locations": [{"name": "westeurope", "failoverPriority": 0},
                                               {"name": "westeurope", "failoverPriority": 1}]}},
    "priority gap": {"account": {"locations": [{"name": "westeurope", "failoverPriority": 0},
                                               {"name": "northeurope", "failoverPriority": 2}]}},
    "write region elsewhere": {"account": {"locations": [{"name": "northeurope", "failoverPriority": 0}]}},
    "account name with capitals": {"account": {"name": "Tenant-A"}},
    "account name too short": {"account": {"name": "ab"}},
    "no replicas": {"shim": {"replicas": 0}},
    "empty image": {"shim": {"image": ""}},
    "tls without secret": {"shim": {"tls": {"clientCertAuth": True}}},
    "unknown deletion policy": {"deletionPolicy": "Orphan"},
    "bad subscription": {"azure": {**AZURE, "subscriptionId": "not-a-guid"}},
    "bad region": {"azure": {**AZURE, "location": "West Europe"}},
    "too many tags": {"account": {"tags": {f"t{index}": "v" for index in range(51)}}},
}


@pytest.mark.parametrize("spec", REJECTED_BY_BOTH.values(), ids=REJECTED_BY_BOTH.keys())
def test_schema_and_parse_reject_the_same_specs(admission, spec):
    full = {"azure": AZURE, **spec}
    with pytest.raises(Invalid):
        admission.admit(_cluster(full))
    with pytest.raises(InvalidSpec):
        parse(full, name="tenant-a")


def test_parse_catches_what_the_schema_cannot():
    """An object name that is valid for Kubernetes but not as the default Azure account name."""
    admission = CrdAdmission(load_crd())
    admitted = admission.admit(_cluster({"azure": AZURE}, name="tenant.a"))
    with pytest.raises(InvalidSpec, match="spec.account.name must be 3-44 lowercase letters"):
        parse(admitted["spec"], name="tenant.a")
