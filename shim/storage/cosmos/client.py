"""The Cosmos DB connection: client set-up, retries, request accounting, writes of unknown outcome.

Retries are done here, not by the SDK (its throttling and connection retries are switched off),
so that every attempt is counted and a write is never repeated blindly:

* 429: wait ``x-ms-retry-after-ms`` (or ``Retry-After`` seconds) and try again: the request was
  not executed.
* 408, 449, 5xx, timeouts and connection errors: an idempotent request (read, query, upsert,
  delete, conditional replace) is retried with exponential backoff and jitter. A *create*
  whose outcome is unknown is resolved by reading its id back: present with our nonce ->
  success; present with another -> someone else's (conflict); absent -> create again (both
  attempts carry the same content and nonce, so a late arrival of the first is harmless: the
  second then fails with 409 and reads back our own document).
* Every retry stops at the operation deadline: :class:`CosmosThrottledError` when the last
  answers were 429 (back-pressure: etcd's "too many requests", the server stays ready),
  :class:`CosmosUnavailableError` otherwise (no useful answer: an outage).
* Every other status is either one the caller expects and handles (``expected``: 404 of a
  delete, 409 of a create, 412 of a conditional replace) or a refusal that retrying will not
  change, raised as :class:`CosmosRejectedError` (a :class:`StorageError`) with what to check:
  401 (a key rotated: with a key file, the key is read again and the request retried once),
  403 (firewall, a missing data-plane RBAC role, disabled local auth, a full partition),
  400/413 and anything unexpected. No raw SDK exception escapes this module.

Credentials: an account key (a string) or an ``azure-identity`` async credential, which the
connection then owns: closing the connection closes it (its HTTP session and token cache).
``insecure_skip_tls_verify`` accepts a self-signed certificate; it and ``http://`` endpoints are
for local servers only and are logged as warnings. The key is never logged.

Regions: every request goes to the account's current write region, reads included. A secondary
region is only consistent-prefix relative to the write region: a log, meta or head read served
there can miss acknowledged revisions, and every read of this one client is of that kind (log,
meta, head, lease, auth, members), so the whole client is pinned. Set-up starts with one account
read (``GET /``, before anything else is touched): :mod:`.account` refuses a consistency level
that cannot give linearizable reads and lists the account's regions; the client is then rebuilt
with ``excluded_locations`` = every one of them. How azure-cosmos routes a read: to its preferred
regions (``preferred_locations``, else the readable regions in the order of its *first* account
read, a list it never reorders) minus the excluded ones, and when none is left to its
"primary/hub" region, the first write region of its *latest* account read -- the documented
meaning of excluding every region. The SDK re-reads the account every 5 minutes and at once when a
write is answered 403/3 ("write forbidden": the region is no longer the write region), so reads
follow a service-managed failover together with writes (a single-write account's writes ignore
exclusions and always go to the write region). Its cross-region retries of reads (408, 503,
timeouts) stay within the one region left; a retry that ignores preferred regions (after 403/1008)
goes to the configured (global) endpoint, never to a secondary. Rejected: ``preferred_locations``
= [the write region] (after a failover, reads stay in the old write region, now a secondary);
``enable_endpoint_discovery=False`` (everything to the configured endpoint: no 403/3 handling, a
failover followed only through DNS); a preferred region name that matches none (works by accident,
logged as a misconfiguration, bypassed by the retries above). Not pinned: metadata reads
(container, partition key ranges -- the same in every region), which the SDK may still send to an
excluded region. A region added while the shim runs is excluded from its next start on; until
then the SDK's read list, fixed at its first account read, does not contain it either.

Endpoint discovery stays on, also for an ``http://`` endpoint whose account advertises ``http://``
regional addresses (the two-region test rig: discovery, routing and failover work there as in
production). The plain local server advertises ``https://`` addresses that it does not serve on
its http port: for an ``http://`` endpoint with such an account discovery is turned off (a
warning); production endpoints are ``https://``, always with discovery.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import PartitionKey
from azure.cosmos import exceptions as cosmos_exceptions
from azure.cosmos.aio import CosmosClient
from azure.cosmos.documents import ConnectionPolicy, RetryOptions

from cosmos_etcd_shim.storage.base import StorageError, StorageRejectedError, StorageThrottledError
from cosmos_etcd_shim.storage.cosmos import layout
from cosmos_etcd_shim.storage.cosmos.account import AccountProperties
from cosmos_etcd_shim.storage.cosmos.stats import (
    COSMOS_OPERATION_SECONDS,
    CosmosStats,
    backend_operation,
    current_operation,
)

logger = logging.getLogger(__name__)

CosmosHttpResponseError = cosmos_exceptions.CosmosHttpResponseError
RETRYABLE_STATUS = frozenset({408, 449, 500, 502, 503, 504})
THROTTLED = 429


class CosmosUnavailableError(StorageError):
    """Cosmos DB did not answer usefully within the operation deadline."""


class CosmosThrottledError(StorageThrottledError):
    """Cosmos DB answered 429 until the operation deadline: the RU budget is spent."""


class CosmosRejectedError(StorageRejectedError):
    """Cosmos DB refused the request with a status that retrying does not change."""

    def __init__(self, op: str, status: int, message: str) -> None:
        super().__init__(message)
        self.op = op
        self.status = status


# What an operator should check, by status (the message is logged and reaches the client).
_REJECTION_HINTS = {
    401: "the account key or token was refused: was the key rotated? (a key file is read again on 401; "
         "a key in the environment needs a restart)",
    403: "access forbidden: check the account's firewall and private endpoints, the identity's Cosmos DB "
         "data-plane role, whether key (local) authentication is disabled, and whether the log "
         "partition reached Cosmos's 20 GB limit",
    413: "the request is larger than Cosmos DB accepts",
}


class OutcomeUnknown(Exception):
    """A non-idempotent request may or may not have been executed (internal)."""


class Conflict(Exception):
    """The id exists with another writer's content (internal): ``existing``, as read back (None if
    it was gone by then)."""

    def __init__(self, document_id: str, existing: dict | None = None) -> None:
        super().__init__(document_id)
        self.existing = existing


def retry_after_seconds(error: CosmosHttpResponseError, default: float) -> float:
    headers = getattr(error, "headers", None) or {}
    value = headers.get("x-ms-retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return default


def _is_transport_error(error: BaseException) -> bool:
    if isinstance(error, (asyncio.TimeoutError, ConnectionError, OSError)):
        return True
    if isinstance(error, CosmosHttpResponseError):
        return False
    if isinstance(error, AzureError):  # ServiceRequestError, ServiceResponseError, CosmosClientTimeoutError
        return True
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with azure-cosmos' aio client
        return False
    return isinstance(error, aiohttp.ClientError)


# A request that has not answered in this time is abandoned (and, for a create, resolved by
# reading back); an operation that has not succeeded by the deadline fails with UNAVAILABLE, so
# that clients hear of an outage within seconds and retry elsewhere or later.
DEFAULT_REQUEST_TIMEOUT = 2.5
DEFAULT_RETRY_DEADLINE = 4.0


class CosmosConnection:
    """One container, reached through ``azure.cosmos.aio`` with the retry rules above."""

    def __init__(self, endpoint: str, *, key: str | None = None, credential: Any = None,
                 database: str = layout.DEFAULT_DATABASE, container: str = layout.DEFAULT_CONTAINER,
                 create: bool = True, insecure_skip_tls_verify: bool = False,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, retry_deadline: float = DEFAULT_RETRY_DEADLINE,
                 stats: CosmosStats | None = None, key_loader: Callable[[], list[str]] | None = None) -> None:
        if (key is None) == (credential is None):
            raise ValueError("give exactly one of an account key or a credential")
        self.endpoint = endpoint
        self.database_name = database
        self.container_name = container
        self.create = create
        self.request_timeout = request_timeout
        self.retry_deadline = retry_deadline
        self.stats = stats or CosmosStats()
        self._key = key
        # Reads the keys again after a 401 (a rotated key in a mounted Secret; the other key of the account).
        self._key_loader = key_loader
        self._refused_keys: set[str] = set()
        self._credential = credential
        self._client_options: dict[str, Any] = {}
        self._insecure = insecure_skip_tls_verify
        self._client: CosmosClient | None = None
        self.container = None

    def __repr__(self) -> str:  # never shows the key
        return f"CosmosConnection({self.endpoint!r}, {self.database_name}/{self.container_name})"

    # -- set-up -------------------------------------------------------------------------------

    async def connect(self) -> None:
        scheme = urllib.parse.urlsplit(self.endpoint).scheme
        options: dict[str, Any] = {}
        if scheme not in ("http", "https"):
            raise StorageError(f"cosmos endpoint {self.endpoint!r}: expected https:// (or http:// for a local server)")
        if self._insecure:
            logger.warning("Cosmos TLS certificate verification is OFF for %s (local test servers only)",
                           self.endpoint)
            options["connection_verify"] = False
        self._client_options = options
        self._client = self._new_client()
        try:
            with backend_operation("setup"):
                # The account decides the client's routing (module docstring, "Regions"): read it with a
                # first client (the aio client's account read, the sync client's get_database_account),
                # then rebuild. An account read is not routed: it goes to the configured endpoint.
                account = AccountProperties.of(await self.call("setup", lambda: self._client._get_database_account()))
                account.check_consistency()
                self._client_options.update(account.routing_options(self.endpoint))
                probe, self._client = self._client, self._new_client()
                await probe.close()
                if self.create:
                    database = await self.call("setup", lambda: self._client.create_database_if_not_exists(
                        self.database_name))
                    self.container = await self.call("setup", lambda: database.create_container_if_not_exists(
                        self.container_name, partition_key=PartitionKey(path=layout.PARTITION_KEY_PATH),
                        indexing_policy=layout.INDEXING_POLICY))
                else:
                    database = self._client.get_database_client(self.database_name)
                    container = database.get_container_client(self.container_name)
                    try:
                        await self.call("setup", container.read)
                    except CosmosRejectedError as e:
                        raise StorageError(f"container {self.database_name}/{self.container_name} is not usable "
                                           f"({e.status}) and creating it is not allowed") from None
                    self.container = container
        except BaseException:
            await self.close()
            raise

    def _new_client(self) -> CosmosClient:
        policy = ConnectionPolicy()
        policy.RetryOptions = RetryOptions(max_retry_attempt_count=0)  # 429s are retried here
        return CosmosClient(self.endpoint, credential=self._key or self._credential, connection_policy=policy,
                            retry_total=0, retry_connect=0, retry_read=0, retry_status=0,
                            raw_response_hook=self._on_response, **self._client_options)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
        if self._credential is not None:
            credential, self._credential = self._credential, None
            await credential.close()

    def _on_response(self, pipeline_response) -> None:
        response = pipeline_response.http_response
        try:
            charge = float(response.headers.get("x-ms-request-charge") or 0)
        except ValueError:
            charge = 0.0
        self.stats.record(current_operation(), str(response.status_code), charge)

    # -- the retry loop -----------------------------------------------------------------------

    async def call(self, op: str, request: Callable[[], Awaitable[Any]], *, write_once: bool = False,
                   expected: tuple[int, ...] = (), deadline: float | None = None) -> Any:
        """Run ``request()`` until it answers, following the retry rules of the module docstring.

        With ``write_once`` a transport error or 408/5xx raises :class:`OutcomeUnknown` instead
        of retrying. HTTP errors whose status is in ``expected`` are raised to the caller as the
        SDK's exceptions; every other failure is a :class:`StorageError`.
        """
        loop = asyncio.get_running_loop()
        deadline = deadline if deadline is not None else loop.time() + self.retry_deadline
        attempt = 0
        key_reloaded = False
        started = time.perf_counter()
        with backend_operation(op):
            try:
                while True:
                    attempt += 1
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise CosmosUnavailableError(f"cosmos {op}: no answer before the deadline")
                    try:
                        # No attempt may outlive the operation's deadline (asyncio.timeout: 3.11's
                        # wait_for can swallow a cancellation of the caller).
                        async with asyncio.timeout(min(self.request_timeout, remaining)):
                            return await request()
                    except CosmosHttpResponseError as e:
                        if e.status_code in expected:
                            raise
                        if e.status_code == THROTTLED:
                            delay = retry_after_seconds(e, default=self._backoff(attempt))
                        elif e.status_code in RETRYABLE_STATUS:
                            if write_once:
                                raise OutcomeUnknown(f"{e.status_code}") from e
                            delay = self._backoff(attempt)
                        elif e.status_code == 401 and not key_reloaded and await self._reload_key():
                            key_reloaded = True  # the request was refused, not run: try the new key
                            continue
                        else:
                            raise self._rejected(op, e) from None
                        error: BaseException = e
                    except Exception as e:  # noqa: BLE001 - classified right below
                        if not _is_transport_error(e):
                            raise
                        self.stats.record(current_operation(), "transport-error", 0.0)
                        if write_once:
                            raise OutcomeUnknown(type(e).__name__) from e
                        delay = self._backoff(attempt)
                        error = e
                    if loop.time() + delay > deadline:
                        outcome = _describe(error)
                        if isinstance(error, CosmosHttpResponseError) and error.status_code == THROTTLED:
                            raise CosmosThrottledError(f"cosmos {op}: still throttled (429) after {attempt} "
                                                       "attempts: the request units per second are spent") from None
                        raise CosmosUnavailableError(f"cosmos {op}: no answer after {attempt} attempts "
                                                     f"({outcome})") from None
                    logger.debug("cosmos %s: retrying in %.3fs after %s", op, delay, _describe(error))
                    await asyncio.sleep(delay)
            finally:
                COSMOS_OPERATION_SECONDS.labels(op).observe(time.perf_counter() - started)

    def _rejected(self, op: str, error: CosmosHttpResponseError) -> CosmosRejectedError:
        status = error.status_code
        substatus = (getattr(error, "headers", None) or {}).get("x-ms-substatus")
        hint = _REJECTION_HINTS.get(status, "an answer the shim does not expect")
        code = f"HTTP {status}" + (f" (substatus {substatus})" if substatus else "")
        message = f"cosmos {op}: {code}: {hint}"
        logger.error("Cosmos DB refused a request", extra={"operation": op, "status": status,
                                                            "substatus": substatus, "hint": hint})
        return CosmosRejectedError(op, status, message)

    async def _reload_key(self) -> bool:
        """After a 401: read the keys again (a mounted Secret is updated in place when a key is
        rotated, and may hold both of the account's keys) and reconnect with the first one not
        refused yet. True if there is such a key to try."""
        if self._key_loader is None:
            return False
        self._refused_keys.add(self._key)
        try:
            keys = self._key_loader()
        except Exception as e:  # noqa: BLE001 - the 401 itself is then what the caller sees
            logger.warning("cannot read the Cosmos key again after a 401", extra={"error": str(e)})
            return False
        key = next((k for k in keys if k not in self._refused_keys), None)
        if key is None:
            return False
        logger.warning("Cosmos answered 401: reconnecting with the key read again from its file")
        self._key = key
        old, self._client = self._client, self._new_client()
        self.container = self._client.get_database_client(self.database_name).get_container_client(
            self.container_name)
        if old is not None:
            await old.close()
        return True

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(2.0, 0.05 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    # -- operations ---------------------------------------------------------------------------

    async def query(self, op: str, sql: str, parameters: dict[str, Any], partition: str,
                    max_item_count: int = 100, deadline: float | None = None) -> list[dict]:
        """All results of a partition-scoped query (the partition key must be in its WHERE too).

        Page by page, each page one request with its own timeout and retries (resumed from the
        continuation token), so a long result is not one all-or-nothing request.
        """
        params = [{"name": name, "value": value} for name, value in parameters.items()]
        results: list[dict] = []
        token: str | None = None
        while True:
            async def page(token=token) -> tuple[list[dict], str | None]:
                pages = self.container.query_items(sql, parameters=params, partition_key=partition,
                                                   max_item_count=max_item_count).by_page(token)
                try:
                    items = await pages.__anext__()
                except StopAsyncIteration:
                    return [], None
                return [item async for item in items], pages.continuation_token

            items, token = await self.call(op, page, deadline=deadline)
            results.extend(items)
            if not token:
                return results

    async def read_by_id(self, op: str, document_id: str, partition: str,
                         deadline: float | None = None) -> dict | None:
        """The document or None. A query, not a point read: the local test server answers a point
        read of a missing id with 500, which cannot be told from a real server error."""
        found = await self.query(op, "SELECT * FROM c WHERE c.pk = @pk AND c.id = @id",
                                 {"@pk": partition, "@id": document_id}, partition, deadline=deadline)
        return found[0] if found else None

    async def read_item(self, op: str, document_id: str, partition: str) -> dict:
        return await self.call(op, lambda: self.container.read_item(document_id, partition_key=partition))

    async def upsert(self, op: str, document: dict) -> dict:
        return await self.call(op, lambda: self.container.upsert_item(document))

    async def delete(self, op: str, document_id: str, partition: str) -> bool:
        """Delete; False if it was not there (a concurrent delete, or a retry of ours that landed)."""
        try:
            await self.call(op, lambda: self.container.delete_item(document_id, partition_key=partition),
                            expected=(404,))
        except cosmos_exceptions.CosmosResourceNotFoundError:
            return False
        return True

    async def replace_if_match(self, op: str, document: dict, etag: str) -> dict:
        """Replace only if unchanged since ``etag`` (412 -> CosmosAccessConditionFailedError)."""
        return await self.call(op, lambda: self.container.replace_item(
            document["id"], document, etag=etag, match_condition=MatchConditions.IfNotModified), expected=(412,))

    async def create_once(self, op: str, document: dict, *, nonce_field: str = "w") -> dict:
        """Create ``document`` exactly once, whatever the network does.

        Returns the stored document when it is ours (created by this call, possibly through a
        retry whose first attempt's answer was lost). Raises :class:`Conflict` when the id holds
        another writer's document, :class:`CosmosUnavailableError` when the outcome cannot be
        established before the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_deadline
        partition = document["pk"]
        attempt = 0
        while True:
            attempt += 1
            existed = False
            try:
                return await self.call(op, lambda: self.container.create_item(document), write_once=True,
                                       expected=(409,), deadline=deadline)
            except cosmos_exceptions.CosmosResourceExistsError:
                existed = True  # ours (an earlier attempt that landed) or someone else's: read it back
            except OutcomeUnknown as e:
                logger.info("cosmos %s: outcome of creating %s unknown (%s): reading it back", op,
                            document["id"], e)
            # The read-back shares the create's deadline: one operation, one time budget.
            stored = await self.read_by_id(op + "_resolve", document["id"], partition, deadline=deadline)
            if stored is not None:
                if stored.get(nonce_field) == document[nonce_field]:
                    return stored
                raise Conflict(document["id"], stored)
            if existed:
                # It existed and is gone: only compaction deletes, and only what others wrote.
                raise Conflict(document["id"])
            # Absent: the create did not land (or has not yet: then ours is the same content).
            delay = self._backoff(attempt)
            if loop.time() + delay > deadline:
                raise CosmosUnavailableError(f"cosmos {op}: could not establish whether {document['id']} was "
                                             f"created after {attempt} attempts")
            await asyncio.sleep(delay)


def _describe(error: BaseException) -> str:
    if isinstance(error, CosmosHttpResponseError):
        return f"HTTP {error.status_code}"
    return type(error).__name__
