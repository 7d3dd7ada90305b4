"""A local stand-in for Azure Resource Manager (Microsoft.DocumentDB) and its token endpoint.

No offline ARM emulator exists, so the operator's Azure code is tested against this server through
the real ``azure-mgmt-cosmosdb`` aio client and the real ``azure-identity`` credentials. It keeps
what those clients and the operator depend on:

* HTTPS only, with a certificate from its own ``trustme`` CA (``ca_file``: give it to the clients as
  ``connection_verify``; the SDK refuses bearer tokens over plain http).
* An Entra ID authority at the same address: OpenID discovery
  (``/{tenant}/v2.0/.well-known/openid-configuration``) and the token endpoint
  (``/{tenant}/oauth2/v2.0/token``) for service principals (client secret) and workload identities
  (client assertion). Tokens are JWT-shaped (unsigned) and carry the audience they were requested
  for (``aud``: the scope without ``/.default``). Every ARM request must carry a bearer token it
  issued, else 401 ``AuthenticationFailed`` / ``InvalidAuthenticationToken``, for its audience
  (``audience=`` or ``token_audience``, its URL unless set), else 401
  ``InvalidAuthenticationTokenAudience`` as ARM answers. The token endpoint issues tokens for the audience and for the URL, so that a client that
  takes the URL for the audience gets ARM's refusal, as with Azure Stack Hub or a proxy in front of
  public ARM.
* ARM's cloud metadata, ``GET /metadata/endpoints?api-version=2022-09-01`` (no token), unless
  ``serves_metadata`` is False: one cloud whose ``authentication.audiences[0]`` is the audience and
  ``authentication.loginEndpoint`` the authority. These requests go to ``metadata_requests``.
* ARM's rules: the ``api-version`` query parameter is required (400 ``MissingApiVersionParameter``,
  unknown versions 400 ``NoRegisteredProviderFound``), subscriptions and resource groups must exist
  (404 ``SubscriptionNotFound`` / ``ResourceGroupNotFound``), missing resources answer 404 with ARM's
  body ``{"error": {"code": "ResourceNotFound" | "NotFound", "message": ...}}``, bad input 400
  ``BadRequest``, a resource busy with another operation 412 ``PreconditionFailed``.
* ARM's asynchronous protocol: the account PUT and PATCH answer 200, nested PUTs, POSTs and DELETEs
  202, all with ``Azure-AsyncOperation`` (``.../operationsStatus/{id}``), ``Location``
  (``.../operationResults/{id}``) and ``Retry-After``. The operation GET answers ``InProgress`` for
  ``polls_in_progress`` polls, then ``Succeeded`` (the change is applied then) or ``Failed`` with an
  error code. Accounts show ``provisioningState`` ``Creating``/``Updating``/``Deleting`` meanwhile,
  regions by display name (``West Europe``) as ARM does.
* State: accounts (kind, consistency, regions, automatic failover, tags, keys; the hardening:
  public network access, IP and virtual network rules, minimal TLS version, key-based metadata
  writes, local (key) authentication, backup policy — continuous cannot become periodic again: 400
  ``BadRequest``), SQL databases, containers (partition key, indexing policy) and their throughput,
  manual or autoscale, with the migrate operations, and data-plane role assignments
  (``sqlRoleAssignments``: PUT and DELETE asynchronous, GET, list). A role assignment is checked as
  Cosmos DB checks it: a GUID id, a role definition of the same account that exists (the built-in
  Data Reader ``...01`` and Data Contributor ``...02``), a scope that is the account or a database or
  container path under it (``/dbs/{db}[/colls/{c}]``), a GUID principal, and no second assignment
  of the same role, scope and principal (409 ``Conflict``).

The control API for tests (plain methods, no HTTP):

``fail_next(kind, code, message, status=None, retry_after=None)``
    The next request of ``kind`` fails: with ``status``, the request itself answers that HTTP
    status and ARM's error body; without, the request is accepted and its operation ends ``Failed``.
``hold(kind)`` / ``release(kind=None)``
    Operations of ``kind`` stay ``InProgress`` until released.
``set_throughput(...)``, ``rotate_keys(account)``, ``add_account(...)``
    Changes behind the operator's back: drift, key rotation, an account that already exists (an
    account's hardening is drifted by setting the fields of ``account(...)``).
``requests``
    Every request but the metadata's: method, path, api-version, the calling principal, the
    audience of its token and the answer's status.
``issued_tokens``, ``revoke_tokens()``
    The access tokens handed out; make them all invalid (as after a secret rotation).

Kinds: ``account.get``, ``account.create``, ``account.update``, ``account.delete``,
``account.listKeys``, ``database.get``, ``database.create``, ``container.get``, ``container.create``,
``throughput.get``, ``throughput.update``, ``throughput.migrateToAutoscale``,
``throughput.migrateToManualThroughput``, ``roleAssignment.get``, ``roleAssignment.create``,
``roleAssignment.delete``, ``token``.

Workload identities carry an object id (``principalId``, the ``oid`` claim of their tokens), which
role assignments name; the token endpoint also issues tokens for the audiences of
``data_plane_audiences`` (a Cosmos DB account's, for :mod:`tests.harness.cosmos_auth`).

Use in a test (the ``arm_stand_in`` fixture of tests/operator/conftest.py does this)::

    async with ArmStandIn() as arm:
        arm.add_resource_group(SUBSCRIPTION, "rg")
        principal = arm.add_service_principal()      # {"clientId", "clientSecret", "tenantId"}
        # clients: authority=arm.authority_host, base_url=arm.url,
        #          credential_scopes=[arm.scope], connection_verify=arm.ca_file

It runs in the calling event loop (aiohttp), on 127.0.0.1 and a free port.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import re
import secrets
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trustme
from aiohttp import web

from tests.harness.processes import free_port

# What the fixtures register: one subscription with one resource group.
SUBSCRIPTION = "8d4c5a2e-1f3b-4c6d-9e0f-2a1b3c4d5e6f"
RESOURCE_GROUP = "rg-control-planes"
API_VERSIONS = frozenset({"2026-03-15", "2025-10-15", "2025-04-15", "2024-11-15"})
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = 3599

# ARM answers with display names; clients send the short names.
_REGION_DISPLAY_NAMES = {
    "westeurope": "West Europe", "northeurope": "North Europe", "eastus": "East US", "eastus2": "East US 2",
    "westus": "West US", "westus2": "West US 2", "uksouth": "UK South", "swedencentral": "Sweden Central",
    "germanywestcentral": "Germany West Central", "chinaeast2": "China East 2", "usgovvirginia": "USGov Virginia",
}
DEFAULT_BACKUP_POLICY = {"type": "Periodic", "periodicModeProperties": {
    "backupIntervalInMinutes": 240, "backupRetentionIntervalInHours": 8, "backupStorageRedundancy": "Geo"}}
PUBLIC_NETWORK_ACCESS = ("Enabled", "Disabled", "SecuredByPerimeter")
MINIMAL_TLS_VERSIONS = ("Tls", "Tls11", "Tls12")
# Cosmos DB's built-in data-plane role definitions: Data Reader and Data Contributor.
BUILT_IN_ROLE_DEFINITIONS = ("00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
CONTINUOUS_TIERS = ("Continuous7Days", "Continuous30Days")
BACKUP_STORAGE_REDUNDANCIES = ("Geo", "Local", "Zone")
CONSISTENCY_LEVELS = ("Eventual", "ConsistentPrefix", "Session", "BoundedStaleness", "Strong")
ACCOUNT_KINDS = ("GlobalDocumentDB", "MongoDB", "Parse")
_ACCOUNT_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,42}[a-z0-9])$")

_ACCOUNT_PATH = (r"/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)"
                 r"/providers/Microsoft\.DocumentDB/databaseAccounts/(?P<account>[^/]+)")
_DATABASE_PATH = _ACCOUNT_PATH + r"/sqlDatabases/(?P<database>[^/]+)"
_ROLE_ASSIGNMENTS_PATH = _ACCOUNT_PATH + r"/sqlRoleAssignments"
_CONTAINER_PATH = _DATABASE_PATH + r"/containers/(?P<container>[^/]+)"
METADATA_API_VERSION = "2022-09-01"
_OPERATION_PATH = (r"/subscriptions/(?P<subscription>[^/]+)/providers/Microsoft\.DocumentDB/locations/[^/]+"
                   r"/(?P<style>operationsStatus|operationResults)/(?P<operation>[^/]+)")


def region_key(name: str) -> str:
    """``West Europe`` and ``westeurope`` are the same region."""
    return name.replace(" ", "").lower()


def region_display_name(name: str) -> str:
    return _REGION_DISPLAY_NAMES.get(region_key(name), name)


class ArmFailure(Exception):
    """An ARM error answer: HTTP status and ARM's error body."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def response(self) -> web.Response:
        headers = {"x-ms-failure-cause": "service"}
        if self.retry_after is not None:
            headers["Retry-After"] = _seconds(self.retry_after)
        return web.json_response({"error": {"code": self.code, "message": self.message}},
                                 status=self.status, headers=headers)


