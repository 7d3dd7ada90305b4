"""Which Azure the operator talks to: the Resource Manager endpoint, the Entra ID authority and the
token scope of the public cloud, Azure China, Azure US Government, or a custom cloud (Azure Stack
Hub, a sovereign cloud not listed here, or a local stand-in in tests).

The named clouds take their endpoints from the Azure SDK's own tables (``azure.mgmt.core.tools``
and ``azure.identity.AzureAuthorityHosts``), never from copies here. ``AZURE_AUTHORITY_HOST`` is
honoured as azure-identity honours it, and a CA file (for clouds with a private certificate
authority) is handed to every client as ``connection_verify``.

A custom cloud's token audience is not always its Resource Manager URL (Azure Stack Hub, a proxy in
front of public ARM), and ARM refuses tokens for another audience (401
``InvalidAuthenticationTokenAudience``). ``--arm-audience`` names it; without it, :func:`discover`
reads ARM's ``/metadata/endpoints`` document as the Azure CLI does for clouds it registers
(``authentication.audiences[0]``, and ``authentication.loginEndpoint`` for the authority unless
``--authority-host`` or ``AZURE_AUTHORITY_HOST`` names one). Should the document be unreadable, the
URL stays the audience (what worked before) and a warning says so; the authority must then be given.
The scope is the audience followed by ``/.default``, kept verbatim as the Azure CLI does (an
audience ending in ``/`` gives ``…//.default``, which asks for exactly that audience).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from azure.core import AsyncPipelineClient, AzureClouds
from azure.core.exceptions import AzureError
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.core.rest import HttpRequest
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
# The version the Azure CLI reads; it answers a list of clouds.
METADATA_PATH = "/metadata/endpoints?api-version=2022-09-01"
METADATA_REQUEST_OPTIONS = {"connection_timeout": 10, "read_timeout": 30}

logger = logging.getLogger(__name__)


class InvalidCloud(ValueError):
    """The cloud options contradict each other or name something that is not an https endpoint."""


@dataclasses.dataclass(frozen=True)
class AzureCloud:
    name: str
    resource_manager: str  # https://management.azure.com (no trailing slash)
    # https://login.microsoftonline.com; None only for a custom cloud that discover() has not read yet.
    authority_host: str | None
    credential_scope: str  # what tokens are requested for: https://management.azure.com/.default
    # A PEM file of CA certificates to trust instead of the system's (None: the system's).
    ca_file: str | None = None
    # A custom cloud without --arm-audience: discover() reads the audience from ARM.
    discover_audience: bool = False

    @property
    def needs_discovery(self) -> bool:
        return self.discover_audience or self.authority_host is None

    @property
    def connection_verify(self) -> bool | str:
        """What azure-core clients take as ``connection_verify``."""
        return self.ca_file or True


def resolve(name: str = PUBLIC, *, arm_endpoint: str | None = None, authority_host: str | None = None,
            arm_audience: str | None = None, ca_file: str | None = None,
            environ: Mapping[str, str] = os.environ) -> AzureCloud:
    """The cloud the operator's flags describe (``--cloud``, ``--arm-endpoint``, ``--authority-host``,
    ``--arm-audience``).

    ``authority_host`` defaults to ``AZURE_AUTHORITY_HOST``, then to the named cloud's. A custom
    cloud needs ``arm_endpoint``; without ``arm_audience`` (or without an authority) it is marked
    for :func:`discover`, its scope meanwhile ``{arm_endpoint}/.default``.
    """
    if name not in CLOUD_NAMES:
        raise InvalidCloud(f"unknown cloud {name!r}: use one of {', '.join(CLOUD_NAMES)}")
    authority_host = authority_host or environ.get(AUTHORITY_HOST_VARIABLE) or None
    if name == CUSTOM:
        if not arm_endpoint:
            raise InvalidCloud("the custom cloud needs --arm-endpoint (its Resource Manager URL)")
        resource_manager = _https(arm_endpoint, "--arm-endpoint")
        scope = _scope(_audience(arm_audience) if arm_audience else resource_manager)
        discover_audience = not arm_audience
    else:
        for value, option in ((arm_endpoint, "--arm-endpoint"), (arm_audience, "--arm-audience")):
            if value:
                raise InvalidCloud(f"{option} is only for --cloud custom, not {name}")
        sdk_cloud, default_authority = _NAMED[name]
        endpoints = get_arm_endpoints(sdk_cloud)
        resource_manager = endpoints["resource_manager"].rstrip("/")
        scope = endpoints["credential_scopes"][0]
        authority_host = authority_host or default_authority
        discover_audience = False
    if ca_file is not None and not os.path.isfile(ca_file):
        raise InvalidCloud(f"the CA file {ca_file!r} does not exist")
    return AzureCloud(name=name, resource_manager=resource_manager,
                      authority_host=_https(authority_host, "--authority-host") if authority_host else None,
                      credential_scope=scope, ca_file=ca_file, discover_audience=discover_audience)


async def discover(cloud: AzureCloud) -> AzureCloud:
    """The cloud with what its ARM's metadata document says filled in (see the module docstring);
    unchanged unless it needs it. Raises InvalidCloud when the authority is still unknown."""
    if not cloud.needs_discovery:
        return cloud
    url = f"{cloud.resource_manager}{METADATA_PATH}"
    try:
        document = await _read_metadata(url, cloud.connection_verify)
        authentication = _metadata_entry(document, cloud.resource_manager).get("authentication") or {}
        audiences = authentication.get("audiences") or []
        audience = _audience(audiences[0]) if audiences else None
        login = _https(authentication["loginEndpoint"], "the metadata's loginEndpoint") \
            if authentication.get("loginEndpoint") else None
    except (AzureError, ValueError, TypeError, KeyError) as error:
        if cloud.authority_host is None:
            raise InvalidCloud(f"the custom cloud needs --authority-host or {AUTHORITY_HOST_VARIABLE}: {url} did "
                               f"not say ({_first_line(error)})") from None
        logger.warning("cannot read %s (%s): requesting tokens for %s; if this Resource Manager expects another "
                       "audience, set --arm-audience", url, _first_line(error), cloud.credential_scope)
        return dataclasses.replace(cloud, discover_audience=False)
    scope = _scope(audience) if cloud.discover_audience and audience else cloud.credential_scope
    authority_host = cloud.authority_host or login
    if authority_host is None:
        raise InvalidCloud(f"the custom cloud needs --authority-host or {AUTHORITY_HOST_VARIABLE}: {url} names "
                           f"no loginEndpoint")
    logger.info("custom cloud %s: tokens for %s from %s (read from %s)", cloud.resource_manager, scope,
                authority_host, url)
    return dataclasses.replace(cloud, credential_scope=scope, authority_host=authority_host, discover_audience=False)


async def _read_metadata(url: str, connection_verify: bool | str) -> Any:
    retry = AsyncRetryPolicy(retry_total=2, retry_backoff_factor=0.5, retry_backoff_max=4)
    async with AsyncPipelineClient(url, retry_policy=retry, connection_verify=connection_verify,
                                   **METADATA_REQUEST_OPTIONS) as client:
        response = await client.send_request(HttpRequest("GET", url, headers={"Accept": "application/json"}))
        await response.read()
        response.raise_for_status()
        return response.json()


def _metadata_entry(document: Any, resource_manager: str) -> Mapping[str, Any]:
    """The cloud of ``resource_manager`` in the document: the list of api-version 2019-05-01 and later
    (the entry whose resourceManager it is, else the only one), or the single object of older versions."""
    if isinstance(document, Mapping):
        return document
    if not isinstance(document, list) or not document:
        raise ValueError("the document is neither a cloud nor a list of clouds")
    clouds = [entry for entry in document if isinstance(entry, Mapping)]
    matching = [entry for entry in clouds
                if str(entry.get("resourceManager", "")).rstrip("/").lower() == resource_manager.lower()]
    if matching:
        return matching[0]
    if len(clouds) == 1:
        return clouds[0]
    raise ValueError(f"no cloud in the document has resourceManager {resource_manager}")


def _audience(value: str) -> str:
    """A token audience: an absolute URI (https://management.core.windows.net/, api://...)."""
    parts = urlsplit(value.strip()) if isinstance(value, str) else None
    if parts is None or not parts.scheme or not parts.netloc or value.strip().endswith("/.default"):
        raise InvalidCloud(f"--arm-audience must be an absolute URI such as https://management.core.windows.net/ "
                           f"(without /.default), not {value!r}")
    return value.strip()


def _scope(audience: str) -> str:
    return f"{audience}/.default"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _https(url: str, option: str) -> str:
    """An https URL without trailing slash; a bare host[:port] (as azure-identity accepts) gets https://."""
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidCloud(f"{option} must be an https URL, not {url!r} (Azure sends bearer tokens only over https)")
    return url.rstrip("/")
