"""Which Azure the operator talks to: the Resource Manager endpoint, the Entra ID authority and the
token scope of the public cloud, Azure China, Azure US Government, or a custom cloud (Azure Stack
Hub, a sovereign cloud not listed here, or a local stand-in in tests).

The named clouds take their endpoints from the Azure SDK's own tables (``azure.mgmt.core.tools``
and ``azure.identity.AzureAuthorityHosts``), never from copies here. ``AZURE_AUTHORITY_HOST`` is
honoured as azure-identity honours it, and a CA file (for clouds with a private certificate
authority) is handed to every client as ``connection_verify``.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from azure.core import AzureClouds
from azure.identity import AzureAuthorityHosts
from azure.mgmt.core.tools import get_arm_endpoints

PUBLIC, CHINA, US_GOVERNMENT, CUSTOM = "public", "china", "usgovernment", "custom"
CLOUD_NAMES = (PUBLIC, CHINA, US_GOVERNMENT, CUSTOM)

_NAMED = {
    PUBLIC: (AzureClouds.AZURE_PUBLIC_CLOUD, AzureAuthorityHosts.AZURE_PUBLIC_CLOUD),
    CHINA: (AzureClouds.AZURE_CHINA_CLOUD, AzureAuthorityHosts.AZURE_CHINA),
    US_GOVERNMENT: (AzureClouds.AZURE_US_GOVERNMENT, AzureAuthorityHosts.AZURE_GOVERNMENT),
}
AUTHORITY_HOST_VARIABLE = "AZURE_AUTHORITY_HOST"


class InvalidCloud(ValueError):
    """The cloud options contradict each other or name something that is not an https endpoint."""


@dataclasses.dataclass(frozen=True)
class AzureCloud:
    name: str
    resource_manager: str  # https://management.azure.com (no trailing slash)
    authority_host: str  # https://login.microsoftonline.com
    credential_scope: str  # what tokens are requested for: https://management.azure.com/.default
    # A PEM file of CA certificates to trust instead of the system's (None: the system's).
    ca_file: str | None = None

    @property
    def connection_verify(self) -> bool | str:
        """What azure-core clients take as ``connection_verify``."""
        return self.ca_file or True


def resolve(name: str = PUBLIC, *, arm_endpoint: str | None = None, authority_host: str | None = None,
            credential_scope: str | None = None, ca_file: str | None = None,
            environ: Mapping[str, str] = os.environ) -> AzureCloud:
    """The cloud the operator's flags describe (``--cloud``, ``--arm-endpoint``, ``--authority-host``).

    ``authority_host`` defaults to ``AZURE_AUTHORITY_HOST``, then to the named cloud's. A custom
    cloud needs ``arm_endpoint``; its token scope defaults to ``{arm_endpoint}/.default``.
    """
    if name not in CLOUD_NAMES:
        raise InvalidCloud(f"unknown cloud {name!r}: use one of {', '.join(CLOUD_NAMES)}")
    authority_host = authority_host or environ.get(AUTHORITY_HOST_VARIABLE) or None
    if name == CUSTOM:
        if not arm_endpoint:
            raise InvalidCloud("the custom cloud needs --arm-endpoint (its Resource Manager URL)")
        if not authority_host:
            raise InvalidCloud(f"the custom cloud needs --authority-host or {AUTHORITY_HOST_VARIABLE}")
        resource_manager = _https(arm_endpoint, "--arm-endpoint")
        scope = credential_scope or f"{resource_manager}/.default"
    else:
        if arm_endpoint:
            raise InvalidCloud(f"--arm-endpoint is only for --cloud custom, not {name}")
        sdk_cloud, default_authority = _NAMED[name]
        endpoints = get_arm_endpoints(sdk_cloud)
        resource_manager = endpoints["resource_manager"].rstrip("/")
        scope = credential_scope or endpoints["credential_scopes"][0]
        authority_host = authority_host or default_authority
    if ca_file is not None and not os.path.isfile(ca_file):
        raise InvalidCloud(f"the CA file {ca_file!r} does not exist")
    return AzureCloud(name=name, resource_manager=resource_manager,
                      authority_host=_https(authority_host, "--authority-host"),
                      credential_scope=scope, ca_file=ca_file)


def _https(url: str, option: str) -> str:
    """An https URL without trailing slash; a bare host[:port] (as azure-identity accepts) gets https://."""
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidCloud(f"{option} must be an https URL, not {url!r} (Azure sends bearer tokens only over https)")
    return url.rstrip("/")