def _bad_request(message: str) -> ArmFailure:
    return ArmFailure(400, "BadRequest", message)


@dataclasses.dataclass
class ThroughputState:
    mode: str  # "Manual" or "Autoscale"
    request_units: int  # RU/s, or the autoscale maximum

    def body(self) -> dict[str, Any]:
        if self.mode == "Autoscale":
            return {"throughput": max(self.request_units // 10, 100), "minimumThroughput": "1000",
                    "autoscaleSettings": {"maxThroughput": self.request_units}}
        return {"throughput": self.request_units, "minimumThroughput": "400"}


@dataclasses.dataclass
class Container:
    name: str
    partition_key: dict[str, Any]
    indexing_policy: dict[str, Any]
    throughput: ThroughputState | None


@dataclasses.dataclass
class Database:
    name: str
    containers: dict[str, Container] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Account:
    subscription: str
    resource_group: str
    name: str
    location: str
    kind: str
    tags: dict[str, str]
    consistency: dict[str, Any]
    automatic_failover: bool
    locations: list[dict[str, Any]]  # {"locationName", "failoverPriority", "isZoneRedundant"}
    provisioning_state: str = "Succeeded"
    public_network_access: str = "Enabled"
    ip_rules: list[str] = dataclasses.field(default_factory=list)
    # {"id", "ignoreMissingVNetServiceEndpoint"}
    virtual_network_rules: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    virtual_network_filter: bool = False
    minimal_tls_version: str = "Tls12"
    disable_key_based_metadata_write_access: bool = False
    disable_local_auth: bool = False
    # ARM's body: {"type": "Periodic", "periodicModeProperties": {...}} or {"type": "Continuous", ...}
    backup_policy: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BACKUP_POLICY))
    keys: dict[str, str] = dataclasses.field(default_factory=dict)
    databases: dict[str, Database] = dataclasses.field(default_factory=dict)
    # assignment id -> {"roleDefinitionId", "scope", "principalId"}
    role_assignments: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.keys:
            self.keys = _new_keys()


@dataclasses.dataclass
class _Failure:
    code: str
    message: str
    status: int | None
    retry_after: float | None


@dataclasses.dataclass
class _Operation:
    id: str
    kind: str
    resource: str  # the ARM id of the resource it changes (also its lock)
    polls_left: int
    held: bool
    apply: Callable[[], None]
    undo: Callable[[], None]
    result: Callable[[], dict[str, Any] | None]
    failure: _Failure | None = None
    status: str = "InProgress"
    start_time: str = dataclasses.field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


@dataclasses.dataclass(frozen=True)
class ArmRequest:
    method: str
    path: str
    api_version: str | None
    principal: str | None  # the client id of the bearer token, None without a valid one
    status: int
    audience: str | None = None  # the aud of the bearer token, None without one


@dataclasses.dataclass
class _Principal:
    tenant: str
    client_id: str
    secret: str | None = None
    assertion: str | None = None
    object_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))  # the oid claim


@dataclasses.dataclass
class _Token:
    client_id: str
    audience: str
    expires: float
    object_id: str = ""


