"""One pass over one CosmosEtcdCluster: what the parts of a reconciliation share.

A :class:`Reconciliation` holds the object as read at the start of the pass, the conditions and
status it builds, and the steps every part takes the same way. The parts themselves live in their
own modules, each with one shape — ``reconcile(step, spec, ...)`` reads what exists, compares it
with the spec, changes only what differs, and sets its condition (:meth:`Reconciliation.ready`) or
stops the pass (:meth:`Reconciliation.fail`). Their order is in :mod:`cosmos_etcd_operator.handlers`.

What a pass does for every part:

* an Azure step (:meth:`Reconciliation.azure`): a long-running operation in progress has its
  continuation token written to ``status.pendingOperations.<part>`` and stops the pass with ARM's
  ``Retry-After``; the next pass (after an operator restart too) resumes the operation from the
  token instead of starting another. An Azure error becomes the part's condition with Azure's error
  code, retryable or stalled as Azure says;
* a Kubernetes child (:meth:`Reconciliation.child`): created or set back through server-side apply
  only where it differs; one found missing or edited while its part was ready gets a ``Restored``
  event;
* the status is written once at the end, and not at all when nothing changed (no watch event, no
  new resourceVersion), with an event per condition transition.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from cosmos_etcd_operator import pki
from cosmos_etcd_operator.arm import AzureError, CosmosResources, Deleted, Pending
from cosmos_etcd_operator.cloud import AzureCloud
from cosmos_etcd_operator.conditions import (ACCEPTED, DATA_LOSS_ON_FAILOVER, FALSE, IN_PROGRESS, INVALID_SPEC,
                                             READY, TRUE, Condition, Conditions, events, now)
from cosmos_etcd_operator.credentials import Credentials
from cosmos_etcd_operator.kubeapi import Kube, KubeError, cluster_path, contains
from cosmos_etcd_operator.metrics import AZURE_OPERATIONS, CLUSTERS, RECONCILE_ERRORS, ClusterState
from cosmos_etcd_operator.spec import ClusterSpec, DeletionPolicy, InvalidSpec, parse

# ARM's refusal of a token requested for another audience (a custom cloud without --arm-audience).
WRONG_AUDIENCE = "InvalidAuthenticationTokenAudience"

# Outcomes of a reconciliation (also the metric's "result" label).
READY_RESULT, PROGRESSING, PENDING, ERROR, STALLED_RESULT, INVALID, SKIPPED, DELETED = (
    "ready", "progressing", "pending", "error", "stalled", "invalid", "skipped", "deleted")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclasses.dataclass
class OperatorContext:
    """What every handler shares, handed to kopf as the operator's memo (``memo.context``)."""

    kube: Kube
    credentials: Credentials
    cloud: AzureCloud
    shim_image: str
    retry_delay: float  # before retrying after an error that carries no Retry-After
    polling_interval: float | None = None  # ARM polling when ARM gives no Retry-After (None: arm.py's)
    tls_policy: pki.Policy = pki.Policy()  # lifetimes of the managed certificates
    clock: Callable[[], datetime.datetime] = utc_now  # the managed PKI's (tests move it)
    locks: collections.defaultdict = dataclasses.field(default_factory=lambda: collections.defaultdict(asyncio.Lock))

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks[namespace, name]


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: str
    message: str = ""
    delay: float | None = None


