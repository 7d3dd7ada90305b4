"""Which Azure: named clouds from the SDK's own tables, custom endpoints, AZURE_AUTHORITY_HOST."""
from __future__ import annotations

import pytest

from cosmos_etcd_operator import cloud


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

    assert custom == cloud.AzureCloud("custom", "https://management.local.azurestack.external",
                                      "https://adfs.local.azurestack.external",
                                      "https://management.local.azurestack.external/.default", str(ca_file))
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
    ({"name": "custom", "arm_endpoint": "https://arm.example.test"}, "needs --authority-host or AZURE_AUTHORITY_HOST"),
    ({"name": "public", "arm_endpoint": "https://arm.example.test"}, "only for --cloud custom"),
    ({"name": "custom", "arm_endpoint": "http://arm.example.test", "authority_host": "https://login.example.test"},
     "--arm-endpoint must be an https URL"),
    ({"name": "public", "ca_file": "/nonexistent/ca.pem"}, "does not exist"),
])
def test_contradicting_or_insecure_options_are_refused(options, message):
    with pytest.raises(cloud.InvalidCloud, match=message):
        cloud.resolve(**options, environ={})
