"""Keyless Cosmos DB through ARM: the data-plane role assignment (operator/role_assignment.py) and
``disableLocalAuth`` on the account, against the ARM stand-in with the real azure-mgmt-cosmosdb client."""
from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.cosmosdb import models

from cosmos_etcd_operator import role_assignment
from cosmos_etcd_operator.arm import AccountReady, Deleted
from cosmos_etcd_operator.role_assignment import RoleAssignmentReady
from cosmos_etcd_operator.spec import parse
from tests.harness import arm
from tests.harness.arm import settle

ACCOUNT = "tenant-a-etcd"
ACCOUNT_ID = (f"/subscriptions/{arm.SUBSCRIPTION}/resourceGroups/{arm.RESOURCE_GROUP}"
              f"/providers/Microsoft.DocumentDB/databaseAccounts/{ACCOUNT}")
CONTRIBUTOR = f"{ACCOUNT_ID}/sqlRoleDefinitions/00000000-0000-0000-0000-000000000002"
CLIENT_ID, PRINCIPAL = "0f3c6b1e-5a4d-4e2f-9b8a-7c6d5e4f3a2b", "4a1b2c3d-5e6f-4a8b-9c0d-1e2f3a4b5c6d"


def _spec(principal: str = PRINCIPAL, **azure):
    return parse({"azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP,
                            "location": "westeurope", **azure},
                  "account": {"name": ACCOUNT},
                  "shim": {"identity": {"clientId": CLIENT_ID, "principalId": principal}}}, name="tenant-a")


def _assignments(stand_in):
    return stand_in.role_assignments(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)


def _writes(stand_in, kind: str):
    return [(r.method, r.status) for r in stand_in.requests if r.method in ("PUT", "PATCH", "DELETE")
            and kind in r.path]


async def _ensure(resources, spec):
    result, _ = await settle(lambda spec, token: role_assignment.reconcile(resources, spec, token), spec)
    return result


@pytest.fixture
def account(arm_stand_in):
    return arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)


async def test_the_identity_gets_the_data_contributor_role_on_the_database(arm_stand_in, arm_resources, account):
    spec = _spec()
    assert spec.data_plane_auth.value == "EntraID"  # implied by the identity

    ready = await _ensure(arm_resources, spec)

    assert isinstance(ready, RoleAssignmentReady)
    assert _assignments(arm_stand_in) == {ready.id: {
        "roleDefinitionId": CONTRIBUTOR, "scope": f"{ACCOUNT_ID}/dbs/EtcdDB", "principalId": PRINCIPAL}}
    assert ready.as_status() == {"id": ready.id, "principalId": PRINCIPAL, "scope": f"{ACCOUNT_ID}/dbs/EtcdDB",
                                 "roleDefinitionId": CONTRIBUTOR}
    # A second pass (another operator, a restart) finds the same id: nothing is written again.
    again = await _ensure(arm_resources, spec)
    assert again == ready
    assert _writes(arm_stand_in, "/sqlRoleAssignments/") == [("PUT", 202)]


async def test_the_assignment_id_depends_on_scope_and_principal_only(arm_stand_in, arm_resources, account):
    assert role_assignment.assignment_id(_spec()) == role_assignment.assignment_id(_spec())
    assert role_assignment.assignment_id(_spec()) != role_assignment.assignment_id(
        _spec(principal="9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"))
    other_database = parse({"azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP,
                                      "location": "westeurope"},
                            "account": {"name": ACCOUNT}, "cosmos": {"database": "Other"},
                            "shim": {"identity": {"clientId": CLIENT_ID, "principalId": PRINCIPAL}}}, name="tenant-a")
    assert role_assignment.assignment_id(other_database) != role_assignment.assignment_id(_spec())


async def test_an_equal_assignment_made_by_hand_is_adopted(arm_stand_in, arm_resources, account):
    account.role_assignments["1b2c3d4e-0000-4000-8000-000000000001"] = {
        "roleDefinitionId": CONTRIBUTOR, "scope": f"{ACCOUNT_ID}/dbs/EtcdDB", "principalId": PRINCIPAL}

    ready = await _ensure(arm_resources, _spec())

    assert ready.id == "1b2c3d4e-0000-4000-8000-000000000001"
    assert _writes(arm_stand_in, "/sqlRoleAssignments") == []
    assert len(_assignments(arm_stand_in)) == 1


async def test_an_assignment_changed_behind_the_operators_back_is_set_back(arm_stand_in, arm_resources, account):
    ready = await _ensure(arm_resources, _spec())
    account.role_assignments[ready.id]["scope"] = ACCOUNT_ID  # widened to the whole account in the portal

    assert await _ensure(arm_resources, _spec()) == ready

    assert _assignments(arm_stand_in)[ready.id]["scope"] == f"{ACCOUNT_ID}/dbs/EtcdDB"
    assert _writes(arm_stand_in, "/sqlRoleAssignments/") == [("PUT", 202), ("PUT", 202)]