class Stop(Exception):
    """A part is not ready: the pass ends here with ``outcome``."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.message)
        self.outcome = outcome


class Reconciliation:
    """One pass over one CosmosEtcdCluster, from the object as read; :meth:`run` or :meth:`delete`."""

    def __init__(self, context: OperatorContext, body: dict[str, Any], logger):
        self.context, self.body, self.logger = context, body, logger
        self.kube = context.kube
        self.name, self.namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        self.status = body.get("status") or {}
        self.generation = body["metadata"].get("generation", 1)
        self.conditions = Conditions(self.status.get("conditions"), self.generation)
        self.before = Conditions(self.status.get("conditions"), self.generation)
        self.observed = self.status.get("observedGeneration")
        self.pending = dict(self.status.get("pendingOperations") or {})
        self.new_status: dict[str, Any] = {}
        self.pending_changes: dict[str, Any] = {}

    async def run(self, parts: Callable[["Reconciliation", ClusterSpec], Awaitable[Outcome]]) -> Outcome:
        """Run ``parts`` on the parsed spec, then write the status once."""
        try:
            spec = parse(self.body.get("spec") or {}, name=self.name)
            self._show_failover_risk(spec)
            outcome = await parts(self, spec)
        except InvalidSpec as e:
            outcome = Outcome(INVALID, f"invalid spec: {e}")
            self.conditions.summarize(invalid_spec=str(e))
        except Stop as stop:
            outcome = stop.outcome
            self.conditions.summarize(stalled=outcome.result == STALLED_RESULT)
        else:
            self.conditions.summarize()
        await self.write_status()
        if outcome.result in (ERROR, STALLED_RESULT, INVALID):
            self.logger.warning(outcome.message)
        return outcome

    async def delete(self, steps: Callable[["Reconciliation", ClusterSpec], Awaitable[None]]) -> Outcome:
        """Run the deletion ``steps`` unless the spec retains the account (or cannot be read)."""
        try:
            spec = parse(self.body.get("spec") or {}, name=self.name)
        except InvalidSpec as e:
            self.logger.warning(f"the spec is invalid ({e}); nothing is deleted in Azure")
            return Outcome(DELETED)
        if spec.deletion_policy is DeletionPolicy.RETAIN:
            kopf.info(self.body, reason="Retained", message=f"account {spec.account_name} stays in Azure "
                      f"(deletionPolicy Retain)")
            return Outcome(DELETED)
        try:
            await steps(self, spec)
        except Stop as stop:
            self.conditions.summarize(stalled=False)
            await self.write_status()
            return stop.outcome
        kopf.info(self.body, reason="Deleted", message=f"account {spec.account_name} deleted (deletionPolicy Delete)")
        return Outcome(DELETED)

    def resources(self, credential, spec: ClusterSpec) -> CosmosResources:
        """The Azure resources of ``spec``'s subscription, signed in as ``credential`` (``async with``)."""
        return CosmosResources(credential, self.context.cloud, spec.subscription_id,
                               polling_interval=self.context.polling_interval)

    async def azure(self, part: str, call, *, key: str | None = None, long_running: bool = True):
        """Run one Azure step, resuming its pending operation; stop unless it is done."""
        key = key or part.lower()
        token = self.pending.get(key, {}).get("token") if long_running else None
        try:
            result = await call(token)
        except AzureError as e:
            AZURE_OPERATIONS.labels(part, e.code).inc()
            if key in self.pending:  # a failed operation is over: the next pass reads and starts anew
                self.pending_changes[key] = None
            message = e.message
            if e.code == WRONG_AUDIENCE:
                message += (f" (the operator requests tokens for {self.context.cloud.credential_scope}: start it with "
                            f"--arm-audience set to the audience this Resource Manager accepts)")
            self.fail(part, e.code, message, retryable=e.retryable, delay=e.retry_after)
        except InvalidSpec as e:  # e.g. an existing account that cannot be adopted
            self.conditions.set(Condition(part, FALSE, INVALID_SPEC, str(e)))
            raise
        if isinstance(result, Pending):
            AZURE_OPERATIONS.labels(part, "pending").inc()
            previous = self.pending.get(key) or {}
            self.pending_changes[key] = {
                "operation": result.operation, "token": result.token, "generation": self.generation,
                "startedAt": previous.get("startedAt") if previous.get("operation") == result.operation else now(),
            }
            self.conditions.set(Condition(part, FALSE, IN_PROGRESS, f"{result.operation}: in progress"))
            self.conditions.wait_after(part)
            raise Stop(Outcome(PENDING, f"{part}: {result.operation} in progress", delay=result.retry_after))
        AZURE_OPERATIONS.labels(part, "ready" if not isinstance(result, Deleted) else "deleted").inc()
        if key in self.pending:
            self.pending_changes[key] = None
        return result

    async def read(self, part: str, path: str) -> dict[str, Any] | None:
        """A Kubernetes object, or None; a failed read stops the pass at ``part``."""
        try:
            return await self.kube.get(path)
        except KubeError as e:
            self.fail(part, e.reason, str(e), retryable=True)

    async def child(self, part: str, desired: dict[str, Any]) -> dict[str, Any]:
        """Create, update or restore one child; a restoration gets an event."""
        try:
            stored, change = await self.kube.ensure(desired)
        except KubeError as e:
            self.fail(part, e.reason, str(e), retryable=True)
        self.restored(part, desired["kind"], desired["metadata"]["name"], change)
        return stored

    def restored(self, part: str, kind: str, name: str, change: str | None) -> None:
        """A child found missing or edited while its part was ready (and the spec unchanged) gets an event."""
        if change == "created" and self.before.status_of(part) == TRUE:
            kopf.info(self.body, reason="Restored", message=f"{kind} {name} was missing: created again")
        elif change == "updated" and self.before.status_of(part) == TRUE and self.generation == self.observed:
            kopf.info(self.body, reason="Restored", message=f"{kind} {name} differed from the spec: set back")

    def ready(self, part: str, reason: str, message: str) -> None:
        self.conditions.set(Condition(part, TRUE, reason, message))

    def fail(self, part: str, reason: str, message: str, *, retryable: bool, delay: float | None = None):
        """``part`` is not ready: its condition says why, and the pass stops here."""
        RECONCILE_ERRORS.labels(self.namespace, self.name, part, reason).inc()
        self.conditions.set(Condition(part, FALSE, reason, message))
        self.conditions.wait_after(part)
        raise Stop(Outcome(ERROR if retryable else STALLED_RESULT, f"{part}: {reason}: {message}", delay))

    def _show_failover_risk(self, spec: ClusterSpec) -> None:
        """The data loss that the spec accepts (parse refuses it unaccepted) stays in sight."""
        if not spec.failover_can_lose_writes:
            self.conditions.remove(DATA_LOSS_ON_FAILOVER)
            return
        consistency = spec.consistency
        self.conditions.set(Condition(DATA_LOSS_ON_FAILOVER, TRUE, ACCEPTED, (
            f"spec.account.acceptDataLossOnFailover is true: with {consistency.level.value} and automatic failover, "
            f"Azure's failover from {spec.location} can lose the last acknowledged writes (up to "
            f"{consistency.max_staleness_prefix} versions or {consistency.max_interval_seconds} seconds); the "
            f"etcd log can then have a gap, which `cosmos-etcd repair` truncates")))

    async def write_status(self) -> None:
        """One status write, and none when nothing changed (no watch event, no resourceVersion)."""
        status = {"observedGeneration": self.generation, "conditions": self.conditions.as_list(), **self.new_status}
        stored = {key: value for key, value in self.status.items() if key != "kopf"}
        _remove_dropped_fields(status, stored)
        if self.pending_changes:
            status["pendingOperations"] = self.pending_changes
        record_state(self.namespace, self.name, {**stored, **status})
        if contains(stored, {key: value for key, value in status.items() if key != "pendingOperations"}) and \
                all(stored.get("pendingOperations", {}).get(key) == value
                    for key, value in self.pending_changes.items()):
            return
        await patch_status(self.kube, self.namespace, self.name, status)
        post_events(self.body, self.status.get("conditions"), status["conditions"])


