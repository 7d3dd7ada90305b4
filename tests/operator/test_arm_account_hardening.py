"""Account hardening (issue 13, item 4) against the ARM stand-in: network access, IP and virtual
network rules, minimal TLS version, key-based metadata writes and backup are sent on create, set back
when they drift, corrected on an adopted account, left alone when the spec leaves them unset; and the
change Azure refuses (continuous backup back to periodic) is reported, never sent."""
from __future__ import annotations

import pytest

from cosmos_etcd_operator import spec as spec_module
from cosmos_etcd_operator.arm import AccountReady, Pending
from tests.harness import arm
from tests.harness.arm import settle

ACCOUNT = "tenant-a-etcd"
SUBNET = (f"/subscriptions/{arm.SUBSCRIPTION}/resourceGroups/rg-network/providers/Microsoft.Network/"
          f"virtualNetworks/vnet-aks/subnets/nodes")
HARDENED = {
    "publicNetworkAccess": "Disabled",
    "ipRules": ["203.0.113.0/24", "198.51.100.7"],
    "virtualNetworkRules": [{"id": SUBNET, "ignoreMissingVNetServiceEndpoint": True}],
    "disableKeyBasedMetadataWriteAccess": True,
    "backup": {"type": "Continuous", "tier": "Continuous7Days"},
}
HARDENED_SETTINGS = {
    "minimalTlsVersion": "Tls12",
    "disableKeyBasedMetadataWriteAccess": True,
    "disableLocalAuth": False,  # dataPlaneAuth Key: the shim needs the keys
    "network": {"publicNetworkAccess": "Disabled", "ipRules": ["198.51.100.7", "203.0.113.0/24"],
                "virtualNetworkRules": [SUBNET]},
    "backup": {"type": "Continuous", "tier": "Continuous7Days"},
}


def _spec(**account):
    return spec_module.parse({
        "azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP, "location": "westeurope"},
        "account": {"name": ACCOUNT, "tags": {"team": "platform"}, **account}}, name="tenant-a")


def _writes(stand_in):
    return [(r.method, r.status) for r in stand_in.requests
            if r.method in ("PUT", "PATCH") and "/oauth2/" not in r.path]


def _account(stand_in):
    return stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)


def _existing(stand_in, **fields):
    """An account made elsewhere (the portal) with the properties ``fields`` sets."""
    account = stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT, consistency="BoundedStaleness",
                                   automatic_failover=True, tags={"team": "platform"})
    account.consistency.update(maxStalenessPrefix=100_000, maxIntervalInSeconds=300)
    for name, value in fields.items():
        setattr(account, name, value)
    return account


def _assert_hardened(account):
    assert account.public_network_access == "Disabled"
    assert sorted(account.ip_rules) == ["198.51.100.7", "203.0.113.0/24"]
    assert account.virtual_network_rules == [{"id": SUBNET, "ignoreMissingVNetServiceEndpoint": True}]
    assert account.virtual_network_filter is True
    assert account.minimal_tls_version == "Tls12"
    assert account.disable_key_based_metadata_write_access is True
    assert account.backup_policy == {"type": "Continuous", "continuousModeProperties": {"tier": "Continuous7Days"}}


async def test_every_field_is_sent_on_create(arm_stand_in, arm_resources):
    ready, _ = await settle(arm_resources.ensure_account, _spec(**HARDENED))

    assert _writes(arm_stand_in) == [("PUT", 200)]  # all in the create, nothing patched after
    _assert_hardened(_account(arm_stand_in))
    assert ready.settings == HARDENED_SETTINGS


async def test_a_periodic_backup_is_sent_with_its_interval_retention_and_redundancy(arm_stand_in, arm_resources):
    backup = {"type": "Periodic", "intervalInMinutes": 120, "retentionInHours": 48, "storageRedundancy": "Local"}

    ready, _ = await settle(arm_resources.ensure_account, _spec(backup=backup))

    assert _account(arm_stand_in).backup_policy == {"type": "Periodic", "periodicModeProperties": {
        "backupIntervalInMinutes": 120, "backupRetentionIntervalInHours": 48, "backupStorageRedundancy": "Local"}}
    assert ready.settings["backup"] == backup


async def test_unset_fields_are_left_as_an_adopted_account_has_them(arm_stand_in, arm_resources):
    """An adopted, locked-down account is not opened up by a spec that says nothing of its network."""
    _existing(arm_stand_in, public_network_access="Disabled", ip_rules=["203.0.113.0/24"],
              disable_key_based_metadata_write_access=True,
              backup_policy={"type": "Continuous", "continuousModeProperties": {"tier": "Continuous30Days"}})

    ready = await arm_resources.ensure_account(_spec())

    assert isinstance(ready, AccountReady) and ready.adopted
    assert _writes(arm_stand_in) == []
    assert ready.settings == {
        "minimalTlsVersion": "Tls12", "disableKeyBasedMetadataWriteAccess": True, "disableLocalAuth": False,
        "network": {"publicNetworkAccess": "Disabled", "ipRules": ["203.0.113.0/24"], "virtualNetworkRules": []},
        "backup": {"type": "Continuous", "tier": "Continuous30Days"}}


