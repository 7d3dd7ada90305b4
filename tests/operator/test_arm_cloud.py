"""Which Azure: named clouds from the SDK's own tables, custom endpoints, AZURE_AUTHORITY_HOST, and a
custom cloud whose token audience is not its URL (--arm-audience, or ARM's /metadata/endpoints)."""
from __future__ import annotations

import pytest

from cosmos_etcd_operator import cloud, credentials
from cosmos_etcd_operator.arm import AccountReady, AzureError, CosmosResources
from tests.harness import arm
from tests.harness.arm import settle

# Azure Stack Hub's kind of audience: nothing like the Resource Manager's URL.
AUDIENCE = "https://management.contoso.onmicrosoft.com/3f1c6b5e-0a7d-4c1e-9b2f-5d8e7a6c4b3a"


@pytest.mark.parametrize("name, resource_manager, authority, scope", [
    ("public", "https://management.azure.com", "https://login.microsoftonline.com",
     "https://management.azure.com/.default"),
    ("china", "https://management.chinacloudapi.cn", "https://login.chinacloudapi.cn",
     "https://management.chinacloudapi.cn/.default"),
    # The token audience of US Government differs from its endpoint.
    ("usgovernment", "https://management.usgovcloudapi.net", "https://login.microsoftonline.us",
     "https://management.core.usgovcloudapi.net/.default"),
])
def test_named_clouds(name, resource_manager, authority, scope):
    assert cloud.resolve(name, environ={}) == cloud.AzureCloud(name, resource_manager, authority, scope)