def _remove_dropped_fields(status: dict[str, Any], stored: dict[str, Any]) -> None:
    """A merge patch keeps fields it does not name: an object of the status that lost a field (the
    periodic backup's interval when it became continuous) names it with None, which removes it."""
    for key, value in status.items():
        if key != "pendingOperations" and isinstance(value, dict) and isinstance(stored.get(key), dict):
            for dropped in stored[key].keys() - value.keys():
                value[dropped] = None


def record_state(namespace: str, name: str, status: dict[str, Any]) -> None:
    """The cluster's Ready status and throughput in force, for the operator's gauges."""
    ready = (Conditions(status.get("conditions"), 0).get(READY) or {}).get("status", "Unknown")
    throughput = status.get("throughput") or {}
    CLUSTERS.record(namespace, name, ClusterState(ready, throughput.get("mode"), throughput.get("requestUnits")))


def post_events(body: dict[str, Any], before: list[dict[str, Any]] | None, after: list[dict[str, Any]]) -> None:
    for type_, reason, message in events(before, after):
        kopf.event(body, type=type_, reason=reason, message=message)


async def patch_status(kube: Kube, namespace: str, name: str, status: dict[str, Any]) -> None:
    try:
        await kube.merge_patch(cluster_path(namespace, name) + "/status", {"status": status})
    except KubeError as e:
        if e.status != 404:  # deleted meanwhile: nothing to report on
            raise
