"""What goes wrong: Azure errors midway and the recovery, errors that retrying cannot fix, invalid
specs, bad credentials, and an operator restart in the middle of a long-running operation."""
from __future__ import annotations

import asyncio

import pytest

from tests.harness import arm
from tests.harness.kube import CLUSTERS
from tests.harness.operator import NAMESPACE, ClusterDriver
from tests.operator.test_operator_lifecycle import SPEC, ready_cluster

ACCOUNT_PATH = f"/resourceGroups/{arm.RESOURCE_GROUP}/providers/Microsoft.DocumentDB/databaseAccounts/tenant-a-etcd"
# Long enough for a retry storm to show at the tests' retry delay (0.2 s), short for the suite.
QUIET_PERIOD = 1.0


def _arm_writes(arm_stand_in) -> int:
    return sum(1 for request in arm_stand_in.requests if request.method != "GET")


@pytest.mark.parametrize("failure", [
    {"kind": "database.create", "code": "ServiceUnavailable"},  # the operation ends Failed
    {"kind": "container.create", "code": "Conflict", "status": 409},  # ARM refuses the request
], ids=["operation-failed", "request-refused"])
async def test_arm_failure_midway_then_recovery(kube_api, arm_stand_in, arm_service_principal, start_operator,
                                                failure):
    arm_stand_in.fail_next(failure["kind"], failure["code"], status=failure.get("status"))
    cluster = await ready_cluster(kube_api, arm_service_principal, start_operator)
    part = "Database" if failure["kind"].startswith("database") else "Container"
    assert cluster.ever(part, "False", failure["code"])
    assert cluster.ever("Ready", "False", f"{part}NotReady")
    assert cluster.ever("Reconciling", "True", failure["code"])
    assert not cluster.ever("Stalled", "True")  # retried, not given up
    assert cluster.condition("Reconciling") is None and cluster.condition(part)["status"] == "True"


async def test_error_that_retrying_cannot_fix_stalls_without_retry_storm(kube_api, arm_stand_in,
                                                                         arm_service_principal, start_operator):
    arm_stand_in.fail_next("account.create", "BadRequest", "The account name is reserved.", status=400)
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    await start_operator()
    await cluster.apply(SPEC)
    stalled = await cluster.wait_condition("Stalled", "True", "BadRequest")
    assert stalled["message"] == "Account: The account name is reserved."
    assert cluster.condition("Ready")["reason"] == "AccountNotReady"
    assert cluster.condition("Reconciling") is None
    await cluster.wait_handled()
    requests = len(arm_stand_in.requests)
    await asyncio.sleep(QUIET_PERIOD)
    assert len(arm_stand_in.requests) == requests
    # A spec change is a new attempt (and this one succeeds).
    await cluster.patch_spec({"account": {"tags": {"team": "platform", "retry": "1"}}})
    await cluster.wait_ready()


async def test_invalid_spec_gets_a_clear_condition_and_no_azure_call(kube_api, arm_stand_in, arm_service_principal,
                                                                    start_operator):
    """A name Kubernetes accepts but Azure would refuse as the account name: the schema cannot see it."""
    cluster = ClusterDriver(kube_api, name="tenant.a")
    await cluster.add_secret("azure-sp", arm_service_principal)
    await start_operator()
    spec = {key: value for key, value in SPEC.items() if key != "account"}
    await cluster.apply(spec)
    ready = await cluster.wait_condition("Ready", "False", "InvalidSpec")
    assert ready["message"].startswith("spec.account.name must be 3-44 lowercase letters, digits and hyphens")
    assert "'tenant.a'" in ready["message"]
    assert cluster.condition("Stalled")["reason"] == "InvalidSpec"
    assert cluster.body["status"]["observedGeneration"] == 1
    await cluster.wait_handled()
    await asyncio.sleep(QUIET_PERIOD)
    assert arm_stand_in.requests == []  # not even a token
    await cluster.patch_spec({"account": {"name": "tenant-a-etcd"}})
    await cluster.wait_ready()
    assert cluster.condition("Stalled") is None


async def test_existing_account_elsewhere_is_not_adopted(kube_api, arm_stand_in, arm_service_principal,
                                                         start_operator):
    arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, "tenant-a-etcd", location="northeurope")
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    await start_operator()
    await cluster.apply(SPEC)
    ready = await cluster.wait_condition("Ready", "False", "InvalidSpec")
    assert "write region in northeurope, not westeurope" in ready["message"]
    assert cluster.condition("Account")["reason"] == "InvalidSpec"
    assert not any(request.method in ("PUT", "PATCH") for request in arm_stand_in.requests)


async def test_missing_then_created_secret(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = ClusterDriver(kube_api)
    await start_operator()
    await cluster.apply(SPEC)
    missing = await cluster.wait_condition("Credentials", "False", "SecretNotFound")
    assert missing["message"] == f"Secret 'azure-sp' not found in namespace {NAMESPACE}"
    assert cluster.condition("Account")["reason"] == "Waiting"
    await cluster.add_secret("azure-sp", arm_service_principal)
    await cluster.wait_ready()


async def test_incomplete_or_wrong_service_principal(kube_api, arm_stand_in, arm_service_principal, start_operator):
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", {"clientId": arm_service_principal["clientId"],
                                          "tenantId": arm_service_principal["tenantId"]})
    await start_operator()
    await cluster.apply(SPEC)
    invalid = await cluster.wait_condition("Credentials", "False", "InvalidSecret")
    assert "key 'clientSecret' is missing" in invalid["message"]
    await kube_api.patch_object("v1/secrets", NAMESPACE, "azure-sp", {"stringData": None, "data": {
        "clientSecret": "d3Jvbmc="}})  # "wrong"
    refused = await cluster.wait_condition("Credentials", "False", "AuthenticationFailed")
    assert "wrong" not in refused["message"]


async def test_restart_mid_operation_resumes_from_the_token(kube_api, arm_stand_in, arm_service_principal,
                                                            start_operator):
    arm_stand_in.hold("account.create")
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    first = await start_operator()
    await cluster.apply(SPEC)
    await kube_api.wait_for(lambda: (cluster.body.get("status") or {}).get("pendingOperations", {}).get("account"),
                            what="the account creation's token in status")
    [operation] = arm_stand_in.pending_operations("account.create")
    token = cluster.body["status"]["pendingOperations"]["account"]
    assert operation in token["token"] and token["operation"] == "create account tenant-a-etcd"
    await first.stop()
    polls_before = sum(1 for request in arm_stand_in.requests if operation in request.path)

    await start_operator()
    await kube_api.wait_for(lambda: sum(1 for request in arm_stand_in.requests if operation in request.path)
                            > polls_before, what="the new operator polling the same operation")
    arm_stand_in.release("account.create")
    await cluster.wait_ready()
    creates = [request for request in arm_stand_in.requests
               if request.method == "PUT" and request.path.endswith(ACCOUNT_PATH)]
    assert len(creates) == 1
    assert cluster.body["status"]["pendingOperations"] == {}


async def test_deleting_an_unready_cluster_with_invalid_spec_releases_it(kube_api, arm_stand_in, start_operator):
    cluster = ClusterDriver(kube_api, name="tenant.a")
    await start_operator()
    await cluster.apply({key: value for key, value in SPEC.items() if key != "account"})
    await cluster.wait_condition("Ready", "False", "InvalidSpec")
    await cluster.delete()
    await cluster.wait_gone()
    assert kube_api.get(CLUSTERS, NAMESPACE, "tenant.a") is None