class ArmStandIn:
    """The server, its state and the control API (see the module docstring)."""

    def __init__(self, *, polls_in_progress: int = 1, retry_after: int = 0,
                 document_endpoint: Callable[[str], str] | None = None, audience: str | None = None,
                 serves_metadata: bool = True):
        # Polls of an operation that answer InProgress before it completes.
        self.polls_in_progress = polls_in_progress
        # The Retry-After of every asynchronous answer: whole seconds, as ARM sends (the SDK parses
        # the header of nested resources' answers as an int).
        self.retry_after = retry_after
        # The documentEndpoint an account reports (point it at a Cosmos emulator for end-to-end tests).
        self.document_endpoint = document_endpoint or (lambda name: f"https://{name}.documents.azure.com:443/")
        # The token audience ARM accepts (None: its URL, as public ARM's is its own); settable.
        self.token_audience = audience
        self.serves_metadata = serves_metadata
        # Other resources the token endpoint issues tokens for (e.g. "https://127.0.0.1", a local
        # Cosmos DB endpoint's audience as azure-cosmos asks: scheme and host, no port).
        self.data_plane_audiences: set[str] = set()
        self.requests: list[ArmRequest] = []
        self.metadata_requests: list[ArmRequest] = []
        # Every access token handed out, for tests that check none leaks.
        self.issued_tokens: list[str] = []
        self.accounts: dict[tuple[str, str, str], Account] = {}
        self._resource_groups: set[tuple[str, str]] = set()
        self._principals: dict[str, _Principal] = {}
        self._tokens: dict[str, _Token] = {}
        self._operations: dict[str, _Operation] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._held: set[str] = set()
        self._ca = trustme.CA()
        self._tempdir = tempfile.TemporaryDirectory(prefix="arm-stand-in-")
        self.ca_file = str(Path(self._tempdir.name) / "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Resource Manager endpoint, which is also the authority host."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def authority_host(self) -> str:
        return self.url

    @property
    def audience(self) -> str:
        return self.token_audience or self.url

    @property
    def scope(self) -> str:
        """The scope clients must ask tokens for (ARM's audience + /.default)."""
        return f"{self.audience}/.default"

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server certificate for 127.0.0.1 from the stand-in's CA: other local HTTPS servers (the
        Cosmos DB gate of tests/harness/cosmos_auth.py) that clients trusting ``ca_file`` accept."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context

    async def start(self) -> "ArmStandIn":
        context = self.server_ssl_context()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._tempdir.cleanup()

    async def __aenter__(self) -> "ArmStandIn":
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    # -- control API -----------------------------------------------------------------------------

    def add_resource_group(self, subscription: str, name: str) -> None:
        self._resource_groups.add((subscription.lower(), name.lower()))

    def add_service_principal(self, tenant: str | None = None, client_id: str | None = None,
                              secret: str | None = None) -> dict[str, str]:
        """Register an app with a client secret; returns it as a Secret's data (clientId, clientSecret, tenantId)."""
        principal = _Principal(tenant or str(uuid.uuid4()), client_id or str(uuid.uuid4()),
                               secret=secret or secrets.token_urlsafe(30))
        self._principals[principal.client_id] = principal
        return {"clientId": principal.client_id, "clientSecret": principal.secret, "tenantId": principal.tenant}

    def add_workload_identity(self, assertion: str, tenant: str | None = None,
                              client_id: str | None = None) -> dict[str, str]:
        """Register an app that signs in with a federated token (``assertion``, e.g. the projected
        service-account token in ``AZURE_FEDERATED_TOKEN_FILE``); returns its tenantId, clientId and
        principalId (its object id)."""
        principal = _Principal(tenant or str(uuid.uuid4()), client_id or str(uuid.uuid4()), assertion=assertion)
        self._principals[principal.client_id] = principal
        return {"clientId": principal.client_id, "tenantId": principal.tenant, "principalId": principal.object_id}

    def token_claims(self, access_token: str, audience: str) -> dict[str, Any] | None:
        """The claims of an access token this authority issued for ``audience`` and that is still
        valid (None for anything else): what a resource server checks before it looks at roles."""
        token = self._tokens.get(access_token)
        if token is None or token.expires < time.time() or _token_audience(access_token) != audience:
            return None
        return {"appid": token.client_id, "oid": token.object_id, "aud": audience}

    def role_assignments(self, subscription: str, resource_group: str, account: str) -> dict[str, dict[str, str]]:
        """The account's data-plane role assignments: id -> roleDefinitionId, scope, principalId."""
        found = self.account(subscription, resource_group, account)
        return {} if found is None else {key: dict(value) for key, value in found.role_assignments.items()}

    def revoke_tokens(self) -> None:
        """Every token issued so far stops being accepted (as after a secret rotation)."""
        self._tokens.clear()

    def fail_next(self, kind: str, code: str, message: str | None = None, *, status: int | None = None,
                  retry_after: float | None = None) -> None:
        self._failures.setdefault(kind, []).append(
            _Failure(code, message or f"Injected failure of {kind}", status, retry_after))

    def hold(self, kind: str) -> None:
        """Operations of ``kind`` (running ones too) stay InProgress until released."""
        self._held.add(kind)
        for operation in self._operations.values():
            if operation.kind == kind:
                operation.held = True

    def release(self, kind: str | None = None) -> None:
        kinds = set(self._held) if kind is None else {kind}
        self._held -= kinds
        for operation in self._operations.values():
            if operation.kind in kinds:
                operation.held = False

    def pending_operations(self, kind: str | None = None) -> list[str]:
        """The ids of operations still in progress (of ``kind``)."""
        return [op.id for op in self._operations.values()
                if op.status == "InProgress" and (kind is None or op.kind == kind)]

    def add_account(self, subscription: str, resource_group: str, name: str, *, location: str = "westeurope",
                    consistency: str = "Session", automatic_failover: bool = False,
                    regions: list[str] | None = None, tags: dict[str, str] | None = None) -> Account:
        """An account that exists already (made in the portal, say): to be adopted."""
        self.add_resource_group(subscription, resource_group)
        account = Account(
            subscription=subscription, resource_group=resource_group, name=name, location=location,
            kind="GlobalDocumentDB", tags=dict(tags or {}),
            consistency={"defaultConsistencyLevel": consistency, "maxStalenessPrefix": 100, "maxIntervalInSeconds": 5},
            automatic_failover=automatic_failover,
            locations=[{"locationName": region, "failoverPriority": index, "isZoneRedundant": False}
                       for index, region in enumerate(regions or [location])])
        self.accounts[_account_key(subscription, resource_group, name)] = account
        return account

    def account(self, subscription: str, resource_group: str, name: str) -> Account | None:
        return self.accounts.get(_account_key(subscription, resource_group, name))

    def container(self, subscription: str, resource_group: str, account: str, database: str,
                  container: str) -> Container | None:
        found = self.account(subscription, resource_group, account)
        database_state = found.databases.get(database) if found else None
        return database_state.containers.get(container) if database_state else None

    def set_throughput(self, subscription: str, resource_group: str, account: str, database: str, container: str,
                       *, mode: str, request_units: int) -> None:
        """Drift: someone changed the container's throughput in the portal."""
        found = self.container(subscription, resource_group, account, database, container)
        if found is None:
            raise KeyError(f"no container {account}/{database}/{container}")
        found.throughput = ThroughputState(mode, request_units)

    def rotate_keys(self, subscription: str, resource_group: str, account: str) -> dict[str, str]:
        found = self.account(subscription, resource_group, account)
        if found is None:
            raise KeyError(f"no account {account}")
        found.keys = _new_keys()
        return dict(found.keys)

    # -- HTTP ------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/metadata/endpoints":
            response = self._metadata(request)
            self.metadata_requests.append(ArmRequest(request.method, request.path, request.query.get("api-version"),
                                                     None, response.status))
            return response
        principal = audience = None
        try:
            if request.path.endswith("/oauth2/v2.0/token") or "/.well-known/" in request.path \
                    or request.path.startswith("/common/discovery/"):
                response = await self._authority(request)
            else:
                audience = _token_audience(request.headers.get("Authorization", "").removeprefix("Bearer "))
                principal = self._authenticate(request)
                response = await self._arm(request)
        except ArmFailure as failure:
            response = failure.response()
        self.requests.append(ArmRequest(request.method, request.path, request.query.get("api-version"),
                                        principal, response.status, audience))
        return response

    def _authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise ArmFailure(401, "AuthenticationFailed",
                             "Authentication failed. The 'Authorization' header is missing.")
        access_token = header.removeprefix("Bearer ")
        token = self._tokens.get(access_token)
        if token is None or token.expires < time.time():
            raise ArmFailure(401, "InvalidAuthenticationToken", "The access token is invalid.")
        audience = _token_audience(access_token)
        if audience != self.audience:
            raise ArmFailure(401, "InvalidAuthenticationTokenAudience",
                             f"The access token has been obtained for wrong audience or resource '{audience}'. It "
                             f"should exactly match with one of the allowed audiences '{self.audience}'.")
        return token.client_id

    def _metadata(self, request: web.Request) -> web.Response:
        """ARM's cloud metadata document (the list form of api-version 2019-05-01 and later)."""
        if not self.serves_metadata:
            return web.Response(status=404)
        if request.query.get("api-version") != METADATA_API_VERSION:
            return ArmFailure(400, "InvalidApiVersionParameter", "The api-version is invalid.").response()
        return web.json_response([{
            "name": "StandIn", "resourceManager": f"{self.url}/", "portal": f"{self.url}/portal",
            "authentication": {"loginEndpoint": f"{self.authority_host}/", "audiences": [self.audience, self.url],
                               "tenant": "common", "identityProvider": "AAD"},
            "suffixes": {"storage": "core.stand-in.test"}}])

    async def _arm(self, request: web.Request) -> web.Response:
        api_version = request.query.get("api-version")
        if not api_version:
            raise ArmFailure(400, "MissingApiVersionParameter",
                             "The api-version query parameter (?api-version=) is required for all requests.")
        if api_version not in API_VERSIONS:
            raise ArmFailure(400, "NoRegisteredProviderFound",
                             f"No registered resource provider found for API version '{api_version}'. "
                             f"The supported api-versions are '{', '.join(sorted(API_VERSIONS))}'.")
        body = await _json_body(request)
        if request.method == "GET" and "/operation" not in request.path:
            self._operations_on(request.path)  # a read of the resource: time passes for its operations
        for pattern, handlers in self._routes():
            match = re.fullmatch(pattern, request.path, re.IGNORECASE)
            if match:
                handler = handlers.get(request.method)
                if handler is None:
                    raise ArmFailure(405, "MethodNotAllowed", f"The requested resource does not support "
                                                              f"http method '{request.method}'.")
                return handler(body=body, **match.groupdict())
        raise ArmFailure(404, "InvalidResourceType", f"The resource type could not be found for {request.path}.")

    def _routes(self):
        return (
            (_OPERATION_PATH, {"GET": self._get_operation}),
            (_ACCOUNT_PATH + "/listKeys", {"POST": self._list_keys}),
            (_ROLE_ASSIGNMENTS_PATH + "/(?P<assignment>[^/]+)", {
                "GET": self._get_role_assignment, "PUT": self._put_role_assignment,
                "DELETE": self._delete_role_assignment}),
            (_ROLE_ASSIGNMENTS_PATH, {"GET": self._list_role_assignments}),
            (_CONTAINER_PATH + "/throughputSettings/default/(?P<target>migrateToAutoscale|migrateToManualThroughput)",
             {"POST": self._migrate_throughput}),
            (_CONTAINER_PATH + "/throughputSettings/default",
             {"GET": self._get_throughput, "PUT": self._put_throughput}),
            (_CONTAINER_PATH, {"GET": self._get_container, "PUT": self._put_container}),
            (_DATABASE_PATH, {"GET": self._get_database, "PUT": self._put_database}),
            (_ACCOUNT_PATH, {"GET": self._get_account, "PUT": self._put_account, "PATCH": self._patch_account,
                             "DELETE": self._delete_account}),
        )

    # -- accounts --------------------------------------------------------------------------------

    def _find_account(self, subscription: str, group: str, account: str) -> Account:
        self._check_group(subscription, group)
        found = self.accounts.get(_account_key(subscription, group, account))
        if found is None:
            raise ArmFailure(404, "ResourceNotFound",
                             f"The Resource 'Microsoft.DocumentDB/databaseAccounts/{account}' under resource group "
                             f"'{group}' was not found. For more details please go to "
                             f"https://aka.ms/ARMResourceNotFoundFix")
        return found

    def _check_group(self, subscription: str, group: str) -> None:
        if not any(known == subscription.lower() for known, _ in self._resource_groups):
            raise ArmFailure(404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found.")
        if (subscription.lower(), group.lower()) not in self._resource_groups:
            raise ArmFailure(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")

    def _get_account(self, *, subscription, group, account, body) -> web.Response:
        self._inject("account.get")
        return web.json_response(self._account_body(self._find_account(subscription, group, account)))

    def _put_account(self, *, subscription, group, account, body) -> web.Response:
        self._check_group(subscription, group)
        key = _account_key(subscription, group, account)
        existing = self.accounts.get(key)
        if existing is not None:
            return self._update_account(existing, body, "account.update", full=True)
        failure = self._inject("account.create")
        if not _ACCOUNT_NAME.match(account):
            raise _bad_request(f"Database account name '{account}' is invalid: 3-44 lowercase letters, digits "
                               f"and hyphens, not starting or ending with a hyphen.")
        if any(other.name == account for other in self.accounts.values()):
            raise _bad_request(f"Dns record for {account} under zone Document is already taken. "
                               f"Please use another name for the account name.")
        if not body.get("location"):
            raise ArmFailure(400, "LocationRequired", "The location property is required for this definition.")
        kind = body.get("kind", "GlobalDocumentDB")
        if kind not in ACCOUNT_KINDS:
            raise _bad_request(f"Invalid database account kind '{kind}'.")
        properties = body.get("properties") or {}
        if properties.get("databaseAccountOfferType") != "Standard":
            raise _bad_request("Invalid or missing databaseAccountOfferType: the only supported value is 'Standard'.")
        locations = _validated_locations(properties.get("locations"))
        consistency = _validated_consistency(properties.get("consistencyPolicy"), multi_region=len(locations) > 1)
        hardening = _validated_hardening(properties, current_backup=None)
        created = Account(
            subscription=subscription, resource_group=group, name=account, location=body["location"], kind=kind,
            tags=dict(body.get("tags") or {}), consistency=consistency,
            automatic_failover=bool(properties.get("enableAutomaticFailover", False)), locations=locations,
            provisioning_state="Creating", **hardening)
        self.accounts[key] = created

        def apply():
            created.provisioning_state = "Succeeded"

        def undo():
            self.accounts.pop(key, None)

        operation = self._start("account.create", _account_id(created), apply, undo,
                                lambda: self._account_body(created), failure)
        return self._accepted(200, self._account_body(created), operation, subscription, created.location)

    def _patch_account(self, *, subscription, group, account, body) -> web.Response:
        return self._update_account(self._find_account(subscription, group, account), body, "account.update",
                                    full=False)

    def _update_account(self, account: Account, body: dict, kind: str, *, full: bool) -> web.Response:
        failure = self._inject(kind)
        self._check_not_busy(_account_id(account))
        if body.get("location") and region_key(body["location"]) != region_key(account.location):
            raise _bad_request("Updating the location of a database account is not supported.")
        if full and body.get("kind", account.kind) != account.kind:
            raise _bad_request("Changing the kind of a database account is not supported.")
        properties = body.get("properties") or {}
        locations = consistency = None
        if "locations" in properties:
            locations = _validated_locations(properties["locations"])
            write = next(item for item in locations if item["failoverPriority"] == 0)
            current_write = next(item for item in account.locations if item["failoverPriority"] == 0)
            if region_key(write["locationName"]) != region_key(current_write["locationName"]):
                raise _bad_request("The write region cannot be changed by an update: use failoverPriorityChange.")
            others = properties.keys() - {"locations"}
            if not full and (others or "tags" in body):
                raise _bad_request("Updating database account locations and other properties at the same time "
                                   "is not supported.")
        regions = len(locations or account.locations)
        if "consistencyPolicy" in properties:
            consistency = _validated_consistency(properties["consistencyPolicy"], multi_region=regions > 1)
        elif locations is not None and regions > 1:
            _validated_consistency(account.consistency, multi_region=True)
        hardening = _validated_hardening(properties, current_backup=account.backup_policy)
        previous_state = account.provisioning_state
        account.provisioning_state = "Updating"

        def apply():
            for name, value in hardening.items():
                setattr(account, name, value)
            if locations is not None:
                account.locations = locations
            if consistency is not None:
                account.consistency = consistency
            if "enableAutomaticFailover" in properties:
                account.automatic_failover = bool(properties["enableAutomaticFailover"])
            if "tags" in body:
                account.tags = dict(body["tags"] or {})
            account.provisioning_state = "Succeeded"

        def undo():
            account.provisioning_state = previous_state

        operation = self._start(kind, _account_id(account), apply, undo, lambda: self._account_body(account), failure)
        return self._accepted(200, self._account_body(account), operation, account.subscription, account.location)

    def _delete_account(self, *, subscription, group, account, body) -> web.Response:
        self._check_group(subscription, group)
        key = _account_key(subscription, group, account)
        found = self.accounts.get(key)
        if found is None:
            return web.Response(status=204)
        failure = self._inject("account.delete")
        self._check_not_busy(_account_id(found))
        found.provisioning_state = "Deleting"

        def apply():
            self.accounts.pop(key, None)

        def undo():
            found.provisioning_state = "Succeeded"

        operation = self._start("account.delete", _account_id(found), apply, undo, lambda: None, failure)
        return self._accepted(202, None, operation, subscription, found.location)

    def _list_keys(self, *, subscription, group, account, body) -> web.Response:
        self._inject("account.listKeys")
        found = self._find_account(subscription, group, account)
        if found.provisioning_state == "Creating":
            raise ArmFailure(412, "PreconditionFailed", "The database account is still being created.")
        return web.json_response(dict(found.keys))

    def _account_body(self, account: Account) -> dict[str, Any]:
        endpoint = self.document_endpoint(account.name)
        locations = sorted(account.locations, key=lambda item: item["failoverPriority"])
        described = [{
            "id": f"{account.name}-{region_key(item['locationName'])}",
            "locationName": region_display_name(item["locationName"]),
            "documentEndpoint": f"https://{account.name}-{region_key(item['locationName'])}.documents.azure.com:443/",
            "provisioningState": account.provisioning_state,
            "failoverPriority": item["failoverPriority"],
            "isZoneRedundant": item["isZoneRedundant"],
        } for item in locations]
        return {
            "id": _account_id(account),
            "name": account.name,
            "type": "Microsoft.DocumentDB/databaseAccounts",
            "location": region_display_name(account.location),
            "kind": account.kind,
            "tags": dict(account.tags),
            "properties": {
                "provisioningState": account.provisioning_state,
                "documentEndpoint": endpoint,
                "databaseAccountOfferType": "Standard",
                "consistencyPolicy": dict(account.consistency),
                "enableAutomaticFailover": account.automatic_failover,
                "enableMultipleWriteLocations": False,
                "locations": described,
                "writeLocations": described[:1],
                "readLocations": described,
                "failoverPolicies": [{"id": item["id"], "locationName": item["locationName"],
                                      "failoverPriority": item["failoverPriority"]} for item in described],
                "disableLocalAuth": account.disable_local_auth,
                "publicNetworkAccess": account.public_network_access,
                "ipRules": [{"ipAddressOrRange": rule} for rule in account.ip_rules],
                "isVirtualNetworkFilterEnabled": account.virtual_network_filter,
                "virtualNetworkRules": [dict(rule) for rule in account.virtual_network_rules],
                "minimalTlsVersion": account.minimal_tls_version,
                "disableKeyBasedMetadataWriteAccess": account.disable_key_based_metadata_write_access,
                "backupPolicy": json.loads(json.dumps(account.backup_policy)),
            },
        }

    # -- data-plane role assignments -------------------------------------------------------------

    def _find_role_assignment(self, subscription, group, account, assignment) -> tuple[Account, dict[str, str]]:
        found = self._find_account(subscription, group, account)
        if assignment not in found.role_assignments:
            raise _not_found(f"Role assignment {assignment}")
        return found, found.role_assignments[assignment]

    def _get_role_assignment(self, *, subscription, group, account, assignment, body) -> web.Response:
        self._inject("roleAssignment.get")
        found, properties = self._find_role_assignment(subscription, group, account, assignment)
        return web.json_response(_role_assignment_body(found, assignment, properties))

    def _list_role_assignments(self, *, subscription, group, account, body) -> web.Response:
        found = self._find_account(subscription, group, account)
        return web.json_response({"value": [_role_assignment_body(found, key, value)
                                            for key, value in found.role_assignments.items()]})

    def _put_role_assignment(self, *, subscription, group, account, assignment, body) -> web.Response:
        found = self._find_account(subscription, group, account)
        failure = self._inject("roleAssignment.create")
        properties = _validated_role_assignment(found, assignment, body.get("properties") or {})
        resource_id = f"{_account_id(found)}/sqlRoleAssignments/{assignment}"
        self._check_not_busy(resource_id)

        def apply():
            found.role_assignments[assignment] = properties

        operation = self._start("roleAssignment.create", resource_id, apply, lambda: None,
                                lambda: _role_assignment_body(found, assignment, found.role_assignments[assignment]),
                                failure)
        return self._accepted(202, None, operation, subscription, found.location)

    def _delete_role_assignment(self, *, subscription, group, account, assignment, body) -> web.Response:
        found = self._find_account(subscription, group, account)
        if assignment not in found.role_assignments:
            return web.Response(status=204)
        failure = self._inject("roleAssignment.delete")
        resource_id = f"{_account_id(found)}/sqlRoleAssignments/{assignment}"
        self._check_not_busy(resource_id)

        def apply():
            found.role_assignments.pop(assignment, None)

        operation = self._start("roleAssignment.delete", resource_id, apply, lambda: None, lambda: None, failure)
        return self._accepted(202, None, operation, subscription, found.location)

    # -- databases and containers ----------------------------------------------------------------

    def _find_database(self, subscription, group, account, database) -> tuple[Account, Database]:
        found = self._find_account(subscription, group, account)
        if database not in found.databases:
            raise _not_found(f"Database {database}")
        return found, found.databases[database]

    def _find_container(self, subscription, group, account, database, container) -> tuple[Account, Container]:
        found, database_state = self._find_database(subscription, group, account, database)
        if container not in database_state.containers:
            raise _not_found(f"Container {container}")
        return found, database_state.containers[container]

    def _get_database(self, *, subscription, group, account, database, body) -> web.Response:
        self._inject("database.get")
        found, _ = self._find_database(subscription, group, account, database)
        return web.json_response(_database_body(found, database))

    def _put_database(self, *, subscription, group, account, database, body) -> web.Response:
        found = self._find_account(subscription, group, account)
        failure = self._inject("database.create")
        resource = _resource(body)
        if resource.get("id") != database:
            raise _bad_request(f"The resource id '{resource.get('id')}' does not match the name '{database}' in the URL.")
        resource_id = f"{_account_id(found)}/sqlDatabases/{database}"
        self._check_not_busy(resource_id)

        def apply():
            found.databases.setdefault(database, Database(database))

        operation = self._start("database.create", resource_id, apply, lambda: None,
                                lambda: _database_body(found, database), failure)
        return self._accepted(202, None, operation, subscription, found.location)

    def _get_container(self, *, subscription, group, account, database, container, body) -> web.Response:
        self._inject("container.get")
        found, container_state = self._find_container(subscription, group, account, database, container)
        return web.json_response(_container_body(found, database, container_state))

    def _put_container(self, *, subscription, group, account, database, container, body) -> web.Response:
        found, database_state = self._find_database(subscription, group, account, database)
        failure = self._inject("container.create")
        resource = _resource(body)
        if resource.get("id") != container:
            raise _bad_request(f"The resource id '{resource.get('id')}' does not match the name '{container}' in the URL.")
        partition_key = resource.get("partitionKey")
        if not isinstance(partition_key, dict) or not partition_key.get("paths"):
            raise _bad_request("A container requires a partition key definition (partitionKey.paths).")
        existing = database_state.containers.get(container)
        if existing is not None and existing.partition_key["paths"] != partition_key["paths"]:
            raise _bad_request("Document collection partition key cannot be changed.")
        options = (body.get("properties") or {}).get("options") or {}
        throughput = _validated_options(options) if existing is None else existing.throughput
        resource_id = f"{_account_id(found)}/sqlDatabases/{database}/containers/{container}"
        self._check_not_busy(resource_id)
        indexing_policy = resource.get("indexingPolicy") or {"indexingMode": "consistent", "automatic": True,
                                                             "includedPaths": [{"path": "/*"}], "excludedPaths": []}

        def apply():
            database_state.containers[container] = Container(
                container, {"kind": "Hash", "version": 2, **partition_key}, indexing_policy, throughput)

        operation = self._start("container.create", resource_id, apply, lambda: None,
                                lambda: _container_body(found, database, database_state.containers[container]),
                                failure)
        return self._accepted(202, None, operation, subscription, found.location)

    # -- throughput ------------------------------------------------------------------------------

    def _dedicated_throughput(self, subscription, group, account, database, container) -> tuple[Account, Container]:
        found, container_state = self._find_container(subscription, group, account, database, container)
        if container_state.throughput is None:
            raise _not_found(f"Throughput settings for container {container}")
        return found, container_state

    def _get_throughput(self, *, subscription, group, account, database, container, body) -> web.Response:
        self._inject("throughput.get")
        found, container_state = self._dedicated_throughput(subscription, group, account, database, container)
        return web.json_response(_throughput_body(found, database, container_state))

    def _put_throughput(self, *, subscription, group, account, database, container, body) -> web.Response:
        found, container_state = self._dedicated_throughput(subscription, group, account, database, container)
        failure = self._inject("throughput.update")
        resource = _resource(body)
        current = container_state.throughput
        autoscale = resource.get("autoscaleSettings")
        if autoscale is not None and current.mode != "Autoscale":
            raise _bad_request("Autoscale settings cannot be set on a container with manual throughput: "
                               "migrate it to autoscale first.")
        if autoscale is None and current.mode == "Autoscale":
            raise _bad_request("Manual throughput cannot be set on a container with autoscale throughput: "
                               "migrate it to manual throughput first.")
        wanted = _validated_throughput(
            "Autoscale" if autoscale is not None else "Manual",
            autoscale.get("maxThroughput") if autoscale is not None else resource.get("throughput"))
        resource_id = f"{_account_id(found)}/sqlDatabases/{database}/containers/{container}/throughputSettings/default"
        self._check_not_busy(resource_id)

        def apply():
            container_state.throughput = wanted

        operation = self._start("throughput.update", resource_id, apply, lambda: None,
                                lambda: _throughput_body(found, database, container_state), failure)
        return self._accepted(202, None, operation, subscription, found.location)

    def _migrate_throughput(self, *, subscription, group, account, database, container, target, body):
        found, container_state = self._dedicated_throughput(subscription, group, account, database, container)
        kind = f"throughput.{target}"
        failure = self._inject(kind)
        current = container_state.throughput
        to_autoscale = target == "migrateToAutoscale"
        if (current.mode == "Autoscale") == to_autoscale:
            raise _bad_request(f"The container's throughput is already {current.mode.lower()}.")
        resource_id = f"{_account_id(found)}/sqlDatabases/{database}/containers/{container}/throughputSettings/default"
        self._check_not_busy(resource_id)

        def apply():
            if to_autoscale:  # Cosmos's rule: max RU/s = max(4000, 10 x the manual RU/s), in steps of 1000
                maximum = max(4000, -(-current.request_units * 10 // 1000) * 1000)
                container_state.throughput = ThroughputState("Autoscale", maximum)
            else:  # manual RU/s = the autoscale maximum
                container_state.throughput = ThroughputState("Manual", current.request_units)

        operation = self._start(kind, resource_id, apply, lambda: None,
                                lambda: _throughput_body(found, database, container_state), failure)
        return self._accepted(202, None, operation, subscription, found.location)

    # -- the asynchronous protocol ---------------------------------------------------------------

    def _inject(self, kind: str) -> _Failure | None:
        """The failure planned for this request: raised now if it has a status, else returned for
        the operation to end with."""
        queue = self._failures.get(kind)
        if not queue:
            return None
        failure = queue.pop(0)
        if failure.status is not None:
            raise ArmFailure(failure.status, failure.code, failure.message, failure.retry_after)
        return failure

    def _operations_on(self, resource_id: str) -> list[_Operation]:
        """Operations in progress on the resource or a parent of it; as time passes with every
        request, each call also advances them like a poll (real operations finish unobserved too)."""
        found = [operation for operation in self._operations.values() if operation.status == "InProgress"
                 and (resource_id + "/").lower().startswith(operation.resource.lower() + "/")]
        for operation in found:
            self._advance(operation)
        return [operation for operation in found if operation.status == "InProgress"]

    def _check_not_busy(self, resource_id: str) -> None:
        if self._operations_on(resource_id):
            raise ArmFailure(412, "PreconditionFailed",
                             "There is already an operation in progress which requires exclusive lock on this "
                             "service. Please retry the operation after sometime.")

    def _start(self, kind, resource_id, apply, undo, result, failure) -> _Operation:
        operation = _Operation(id=str(uuid.uuid4()), kind=kind, resource=resource_id,
                               polls_left=self.polls_in_progress, held=kind in self._held,
                               apply=apply, undo=undo, result=result, failure=failure)
        self._operations[operation.id] = operation
        return operation

    def _accepted(self, status: int, body: dict | None, operation: _Operation, subscription: str,
                  location: str) -> web.Response:
        base = f"{self.url}/subscriptions/{subscription}/providers/Microsoft.DocumentDB/locations/{region_key(location)}"
        query = "?api-version=2026-03-15"
        headers = {
            "Azure-AsyncOperation": f"{base}/operationsStatus/{operation.id}{query}",
            "Location": f"{base}/operationResults/{operation.id}{query}",
            "Retry-After": str(int(self.retry_after)),
        }
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def _advance(self, operation: _Operation) -> None:
        if operation.status != "InProgress" or operation.held:
            return
        if operation.polls_left > 0:
            operation.polls_left -= 1
            return
        if operation.failure is not None:
            operation.status = "Failed"
            operation.undo()
        else:
            operation.status = "Succeeded"
            operation.apply()

    def _get_operation(self, *, subscription, style, operation, body) -> web.Response:
        found = self._operations.get(operation)
        if found is None:
            raise _not_found(f"Operation {operation}")
        self._advance(found)
        retry = {"Retry-After": str(int(self.retry_after))}
        if style == "operationsStatus":
            answer = {"id": f"/subscriptions/{subscription}/providers/Microsoft.DocumentDB/locations/"
                            f"operationsStatus/{found.id}",
                      "name": found.id, "status": found.status, "startTime": found.start_time}
            if found.status == "Failed":
                answer["error"] = {"code": found.failure.code, "message": found.failure.message}
            return web.json_response(answer, headers=retry if found.status == "InProgress" else {})
        if found.status == "InProgress":
            return web.Response(status=202, headers={**retry, "Location": f"{self.url}{_request_path(style, found)}"})
        if found.status == "Failed":
            raise ArmFailure(400 if found.failure.code == "BadRequest" else 500, found.failure.code,
                             found.failure.message)
        result = found.result()
        return web.json_response(result) if result is not None else web.Response(status=204)

    # -- the authority ---------------------------------------------------------------------------

    async def _authority(self, request: web.Request) -> web.Response:
        if request.path.startswith("/common/discovery/"):
            return web.json_response({
                "tenant_discovery_endpoint": f"{self.url}/common/v2.0/.well-known/openid-configuration",
                "api-version": "1.1", "metadata": [{"preferred_network": "127.0.0.1", "aliases": ["127.0.0.1"]}]})
        tenant = request.path.strip("/").split("/")[0]
        if request.method == "GET":
            return web.json_response({
                "issuer": f"{self.url}/{tenant}/v2.0",
                "authorization_endpoint": f"{self.url}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{self.url}/{tenant}/oauth2/v2.0/token",
                "jwks_uri": f"{self.url}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": "EU",
            })
        form = {key: values[0] for key, values in parse_qs(await request.text()).items()}
        self._inject_token_failure()
        principal = self._principals.get(form.get("client_id", ""))
        if principal is None or principal.tenant != tenant:
            return _oauth_error(400, "unauthorized_client",
                                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not "
                                f"found in the directory '{tenant}'.")
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.")
        if principal.secret is not None:
            if not secrets.compare_digest(form.get("client_secret", ""), principal.secret):
                return _oauth_error(401, "invalid_client",
                                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent "
                                    "in the request is the client secret value, not the client secret ID.")
        elif form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE or \
                not secrets.compare_digest(form.get("client_assertion", ""), principal.assertion or ""):
            return _oauth_error(401, "invalid_client",
                                "AADSTS700213: No matching federated identity record found for presented assertion.")
        scope = form.get("scope", "")
        if scope not in (self.scope, f"{self.url}/.default",
                         *(f"{audience}/.default" for audience in self.data_plane_audiences)):
            return _oauth_error(400, "invalid_scope",
                                f"AADSTS500011: The resource principal named {scope.removesuffix('/.default')} "
                                f"was not found in the tenant.")
        access_token = _jwt({"aud": scope.removesuffix("/.default"), "appid": principal.client_id,
                             "oid": principal.object_id, "tid": principal.tenant,
                             "exp": int(time.time()) + TOKEN_LIFETIME, "jti": secrets.token_urlsafe(16)})
        self._tokens[access_token] = _Token(principal.client_id, scope, time.time() + TOKEN_LIFETIME,
                                            principal.object_id)
        self.issued_tokens.append(access_token)
        return web.json_response({"token_type": "Bearer", "expires_in": TOKEN_LIFETIME,
                                  "ext_expires_in": TOKEN_LIFETIME, "access_token": access_token})

    def _inject_token_failure(self) -> None:
        queue = self._failures.get("token")
        if queue:
            failure = queue.pop(0)
            raise ArmFailure(failure.status or 500, failure.code, failure.message, failure.retry_after)


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT-shaped access token: header.claims.random (the stand-in knows its tokens)."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'typ': 'JWT', 'alg': 'none'})}.{part(claims)}.{secrets.token_urlsafe(32)}"


def _token_audience(access_token: str) -> str | None:
    """The ``aud`` of a token as the stand-in issues them; None for anything else."""
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    return claims.get("aud") if isinstance(claims, dict) else None


def _account_key(subscription: str, group: str, name: str) -> tuple[str, str, str]:
    return subscription.lower(), group.lower(), name


def _account_id(account: Account) -> str:
    return (f"/subscriptions/{account.subscription}/resourceGroups/{account.resource_group}"
            f"/providers/Microsoft.DocumentDB/databaseAccounts/{account.name}")


def _request_path(style: str, operation: _Operation) -> str:
    subscription = operation.resource.split("/")[2]
    return (f"/subscriptions/{subscription}/providers/Microsoft.DocumentDB/locations/any/{style}/{operation.id}"
            f"?api-version=2026-03-15")


def _database_body(account: Account, database: str) -> dict[str, Any]:
    return {"id": f"{_account_id(account)}/sqlDatabases/{database}", "name": database,
            "type": "Microsoft.DocumentDB/databaseAccounts/sqlDatabases",
            "properties": {"resource": {"id": database, "_rid": _rid(database), "_ts": int(time.time()),
                                        "_etag": f'"{uuid.uuid4()}"'}}}


def _container_body(account: Account, database: str, container: Container) -> dict[str, Any]:
    return {"id": f"{_account_id(account)}/sqlDatabases/{database}/containers/{container.name}",
            "name": container.name, "type": "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers",
            "properties": {"resource": {"id": container.name, "partitionKey": dict(container.partition_key),
                                        "indexingPolicy": container.indexing_policy, "_rid": _rid(container.name),
                                        "_ts": int(time.time()), "_etag": f'"{uuid.uuid4()}"'}}}


def _throughput_body(account: Account, database: str, container: Container) -> dict[str, Any]:
    return {"id": f"{_account_id(account)}/sqlDatabases/{database}/containers/{container.name}"
                  f"/throughputSettings/default",
            "name": "default", "type": "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/throughputSettings",
            "properties": {"resource": container.throughput.body()}}


def _role_assignment_body(account: Account, assignment: str, properties: dict[str, str]) -> dict[str, Any]:
    return {"id": f"{_account_id(account)}/sqlRoleAssignments/{assignment}", "name": assignment,
            "type": "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments", "properties": dict(properties)}


def _validated_role_assignment(account: Account, assignment: str, properties: dict[str, Any]) -> dict[str, str]:
    """A role assignment's properties as Cosmos DB accepts them (see the module docstring)."""
    if not _GUID.match(assignment):
        raise _bad_request(f"The role assignment id '{assignment}' must be a GUID.")
    role, scope, principal = (properties.get("roleDefinitionId"), properties.get("scope"),
                              properties.get("principalId"))
    if not all(isinstance(value, str) and value for value in (role, scope, principal)):
        raise _bad_request("A role assignment needs roleDefinitionId, scope and principalId.")
    account_id = _account_id(account).lower()
    definitions = f"{account_id}/sqlroledefinitions/"
    if not role.lower().startswith(definitions) or role.lower().removeprefix(definitions) not in \
            BUILT_IN_ROLE_DEFINITIONS:
        raise _bad_request(f"The Role Definition with Id [{role}] was not found in database account "
                           f"{account.name}.")
    if not re.fullmatch(re.escape(account_id) + r"(/dbs/[^/]+(/colls/[^/]+)?)?/?", scope.lower()):
        raise _bad_request(f"The provided scope [{scope}] is not valid: it must be the database account, or a "
                           f"database (/dbs/{{db}}) or container (/dbs/{{db}}/colls/{{coll}}) under it.")
    if not _GUID.match(principal):
        raise _bad_request(f"The principal id [{principal}] must be a GUID (an Entra ID object id).")
    wanted = {"roleDefinitionId": role, "scope": scope, "principalId": principal}
    for other, existing in account.role_assignments.items():
        if other != assignment and {key: value.lower() for key, value in existing.items()} == \
                {key: value.lower() for key, value in wanted.items()}:
            raise ArmFailure(409, "Conflict", f"A Role Assignment with the same Principal Id, Role Definition Id and "
                                              f"Scope already exists: {other}.")
    return wanted


def _validated_locations(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad_request("A database account needs at least one location.")
    locations = []
    for item in value:
        if not isinstance(item, dict) or not item.get("locationName"):
            raise _bad_request("Every location needs a locationName.")
        locations.append({"locationName": item["locationName"], "failoverPriority": item.get("failoverPriority", 0),
                          "isZoneRedundant": bool(item.get("isZoneRedundant", False))})
    if len({region_key(item["locationName"]) for item in locations}) != len(locations):
        raise _bad_request("A location is listed twice.")
    if sorted(item["failoverPriority"] for item in locations) != list(range(len(locations))):
        raise _bad_request("Failover priorities must be unique and range from 0 to the number of locations - 1.")
    return locations


def _validated_consistency(value: Any, *, multi_region: bool) -> dict[str, Any]:
    value = dict(value or {"defaultConsistencyLevel": "Session"})
    level = value.get("defaultConsistencyLevel")
    if level not in CONSISTENCY_LEVELS:
        raise _bad_request(f"Invalid consistency level '{level}'.")
    if level != "BoundedStaleness":
        return {"defaultConsistencyLevel": level, "maxStalenessPrefix": 100, "maxIntervalInSeconds": 5}
    prefix, interval = value.get("maxStalenessPrefix", 100), value.get("maxIntervalInSeconds", 5)
    minimum_prefix, minimum_interval = (100_000, 300) if multi_region else (10, 5)
    if not isinstance(prefix, int) or not minimum_prefix <= prefix <= 2_147_483_647:
        raise _bad_request(f"maxStalenessPrefix must be between {minimum_prefix} and 2147483647 for "
                           f"{'multi' if multi_region else 'single'}-region accounts with BoundedStaleness.")
    if not isinstance(interval, int) or not minimum_interval <= interval <= 86_400:
        raise _bad_request(f"maxIntervalInSeconds must be between {minimum_interval} and 86400 for "
                           f"{'multi' if multi_region else 'single'}-region accounts with BoundedStaleness.")
    return {"defaultConsistencyLevel": level, "maxStalenessPrefix": prefix, "maxIntervalInSeconds": interval}


def _validated_hardening(properties: dict[str, Any], *, current_backup: dict[str, Any] | None) -> dict[str, Any]:
    """The hardening properties a PUT or PATCH sets, as Account fields; ARM's refusals as ArmFailure."""
    found: dict[str, Any] = {}
    if "publicNetworkAccess" in properties:
        if properties["publicNetworkAccess"] not in PUBLIC_NETWORK_ACCESS:
            raise _bad_request(f"Invalid publicNetworkAccess '{properties['publicNetworkAccess']}'.")
        found["public_network_access"] = properties["publicNetworkAccess"]
    if "minimalTlsVersion" in properties:
        if properties["minimalTlsVersion"] not in MINIMAL_TLS_VERSIONS:
            raise _bad_request(f"Invalid minimalTlsVersion '{properties['minimalTlsVersion']}'.")
        found["minimal_tls_version"] = properties["minimalTlsVersion"]
    if "ipRules" in properties:
        rules = [item.get("ipAddressOrRange") for item in properties["ipRules"] or []]
        for rule in rules:
            try:
                ipaddress.IPv4Network(rule or "", strict=True)
            except ValueError:
                raise _bad_request(f"Invalid IP address or range '{rule}' in ipRules.") from None
        found["ip_rules"] = rules
    if "virtualNetworkRules" in properties:
        rules = [{"id": item.get("id"), "ignoreMissingVNetServiceEndpoint":
                  bool(item.get("ignoreMissingVNetServiceEndpoint", False))}
                 for item in properties["virtualNetworkRules"] or []]
        if any(not rule["id"] or "/subnets/" not in rule["id"] for rule in rules):
            raise _bad_request("Every virtual network rule needs the resource id of a subnet.")
        found["virtual_network_rules"] = rules
    if "isVirtualNetworkFilterEnabled" in properties:
        found["virtual_network_filter"] = bool(properties["isVirtualNetworkFilterEnabled"])
    if "disableKeyBasedMetadataWriteAccess" in properties:
        found["disable_key_based_metadata_write_access"] = bool(properties["disableKeyBasedMetadataWriteAccess"])
    if "disableLocalAuth" in properties:
        if not isinstance(properties["disableLocalAuth"], bool):
            raise _bad_request(f"Invalid disableLocalAuth '{properties['disableLocalAuth']}': true or false.")
        found["disable_local_auth"] = properties["disableLocalAuth"]
    if "backupPolicy" in properties:
        found["backup_policy"] = _validated_backup(properties["backupPolicy"] or {}, current_backup)
    return found


def _validated_backup(policy: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    if current is not None and current["type"] == "Continuous" and policy.get("type") == "Periodic":
        raise _bad_request("Cannot update the backup policy of a database account from Continuous to Periodic.")
    if policy.get("type") == "Continuous":
        tier = (policy.get("continuousModeProperties") or {}).get("tier", "Continuous30Days")
        if tier not in CONTINUOUS_TIERS:
            raise _bad_request(f"Invalid continuous backup tier '{tier}'.")
        return {"type": "Continuous", "continuousModeProperties": {"tier": tier}}
    if policy.get("type") != "Periodic":
        raise _bad_request(f"Invalid backup policy type '{policy.get('type')}'.")
    periodic = {**DEFAULT_BACKUP_POLICY["periodicModeProperties"], **(policy.get("periodicModeProperties") or {})}
    interval, retention = periodic["backupIntervalInMinutes"], periodic["backupRetentionIntervalInHours"]
    if not 60 <= interval <= 1440 or not 8 <= retention <= 720 or retention * 60 < 2 * interval:
        raise _bad_request("The backup interval must be 60-1440 minutes and the retention 8-720 hours, at least "
                           "twice the interval.")
    if periodic["backupStorageRedundancy"] not in BACKUP_STORAGE_REDUNDANCIES:
        raise _bad_request(f"Invalid backupStorageRedundancy '{periodic['backupStorageRedundancy']}'.")
    return {"type": "Periodic", "periodicModeProperties": periodic}


def _validated_options(options: dict[str, Any]) -> ThroughputState:
    autoscale = options.get("autoscaleSettings")
    if autoscale is not None and options.get("throughput") is not None:
        raise _bad_request("Specify either throughput or autoscaleSettings, not both.")
    if autoscale is not None:
        return _validated_throughput("Autoscale", autoscale.get("maxThroughput"))
    return _validated_throughput("Manual", options.get("throughput", 400))


def _validated_throughput(mode: str, value: Any) -> ThroughputState:
    minimum, step = (1000, 1000) if mode == "Autoscale" else (400, 100)
    if not isinstance(value, int) or value < minimum or value % step:
        what = "The autoscale max throughput" if mode == "Autoscale" else "The offer throughput"
        raise _bad_request(f"{what} must be at least {minimum} RU/s and a multiple of {step}, not {value}.")
    return ThroughputState(mode, value)


def _resource(body: dict[str, Any]) -> dict[str, Any]:
    resource = (body.get("properties") or {}).get("resource")
    if not isinstance(resource, dict):
        raise _bad_request("The request body must contain properties.resource.")
    return resource


def _not_found(what: str) -> ArmFailure:
    return ArmFailure(404, "NotFound", f"{what} was not found. ActivityId: {uuid.uuid4()}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = json.loads(await request.text() or "{}")
    except json.JSONDecodeError as error:
        raise ArmFailure(400, "InvalidRequestContent", f"The request content was invalid and could not be "
                                                       f"deserialized: {error.msg}.") from None
    if not isinstance(body, dict):
        raise ArmFailure(400, "InvalidRequestContent", "The request content must be a JSON object.")
    return body


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description, "error_codes": [
        int(description.split(":")[0].removeprefix("AADSTS"))]}, status=status)


def _new_keys() -> dict[str, str]:
    def key() -> str:
        return base64.b64encode(secrets.token_bytes(64)).decode()
    return {"primaryMasterKey": key(), "secondaryMasterKey": key(),
            "primaryReadonlyMasterKey": key(), "secondaryReadonlyMasterKey": key()}


def _rid(name: str) -> str:
    return base64.b64encode(name.encode()[:6].ljust(6, b"=")).decode()


def _seconds(value: float) -> str:
    return f"{value:g}"


async def settle(step: Callable, spec: Any, resume: str | None = None, *, limit: int = 20):
    """Call an operator step (e.g. ``resources.ensure_account``) with its own continuation tokens until
    it stops answering Pending (as the handlers do, without the waiting); returns (result, calls)."""
    for calls in range(1, limit + 1):
        result = await step(spec, resume)
        token = getattr(result, "token", None)
        if token is None:
            return result, calls
        resume = token
    raise AssertionError(f"{step.__name__} still pending after {limit} calls: {result}")
