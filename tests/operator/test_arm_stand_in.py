"""The ARM stand-in itself keeps ARM's rules that the operator depends on: bearer tokens, api-version,
subscriptions, error bodies. (The SDK-level behaviour is covered by the other test_arm_* files.)"""
from __future__ import annotations

import ssl

import aiohttp
import pytest

from tests.harness import arm

ACCOUNT_PATH = (f"/subscriptions/{arm.SUBSCRIPTION}/resourceGroups/{arm.RESOURCE_GROUP}"
                f"/providers/Microsoft.DocumentDB/databaseAccounts/tenant-a-etcd")


@pytest.fixture
async def http(arm_stand_in):
    context = ssl.create_default_context(cafile=arm_stand_in.ca_file)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


async def _token(http, stand_in, principal, scope=None):
    form = {"grant_type": "client_credentials", "client_id": principal["clientId"],
            "client_secret": principal["clientSecret"], "scope": scope or stand_in.scope}
    async with http.post(f"{stand_in.url}/{principal['tenantId']}/oauth2/v2.0/token", data=form) as response:
        return response.status, await response.json()


async def _get(http, stand_in, path, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{stand_in.url}{path}", headers=headers) as response:
        return response.status, (await response.json())["error"]["code"]


async def test_arm_requires_a_bearer_token_it_issued_for_itself(arm_stand_in, arm_service_principal, http):
    query = "?api-version=2026-03-15"
    assert await _get(http, arm_stand_in, ACCOUNT_PATH + query) == (401, "AuthenticationFailed")
    assert await _get(http, arm_stand_in, ACCOUNT_PATH + query, "forged") == (401, "InvalidAuthenticationToken")

    status, body = await _token(http, arm_stand_in, arm_service_principal, scope="https://management.azure.com/.default")
    assert (status, body["error"]) == (400, "invalid_scope")

    status, body = await _token(http, arm_stand_in, arm_service_principal)
    assert status == 200 and body["token_type"] == "Bearer"
    assert await _get(http, arm_stand_in, ACCOUNT_PATH + query, body["access_token"]) == (404, "ResourceNotFound")

    arm_stand_in.revoke_tokens()
    assert await _get(http, arm_stand_in, ACCOUNT_PATH + query, body["access_token"]) == \
        (401, "InvalidAuthenticationToken")


async def test_arm_rules_on_api_version_and_scopes(arm_stand_in, arm_service_principal, http):
    token = (await _token(http, arm_stand_in, arm_service_principal))[1]["access_token"]

    assert await _get(http, arm_stand_in, ACCOUNT_PATH, token) == (400, "MissingApiVersionParameter")
    assert await _get(http, arm_stand_in, ACCOUNT_PATH + "?api-version=2015-04-08", token) == \
        (400, "NoRegisteredProviderFound")
    other_subscription = ACCOUNT_PATH.replace(arm.SUBSCRIPTION, "11111111-2222-3333-4444-555555555555")
    assert await _get(http, arm_stand_in, other_subscription + "?api-version=2026-03-15", token) == \
        (404, "SubscriptionNotFound")


async def test_the_token_endpoint_refuses_a_wrong_secret_without_echoing_it(arm_stand_in, arm_service_principal,
                                                                            http):
    wrong = {**arm_service_principal, "clientSecret": "wrong-secret-value"}
    status, body = await _token(http, arm_stand_in, wrong)
    assert (status, body["error"]) == (401, "invalid_client")
    assert "wrong-secret-value" not in str(body)
