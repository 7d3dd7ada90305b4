"""The account step against the ARM stand-in, through the real SDK and service-principal sign-in:
create without blocking, resume from the token (also in a fresh client), adopt, update, fail."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from cosmos_etcd_operator import credentials, spec as spec_module
from cosmos_etcd_operator.arm import AccountReady, AzureError, CosmosResources, Pending
from tests.harness import arm
from tests.harness.arm import settle

ACCOUNT = "tenant-a-etcd"
TWO_REGIONS = [{"name": "westeurope", "failoverPriority": 0}, {"name": "northeurope", "failoverPriority": 1}]


def _requests(stand_in, method=None, suffix=""):
    return [r for r in stand_in.requests if (method is None or r.method == method) and r.path.endswith(suffix)
            and "/oauth2/" not in r.path]


def _spec(**changes):
    base = {"azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP,
                      "location": "westeurope"},
            "account": {"name": ACCOUNT, "tags": {"team": "platform"}}}
    for section, values in changes.items():
        base[section] = {**base.get(section, {}), **values}
    return spec_module.parse(base, name="tenant-a")


async def test_create_returns_at_once_and_resumes_to_ready(arm_stand_in, arm_resources, arm_spec):
    arm_stand_in.retry_after = 7  # distinguishable from the client's polling_interval=0

    started = await arm_resources.ensure_account(arm_spec)

    assert isinstance(started, Pending)
    assert started.operation == f"create account {ACCOUNT}"
    assert started.retry_after == 7
    # It did not wait: the operation was never polled, the account is still being created.
    assert not [r for r in arm_stand_in.requests if "operationsStatus" in r.path]
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT).provisioning_state == "Creating"

    arm_stand_in.retry_after = 3
    running = await arm_resources.ensure_account(arm_spec, started.token)
    # Still InProgress: the same operation, and the Retry-After of the operation GET.
    assert (running.operation, running.token, running.retry_after) == (started.operation, started.token, 3)

    ready = await arm_resources.ensure_account(arm_spec, running.token)
    assert ready == AccountReady(document_endpoint=f"https://{ACCOUNT}.documents.azure.com:443/", adopted=False,
                                 provisioning_state="Succeeded")
    account = arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)
    assert account.kind == "GlobalDocumentDB"
    assert account.consistency == {"defaultConsistencyLevel": "BoundedStaleness", "maxStalenessPrefix": 100_000,
                                   "maxIntervalInSeconds": 300}
    assert account.locations == [{"locationName": "westeurope", "failoverPriority": 0, "isZoneRedundant": False}]
    assert account.automatic_failover is True
    assert account.tags == {"team": "platform"}
    assert len(_requests(arm_stand_in, "PUT")) == 1


async def test_a_ready_account_is_only_read(arm_stand_in, arm_resources, arm_spec):
    await settle(arm_resources.ensure_account, arm_spec)
    before = len(arm_stand_in.requests)

    again = await arm_resources.ensure_account(arm_spec)

    assert isinstance(again, AccountReady)
    assert [(r.method, r.status) for r in arm_stand_in.requests[before:]] == [("GET", 200)]


async def test_existing_account_is_adopted_and_only_its_mutable_properties_updated(arm_stand_in, arm_resources,
                                                                                    arm_spec):
    existing = arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT, consistency="Session",
                                        tags={"team": "someone-else"})
    keys = dict(existing.keys)

    started = await arm_resources.ensure_account(arm_spec)
    assert started.operation == f"update account {ACCOUNT} (consistency, automatic failover, tags)"
    ready, _ = await settle(arm_resources.ensure_account, arm_spec, started.token)

    assert ready.adopted is True
    assert not _requests(arm_stand_in, "PUT")  # never recreated
    assert len(_requests(arm_stand_in, "PATCH")) == 1
    assert existing.consistency["defaultConsistencyLevel"] == "BoundedStaleness"
    assert existing.automatic_failover is True
    assert existing.tags == {"team": "platform"}
    assert existing.keys == keys


async def test_regions_are_changed_alone_before_other_properties(arm_stand_in, arm_resources):
    existing = arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT, consistency="Session",
                                        tags={"team": "platform"})
    wanted = _spec(account={"consistency": {"level": "BoundedStaleness"}, "automaticFailover": False,
                            "locations": [TWO_REGIONS[0], {**TWO_REGIONS[1], "zoneRedundant": True}]})

    first = await arm_resources.ensure_account(wanted)
    assert first.operation == f"update account {ACCOUNT} (regions)"
    running = await arm_resources.ensure_account(wanted, first.token)
    assert running.operation == first.operation
    second = await arm_resources.ensure_account(wanted, running.token)
    assert second.operation == f"update account {ACCOUNT} (consistency)"
    ready, _ = await settle(arm_resources.ensure_account, wanted, second.token)

    assert isinstance(ready, AccountReady)
    assert existing.locations == [{"locationName": "westeurope", "failoverPriority": 0, "isZoneRedundant": False},
                                  {"locationName": "northeurope", "failoverPriority": 1, "isZoneRedundant": True}]
    assert existing.consistency == {"defaultConsistencyLevel": "BoundedStaleness", "maxStalenessPrefix": 100_000,
                                    "maxIntervalInSeconds": 300}


async def test_consistency_becomes_strong_before_a_region_is_added(arm_stand_in, arm_resources):
    """Regions first would leave a multi-region account with automatic failover on BoundedStaleness
    for a while: the exposure the Strong default exists to avoid."""
    existing = arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT, consistency="BoundedStaleness",
                                        automatic_failover=True, tags={"team": "platform"})
    wanted = _spec(account={"locations": TWO_REGIONS})  # no level: Strong, as the account gets a second region

    first = await arm_resources.ensure_account(wanted)
    assert first.operation == f"update account {ACCOUNT} (consistency)"
    running = await arm_resources.ensure_account(wanted, first.token)
    second = await arm_resources.ensure_account(wanted, running.token)
    assert second.operation == f"update account {ACCOUNT} (regions)"
    assert existing.consistency["defaultConsistencyLevel"] == "Strong" and len(existing.locations) == 1
    ready, _ = await settle(arm_resources.ensure_account, wanted, second.token)

    assert isinstance(ready, AccountReady)
    assert [location["locationName"] for location in existing.locations] == ["westeurope", "northeurope"]
    assert existing.consistency["defaultConsistencyLevel"] == "Strong" and existing.automatic_failover is True


async def test_a_multi_region_account_is_created_strong(arm_stand_in, arm_resources):
    ready, _ = await settle(arm_resources.ensure_account, _spec(account={"locations": TWO_REGIONS}))

    assert isinstance(ready, AccountReady)
    account = arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)
    assert account.consistency["defaultConsistencyLevel"] == "Strong"
    assert account.automatic_failover is True
    assert [location["locationName"] for location in account.locations] == ["westeurope", "northeurope"]


async def test_bounded_staleness_with_automatic_failover_across_regions_needs_the_explicit_field(arm_stand_in,
                                                                                              arm_resources):
    account = {"consistency": {"level": "BoundedStaleness"}, "locations": TWO_REGIONS}
    with pytest.raises(spec_module.InvalidSpec, match="spec.account.acceptDataLossOnFailover: true"):
        _spec(account=account)

    accepted = _spec(account={**account, "acceptDataLossOnFailover": True})
    ready, _ = await settle(arm_resources.ensure_account, accepted)

    assert isinstance(ready, AccountReady)
    created = arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)
    assert created.consistency == {"defaultConsistencyLevel": "BoundedStaleness", "maxStalenessPrefix": 100_000,
                                   "maxIntervalInSeconds": 300}
    assert created.automatic_failover is True and len(created.locations) == 2


async def test_an_account_in_another_write_region_is_not_adopted(arm_stand_in, arm_resources, arm_spec):
    arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT, location="northeurope")

    with pytest.raises(spec_module.InvalidSpec, match="spec.azure.location.*northeurope"):
        await arm_resources.ensure_account(arm_spec)
    assert not _requests(arm_stand_in, "PATCH") and not _requests(arm_stand_in, "PUT")


async def test_a_failed_operation_raises_its_code_and_the_next_attempt_recovers(arm_stand_in, arm_resources,
                                                                                 arm_spec):
    arm_stand_in.fail_next("account.create", "ServiceUnavailable", "Regional capacity exhausted")
    started = await arm_resources.ensure_account(arm_spec)

    with pytest.raises(AzureError) as failure:
        await settle(arm_resources.ensure_account, arm_spec, started.token)
    assert (failure.value.code, failure.value.status, failure.value.retryable) == ("ServiceUnavailable", None, True)
    assert "Regional capacity exhausted" in failure.value.message
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT) is None

    ready, _ = await settle(arm_resources.ensure_account, arm_spec)
    assert ready.adopted is False and ready.provisioning_state == "Succeeded"


async def test_a_request_azure_refuses_is_not_retryable_and_changes_nothing(arm_stand_in, arm_resources):
    # Cosmos wants maxStalenessPrefix >= 100000 on multi-region accounts; the spec alone cannot know.
    wanted = _spec(account={"consistency": {"level": "BoundedStaleness", "maxStalenessPrefix": 50},
                            "automaticFailover": False, "locations": TWO_REGIONS})

    with pytest.raises(AzureError) as failure:
        await arm_resources.ensure_account(wanted)

    assert (failure.value.code, failure.value.status, failure.value.retryable) == ("BadRequest", 400, False)
    assert "maxStalenessPrefix" in failure.value.message
    assert arm_stand_in.accounts == {}


async def test_a_missing_resource_group_is_reported_with_azures_code(arm_stand_in, arm_resources):
    with pytest.raises(AzureError) as failure:
        await arm_resources.ensure_account(_spec(azure={"resourceGroup": "rg-missing"}))
    assert (failure.value.code, failure.value.status, failure.value.retryable) == ("ResourceGroupNotFound", 404,
                                                                                   False)


async def test_a_held_operation_stays_pending_and_a_caller_without_token_waits(arm_stand_in, arm_resources,
                                                                               arm_spec):
    arm_stand_in.hold("account.create")
    started = await arm_resources.ensure_account(arm_spec)
    for _ in range(3):
        assert await arm_resources.ensure_account(arm_spec, started.token) == started

    lost = await arm_resources.ensure_account(arm_spec)  # e.g. the status update with the token was lost
    assert lost.operation == f"account {ACCOUNT} is creating"
    assert len(_requests(arm_stand_in, "PUT")) == 1

    arm_stand_in.release()
    ready, _ = await settle(arm_resources.ensure_account, arm_spec, started.token)
    assert ready.adopted is False


async def test_an_operator_restart_resumes_from_the_token_alone(arm_stand_in, arm_cloud, arm_service_principal,
                                                                arm_resources, arm_spec):
    arm_stand_in.polls_in_progress = 2
    started = await arm_resources.ensure_account(arm_spec)
    sign_ins = len([r for r in arm_stand_in.requests if "/oauth2/" in r.path])

    # A new process: new credential cache, new client, only the token from the CR's status.
    async with credentials.Credentials(arm_cloud) as fresh:
        credential = fresh.for_service_principal(dict(arm_service_principal), "azure-sp")
        async with CosmosResources(credential, arm_cloud, arm.SUBSCRIPTION, polling_interval=0) as restarted:
            ready, calls = await settle(restarted.ensure_account, arm_spec, started.token)

    assert ready.adopted is False and calls == 3  # two InProgress polls, then Succeeded
    assert len([r for r in arm_stand_in.requests if "/oauth2/" in r.path]) == sign_ins + 1
    assert len(_requests(arm_stand_in, "PUT")) == 1


async def test_a_token_pointing_elsewhere_is_ignored(arm_stand_in, arm_resources, arm_spec, caplog):
    async with arm.ArmStandIn() as elsewhere:
        started = await arm_resources.ensure_account(arm_spec)
        fields = json.loads(started.token)
        fields["url"] = fields["url"].replace(arm_stand_in.url, elsewhere.url)

        with caplog.at_level(logging.WARNING, logger="cosmos_etcd_operator.arm"):
            result = await arm_resources.ensure_account(arm_spec, json.dumps(fields))

        assert elsewhere.requests == []  # no bearer token was sent there
        assert isinstance(result, Pending) and result.operation == f"account {ACCOUNT} is creating"
        assert "not on https://127.0.0.1" in caplog.text


@pytest.mark.parametrize("token", ["not json", "{}", '{"v": 99, "step": "account"}',
                                   '{"v": 1, "step": "database", "op": "x", "url": null}'])
async def test_an_unusable_token_only_costs_a_reread(arm_stand_in, arm_resources, arm_spec, token):
    result = await arm_resources.ensure_account(arm_spec, token)
    assert isinstance(result, Pending) and result.operation == f"create account {ACCOUNT}"


async def test_a_long_retry_after_is_returned_not_slept(arm_stand_in, arm_resources, arm_spec):
    arm_stand_in.fail_next("account.get", "TooManyRequests", status=429, retry_after=30)

    with pytest.raises(AzureError) as failure:
        await arm_resources.ensure_account(arm_spec)

    assert dataclasses.astuple(_error(failure.value)) == ("TooManyRequests", 429, True, 30.0)
    assert len(_requests(arm_stand_in, "GET")) == 1


async def test_a_short_retry_after_is_retried_inside_the_client(arm_stand_in, arm_resources, arm_spec):
    for _ in range(2):
        arm_stand_in.fail_next("account.get", "TooManyRequests", status=429, retry_after=0.01)

    started = await arm_resources.ensure_account(arm_spec)

    assert isinstance(started, Pending)
    assert [r.status for r in _requests(arm_stand_in, "GET")] == [429, 429, 404]


@dataclasses.dataclass
class _ErrorFields:
    code: str
    status: int | None
    retryable: bool
    retry_after: float | None


def _error(error: AzureError) -> _ErrorFields:
    return _ErrorFields(error.code, error.status, error.retryable, error.retry_after)