async def test_an_adopted_account_with_other_values_is_corrected(arm_stand_in, arm_resources):
    existing = _existing(arm_stand_in, minimal_tls_version="Tls", ip_rules=["192.0.2.1"],
                         virtual_network_rules=[{"id": SUBNET.replace("nodes", "other"),
                                                 "ignoreMissingVNetServiceEndpoint": False}],
                         virtual_network_filter=True)
    keys = dict(existing.keys)

    started = await arm_resources.ensure_account(_spec(**HARDENED))
    assert started.operation == (f"update account {ACCOUNT} (minimal TLS version, public network access, IP rules, "
                                 f"virtual network rules, key-based metadata writes, backup policy)")
    ready, _ = await settle(arm_resources.ensure_account, _spec(**HARDENED), started.token)

    assert ready.adopted and ready.settings == HARDENED_SETTINGS
    assert _writes(arm_stand_in) == [("PATCH", 200)]  # periodic to continuous too, in one update; never recreated
    _assert_hardened(existing)
    assert existing.keys == keys


@pytest.mark.parametrize("field, drifted, description", [
    ("public_network_access", "Enabled", "public network access"),
    ("ip_rules", ["0.0.0.0/0"], "IP rules"),
    ("virtual_network_rules", [], "virtual network rules"),
    ("minimal_tls_version", "Tls11", "minimal TLS version"),
    ("disable_key_based_metadata_write_access", False, "key-based metadata writes"),
    ("backup_policy", {"type": "Continuous", "continuousModeProperties": {"tier": "Continuous30Days"}},
     "backup policy"),
])
async def test_drift_is_set_back_on_the_next_check(arm_stand_in, arm_resources, field, drifted, description):
    await settle(arm_resources.ensure_account, _spec(**HARDENED))
    setattr(_account(arm_stand_in), field, drifted)

    started = await arm_resources.ensure_account(_spec(**HARDENED))
    assert isinstance(started, Pending)
    assert started.operation == f"update account {ACCOUNT} ({description})"
    ready, _ = await settle(arm_resources.ensure_account, _spec(**HARDENED), started.token)

    _assert_hardened(_account(arm_stand_in))
    assert ready.settings == HARDENED_SETTINGS


async def test_the_minimal_tls_version_defaults_to_1_2_and_is_enforced(arm_stand_in, arm_resources):
    existing = _existing(arm_stand_in, minimal_tls_version="Tls")

    await settle(arm_resources.ensure_account, _spec())

    assert existing.minimal_tls_version == "Tls12"


async def test_continuous_backup_is_never_asked_to_become_periodic(arm_stand_in, arm_resources):
    _existing(arm_stand_in,
              backup_policy={"type": "Continuous", "continuousModeProperties": {"tier": "Continuous7Days"}})

    with pytest.raises(spec_module.InvalidSpec) as refused:
        await arm_resources.ensure_account(_spec(backup={"type": "Periodic"}))

    assert str(refused.value).startswith(f"spec.account.backup.type: account {ACCOUNT!r} has continuous backup, "
                                         f"which Azure cannot turn back into periodic")
    assert _writes(arm_stand_in) == []


async def test_a_migration_to_continuous_in_progress_is_not_asked_for_again(arm_stand_in, arm_resources):
    periodic = dict(arm.DEFAULT_BACKUP_POLICY)
    _existing(arm_stand_in, backup_policy={**periodic, "migrationState": {
        "status": "InProgress", "targetType": "Continuous", "startTime": "2026-12-06T10:00:00Z"}})

    ready = await arm_resources.ensure_account(_spec(backup={"type": "Continuous"}))
    assert isinstance(ready, AccountReady)
    assert ready.settings["backup"] == {"type": "Continuous", "migration": "InProgress"}
    assert _writes(arm_stand_in) == []
    with pytest.raises(spec_module.InvalidSpec, match="cannot turn back into periodic"):
        await arm_resources.ensure_account(_spec(backup={"type": "Periodic"}))


@pytest.mark.parametrize("account, message", [
    ({"ipRules": ["10.0.0.1/8"]}, "spec.account.ipRules[0] must be an IPv4 address or a CIDR range"),
    ({"ipRules": ["2001:db8::/32"]}, "spec.account.ipRules[0] must be an IPv4 address"),
    ({"virtualNetworkRules": [{"id": "/subscriptions/x/resourceGroups/y"}]},
     "spec.account.virtualNetworkRules[0].id must be a subnet resource id"),
    ({"backup": {"type": "Periodic", "intervalInMinutes": 720, "retentionInHours": 8}},
     "must keep at least two backups"),
    ({"backup": {"type": "Continuous", "intervalInMinutes": 60}}, "intervalInMinutes only apply to type Periodic"),
    ({"backup": {"type": "Periodic", "tier": "Continuous7Days"}}, "tier only applies to type Continuous"),
    ({"backup": {"tier": "Continuous7Days"}}, "spec.account.backup.type is required"),
    ({"minimalTlsVersion": "Tls13"}, "spec.account.minimalTlsVersion must be one of Tls, Tls11, Tls12"),
])
def test_invalid_hardening_is_refused_with_the_field_named(account, message):
    with pytest.raises(spec_module.InvalidSpec, match=message.replace("[", r"\[").replace("]", r"\]")):
        _spec(**account)
