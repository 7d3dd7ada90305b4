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

from cosmos_etcd_operator.spec import ConsistencyLevel, InvalidSpec, parse
from tests.harness.kube import CRD_FILE, CrdAdmission, Invalid, load_crd

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
AZURE = {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg-control-planes",
         "location": "westeurope"}
TWO_REGIONS = [{"name": "westeurope", "failoverPriority": 0}, {"name": "northeurope", "failoverPriority": 1}]


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
    # No level: the operator chooses it from the regions (see test_consistency_defaults_by_regions).
    assert admitted["account"] == {"consistency": {"maxStalenessPrefix": 100000, "maxIntervalInSeconds": 300},
                                   "automaticFailover": True, "acceptDataLossOnFailover": False,
                                   "minimalTlsVersion": "Tls12"}
    from_schema = parse(admitted, name="tenant-a")
    from_parse = parse({"azure": AZURE}, name="tenant-a")
    assert from_schema == from_parse


@pytest.mark.parametrize("locations, level", [(None, ConsistencyLevel.BOUNDED_STALENESS),
                                              (TWO_REGIONS[:1], ConsistencyLevel.BOUNDED_STALENESS),
                                              (TWO_REGIONS, ConsistencyLevel.STRONG)],
                         ids=["no-locations", "one-region", "two-regions"])
def test_consistency_defaults_by_regions(admission, locations, level):
    """Strong for a multi-region account (a failover loses nothing); a single region keeps BoundedStaleness."""
    account = {} if locations is None else {"locations": locations}
    admitted = admission.admit(_cluster({"azure": AZURE, "account": account}))
    spec = parse(admitted["spec"], name="tenant-a")
    assert spec.consistency.level is level
    assert spec.automatic_failover is True and spec.failover_can_lose_writes is False


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
    {"shim": {"tls": {"mode": "Secret", "secretName": "t", "clientCertAuth": False}}},
    {"shim": {"tls": {"mode": "Managed", "extraNames": ["etcd.example.com", "10.0.0.7"],
                      "clientCommonName": "apiserver"}}},
    {"shim": {"tls": {"mode": "Disabled"}}},
    {"account": {"consistency": {"level": "BoundedStaleness"}, "tags": {"a": "b"}, "automaticFailover": False,
                 "locations": TWO_REGIONS}},
    {"deletionPolicy": "Delete"},
    {"azure": {**AZURE, "credentials": {"servicePrincipalSecretRef": {"name": "sp"}}}},
    {"account": {"publicNetworkAccess": "Disabled", "ipRules": ["203.0.113.0/24", "198.51.100.7"],
                 "virtualNetworkRules": [{"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/"
                                                "virtualNetworks/v/subnets/n"}],
                 "minimalTlsVersion": "Tls12", "disableKeyBasedMetadataWriteAccess": True,
                 "backup": {"type": "Continuous", "tier": "Continuous7Days"}}},
    {"account": {"backup": {"type": "Periodic", "intervalInMinutes": 60, "retentionInHours": 720,
                            "storageRedundancy": "Zone"}}},
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
    "consistency the shim refuses": {"account": {"consistency": {"level": "Session"}}},
    "bounded staleness with automatic failover across regions": {
        "account": {"consistency": {"level": "BoundedStaleness"}, "locations": TWO_REGIONS}},
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
    "unknown tls mode": {"shim": {"tls": {"mode": "Auto"}}},
    "tls mode Secret without a Secret": {"shim": {"tls": {"mode": "Secret"}}},
    "tls Secret named with mode Managed": {"shim": {"tls": {"mode": "Managed", "secretName": "t"}}},
    "tls Secret named with mode Disabled": {"shim": {"tls": {"mode": "Disabled", "secretName": "t"}}},
    "empty client common name": {"shim": {"tls": {"clientCommonName": ""}}},
    "unknown deletion policy": {"deletionPolicy": "Orphan"},
    "bad subscription": {"azure": {**AZURE, "subscriptionId": "not-a-guid"}},
    "bad region": {"azure": {**AZURE, "location": "West Europe"}},
    "too many tags": {"account": {"tags": {f"t{index}": "v" for index in range(51)}}},
    "unknown public network access": {"account": {"publicNetworkAccess": "Private"}},
    "ip rule not IPv4": {"account": {"ipRules": ["2001:db8::/32"]}},
    "ip rule prefix too long": {"account": {"ipRules": ["203.0.113.0/33"]}},
    "virtual network rule not a subnet": {"account": {"virtualNetworkRules": [{"id": "/subscriptions/s"}]}},
    "unknown TLS version": {"account": {"minimalTlsVersion": "Tls13"}},
    "backup without type": {"account": {"backup": {"tier": "Continuous7Days"}}},
    "periodic backup with a tier": {"account": {"backup": {"type": "Periodic", "tier": "Continuous7Days"}}},
    "continuous backup with an interval": {"account": {"backup": {"type": "Continuous", "intervalInMinutes": 60}}},
    "backup interval too short": {"account": {"backup": {"type": "Periodic", "intervalInMinutes": 30}}},
    "retention under two backups": {"account": {"backup": {"type": "Periodic", "intervalInMinutes": 600}}},
    "unknown continuous tier": {"account": {"backup": {"type": "Continuous", "tier": "Continuous90Days"}}},
}