async def test_removal_deletes_the_assignment_once(arm_stand_in, arm_resources, account):
    ready = await _ensure(arm_resources, _spec())

    removed, calls = await settle(lambda spec, token: role_assignment.remove(arm_resources, spec, ready.id, token),
                                  _spec())

    assert isinstance(removed, Deleted) and calls > 1  # a long-running DELETE, polled to its end
    assert _assignments(arm_stand_in) == {}
    again, _ = await settle(lambda spec, token: role_assignment.remove(arm_resources, spec, ready.id, token), _spec())
    assert isinstance(again, Deleted)
    assert _writes(arm_stand_in, "/sqlRoleAssignments/") == [("PUT", 202), ("DELETE", 202)]


@pytest.mark.parametrize("properties, status, code", [
    ({"role_definition_id": f"{ACCOUNT_ID}/sqlRoleDefinitions/00000000-0000-0000-0000-000000000009"}, 400,
     "BadRequest"),
    ({"role_definition_id": CONTRIBUTOR.replace(ACCOUNT, "someone-elses")}, 400, "BadRequest"),
    ({"scope": f"{ACCOUNT_ID}/sqlDatabases/EtcdDB"}, 400, "BadRequest"),  # ARM's path, not the data plane's
    ({"scope": ACCOUNT_ID.replace(ACCOUNT, "someone-elses") + "/dbs/EtcdDB"}, 400, "BadRequest"),
    ({"principal_id": "kube-apiserver"}, 400, "BadRequest"),
], ids=["unknown-role", "role-of-another-account", "arm-path-scope", "scope-of-another-account", "not-a-guid"])
async def test_the_stand_in_refuses_what_cosmos_db_refuses(arm_stand_in, arm_resources, account, properties, status,
                                                          code):
    wanted = {"role_definition_id": CONTRIBUTOR, "scope": f"{ACCOUNT_ID}/dbs/EtcdDB", "principal_id": PRINCIPAL}
    parameters = models.SqlRoleAssignmentCreateUpdateParameters(
        properties=models.SqlRoleAssignmentResource(**{**wanted, **properties}))
    with pytest.raises(HttpResponseError) as refused:
        await arm_resources.client.sql_resources.begin_create_update_sql_role_assignment(
            "5e6f7a8b-0000-4000-8000-000000000002", arm.RESOURCE_GROUP, ACCOUNT, parameters, polling_interval=0)
    assert (refused.value.status_code, refused.value.error.code) == (status, code)
    assert _assignments(arm_stand_in) == {}


async def test_a_second_assignment_of_the_same_role_scope_and_principal_is_a_conflict(arm_stand_in, arm_resources,
                                                                                      account):
    ready = await _ensure(arm_resources, _spec())
    parameters = models.SqlRoleAssignmentCreateUpdateParameters(properties=models.SqlRoleAssignmentResource(
        role_definition_id=CONTRIBUTOR, scope=f"{ACCOUNT_ID}/dbs/EtcdDB", principal_id=PRINCIPAL))
    with pytest.raises(HttpResponseError) as refused:
        await arm_resources.client.sql_resources.begin_create_update_sql_role_assignment(
            "5e6f7a8b-0000-4000-8000-000000000003", arm.RESOURCE_GROUP, ACCOUNT, parameters, polling_interval=0)
    assert (refused.value.status_code, refused.value.error.code) == (409, "Conflict")
    assert list(_assignments(arm_stand_in)) == [ready.id]


# -- disableLocalAuth ------------------------------------------------------------------------------

async def test_entra_id_creates_the_account_with_local_auth_disabled(arm_stand_in, arm_resources):
    ready, _ = await settle(arm_resources.ensure_account, _spec())

    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT).disable_local_auth is True
    assert isinstance(ready, AccountReady) and ready.settings["disableLocalAuth"] is True
    assert [(r.method, r.status) for r in arm_stand_in.requests if r.method in ("PUT", "PATCH")] == [("PUT", 200)]


async def test_local_auth_turned_back_on_is_disabled_again(arm_stand_in, arm_resources):
    await settle(arm_resources.ensure_account, _spec())
    arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT).disable_local_auth = False  # the portal

    ready, _ = await settle(arm_resources.ensure_account, _spec())

    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT).disable_local_auth is True
    assert ready.settings["disableLocalAuth"] is True
    assert [(r.method, r.status) for r in arm_stand_in.requests if r.method in ("PUT", "PATCH")] == [
        ("PUT", 200), ("PATCH", 200)]


async def test_key_mode_enables_local_auth_on_an_adopted_keyless_account(arm_stand_in, arm_resources, account):
    account.disable_local_auth = True
    key_mode = _spec(dataPlaneAuth="Key")

    ready, _ = await settle(arm_resources.ensure_account, key_mode)

    assert account.disable_local_auth is False  # the shim needs the keys
    assert ready.settings["disableLocalAuth"] is False
