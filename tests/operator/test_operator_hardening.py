"""Account hardening and custom clouds through the real operator (kmock and the ARM stand-in): the
hardening in force in status, drift set back by the timer, continuous-to-periodic reported as a
condition and not retried, and a custom cloud whose token audience is not its URL."""
from __future__ import annotations

from tests.harness import arm
from tests.harness.operator import ClusterDriver
from tests.operator.test_arm_account_hardening import HARDENED, HARDENED_SETTINGS
from tests.operator.test_arm_cloud import AUDIENCE
from tests.operator.test_operator_lifecycle import SPEC, ready_cluster

HARDENED_SPEC = {**SPEC, "account": {**SPEC["account"], **HARDENED}}


def _account(arm_stand_in):
    return arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")


def _account_writes(arm_stand_in) -> list[str]:
    return [r.method for r in arm_stand_in.requests
            if r.method in ("PUT", "PATCH") and r.path.endswith("/databaseAccounts/tenant-a-etcd")]


async def test_hardening_is_reported_and_drift_set_back(kube_api, arm_stand_in, arm_service_principal,
                                                       start_operator):
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator, HARDENED_SPEC,
                                  drift_interval=0.3)
    status = cluster.body["status"]
    assert {key: status[key] for key in HARDENED_SETTINGS} == HARDENED_SETTINGS
    assert _account_writes(arm_stand_in) == ["PUT"]

    account = _account(arm_stand_in)
    account.public_network_access = "Enabled"
    account.ip_rules = ["0.0.0.0/0"]
    account.minimal_tls_version = "Tls"

    def set_back() -> bool:
        correction = any(item["type"] == "Account" and item["message"] == (
            "update account tenant-a-etcd (minimal TLS version, public network access, IP rules): in progress")
            for version in cluster.history() for item in (version.get("status") or {}).get("conditions", []))
        return correction and account.public_network_access == "Disabled" and \
            cluster.condition("Account")["status"] == "True"
    await kube_api.wait_for(set_back, what="the account set back")
    assert (account.public_network_access, sorted(account.ip_rules), account.minimal_tls_version) == (
        "Disabled", ["198.51.100.7", "203.0.113.0/24"], "Tls12")
    assert _account_writes(arm_stand_in) == ["PUT", "PATCH"]
    # Status shows what is in force once set back: the drifted rules never appear in it.
    assert not any(((version.get("status") or {}).get("network") or {}).get("ipRules") == ["0.0.0.0/0"]
                   for version in cluster.history())
    await kube_api.wait_for(lambda: {key: cluster.body["status"][key] for key in HARDENED_SETTINGS}
                            == HARDENED_SETTINGS, what="the status as before")


async def test_a_backup_that_changes_type_leaves_no_stale_fields_in_status(kube_api, arm_stand_in,
                                                                           arm_service_principal, start_operator):
    periodic = {"type": "Periodic", "intervalInMinutes": 120, "retentionInHours": 48, "storageRedundancy": "Zone"}
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator,
                                  {**SPEC, "account": {**SPEC["account"], "backup": periodic}})
    assert cluster.body["status"]["backup"] == periodic

    await cluster.patch_spec({"account": {"backup": {"type": "Continuous", "tier": "Continuous7Days",
                                                     "intervalInMinutes": None, "retentionInHours": None,
                                                     "storageRedundancy": None}}})

    await kube_api.wait_for(lambda: cluster.body["status"].get("backup") == {"type": "Continuous",
                                                                           "tier": "Continuous7Days"},
                            what="continuous backup in status")
    assert _account(arm_stand_in).backup_policy["type"] == "Continuous"


async def test_continuous_backup_asked_to_become_periodic_is_a_condition_not_a_retry(
        kube_api, arm_stand_in, arm_service_principal, start_operator):
    existing = arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd")
    existing.backup_policy = {"type": "Continuous", "continuousModeProperties": {"tier": "Continuous30Days"}}
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    await start_operator(drift_interval=0.3)

    await cluster.apply({**SPEC, "account": {**SPEC["account"], "backup": {"type": "Periodic"}}})

    account = await cluster.wait_condition("Account", "False", "InvalidSpec")
    assert "has continuous backup, which Azure cannot turn back into periodic" in account["message"]
    assert cluster.condition("Stalled")["status"] == "True"
    assert cluster.condition("Ready")["reason"] == "InvalidSpec"
    await cluster.wait_handled()
    assert _account_writes(arm_stand_in) == []  # nothing sent that Azure would refuse
    assert existing.backup_policy["type"] == "Continuous"

    # Asking for what Azure can do moves on.
    await cluster.patch_spec({"account": {"backup": {"type": "Continuous"}}})
    await cluster.wait_condition("Account", "True")


async def test_a_custom_cloud_with_its_own_audience_works_with_the_discovered_audience(
        kube_api, arm_stand_in, arm_service_principal, start_operator):
    arm_stand_in.token_audience = AUDIENCE

    await ready_cluster(kube_api, arm_service_principal, start_operator)

    assert len(arm_stand_in.metadata_requests) == 1
    assert {r.audience for r in arm_stand_in.requests if r.path.startswith("/subscriptions/")} == {AUDIENCE}


async def test_a_custom_cloud_with_its_own_audience_works_with_arm_audience(
        kube_api, arm_stand_in, arm_service_principal, start_operator):
    arm_stand_in.token_audience = AUDIENCE
    arm_stand_in.serves_metadata = False

    await ready_cluster(kube_api, arm_service_principal, start_operator, arm_audience=AUDIENCE)

    assert {r.audience for r in arm_stand_in.requests if r.path.startswith("/subscriptions/")} == {AUDIENCE}


async def test_a_custom_cloud_without_its_audience_says_what_to_set(kube_api, arm_stand_in, arm_service_principal,
                                                                     start_operator):
    arm_stand_in.token_audience = AUDIENCE
    arm_stand_in.serves_metadata = False
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    await start_operator()

    await cluster.apply(SPEC)

    account = await cluster.wait_condition("Account", "False", "InvalidAuthenticationTokenAudience")
    assert f"wrong audience or resource '{arm_stand_in.url}'" in account["message"]
    assert (f"the operator requests tokens for {arm_stand_in.url}/.default: start it with --arm-audience"
            in account["message"])
    assert cluster.condition("Stalled")["status"] == "True"
