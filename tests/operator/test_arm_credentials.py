"""Signing in: service-principal Secrets checked key by key, one cached credential per identity, the
operator's own identity (workload identity, or DefaultAzureCredential) — all at the stand-in's authority."""
from __future__ import annotations

import pytest

from cosmos_etcd_operator import credentials
from cosmos_etcd_operator.arm import AccountReady, AzureError, CosmosResources
from tests.harness import arm
from tests.harness.arm import settle


def _sign_ins(stand_in) -> list[str]:
    return [r.path for r in stand_in.requests if r.path.endswith("/oauth2/v2.0/token") and r.status == 200]


@pytest.mark.parametrize("key, value, problem", [("clientId", None, "is missing"), ("tenantId", "", "is empty"),
                                                 ("clientSecret", "  ", "is empty")])
def test_a_service_principal_secret_needs_every_key(key, value, problem):
    data = {"clientId": "app", "clientSecret": "s3cr3t-value", "tenantId": "tenant"}
    if value is None:
        del data[key]
    else:
        data[key] = value

    with pytest.raises(credentials.InvalidCredentials) as error:
        credentials.service_principal(data, "azure-sp")

    assert str(error.value).startswith(f"Secret 'azure-sp': key '{key}' {problem}")
    assert "s3cr3t-value" not in str(error.value)


def test_secret_data_may_be_bytes():
    data = {"clientId": b"app", "clientSecret": b"s3cr3t\n", "tenantId": b"tenant"}
    assert credentials.service_principal(data, "azure-sp") == ("tenant", "app", "s3cr3t")


async def test_one_identity_signs_in_once_for_every_client(arm_stand_in, arm_credentials, arm_service_principal,
                                                           arm_cloud, arm_spec):
    first = arm_credentials.for_service_principal(arm_service_principal, "azure-sp")
    second = arm_credentials.for_service_principal(dict(arm_service_principal), "other-secret-same-principal")
    assert first is second

    for credential in (first, second):
        async with CosmosResources(credential, arm_cloud, arm.SUBSCRIPTION, polling_interval=0) as resources:
            await resources.ensure_account(arm_spec)

    assert len(_sign_ins(arm_stand_in)) == 1


async def test_a_rotated_secret_is_a_new_credential(arm_stand_in, arm_credentials, arm_service_principal, arm_cloud,
                                                    arm_spec):
    before = arm_credentials.for_service_principal(arm_service_principal, "azure-sp")
    rotated = arm_stand_in.add_service_principal(arm_service_principal["tenantId"], arm_service_principal["clientId"])
    arm_stand_in.revoke_tokens()

    after = arm_credentials.for_service_principal(rotated, "azure-sp")

    assert after is not before
    async with CosmosResources(after, arm_cloud, arm.SUBSCRIPTION, polling_interval=0) as resources:
        assert (await settle(resources.ensure_account, arm_spec))[0].adopted is False


async def test_a_wrong_secret_is_an_authentication_error_that_retrying_cannot_fix(arm_stand_in, arm_credentials,
                                                                                  arm_service_principal, arm_cloud,
                                                                                  arm_spec):
    wrong = arm_credentials.for_service_principal({**arm_service_principal, "clientSecret": "wrong"}, "azure-sp")
    async with CosmosResources(wrong, arm_cloud, arm.SUBSCRIPTION, polling_interval=0) as resources:
        with pytest.raises(AzureError) as failure:
            await resources.ensure_account(arm_spec)

    assert (failure.value.code, failure.value.status, failure.value.retryable) == ("invalid_client", 401, False)
    assert "AADSTS7000215" in failure.value.message
    assert [r.path for r in arm_stand_in.requests if r.path.startswith("/subscriptions/")] == []


async def _signed_in_principal(stand_in, cloud, spec) -> set[str | None]:
    async with credentials.Credentials(cloud) as cache:
        assert cache.default() is cache.default()
        async with CosmosResources(cache.default(), cloud, arm.SUBSCRIPTION, polling_interval=0) as resources:
            ready, _ = await settle(resources.ensure_account, spec)
    assert isinstance(ready, AccountReady)
    return {r.principal for r in stand_in.requests if r.path.startswith("/subscriptions/")}


@pytest.fixture
def clean_identity_environment(monkeypatch):
    for variable in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                     "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "IDENTITY_ENDPOINT",
                     "MSI_ENDPOINT", "AZURE_TOKEN_CREDENTIALS"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


async def test_the_pods_workload_identity_signs_in_at_the_clouds_authority(arm_stand_in, arm_cloud, arm_spec,
                                                                           tmp_path, clean_identity_environment):
    identity = arm_stand_in.add_workload_identity("projected-service-account-token")
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("projected-service-account-token")
    clean_identity_environment.setenv("AZURE_CLIENT_ID", identity["clientId"])
    clean_identity_environment.setenv("AZURE_TENANT_ID", identity["tenantId"])
    clean_identity_environment.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))

    assert await _signed_in_principal(arm_stand_in, arm_cloud, arm_spec) == {identity["clientId"]}


async def test_without_workload_identity_default_azure_credential_is_used(arm_stand_in, arm_cloud, arm_spec,
                                                                          clean_identity_environment):
    principal = arm_stand_in.add_service_principal()
    clean_identity_environment.setenv("AZURE_CLIENT_ID", principal["clientId"])
    clean_identity_environment.setenv("AZURE_TENANT_ID", principal["tenantId"])
    clean_identity_environment.setenv("AZURE_CLIENT_SECRET", principal["clientSecret"])

    assert await _signed_in_principal(arm_stand_in, arm_cloud, arm_spec) == {principal["clientId"]}
