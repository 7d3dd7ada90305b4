"""etcd's HTTP health endpoints, served beside ``/metrics`` on ``--listen-metrics-urls`` (plain http
even when the client URLs are https, so that the kubelet's httpGet probes work with TLS on).

* ``/health`` answers as etcd 3.5 does: 200 ``{"health":"true","reason":""}``; 503
  ``{"health":"false","reason":"ALARM NOSPACE"}`` (or ``ALARM CORRUPT``) while an alarm is raised
  (see ``mvcc.alarms``; on a shared log, raised through any replica), checked first as etcd does;
  else 503 ``{"health":"false","reason":"RANGE ERROR:..."}`` when a linearizable read fails: what
  a linearizable Range waits for (catching up with the log, or with elected replicas the leader's
  read index) fails or takes longer than :data:`READ_TIMEOUT_SECONDS`; a store whose outage breaker
  is open (a shared log failed and has not answered since) fails its catch-up at once. The reason
  carries the message a linearizable Range would get. ``?serializable=true`` reads from memory instead, so it
  checks this process, not its storage (etcd: this member, not the cluster). ``?exclude=NOSPACE``
  (or ``CORRUPT``, repeatable) ignores every alarm of that type, as etcd 3.5 since 3.5.2 (3.5.1
  ignored only the first one listed).
* ``/livez`` and ``/readyz`` answer as etcd 3.6 does: 200 ``ok``; ``?verbose`` lists the checks
  first (``[+]serializable_read ok``); a failed check gives 503 and the listing with
  ``[-]<check> failed: <reason>``; ``?exclude=<check>`` skips a check; ``/livez/<check>`` and
  ``/readyz/<check>`` run one. Liveness is the serializable read plus ``background_tasks``: a
  core task (the committer, lease expiry) that keeps failing although it is restarted (see
  :mod:`supervision`) fails it, so that Kubernetes restarts the process. An outage of Cosmos DB
  does not: a restart would come back to the same outage. Readiness adds the linearizable read:
  a replica that cannot read the log takes no traffic. What readiness means with a backend that
  every replica shares: it fails only when *this* replica cannot serve a linearizable read now (the
  log does not answer, or its catch-up times out). Throttling does not make a replica unready:
  every replica shares the same request units, so all of them would leave the Service at once
  and clients would lose even the reads served from memory; clients get etcd's "too many
  requests" instead (back-pressure). A write refused by Cosmos (401, 403, 413 ...) fails that
  write only. Readiness also has etcd's ``data_corruption`` check: it fails with ``alarm
  activated: CORRUPT`` while a CORRUPT alarm is raised (the shim runs no corruption check of its
  own; the alarm is raised through the Alarm API).

Only GET is served, as by etcd (405 otherwise). The checks run on the event loop that serves
clients, so a loop too busy to answer them fails them too.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from cosmos_etcd_shim.api.errors import status_of
from cosmos_etcd_shim.mvcc.errors import MVCCError, TooManyRequestsError
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import rpc_pb2
from cosmos_etcd_shim.proto.rpc_pb2 import CORRUPT, AlarmType
from cosmos_etcd_shim.supervision import Supervisor

logger = logging.getLogger(__name__)

# Shorter than the kubelet's probe timeout (3 s in the chart and the operator's Deployment), so that
# a probe gets the shim's reason rather than its own timeout.
READ_TIMEOUT_SECONDS = 2.0
# etcd's ErrTimeout, what its health read reports when the read does not finish in time.
REQUEST_TIMED_OUT = "etcdserver: request timed out"
# etcd's health read: one key, keys only (a point read: nothing is counted).
PROBE_RANGE = rpc_pb2.RangeRequest(key=b"", keys_only=True, limit=1)

Check = Callable[[], Awaitable[None]]


class HealthChecks:
    """The reads etcd's health endpoints make, made on this shim's store."""

    def __init__(self, store: MVCCStore, supervisor: Supervisor, timeout: float = READ_TIMEOUT_SECONDS,
                 make_current: Callable[[], Awaitable[None]] | None = None) -> None:
        """``make_current``: what a linearizable Range waits for before it reads (the replication
        layer's, so that readiness is what clients get; the store's catch-up with the log by default)."""
        self.store = store
        self.supervisor = supervisor
        self.timeout = timeout
        self.make_current = make_current or store.sync

    async def serializable_read(self) -> None:
        await self.store.range(PROBE_RANGE)

    def raised_alarm(self, excluded: set[str]) -> str | None:
        """The name of the first raised alarm whose type is not in ``excluded`` (etcd's /health)."""
        for alarm in self.store.alarms.get():
            name = AlarmType.Name(alarm.alarm)
            if name not in excluded:
                return name
        return None

    async def data_corruption(self) -> None:
        if self.store.alarms.raised(CORRUPT):
            raise AlarmActivatedError(f"alarm activated: {AlarmType.Name(CORRUPT)}")

    async def background_tasks(self) -> None:
        failing = self.supervisor.failing()
        if failing:
            raise BackgroundTaskError("; ".join(failing.values()))

    async def linearizable_read(self) -> None:
        """What a linearizable Range waits for, within the timeout; raises what it would fail with."""
        async with asyncio.timeout(self.timeout):
            await self.make_current()
        await self.store.range(PROBE_RANGE)

    async def linearizable_read_unless_throttled(self) -> None:
        """Readiness: the linearizable read, where throttling counts as able to serve (also when the
        read times out waiting out 429s, once the store has seen the throttling)."""
        try:
            await self.linearizable_read()
        except TooManyRequestsError:
            pass
        except TimeoutError:
            if not self.store.throttled:
                raise


class BackgroundTaskError(Exception):
    """A core background task keeps failing."""


class AlarmActivatedError(Exception):
    """An alarm that makes a check fail is raised."""


async def _failure_of(check: Check) -> str | None:
    """None if ``check`` passes, else why not, in etcd's words where etcd has them."""
    try:
        await check()
    except TimeoutError:
        return REQUEST_TIMED_OUT
    except MVCCError as e:
        return status_of(e).message
    except (BackgroundTaskError, AlarmActivatedError) as e:
        return str(e)
    return None


def http_routes(checks: HealthChecks) -> list[web.RouteDef]:
    """``/health``, ``/livez``, ``/readyz`` and one path per check under the latter two."""
    registries = {
        "/livez": {"serializable_read": checks.serializable_read, "background_tasks": checks.background_tasks},
        "/readyz": {"data_corruption": checks.data_corruption, "serializable_read": checks.serializable_read,
                    "linearizable_read": checks.linearizable_read_unless_throttled,
                    "background_tasks": checks.background_tasks},
    }
    table = [web.route("*", "/health", _get_only(functools.partial(_health, checks)))]
    for root, registry in registries.items():
        table.append(web.route("*", root, _get_only(functools.partial(_run_checks, root, registry, True))))
        for name, check in registry.items():
            path = f"{root}/{name}"
            table.append(web.route("*", path, _get_only(functools.partial(_run_checks, path, {name: check}, False))))
    return table


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _get_only(handler: Handler) -> Handler:
    async def get_only(request: web.Request) -> web.Response:
        if request.method != "GET":  # HEAD too, as etcd
            return _error(405, "Method Not Allowed", Allow="GET")
        return await handler(request)
    return get_only


async def _health(checks: HealthChecks, request: web.Request) -> web.Response:
    alarm = checks.raised_alarm(set(request.query.getall("exclude", ())))
    if alarm is not None:
        reason = f"ALARM {alarm}"
        logger.warning("serving /health false", extra={"reason": reason})
        return _error(503, _health_json("false", reason))
    serializable = request.query.get("serializable") == "true"
    failure = await _failure_of(checks.serializable_read if serializable else checks.linearizable_read)
    if failure is None:
        return _text(200, _health_json("true", ""))
    reason = f"RANGE ERROR:{failure}"
    logger.warning("serving /health false", extra={"reason": reason})
    return _error(503, _health_json("false", reason))


async def _run_checks(path: str, registry: dict[str, Check], excludable: bool, request: web.Request) -> web.Response:
    excluded = set(request.query.getall("exclude", ())) if excludable else set()
    listing, failed = [], False
    for name, check in registry.items():
        if name in excluded:
            continue
        failure = await _failure_of(check)
        failed = failed or failure is not None
        listing.append(f"[+]{name} ok\n" if failure is None else f"[-]{name} failed: {failure}\n")
    if failed:  # the listing always comes with a failure
        logger.warning("health check failed", extra={"path": path, "reason": "".join(listing)})
        return _error(503, "".join(listing))
    verbose = "".join(listing) if "verbose" in request.query else ""
    return _text(200, verbose + "ok\n", **{"X-Content-Type-Options": "nosniff"})


def _health_json(health: str, reason: str) -> str:
    return json.dumps({"health": health, "reason": reason}, separators=(",", ":"))


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8", headers=headers)


def _error(status: int, text: str, **headers: str) -> web.Response:
    """As Go's ``http.Error``: the text and a newline, not to be sniffed."""
    return _text(status, text + "\n", **{"X-Content-Type-Options": "nosniff"}, **headers)
