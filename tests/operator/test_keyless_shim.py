"""Keyless Cosmos DB for real: the shim process signs in with a workload identity's federated token
file, through azure-identity's DefaultAzureCredential, and serves etcd on a Cosmos account that
refuses keys, with data-plane access granted by the role assignment the operator's
:mod:`cosmos_etcd_operator.role_assignment` makes in the ARM stand-in.

The account is the local Cosmos server behind :class:`tests.harness.cosmos_auth.EntraIdGate`, which
checks every request as Cosmos DB does with local auth disabled: a key is refused, a token must come
from the stand-in's authority for the account's audience, and its principal must hold a role
assignment covering the request. The shim gets only what Azure Workload Identity's webhook puts in a
pod (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST), plus the
stand-in's CA (SSL_CERT_FILE).
"""
from __future__ import annotations

import asyncio
import pathlib
import secrets

import pytest
from azure.cosmos import CosmosClient, PartitionKey

from cosmos_etcd_operator import role_assignment
from cosmos_etcd_operator.arm import Deleted
from cosmos_etcd_operator.role_assignment import RoleAssignmentReady
from cosmos_etcd_operator.spec import parse
from cosmos_etcd_shim.config import COSMOS_KEY_VARIABLE
from cosmos_etcd_shim.storage.cosmos import layout
from tests.harness import arm, processes
from tests.harness import cosmos as cosmos_harness
from tests.harness.arm import settle
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.cosmos_auth import EntraIdGate

ACCOUNT = "tenant-a-etcd"
CONTAINER = "keyless"


@pytest.fixture
def cosmos_server(tmp_path):
    cosmos_harness.require()
    server = cosmos_harness.start_cosmos(tmp_path / "cosmos")
    yield server
    server.stop()


def _create_container(server: cosmos_harness.CosmosServer) -> None:
    """What the operator does through ARM (the control plane), here straight on the local server."""
    with CosmosClient(server.endpoint, credential=server.key, enable_endpoint_discovery=False) as client:
        database = client.create_database_if_not_exists(layout.DEFAULT_DATABASE)
        database.create_container_if_not_exists(CONTAINER, partition_key=PartitionKey(path=layout.PARTITION_KEY_PATH),
                                                 indexing_policy=layout.INDEXING_POLICY)


@pytest.fixture
async def keyless_account(arm_stand_in, cosmos_server, tmp_path):
    """(the gate, the workload identity, its token file): an account that refuses keys."""
    arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT).disable_local_auth = True
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(f"projected-service-account-token-{secrets.token_urlsafe(24)}")
    identity = arm_stand_in.add_workload_identity(token_file.read_text())
    await asyncio.to_thread(_create_container, cosmos_server)
    async with EntraIdGate(arm_stand_in, (arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT), cosmos_server.port) as gate:
        yield gate, identity, token_file


def _spec(identity: dict[str, str]):
    return parse({"azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP,
                            "location": "westeurope", "dataPlaneAuth": "EntraID"},
                  "account": {"name": ACCOUNT},
                  "shim": {"identity": {"clientId": identity["clientId"], "principalId": identity["principalId"]}}},
                 name="tenant-a")


def _workload_identity_env(arm_stand_in, identity: dict[str, str], token_file: pathlib.Path) -> dict[str, str]:
    """What the workload identity webhook injects into the pod, and the stand-in's CA."""
    return {"AZURE_CLIENT_ID": identity["clientId"], "AZURE_TENANT_ID": identity["tenantId"],
            "AZURE_FEDERATED_TOKEN_FILE": str(token_file), "AZURE_AUTHORITY_HOST": arm_stand_in.authority_host,
            "SSL_CERT_FILE": arm_stand_in.ca_file}


def _start_shim(workdir: pathlib.Path, endpoint: str, env: dict[str, str], auth: list[str]) -> processes.Server:
    return processes.start_shim(workdir, backend="cosmos", env=env, extra_args=[
        "--cosmos-endpoint", endpoint, "--cosmos-container", CONTAINER, "--cosmos-no-create", *auth])


async def test_the_keyless_shim_serves_with_a_federated_token_and_the_operators_role_assignment(
        arm_stand_in, arm_resources, keyless_account, tmp_path):
    gate, identity, token_file = keyless_account
    spec = _spec(identity)
    assigned, _ = await settle(lambda spec, token: role_assignment.reconcile(arm_resources, spec, token), spec)
    assert isinstance(assigned, RoleAssignmentReady)

    env = _workload_identity_env(arm_stand_in, identity, token_file)
    assert COSMOS_KEY_VARIABLE not in env
    shim = await asyncio.to_thread(_start_shim, tmp_path / "shim", gate.endpoint, env, ["--cosmos-auth", "entra-id"])
    try:
        put = await asyncio.to_thread(processes.etcdctl, shim.endpoint, ["put", "/registry/keyless", "yes"])
        assert put.returncode == 0, put.stderr
        got = await asyncio.to_thread(processes.etcdctl, shim.endpoint,
                                      ["get", "/registry/keyless", "--print-value-only"])
        assert got.stdout.strip() == "yes"

        # Every request reached Cosmos DB with the identity's Entra ID token, none with a key.
        assert gate.decisions and {(d.auth, d.principal, d.status) for d in gate.decisions} == {
            ("aad", identity["principalId"], 200)}
        assert any(d.method in ("POST", "PUT") and "/docs" in d.path for d in gate.decisions), "a write went through"
        assert "--cosmos-key-file" not in shim.argv
        log = shim.log()
        assert token_file.read_text() not in log
        assert not any(token in log for token in arm_stand_in.issued_tokens)

        # Without the role assignment, Cosmos DB refuses the same identity.
        removed, _ = await settle(lambda spec, token: role_assignment.remove(arm_resources, spec, assigned.id, token),
                                  spec)
        assert isinstance(removed, Deleted)
        refused = await asyncio.to_thread(processes.etcdctl, shim.endpoint, ["put", "/registry/keyless", "no"])
        assert refused.returncode != 0
        assert gate.decisions[-1].status == 403 and gate.decisions[-1].principal == identity["principalId"]

        # Assigned again (the next reconciliation), the same shim serves again: nothing was written meanwhile.
        await settle(lambda spec, token: role_assignment.reconcile(arm_resources, spec, token), spec)
        got = await asyncio.to_thread(processes.etcdctl, shim.endpoint,
                                      ["get", "/registry/keyless", "--print-value-only"])
        assert got.stdout.strip() == "yes", got.stderr
    finally:
        shim.stop()


async def test_a_key_is_refused_by_the_keyless_account(arm_stand_in, keyless_account, tmp_path):
    gate, _, _ = keyless_account
    env = {**LOCAL_COSMOS_KEY, "SSL_CERT_FILE": arm_stand_in.ca_file}
    with pytest.raises(RuntimeError, match="server exited") as refused:
        await asyncio.to_thread(_start_shim, tmp_path / "shim", gate.endpoint, env, ["--cosmos-auth", "key"])
    assert "401" in str(refused.value)
    assert {(d.auth, d.status) for d in gate.decisions} == {("master", 401)}