def test_tls_mode_has_no_schema_default(admission):
    """A default would be applied to every stored object when read: a cluster that served plain text
    would then ask for TLS. The operator decides instead (operator/pki.py)."""
    admitted = admission.admit(_cluster({"azure": AZURE}))
    assert "tls" not in admitted["spec"]["shim"]
    admitted = admission.admit(_cluster({"azure": AZURE, "shim": {"tls": {"extraNames": ["etcd.example.com"]}}}))
    assert "mode" not in admitted["spec"]["shim"]["tls"]


def test_continuous_backup_cannot_be_changed_back_to_periodic(admission):
    old = admission.admit(_cluster({"azure": AZURE, "account": {"backup": {"type": "Continuous"}}}))
    periodic = copy.deepcopy(old)
    periodic["spec"]["account"]["backup"] = {"type": "Periodic"}
    with pytest.raises(Invalid, match="Azure cannot turn continuous backup back into periodic"):
        admission.admit(periodic, old)
    longer = copy.deepcopy(old)
    longer["spec"]["account"]["backup"] = {"type": "Continuous", "tier": "Continuous7Days"}
    admission.admit(longer, old)


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


def _bounded_staleness_across_regions(**account) -> dict:
    return {"azure": AZURE, "account": {"consistency": {"level": "BoundedStaleness"}, "locations": TWO_REGIONS,
                                        **account}}


def test_data_loss_on_failover_is_refused_with_the_way_out(admission):
    """kubectl apply and the operator both say which field accepts the loss, and the alternatives."""
    spec = _bounded_staleness_across_regions(automaticFailover=True)
    with pytest.raises(Invalid) as refused:
        admission.admit(_cluster(spec))
    with pytest.raises(InvalidSpec) as invalid:
        parse(spec, name="tenant-a")
    for message in (str(refused.value), str(invalid.value)):
        assert "spec.account.acceptDataLossOnFailover: true" in message
        assert "spec.account.consistency.level: Strong" in message
        assert "spec.account.automaticFailover: false" in message
    assert str(refused.value).startswith("spec.account.consistency.level: Invalid value")
    assert "100000 versions or 300 seconds" in str(invalid.value)


@pytest.mark.parametrize("account", [{"acceptDataLossOnFailover": True}, {"automaticFailover": False}],
                         ids=["accepted", "manual-failover"])
def test_bounded_staleness_across_regions_is_admitted_when_accepted_or_manual(admission, account):
    spec = parse(admission.admit(_cluster(_bounded_staleness_across_regions(**account)))["spec"], name="tenant-a")
    assert spec.consistency.level is ConsistencyLevel.BOUNDED_STALENESS
    assert spec.failover_can_lose_writes is spec.automatic_failover


@pytest.mark.parametrize("account", [
    {"consistency": {"level": "BoundedStaleness"}, "automaticFailover": True},  # one region: nowhere to fail over
    {"consistency": {"level": "Strong"}, "locations": TWO_REGIONS, "automaticFailover": True},
], ids=["single-region", "strong-across-regions"])
def test_no_acceptance_needed_where_no_write_can_be_lost(admission, account):
    spec = parse(admission.admit(_cluster({"azure": AZURE, "account": account}))["spec"], name="tenant-a")
    assert spec.failover_can_lose_writes is False and spec.accept_data_loss_on_failover is False


def test_accepting_the_loss_can_be_withdrawn_only_by_removing_the_risk(admission):
    accepted = admission.admit(_cluster(_bounded_staleness_across_regions(acceptDataLossOnFailover=True)))
    withdrawn = copy.deepcopy(accepted)
    withdrawn["spec"]["account"]["acceptDataLossOnFailover"] = False
    with pytest.raises(Invalid, match="acceptDataLossOnFailover"):
        admission.admit(withdrawn, accepted)
    withdrawn["spec"]["account"]["consistency"]["level"] = "Strong"
    assert parse(admission.admit(withdrawn, accepted)["spec"], name="tenant-a").failover_can_lose_writes is False
