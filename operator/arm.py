"""The Cosmos DB resources of one CosmosEtcdCluster, driven through Azure Resource Manager.

Each step reads what exists, compares it with the spec and, only if something differs, starts one
ARM operation through ``azure.mgmt.cosmosdb.aio.CosmosDBManagementClient`` (api 2026-03-15). A
step never waits for a long-running operation: it returns :class:`Pending` with a continuation
token as soon as ARM has accepted the request; the handler stores the token in the CR's status and
calls the step again with it after ``retry_after`` seconds. The call then makes one poll; when the
operation has finished, the step reads the resource again and goes on (or is ready).

ARM operations by step::

    ensure_account    GET  databaseAccounts/{a}                      absent -> PUT (create)
                      PUT  databaseAccounts/{a}                      200 + Azure-AsyncOperation
                      PATCH databaseAccounts/{a}                     a mutable property differs; regions
                                                                     alone (Cosmos refuses both at once), first
                                                                     unless the consistency must become Strong;
                                                                     hardening (network, TLS, backup) with the
                                                                     other properties
    ensure_database   GET, PUT .../sqlDatabases/{db}                 202 + Azure-AsyncOperation
    ensure_container  GET, PUT .../sqlDatabases/{db}/containers/{c}  created with the shim's partition key,
                                                                     indexing policy and the spec's throughput;
                                                                     PUT again if the indexing policy drifted
    ensure_throughput GET  .../containers/{c}/throughputSettings/default
                      POST .../throughputSettings/default/migrateToAutoscale | migrateToManualThroughput
                      PUT  .../throughputSettings/default             the value (after a migration)
    list_keys         POST databaseAccounts/{a}/listKeys             not long-running (Key mode only)
    (role_assignment.py) GET, PUT, DELETE .../sqlRoleAssignments/{id}  through :meth:`CosmosResources.step`
    delete_account    GET, DELETE databaseAccounts/{a}               absent = deleted
    (every resume)    GET  the operation's Azure-AsyncOperation URL (or Location URL), once

Why the tokens are safe to keep in a CR's status: they are ours, not azure-core's. azure-core's
continuation token carries the initial response's whole body and headers (and, in versions before
1.38, the pickled request with its ``Authorization`` header); ours is a small JSON object holding
only the step, a description, whether the operation creates the resource, and the operation's
polling URL exactly as ARM returned it (subscription, resource group, region, operation id,
api-version). No credential, token or key ever enters it. A token is accepted only if its URL is
on the configured Resource Manager endpoint, so that a tampered status cannot make the operator
send its bearer token elsewhere; an unusable token is ignored, which costs only a re-read, since
every step is idempotent.

Account hardening: what the spec sets is sent on create and set back on an existing account (see
:mod:`cosmos_etcd_operator.spec` for what an unset field means). Azure cannot turn continuous backup
back into periodic: an account that has (or is migrating to) continuous backup under a spec asking for
periodic raises :class:`InvalidSpec`, which the handlers report as a condition without retrying.
:attr:`AccountReady.settings` is what is in force, for the status. ``disableLocalAuth`` follows
``spec.azure.dataPlaneAuth``: true with EntraID (no key opens the data plane), false with Key (the shim
needs the keys), so it is always enforced — except while a switch to EntraID rolls out
(``keys_in_use``): pods that sign in with a key still run, and the account keeps accepting keys until
they are gone.

Errors become :class:`AzureError` with ARM's error code; every call is counted in
``cosmos_etcd_operator_arm_requests_total{operation,code}`` (``get_account``, ``create_account``,
``poll_operation`` ...; code ``OK`` or the error code, a resource found absent included). The
client's retry policy is bounded for a controller: a few quick retries of transient failures, and a
``Retry-After`` longer than a few seconds is handed back to the caller (``AzureError.retry_after``)
instead of being slept in-process.
HTTP logging stays azure-core's header logging, which redacts ``Authorization`` and never logs
bodies (so not ``listKeys`` answers); network tracing (``logging_enable``) is forced off.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from azure.core import exceptions as azure_exceptions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.core.rest import HttpRequest
from azure.mgmt.cosmosdb import models
from azure.mgmt.cosmosdb.aio import CosmosDBManagementClient

from cosmos_etcd_operator.cloud import AzureCloud
from cosmos_etcd_operator.metrics import ARM_REQUESTS
from cosmos_etcd_operator.spec import (Backup, BackupType, ClusterSpec, ConsistencyLevel, ContinuousTier,
                                       DataPlaneAuth, InvalidSpec, ThroughputMode)
from cosmos_etcd_shim.storage.cosmos.layout import INDEXING_POLICY, PARTITION_KEY

logger = logging.getLogger(__name__)

# When ARM gives no Retry-After: how long a Pending step asks to wait.
DEFAULT_POLLING_INTERVAL = 10.0
# Retry-After values up to this are slept inside the client; longer ones end the call.
MAX_INLINE_RETRY_AFTER = 5.0
CLIENT_OPTIONS = {"connection_timeout": 10, "read_timeout": 30, "logging_enable": False}
RETRY_OPTIONS = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 4, "timeout": 60}

_TOKEN_VERSION = 1
ACCOUNT, DATABASE, CONTAINER, THROUGHPUT, DELETE = "account", "database", "container", "throughput", "delete"
_ABSENT_CODES = frozenset({"ResourceNotFound", "NotFound"})
# 408 timeout, 409 conflict, 412 another operation holds the resource's lock, 429 throttled.
_RETRYABLE_CLIENT_STATUSES = frozenset({408, 409, 412, 429})
# Operations that failed because of what was asked: asking again will fail again.
_INVALID_REQUEST_CODES = frozenset({"BadRequest", "InvalidRequestContent", "InvalidParameter", "ValidationError",
                                    "LinkedInvalidPropertyId", "InvalidResourceLocation"})
_RUNNING_STATES = frozenset({"Creating", "Updating", "Deleting", "Initializing", "Provisioning"})
_TERMINAL_STATUSES = frozenset({"Succeeded", "Failed", "Canceled"})


class AzureError(Exception):
    """An Azure call failed. ``code`` is Azure's error code (``BadRequest``, ``Conflict``,
    ``AuthorizationFailed``, ``ResourceGroupNotFound``...); ``status`` the HTTP status, None when a
    long-running operation itself failed; ``retryable`` False when the request was invalid and
    repeating it cannot help; ``retry_after`` what Azure asked to wait, if it said."""

    def __init__(self, code: str, message: str, status: int | None, retryable: bool,
                 retry_after: float | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status
        self.retryable, self.retry_after = retryable, retry_after


@dataclasses.dataclass(frozen=True)
class Pending:
    """A long-running operation was started or is still running: call the step again with ``token``
    after ``retry_after`` seconds."""

    operation: str  # what is being done, for conditions: "create account tenant-a-etcd"
    token: str
    retry_after: float


@dataclasses.dataclass(frozen=True)
class AccountReady:
    document_endpoint: str
    # False when the operation this call resumed created the account; True when the account was
    # already there. Handlers keep the value of the first Ready (later checks see an existing account).
    adopted: bool
    provisioning_state: str
    # The hardening in force, as status reports it: minimalTlsVersion, disableKeyBasedMetadataWriteAccess,
    # network {publicNetworkAccess, ipRules, virtualNetworkRules}, backup {type, ...}.
    settings: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(frozen=True)
class Ready:
    name: str


@dataclasses.dataclass(frozen=True)
class ThroughputReady:
    mode: ThroughputMode
    request_units: int  # RU/s, or the autoscale maximum RU/s


@dataclasses.dataclass(frozen=True)
class Deleted:
    pass


@dataclasses.dataclass(frozen=True, repr=False)
class AccountKeys:
    primary_master_key: str
    secondary_master_key: str

    def __repr__(self) -> str:
        return "AccountKeys(primary_master_key=<hidden>, secondary_master_key=<hidden>)"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class Change:
    """What a step wants ARM to do: ``begin`` starts it (a ``begin_*`` call of the SDK); ``operation``
    names it in the metrics."""

    operation: str
    description: str
    begin: Callable[..., Awaitable[Any]]
    creates: bool = False


@dataclasses.dataclass(frozen=True)
class Wait:
    """The resource is busy with an operation we hold no token for (someone else's, or a lost one)."""

    description: str


@dataclasses.dataclass(frozen=True)
class _Token:
    step: str
    operation: str
    url: str | None  # None: nothing to poll, read the resource again
    location_style: bool = False  # polled through Location (202 = running) rather than Azure-AsyncOperation
    created: bool = False

    def encode(self) -> str:
        fields = {"v": _TOKEN_VERSION, "step": self.step, "op": self.operation, "url": self.url}
        if self.location_style:
            fields["location"] = True
        if self.created:
            fields["created"] = True
        return json.dumps(fields, separators=(",", ":"))


class _ControllerRetryPolicy(AsyncRetryPolicy):
    """azure-core's retries, except that a long Retry-After is returned to the caller, not slept."""

    def is_retry(self, settings, response) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after is not None and retry_after > MAX_INLINE_RETRY_AFTER:
            return False
        return super().is_retry(settings, response)


class CosmosResources:
    """The step methods for clusters in one subscription; ``async with`` closes the client (not the
    credential, which the caller owns).

    Every step may raise :class:`AzureError` (then the token it was given is spent: start the step
    again without it) or :class:`InvalidSpec` (an existing resource cannot be used as the spec says).
    """

    def __init__(self, credential: AsyncTokenCredential, cloud: AzureCloud, subscription_id: str, *,
                 polling_interval: float | None = None, connection_verify: bool | str | None = None):
        self.subscription_id = subscription_id
        self._retry_policy = _ControllerRetryPolicy(**RETRY_OPTIONS)
        self._client = CosmosDBManagementClient(
            credential, subscription_id, base_url=cloud.resource_manager,
            credential_scopes=[cloud.credential_scope],
            connection_verify=cloud.connection_verify if connection_verify is None else connection_verify,
            retry_policy=self._retry_policy, **CLIENT_OPTIONS)
        self._origin = _origin(cloud.resource_manager)
        self._polling_interval = DEFAULT_POLLING_INTERVAL if polling_interval is None else polling_interval

    async def __aenter__(self) -> "CosmosResources":
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._client.close()

    async def close(self) -> None:
        await self._client.close()

    # -- steps -----------------------------------------------------------------------------------

    async def ensure_account(self, spec: ClusterSpec, resume: str | None = None, *,
                             keys_in_use: bool = False) -> AccountReady | Pending:
        """The account exists with the spec's mutable properties; an existing one is adopted.
        ``keys_in_use``: shim pods that sign in with the keys may still run (a switch to EntraID rolling
        out), so local auth is left as the account has it for now."""
        return await self.step(ACCOUNT, spec, resume, functools.partial(self._reconcile_account,
                                                                        keys_in_use=keys_in_use))

    async def ensure_database(self, spec: ClusterSpec, resume: str | None = None) -> Ready | Pending:
        return await self.step(DATABASE, spec, resume, self._reconcile_database)

    async def ensure_container(self, spec: ClusterSpec, resume: str | None = None) -> Ready | Pending:
        """The container exists with the shim's partition key and indexing policy."""
        return await self.step(CONTAINER, spec, resume, self._reconcile_container)

    async def ensure_throughput(self, spec: ClusterSpec, resume: str | None = None) -> ThroughputReady | Pending:
        """The container's dedicated throughput has the spec's mode and value; returns what is in force."""
        return await self.step(THROUGHPUT, spec, resume, self._reconcile_throughput)

    async def delete_account(self, spec: ClusterSpec, resume: str | None = None) -> Deleted | Pending:
        return await self.step(DELETE, spec, resume, self._reconcile_deletion)

    async def list_keys(self, spec: ClusterSpec) -> AccountKeys:
        self._check_subscription(spec)
        async with _azure_errors("list_keys"):
            keys = await self._client.database_accounts.list_keys(spec.resource_group, spec.account_name)
        return AccountKeys(keys.primary_master_key, keys.secondary_master_key)

    # -- what each step compares -----------------------------------------------------------------

    async def _reconcile_account(self, spec: ClusterSpec, created: bool, *, keys_in_use: bool):
        account = await self.read("get_account", self._client.database_accounts.get, spec.resource_group,
                                  spec.account_name)
        if account is None:
            return Change("create_account", f"create account {spec.account_name}", lambda **options: (
                self._client.database_accounts.begin_create_or_update(
                    spec.resource_group, spec.account_name, _account_parameters(spec, keys_in_use), **options)),
                creates=True)
        properties = account.properties
        if properties.provisioning_state in _RUNNING_STATES:
            return Wait(f"account {spec.account_name} is {properties.provisioning_state.lower()}")
        _check_adoptable(spec, account)
        update = _account_update(spec, account, keys_in_use)
        if update is not None:
            changed, parameters = update
            return Change("update_account", f"update account {spec.account_name} ({changed})", lambda **options: (
                self._client.database_accounts.begin_update(
                    spec.resource_group, spec.account_name, parameters, **options)))
        return AccountReady(document_endpoint=properties.document_endpoint, adopted=not created,
                            provisioning_state=properties.provisioning_state, settings=_account_settings(account))

    async def _reconcile_database(self, spec: ClusterSpec, created: bool):
        database = await self.read("get_database", self._client.sql_resources.get_sql_database,
                                    spec.resource_group, spec.account_name, spec.database)
        if database is not None:
            return Ready(spec.database)
        parameters = models.SqlDatabaseCreateUpdateParameters(properties=models.SqlDatabaseCreateUpdateProperties(
            resource=models.SqlDatabaseResource(id=spec.database), options=models.CreateUpdateOptions()))
        return Change("create_database", f"create database {spec.database}", lambda **options: (
            self._client.sql_resources.begin_create_update_sql_database(
                spec.resource_group, spec.account_name, spec.database, parameters, **options)), creates=True)

    async def _reconcile_container(self, spec: ClusterSpec, created: bool):
        container = await self.read("get_container", self._client.sql_resources.get_sql_container,
                                    spec.resource_group, spec.account_name, spec.database, spec.container)
        if container is None:
            return self._container_change(spec, f"create container {spec.container}", _throughput_options(spec))
        resource = container.properties.resource
        paths = list((resource.partition_key or {}).get("paths") or [])
        if paths != PARTITION_KEY["paths"]:
            raise InvalidSpec(f"spec.cosmos.container: container {spec.container!r} exists with partition key "
                              f"{paths}, but cosmos-etcd needs {PARTITION_KEY['paths']}; name another container")
        if not _same_indexing_policy(resource.indexing_policy):
            return self._container_change(spec, f"restore the indexing policy of container {spec.container}", None)
        return Ready(spec.container)

    def _container_change(self, spec: ClusterSpec, description: str,
                          options: models.CreateUpdateOptions | None) -> Change:
        parameters = models.SqlContainerCreateUpdateParameters(properties=models.SqlContainerCreateUpdateProperties(
            resource=models.SqlContainerResource(
                id=spec.container, partition_key=models.ContainerPartitionKey(copy.deepcopy(PARTITION_KEY)),
                indexing_policy=models.IndexingPolicy(copy.deepcopy(INDEXING_POLICY))),
            options=options or models.CreateUpdateOptions()))
        return Change("create_or_update_container", description, lambda **kwargs: (
            self._client.sql_resources.begin_create_update_sql_container(
                spec.resource_group, spec.account_name, spec.database, spec.container, parameters, **kwargs)),
            creates=options is not None)

    async def _reconcile_throughput(self, spec: ClusterSpec, created: bool):
        names = (spec.resource_group, spec.account_name, spec.database, spec.container)
        settings = await self.read("get_throughput", self._client.sql_resources.get_sql_container_throughput,
                                   *names)
        if settings is None:
            raise AzureError("NotFound", f"container {spec.container} has no dedicated throughput (a serverless "
                                         f"account, or throughput shared by the database)", 404, retryable=False)
        resource = settings.properties.resource
        if str(resource.offer_replace_pending).lower() == "true":
            return Wait(f"a throughput change of container {spec.container} is being applied")
        in_force = _throughput_in_force(resource)
        wanted = spec.throughput
        operations = self._client.sql_resources
        if in_force.mode is not wanted.mode:
            migrate = (operations.begin_migrate_sql_container_to_autoscale if wanted.mode is ThroughputMode.AUTOSCALE
                       else operations.begin_migrate_sql_container_to_manual_throughput)
            return Change("migrate_throughput",
                           f"migrate the throughput of container {spec.container} to {wanted.mode.value}",
                           lambda **options: migrate(*names, **options))
        if in_force.request_units != wanted.request_units:
            if wanted.mode is ThroughputMode.AUTOSCALE:
                resource = models.ThroughputSettingsResource(
                    autoscale_settings=models.AutoscaleSettingsResource(max_throughput=wanted.request_units))
            else:
                resource = models.ThroughputSettingsResource(throughput=wanted.request_units)
            parameters = models.ThroughputSettingsUpdateParameters(
                properties=models.ThroughputSettingsUpdateProperties(resource=resource))
            return Change("update_throughput", f"set the {wanted.mode.value.lower()} throughput of container "
                           f"{spec.container} to {wanted.request_units} RU/s", lambda **options: (
                               operations.begin_update_sql_container_throughput(*names, parameters, **options)))
        return in_force

    async def _reconcile_deletion(self, spec: ClusterSpec, created: bool):
        account = await self.read("get_account", self._client.database_accounts.get, spec.resource_group,
                                  spec.account_name)
        if account is None:
            return Deleted()
        if account.properties.provisioning_state in _RUNNING_STATES:
            return Wait(f"account {spec.account_name} is {account.properties.provisioning_state.lower()}")
        return Change("delete_account", f"delete account {spec.account_name}", lambda **options: (
            self._client.database_accounts.begin_delete(spec.resource_group, spec.account_name, **options)))

    # -- the long-running protocol ---------------------------------------------------------------

    @property
    def client(self) -> CosmosDBManagementClient:
        """The management client, for the compare functions of steps kept in other modules
        (:mod:`cosmos_etcd_operator.role_assignment`)."""
        return self._client

    async def step(self, step: str, spec: ClusterSpec, resume: str | None, reconcile):
        """Run one step: resume its operation from ``resume``, then ``await reconcile(spec, created)``,
        which reads, compares and returns the result, a :class:`Change` to start or a :class:`Wait`."""
        self._check_subscription(spec)
        created = False
        token = self._decode(resume, step) if resume else None
        if token is not None:
            created = token.created
            if token.url is not None:
                retry_after = await self._poll(token)
                if retry_after is not None:
                    return Pending(token.operation, token.encode(), retry_after)
        # An operation that completes at once is followed by one more read; a second one waits.
        for _ in range(2):
            outcome = await reconcile(spec, created)
            if isinstance(outcome, Wait):
                logger.info("%s: waiting", outcome.description)
                wait = _Token(step, outcome.description, None, created=created)
                return Pending(outcome.description, wait.encode(), self._polling_interval)
            if not isinstance(outcome, Change):
                return outcome
            created = created or outcome.creates
            token, retry_after = await self._begin(step, outcome, created)
            if token.url is not None:
                return Pending(token.operation, token.encode(), retry_after)
        return Pending(token.operation, token.encode(), self._polling_interval)

    async def _begin(self, step: str, change: Change, created: bool) -> tuple[_Token, float]:
        """Start the operation and keep where ARM says to poll it; the SDK's poller is not run."""
        responses: list[PipelineResponse] = []
        logger.info("%s: starting", change.description)
        async with _azure_errors(change.operation):
            await change.begin(raw_response_hook=responses.append)
        headers = responses[-1].http_response.headers
        retry_after = self._retry_after(headers)
        if headers.get("Azure-AsyncOperation"):
            return self._checked(_Token(step, change.description, headers["Azure-AsyncOperation"],
                                        created=created)), retry_after
        if headers.get("Location") and responses[-1].http_response.status_code == 202:
            return self._checked(_Token(step, change.description, headers["Location"], location_style=True,
                                        created=created)), retry_after
        return _Token(step, change.description, None, created=created), retry_after

    async def _poll(self, token: _Token) -> float | None:
        """One poll: None when the operation has finished well, else the Retry-After to wait.
        A failed operation raises AzureError with the operation's error code, and is counted under it."""
        async with _azure_errors("poll_operation"):
            response = await self._client.send_request(HttpRequest("GET", token.url))
            await response.read()
            return self._operation_state(token, response)

    def _operation_state(self, token: _Token, response) -> float | None:
        if response.status_code == 404:  # ARM forgets finished operations after a while
            logger.info("%s: operation no longer known, reading the resource", token.operation)
            return None
        if response.status_code >= 400:
            raise _error_from_response(response.status_code, response.headers, response.text())
        if token.location_style:
            return self._retry_after(response.headers) if response.status_code == 202 else None
        status = str(_json(response.text()).get("status", ""))
        if status not in _TERMINAL_STATUSES:
            logger.debug("%s: %s", token.operation, status or "running")
            return self._retry_after(response.headers)
        if status == "Succeeded":
            logger.info("%s: succeeded", token.operation)
            return None
        error = _json(response.text()).get("error") or {}
        code = str(error.get("code") or status)
        logger.warning("%s: %s (%s)", token.operation, status.lower(), code)
        raise AzureError(code, f"{token.operation} {status.lower()}: {error.get('message') or code}", None,
                         retryable=code not in _INVALID_REQUEST_CODES)

    def _decode(self, resume: str, step: str) -> _Token | None:
        try:
            fields = json.loads(resume)
            if fields.get("v") != _TOKEN_VERSION:
                raise ValueError(f"version {fields.get('v')!r}")
            token = _Token(step=fields["step"], operation=str(fields["op"]), url=fields.get("url"),
                           location_style=bool(fields.get("location")), created=bool(fields.get("created")))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            logger.warning("ignoring an unreadable continuation token (%s); reading the resource instead",
                           type(error).__name__)
            return None
        if token.step != step:
            logger.warning("ignoring a continuation token of step %r in step %r", token.step, step)
            return None
        try:
            return self._checked(token)
        except ValueError as error:
            logger.warning("ignoring a continuation token: %s", error)
            return None

    def _checked(self, token: _Token) -> _Token:
        """Bearer tokens go only to the Resource Manager endpoint we were configured with."""
        if token.url is not None and (not isinstance(token.url, str) or _origin(token.url) != self._origin):
            raise ValueError(f"its operation URL is not on {self._origin}")
        return token

    def _retry_after(self, headers) -> float:
        value = headers.get("Retry-After")
        if value:
            try:
                return max(0.0, float(self._retry_policy.parse_retry_after(value)))
            except (ValueError, TypeError):
                pass
        return self._polling_interval

    async def read(self, operation: str, read: Callable[..., Awaitable[Any]], *names: str):
        """The resource, or None if ARM says it does not exist (any other 404 is an error); the call is
        counted under ``operation``."""
        try:
            async with _azure_errors(operation):
                return await read(*names)
        except AzureError as error:
            if error.status == 404 and error.code in _ABSENT_CODES:
                return None
            raise

    def _check_subscription(self, spec: ClusterSpec) -> None:
        if spec.subscription_id.lower() != self.subscription_id.lower():
            raise ValueError(f"this client is for subscription {self.subscription_id}, "
                             f"not {spec.subscription_id}")


class _azure_errors:
    """One ARM call, counted under ``operation``: turns azure-core's exceptions into AzureError (an
    async context manager, so that it also wraps awaits)."""

    def __init__(self, operation: str):
        self.operation = operation

    async def __aenter__(self):
        return self

    async def __aexit__(self, kind, error, traceback):
        if error is None:
            ARM_REQUESTS.labels(self.operation, "OK").inc()
            return False
        if isinstance(error, AzureError):
            ARM_REQUESTS.labels(self.operation, error.code).inc()
            return False
        if not isinstance(error, azure_exceptions.AzureError):
            return False
        translated = _translate(error)
        ARM_REQUESTS.labels(self.operation, translated.code).inc()
        raise translated from None


def _translate(error: azure_exceptions.AzureError) -> AzureError:
    if isinstance(error, azure_exceptions.HttpResponseError) and error.response is not None:
        response = error.response
        try:
            body = response.text()
        except Exception:  # noqa: BLE001 - a streamed body that was not read: the status says enough
            body = ""
        if error.error is not None and error.error.code:
            return _error(error.error.code, error.error.message or error.error.code, response.status_code,
                          response.headers)
        return _error_from_response(response.status_code, response.headers, body)
    if isinstance(error, azure_exceptions.ClientAuthenticationError):
        # Raised by the credential before any request: no response to read (or an OAuth one above).
        return AzureError("AuthenticationFailed", _first_line(error.message), None, retryable=False)
    if isinstance(error, (azure_exceptions.ServiceRequestError, azure_exceptions.ServiceResponseError)):
        return AzureError("ServiceUnavailable", f"cannot reach Azure Resource Manager: {_first_line(error.message)}",
                          None, retryable=True)
    return AzureError(type(error).__name__, _first_line(error.message), None, retryable=True)


def _error_from_response(status: int, headers, body: str) -> AzureError:
    """ARM's ``{"error": {"code", "message"}}`` or, from the token endpoint, OAuth's
    ``{"error": "invalid_client", "error_description": ...}``."""
    parsed = _json(body)
    error = parsed.get("error")
    if isinstance(error, dict) and error.get("code"):
        return _error(str(error["code"]), str(error.get("message") or error["code"]), status, headers)
    if isinstance(error, str):
        return _error(error, _first_line(str(parsed.get("error_description") or error)), status, headers)
    return _error(f"HTTP{status}", f"Azure answered HTTP {status}", status, headers)


def _error(code: str, message: str, status: int, headers) -> AzureError:
    retry_after = headers.get("Retry-After") if headers is not None else None
    try:
        retry_after = float(retry_after) if retry_after else None
    except ValueError:
        retry_after = None
    retryable = status >= 500 or status in _RETRYABLE_CLIENT_STATUSES
    return AzureError(code, message, status, retryable=retryable, retry_after=retry_after)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _first_line(message: str | None) -> str:
    return (message or "").strip().splitlines()[0] if (message or "").strip() else "no details"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _region(name: str | None) -> str:
    """ARM answers ``West Europe`` where the spec says ``westeurope``."""
    return (name or "").replace(" ", "").lower()


# -- the account ---------------------------------------------------------------------------------

def _consistency_policy(spec: ClusterSpec) -> models.ConsistencyPolicy:
    consistency = spec.consistency
    if consistency.level is ConsistencyLevel.BOUNDED_STALENESS:
        return models.ConsistencyPolicy(default_consistency_level=consistency.level.value,
                                        max_staleness_prefix=consistency.max_staleness_prefix,
                                        max_interval_in_seconds=consistency.max_interval_seconds)
    return models.ConsistencyPolicy(default_consistency_level=consistency.level.value)


def _locations(spec: ClusterSpec) -> list[models.Location]:
    return [models.Location(location_name=location.name, failover_priority=location.failover_priority,
                            is_zone_redundant=location.zone_redundant) for location in spec.locations]


def _account_parameters(spec: ClusterSpec, keys_in_use: bool) -> models.DatabaseAccountCreateUpdateParameters:
    return models.DatabaseAccountCreateUpdateParameters(
        location=spec.location, kind=models.DatabaseAccountKind.GLOBAL_DOCUMENT_DB, tags=dict(spec.tags),
        properties=models.DatabaseAccountCreateUpdateProperties(
            database_account_offer_type="Standard", consistency_policy=_consistency_policy(spec),
            locations=_locations(spec), enable_automatic_failover=spec.automatic_failover,
            **_hardening(spec, keys_in_use)))


def _hardening(spec: ClusterSpec, keys_in_use: bool) -> dict[str, Any]:
    """The hardening properties the spec sets, as keyword arguments of the SDK's account properties."""
    properties: dict[str, Any] = {"minimal_tls_version": spec.minimal_tls_version.value}
    if spec.data_plane_auth is DataPlaneAuth.KEY:
        properties["disable_local_auth"] = False
    elif not keys_in_use:
        properties["disable_local_auth"] = True
    if spec.public_network_access is not None:
        properties["public_network_access"] = spec.public_network_access.value
    if spec.ip_rules is not None:
        properties["ip_rules"] = [models.IpAddressOrRange(ip_address_or_range=rule) for rule in spec.ip_rules]
    if spec.virtual_network_rules is not None:
        # Cosmos applies the rules only with the filter switched on; no rules, no filter.
        properties["is_virtual_network_filter_enabled"] = bool(spec.virtual_network_rules)
        properties["virtual_network_rules"] = [
            models.VirtualNetworkRule(id=rule.subnet_id,
                                      ignore_missing_v_net_service_endpoint=rule.ignore_missing_service_endpoint)
            for rule in spec.virtual_network_rules]
    if spec.disable_key_based_metadata_write_access is not None:
        properties["disable_key_based_metadata_write_access"] = spec.disable_key_based_metadata_write_access
    if spec.backup is not None:
        properties["backup_policy"] = _backup_policy(spec.backup)
    return properties


def _backup_policy(backup: Backup) -> models.BackupPolicy:
    if backup.type is BackupType.CONTINUOUS:
        return models.ContinuousModeBackupPolicy(
            continuous_mode_properties=models.ContinuousModeProperties(tier=backup.tier.value))
    return models.PeriodicModeBackupPolicy(periodic_mode_properties=models.PeriodicModeProperties(
        backup_interval_in_minutes=backup.interval_minutes,
        backup_retention_interval_in_hours=backup.retention_hours,
        backup_storage_redundancy=backup.storage_redundancy.value))


def _backup_type(properties: models.DatabaseAccountGetProperties) -> str:
    """The account's backup type, or the one it is being migrated to."""
    policy = properties.backup_policy
    if policy is None:
        return BackupType.PERIODIC.value  # Azure's default; accounts always report one
    migration = policy.migration_state
    if migration is not None and _text(migration.status) == "InProgress" and migration.target_type:
        return _text(migration.target_type)
    return _text(policy.type)


def _check_adoptable(spec: ClusterSpec, account: models.DatabaseAccountGetResults) -> None:
    """An existing account can be adopted only if it is a NoSQL account in the spec's write region, and
    only if it needs no change Azure refuses (continuous backup back to periodic)."""
    kind = account.kind or models.DatabaseAccountKind.GLOBAL_DOCUMENT_DB
    if kind != models.DatabaseAccountKind.GLOBAL_DOCUMENT_DB:
        raise InvalidSpec(f"spec.account.name: account {spec.account_name!r} exists with kind {kind}; "
                          f"cosmos-etcd needs a GlobalDocumentDB (NoSQL) account")
    write = [location for location in account.properties.write_locations or account.properties.locations or []
             if (location.failover_priority or 0) == 0]
    write_region = _region(write[0].location_name if write else account.location)
    if write_region != _region(spec.location):
        raise InvalidSpec(f"spec.azure.location: account {spec.account_name!r} exists with its write region in "
                          f"{write_region}, not {spec.location}; the write region cannot be changed here")
    if spec.backup is not None and spec.backup.type is BackupType.PERIODIC and \
            _backup_type(account.properties) == BackupType.CONTINUOUS.value:
        raise InvalidSpec(f"spec.account.backup.type: account {spec.account_name!r} has continuous backup, which "
                          f"Azure cannot turn back into periodic; set spec.account.backup.type: Continuous, or "
                          f"remove spec.account.backup to leave the backup as it is")


def _account_update(spec: ClusterSpec, account: models.DatabaseAccountGetResults, keys_in_use: bool):
    """(what differs, DatabaseAccountUpdateParameters) or None. Regions change alone, as Cosmos wants,
    and first, except when the consistency has to become Strong: that comes before the regions, so
    that a region is never added to an account whose failover to it could lose writes."""
    properties = account.properties
    wanted_locations = {(location.name, location.failover_priority, location.zone_redundant)
                        for location in spec.locations}
    current_locations = {(_region(location.location_name), location.failover_priority or 0,
                          bool(location.is_zone_redundant)) for location in properties.locations or []}
    strengthen_first = spec.consistency.level is ConsistencyLevel.STRONG and _consistency_differs(spec, account)
    if wanted_locations != current_locations and not strengthen_first:
        return "regions", models.DatabaseAccountUpdateParameters(
            properties=models.DatabaseAccountUpdateProperties(locations=_locations(spec)))
    return _properties_update(spec, account, keys_in_use)


def _consistency_differs(spec: ClusterSpec, account: models.DatabaseAccountGetResults) -> bool:
    wanted, current = _consistency_policy(spec), account.properties.consistency_policy
    fields = ("default_consistency_level", "max_staleness_prefix", "max_interval_in_seconds") \
        if spec.consistency.level is ConsistencyLevel.BOUNDED_STALENESS else ("default_consistency_level",)
    return current is None or any(getattr(current, field) != getattr(wanted, field) for field in fields)


def _properties_update(spec: ClusterSpec, account: models.DatabaseAccountGetResults, keys_in_use: bool):
    """(what differs, DatabaseAccountUpdateParameters) or None for every mutable property but the regions."""
    properties = account.properties
    changed, update = [], {}
    if _consistency_differs(spec, account):
        changed.append("consistency")
        update["consistency_policy"] = _consistency_policy(spec)
    if bool(properties.enable_automatic_failover) != spec.automatic_failover:
        changed.append("automatic failover")
        update["enable_automatic_failover"] = spec.automatic_failover
    for name, value in _hardening(spec, keys_in_use).items():
        if name == "is_virtual_network_filter_enabled":
            continue  # sent with the rules, which decide it
        if _hardening_differs(name, value, properties):
            changed.append(_HARDENING_NAMES[name])
            update[name] = value
            if name == "virtual_network_rules":
                update["is_virtual_network_filter_enabled"] = bool(value)
    tags = None
    if dict(account.tags or {}) != dict(spec.tags):
        changed.append("tags")
        tags = dict(spec.tags)
    if not changed:
        return None
    return ", ".join(changed), models.DatabaseAccountUpdateParameters(
        tags=tags, properties=models.DatabaseAccountUpdateProperties(**update) if update else None)


_HARDENING_NAMES = {"minimal_tls_version": "minimal TLS version", "public_network_access": "public network access",
                    "ip_rules": "IP rules", "virtual_network_rules": "virtual network rules",
                    "disable_key_based_metadata_write_access": "key-based metadata writes",
                    "backup_policy": "backup policy", "disable_local_auth": "local (key) authentication"}


def _hardening_differs(name: str, wanted: Any, properties: models.DatabaseAccountGetProperties) -> bool:
    current = getattr(properties, name)
    if name == "ip_rules":
        return {rule.ip_address_or_range for rule in wanted} != \
            {rule.ip_address_or_range for rule in current or []}
    if name == "virtual_network_rules":
        # Subnet ids are compared alone and without case (ARM's ids are case-insensitive, and
        # ignoreMissingVNetServiceEndpoint only matters when a rule is added).
        return {rule.id.lower() for rule in wanted} != {(rule.id or "").lower() for rule in current or []} or \
            bool(properties.is_virtual_network_filter_enabled) != bool(wanted)
    if name in ("disable_key_based_metadata_write_access", "disable_local_auth"):
        return bool(current) != wanted
    if name == "backup_policy":
        in_force = _backup_settings(properties)
        if in_force.get("migration"):  # a migration to this type is under way: not asked for twice
            return in_force["type"] != _text(wanted.type)
        return in_force != _backup_settings_of(wanted)
    return _text(current) != _text(wanted)


def _backup_settings_of(policy: models.BackupPolicy | None) -> dict[str, Any]:
    """A backup policy as status shows it: {type, intervalInMinutes, retentionInHours, storageRedundancy}
    or {type, tier}."""
    if policy is None:
        return {}
    if _text(policy.type) == BackupType.CONTINUOUS.value:
        tier = policy.continuous_mode_properties.tier if policy.continuous_mode_properties else None
        return {"type": BackupType.CONTINUOUS.value, "tier": _text(tier) or ContinuousTier.DAYS_30.value}
    periodic = policy.periodic_mode_properties or models.PeriodicModeProperties()
    return {"type": BackupType.PERIODIC.value, "intervalInMinutes": periodic.backup_interval_in_minutes,
            "retentionInHours": periodic.backup_retention_interval_in_hours,
            "storageRedundancy": _text(periodic.backup_storage_redundancy)}


def _backup_settings(properties: models.DatabaseAccountGetProperties) -> dict[str, Any]:
    """The account's backup, a migration to continuous counting as continuous (it is not started again)."""
    settings = _backup_settings_of(properties.backup_policy)
    if settings and _backup_type(properties) != settings["type"]:
        return {"type": _backup_type(properties), "migration": "InProgress"}
    return settings


def _account_settings(account: models.DatabaseAccountGetResults) -> dict[str, Any]:
    """The hardening in force, for the status."""
    properties = account.properties
    return {
        "minimalTlsVersion": _text(properties.minimal_tls_version),
        "disableKeyBasedMetadataWriteAccess": bool(properties.disable_key_based_metadata_write_access),
        "disableLocalAuth": bool(properties.disable_local_auth),
        "network": {
            "publicNetworkAccess": _text(properties.public_network_access),
            "ipRules": sorted(rule.ip_address_or_range for rule in properties.ip_rules or []),
            "virtualNetworkRules": sorted(rule.id for rule in properties.virtual_network_rules or []),
        },
        "backup": _backup_settings(properties),
    }


def _text(value: Any) -> str:
    """An SDK enum member or string as its wire value ('' for None): str() of the SDK's enums is
    their Python name."""
    return "" if value is None else str(getattr(value, "value", value))


# -- the container and its throughput ------------------------------------------------------------

def _throughput_options(spec: ClusterSpec) -> models.CreateUpdateOptions:
    if spec.throughput.mode is ThroughputMode.AUTOSCALE:
        return models.CreateUpdateOptions(
            autoscale_settings=models.AutoscaleSettings(max_throughput=spec.throughput.request_units))
    return models.CreateUpdateOptions(throughput=spec.throughput.request_units)


def _throughput_in_force(resource: models.ThroughputSettingsGetPropertiesResource) -> ThroughputReady:
    if resource.autoscale_settings is not None and resource.autoscale_settings.max_throughput:
        return ThroughputReady(ThroughputMode.AUTOSCALE, resource.autoscale_settings.max_throughput)
    return ThroughputReady(ThroughputMode.MANUAL, resource.throughput or 0)


def _same_indexing_policy(policy: models.IndexingPolicy | None) -> bool:
    """Compares what the layout sets; ARM adds defaults (composite, spatial indexes) of its own."""
    if policy is None:
        return False

    def paths(entries) -> set[str]:
        return {entry["path"] for entry in entries or []}

    return (str(policy.get("indexingMode", "")).lower() == INDEXING_POLICY["indexingMode"]
            and policy.get("automatic", True) == INDEXING_POLICY["automatic"]
            and paths(policy.get("includedPaths")) == paths(INDEXING_POLICY["includedPaths"])
            and paths(policy.get("excludedPaths")) == paths(INDEXING_POLICY["excludedPaths"]))