def test_a_custom_cloud_takes_its_endpoints_and_derives_the_scope(tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("")

    custom = cloud.resolve("custom", arm_endpoint="https://management.local.azurestack.external/",
                           authority_host="adfs.local.azurestack.external", ca_file=str(ca_file), environ={})

    # Until discover() has read ARM's metadata, the URL is the audience.
    assert custom == cloud.AzureCloud("custom", "https://management.local.azurestack.external",
                                      "https://adfs.local.azurestack.external",
                                      "https://management.local.azurestack.external/.default", str(ca_file),
                                      discover_audience=True)
    assert custom.connection_verify == str(ca_file)
    assert cloud.resolve("public", environ={}).connection_verify is True


def test_azure_authority_host_is_honoured_and_the_flag_wins():
    environ = {"AZURE_AUTHORITY_HOST": "https://login.example.test/"}
    assert cloud.resolve("custom", arm_endpoint="https://arm.example.test",
                         environ=environ).authority_host == "https://login.example.test"
    assert cloud.resolve("public", authority_host="https://login.flag.test",
                         environ=environ).authority_host == "https://login.flag.test"


@pytest.mark.parametrize("options, message", [
    ({"name": "moon"}, "unknown cloud 'moon'"),
    ({"name": "custom"}, "needs --arm-endpoint"),
    ({"name": "public", "arm_endpoint": "https://arm.example.test"}, "only for --cloud custom"),
    ({"name": "public", "arm_audience": AUDIENCE}, "--arm-audience is only for --cloud custom"),
    ({"name": "custom", "arm_endpoint": "https://arm.example.test", "arm_audience": "management"},
     "--arm-audience must be an absolute URI"),
    ({"name": "custom", "arm_endpoint": "https://arm.example.test", "arm_audience": f"{AUDIENCE}/.default"},
     "without /.default"),
    ({"name": "custom", "arm_endpoint": "http://arm.example.test", "authority_host": "https://login.example.test"},
     "--arm-endpoint must be an https URL"),
    ({"name": "public", "ca_file": "/nonexistent/ca.pem"}, "does not exist"),
])
def test_contradicting_or_insecure_options_are_refused(options, message):
    with pytest.raises(cloud.InvalidCloud, match=message):
        cloud.resolve(**options, environ={})


def test_an_explicit_audience_is_the_scope_verbatim():
    custom = cloud.resolve("custom", arm_endpoint="https://arm.example.test", authority_host="login.example.test",
                           arm_audience="https://management.core.windows.net/", environ={})

    # As the Azure CLI: the audience, then /.default (a trailing slash stays part of the audience).
    assert custom.credential_scope == "https://management.core.windows.net//.default"
    assert not custom.needs_discovery


# -- against the ARM stand-in, which accepts only tokens for AUDIENCE --------------------------------

@pytest.fixture
async def distinct_audience_arm():
    async with arm.ArmStandIn(audience=AUDIENCE) as stand_in:
        stand_in.add_resource_group(arm.SUBSCRIPTION, arm.RESOURCE_GROUP)
        yield stand_in


def _custom_cloud(stand_in, **options) -> cloud.AzureCloud:
    options = {"authority_host": stand_in.authority_host, **options}
    return cloud.resolve("custom", arm_endpoint=stand_in.url, ca_file=stand_in.ca_file, environ={}, **options)


async def _ensure_account(stand_in, azure_cloud, arm_spec):
    async with credentials.Credentials(azure_cloud) as cache:
        credential = cache.for_service_principal(stand_in.add_service_principal(), "azure-sp")
        async with CosmosResources(credential, azure_cloud, arm.SUBSCRIPTION, polling_interval=0) as resources:
            return await settle(resources.ensure_account, arm_spec)


async def test_the_audience_and_authority_are_read_from_arms_metadata(distinct_audience_arm, arm_spec):
    undiscovered = _custom_cloud(distinct_audience_arm, authority_host=None)
    assert undiscovered.needs_discovery

    discovered = await cloud.discover(undiscovered)

    assert discovered.credential_scope == f"{AUDIENCE}/.default"
    assert discovered.authority_host == distinct_audience_arm.authority_host  # its loginEndpoint, slash removed
    assert not discovered.needs_discovery
    assert [(r.path, r.api_version, r.status) for r in distinct_audience_arm.metadata_requests] == [
        ("/metadata/endpoints", "2022-09-01", 200)]
    ready, _ = await _ensure_account(distinct_audience_arm, discovered, arm_spec)
    assert isinstance(ready, AccountReady)
    arm_calls = [r for r in distinct_audience_arm.requests if r.path.startswith("/subscriptions/")]
    assert arm_calls and {r.audience for r in arm_calls} == {AUDIENCE}
    assert 401 not in {r.status for r in arm_calls}


async def test_arm_audience_works_without_metadata(distinct_audience_arm, arm_spec):
    distinct_audience_arm.serves_metadata = False
    explicit = await cloud.discover(_custom_cloud(distinct_audience_arm, arm_audience=AUDIENCE))

    ready, _ = await _ensure_account(distinct_audience_arm, explicit, arm_spec)

    assert isinstance(ready, AccountReady)
    assert distinct_audience_arm.metadata_requests == []  # nothing to discover: not even asked
    assert {r.audience for r in distinct_audience_arm.requests if r.path.startswith("/subscriptions/")} == {AUDIENCE}


async def test_without_either_arm_refuses_the_token_and_says_why(distinct_audience_arm, arm_spec, caplog):
    distinct_audience_arm.serves_metadata = False

    fallback = await cloud.discover(_custom_cloud(distinct_audience_arm))

    assert fallback.credential_scope == f"{distinct_audience_arm.url}/.default"
    assert "set --arm-audience" in caplog.text
    with pytest.raises(AzureError) as refused:
        await _ensure_account(distinct_audience_arm, fallback, arm_spec)
    assert (refused.value.code, refused.value.status, refused.value.retryable) == (
        "InvalidAuthenticationTokenAudience", 401, False)
    assert f"wrong audience or resource '{distinct_audience_arm.url}'" in refused.value.message


async def test_no_authority_given_or_discovered_is_refused(distinct_audience_arm):
    distinct_audience_arm.serves_metadata = False

    with pytest.raises(cloud.InvalidCloud, match="needs --authority-host or AZURE_AUTHORITY_HOST: https://127.0.0.1"):
        await cloud.discover(_custom_cloud(distinct_audience_arm, authority_host=None))
