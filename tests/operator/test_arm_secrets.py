"""No secret — client secret, bearer token, account key — in any continuation token, exception or log
record of the Azure side, with every logger (azure-core's HTTP logging, azure-identity, ours) at DEBUG."""
from __future__ import annotations

import json
import logging
import traceback

import pytest

from cosmos_etcd_operator import credentials
from cosmos_etcd_operator.arm import AzureError, CosmosResources, Pending
from tests.harness import arm

LOGGERS = ("", "azure", "azure.core", "azure.identity", "azure.mgmt", "cosmos_etcd_operator", "aiohttp")


@pytest.fixture
def debug_logs(caplog):
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "".join(traceback.format_exception(*record.exc_info))
    return text


async def _collect(step, spec, seen: list[str]):
    resume = None
    while True:
        result = await step(spec, resume)
        if not isinstance(result, Pending):
            return result
        seen.append(result.token)
        resume = result.token


async def test_no_secret_in_tokens_errors_or_logs(arm_stand_in, arm_cloud, arm_service_principal, arm_spec,
                                                  debug_logs):
    tokens: list[str] = []
    errors: list[str] = []
    keys: list[str] = []
    async with credentials.Credentials(arm_cloud) as cache:
        credential = cache.for_service_principal(arm_service_principal, "azure-sp")
        async with CosmosResources(credential, arm_cloud, arm.SUBSCRIPTION, polling_interval=0) as resources:
            for step in (resources.ensure_account, resources.ensure_database, resources.ensure_container,
                         resources.ensure_throughput):
                await _collect(step, arm_spec, tokens)
            for _ in range(2):
                listed = await resources.list_keys(arm_spec)
                keys += [listed.primary_master_key, listed.secondary_master_key]
                arm_stand_in.rotate_keys(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, arm_spec.account_name)
            arm_stand_in.fail_next("account.listKeys", "AuthorizationFailed", status=403)
            arm_stand_in.fail_next("account.delete", "InternalServerError")
            for failing in (resources.list_keys(arm_spec), _collect(resources.delete_account, arm_spec, tokens)):
                with pytest.raises(AzureError) as failure:
                    await failing
                errors.append(f"{failure.value!r} {failure.value} {failure.value.message}")

        wrong = cache.for_service_principal({**arm_service_principal, "clientSecret": "not-the-secret-4711"},
                                            "azure-sp")
        async with CosmosResources(wrong, arm_cloud, arm.SUBSCRIPTION, polling_interval=0) as refused:
            with pytest.raises(AzureError) as failure:
                await refused.ensure_account(arm_spec)
        assert (failure.value.code, failure.value.retryable) == ("invalid_client", False)
        errors.append(f"{failure.value!r} {failure.value} {failure.value.message}")

    secrets = [arm_service_principal["clientSecret"], "not-the-secret-4711", *arm_stand_in.issued_tokens, *keys]
    assert len(arm_stand_in.issued_tokens) == 1 and len(set(keys)) == 4
    logs = [_record_text(record) for record in debug_logs.records]
    # The check is live: azure-core logged every request with its (redacted) headers, listKeys too.
    assert any("listKeys" in text and "'Authorization': 'REDACTED'" in text for text in logs)
    assert len(tokens) >= 8 and len(errors) == 3
    for secret in secrets:
        for where, texts in (("token", tokens), ("error", errors), ("log", logs)):
            leaked = [text for text in texts if secret in text]
            assert not leaked, f"a secret appears in a {where}: {leaked[0][:200]}"
    # Tokens hold the step, a description and ARM's operation URL, nothing else.
    for token in tokens:
        assert set(json.loads(token)) <= {"v", "step", "op", "url", "location", "created"}
