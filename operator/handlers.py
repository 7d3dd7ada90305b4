"""The kopf handlers of CosmosEtcdCluster: reconcile, delete, correct drift, follow the shim's pods.

One reconciliation runs the parts in order — credentials, account, database, container, throughput,
keys, TLS (:mod:`cosmos_etcd_operator.pki`), shim — each idempotent (it reads, compares, and changes only what differs) and each reporting
its own condition (see :mod:`cosmos_etcd_operator.conditions`). It stops at the first part that is
not ready and writes the status once:

* an Azure long-running operation in progress: its continuation token goes to
  ``status.pendingOperations.<part>``, and the handler raises ``kopf.TemporaryError`` with ARM's
  ``Retry-After``; the next run (after an operator restart too) resumes the operation from the
  token instead of starting another;
* an Azure error: a condition with Azure's error code; ``TemporaryError`` when retrying can help,
  ``PermanentError`` (``Stalled``) when it cannot;
* an invalid spec: ``Ready=False``/``Stalled=True`` with reason ``InvalidSpec`` and a
  ``PermanentError``: nothing is retried until the spec changes. Nothing in Azure or of the shim is
  touched either, so a running cluster whose stored spec a newer operator refuses (such as a
  multi-region BoundedStaleness account with automatic failover) keeps serving while the condition
  says what to set.

A spec that accepts data loss on failover (``spec.account.acceptDataLossOnFailover`` with
BoundedStaleness, automatic failover and several regions) gets the condition ``DataLossOnFailover``
and a Warning event; ``status.consistency`` shows the level in force on the account.

Triggers: kopf's create, update and resume handlers (one function); the ``drift`` timer, which
reconciles settled objects every ``--drift-interval`` seconds (throughput changed behind the
operator's back is set back, rotated keys are rewritten into the Secret, missing or edited children
are restored, and a stalled Azure error is retried); events of the shim's Deployments, which move
the ``Shim`` and ``Ready`` conditions as pods become available or not. All of them take a
per-object lock and re-read the object first, so they never interleave on one cluster.

What the operator writes on a CosmosEtcdCluster: ``status`` (including kopf's own progress and last
handled spec under ``status.kopf``) and its finalizer ``cosmosetcd.io/finalizer`` — never ``spec``,
labels or annotations, which belong to whoever applies the object (kubectl, Helm, Argo CD, Flux).

Data-plane access (``spec.azure.dataPlaneAuth``): with ``Key`` the keys part stores the account keys
in a Secret the shim mounts; with ``EntraID`` the role assignment part gives the shim's identity the
Data Contributor role on the database (:mod:`cosmos_etcd_operator.role_assignment`), the account has
local auth disabled, and the keys part reads no key and writes no Secret: a keys Secret that the
operator made while the cluster was in Key mode (owned by this CosmosEtcdCluster) is deleted, since
its keys no longer open anything and must not linger in the cluster; a Secret of that name that
someone else owns is left alone. A switch from Key to EntraID loses no request: until the shim's
Deployment has rolled out its keyless template (no pod of the old one left), the account keeps
accepting keys and the keys Secret stays; the first pass after the rollout disables local auth and
deletes the Secret. Going back to Key removes the role assignment the operator made
(``status.roleAssignment``). The NetworkPolicy part (:mod:`cosmos_etcd_operator.network_policy`)
runs after the keys, before the shim.

Deletion: with ``deletionPolicy: Retain`` the Azure account stays (and the role assignment with it);
with ``Delete`` the role assignment the operator made and then the account are deleted (long-running
operations, handled like the others). Children go with the object through their owner references.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import time
from collections.abc import Callable
from typing import Any

import kopf
from azure.core.exceptions import AzureError as AzureCoreError
from azure.core.exceptions import ClientAuthenticationError

from cosmos_etcd_operator import children, pki
from cosmos_etcd_operator.arm import AccountReady, AzureError, CosmosResources, Deleted, Pending, ThroughputReady
from cosmos_etcd_operator import network_policy, role_assignment
from cosmos_etcd_operator.cloud import AzureCloud
from cosmos_etcd_operator.conditions import NETWORK_POLICY, ROLE_ASSIGNMENT
from cosmos_etcd_operator.conditions import (ACCEPTED, ACCOUNT, CONTAINER, CREDENTIALS, DATA_LOSS_ON_FAILOVER,
                                             DATABASE, FALSE, IN_PROGRESS, INVALID_SPEC, KEYS, PLAIN_TEXT, READY,
                                             SHIM, STALLED, THROUGHPUT, TLS, TRUE, UNAVAILABLE, WAITING, Condition,
                                             Conditions, events, now)
from cosmos_etcd_operator.credentials import Credentials, InvalidCredentials
from cosmos_etcd_operator.kubeapi import Kube, KubeError, cluster_path, connection_info, contains, \
    load_configuration, object_path
from cosmos_etcd_operator.metrics import (AZURE_OPERATIONS, CLUSTERS, RECONCILE_ERRORS, RECONCILE_SECONDS,
                                          RECONCILIATIONS, ClusterState)
from cosmos_etcd_operator.spec import (GROUP, PLURAL, VERSION, ClusterSpec, DataPlaneAuth, DeletionPolicy,
                                       InvalidSpec, parse)

FINALIZER = f"{GROUP}/finalizer"
# ARM's refusal of a token requested for another audience (a custom cloud without --arm-audience).
WRONG_AUDIENCE = "InvalidAuthenticationTokenAudience"
DELETION = "deletion"  # the key of the account deletion in status.pendingOperations
ROLE_ASSIGNMENT_REMOVAL = "roleAssignmentRemoval"  # and of a role assignment's removal

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


class _Stop(Exception):
    """A part is not ready: the reconciliation ends here with ``outcome``."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.message)
        self.outcome = outcome


def register(registry: kopf.OperatorRegistry, *, drift_interval: float) -> None:
    """Put the handlers into ``registry``."""
    on = {"registry": registry}
    kopf.on.login(id="login", **on)(login)
    for cause in (kopf.on.create, kopf.on.update, kopf.on.resume):
        cause(GROUP, VERSION, PLURAL, id="reconcile", **on)(on_change)
    kopf.on.delete(GROUP, VERSION, PLURAL, id="delete", **on)(on_delete)
    kopf.timer(GROUP, VERSION, PLURAL, id="drift", interval=drift_interval, initial_delay=drift_interval,
               **on)(on_drift)
    kopf.on.event("apps", "v1", "deployments", id="shim-availability",
                  labels={"app.kubernetes.io/managed-by": children.MANAGED_BY}, **on)(on_deployment_event)


def configure(settings: kopf.OperatorSettings) -> None:
    """Where kopf keeps its state: in status and our own finalizer, so that no metadata that a
    GitOps tool owns is touched. kopf does not scan CRDs or namespaces (less RBAC): the resources
    are known, and namespaces are named exactly."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.lastHandledConfiguration")
    settings.scanning.disabled = True


def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf logs in exactly as the operator's own client does."""
    return connection_info(load_configuration())


# -- kopf's entry points ---------------------------------------------------------------------------

async def on_change(namespace: str, name: str, logger, memo: kopf.Memo, **_: Any) -> None:
    outcome = await reconcile(memo.context, namespace, name, logger, trigger="change")
    if outcome.result == PENDING:
        raise kopf.TemporaryError(outcome.message, delay=outcome.delay)
    if outcome.result == ERROR:
        raise kopf.TemporaryError(outcome.message, delay=outcome.delay or memo.context.retry_delay)
    if outcome.result in (STALLED_RESULT, INVALID):
        raise kopf.PermanentError(outcome.message)


async def on_drift(namespace: str, name: str, logger, memo: kopf.Memo, **_: Any) -> None:
    outcome = await reconcile(memo.context, namespace, name, logger, trigger="drift")
    if outcome.result == PENDING:  # come back when ARM says, not a whole interval later
        raise kopf.TemporaryError(outcome.message, delay=outcome.delay)


async def on_delete(namespace: str, name: str, logger, memo: kopf.Memo, **_: Any) -> None:
    context: OperatorContext = memo.context
    async with context.lock(namespace, name):
        body = await context.kube.get(cluster_path(namespace, name))
        if body is None:
            return
        outcome = await Reconciliation(context, body, logger).delete()
    if outcome.result == DELETED:
        CLUSTERS.forget(namespace, name)
    else:
        # Never PermanentError: kopf would then release the object and leave the account behind
        # unnoticed. Switching deletionPolicy to Retain lets it go.
        raise kopf.TemporaryError(outcome.message, delay=outcome.delay or context.retry_delay)


async def on_deployment_event(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """The shim's Deployment changed: move ``Shim`` (and ``Ready``) with its available replicas."""
    name = body.get("metadata", {}).get("labels", {}).get(children.CLUSTER_LABEL)
    owned = any(reference.get("kind") == "CosmosEtcdCluster" and reference.get("name") == name
                for reference in body.get("metadata", {}).get("ownerReferences", []))
    if not name or not owned:
        return
    context: OperatorContext = memo.context
    async with context.lock(namespace, name):
        cluster = await context.kube.get(cluster_path(namespace, name))
        if cluster is None or cluster["metadata"].get("deletionTimestamp"):
            return
        status = cluster.get("status") or {}
        conditions = Conditions(status.get("conditions"), status.get("observedGeneration", 1))
        ready = conditions.get(READY) or {}
        if (conditions.get(SHIM) or {}).get("reason", WAITING) == WAITING or ready.get("reason") == INVALID_SPEC:
            return  # the shim's part has not been reached yet, or nothing may move
        # The Deployment as it is now, not as the event saw it: an event handled after the lock was
        # held by a pass that read a newer version would otherwise set an older state back.
        deployment = await context.kube.get(object_path("apps/v1", "Deployment", namespace, body["metadata"]["name"]))
        shim = _shim_condition(deployment)
        current = conditions.get(SHIM)
        if (current["status"], current["message"]) == (shim.status, shim.message):
            return
        conditions.set(shim)
        conditions.summarize(stalled=conditions.status_of(STALLED) == TRUE)
        await _patch_status(context.kube, namespace, name, {"conditions": conditions.as_list()})
        _record_state(namespace, name, {**status, "conditions": conditions.as_list()})
        _post_events(cluster, status.get("conditions"), conditions.as_list())


# -- reconciliation --------------------------------------------------------------------------------

async def reconcile(context: OperatorContext, namespace: str, name: str, logger, *, trigger: str) -> Outcome:
    """One reconciliation of the object as stored now (``trigger``: change or drift)."""
    started = time.monotonic()
    async with context.lock(namespace, name):
        body = await context.kube.get(cluster_path(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome(SKIPPED)
        if trigger == "drift" and not _settled(body):
            return Outcome(SKIPPED)
        outcome = await Reconciliation(context, body, logger).run()
    RECONCILIATIONS.labels(trigger, outcome.result).inc()
    RECONCILE_SECONDS.observe(time.monotonic() - started)
    return outcome


def _settled(body: dict[str, Any]) -> bool:
    """The handlers have processed the current spec, and it was valid: the timer may look."""
    status = body.get("status") or {}
    ready = Conditions(status.get("conditions"), 0).get(READY) or {}
    return status.get("observedGeneration") == body["metadata"].get("generation") and \
        ready.get("reason") != INVALID_SPEC


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

    async def run(self) -> Outcome:
        try:
            spec = parse(self.body.get("spec") or {}, name=self.name)
            self._show_failover_risk(spec)
            self._record_tls_mode(spec)
            outcome = await self._parts(spec)
        except InvalidSpec as e:
            outcome = Outcome(INVALID, f"invalid spec: {e}")
            self.conditions.summarize(invalid_spec=str(e))
        except _Stop as stop:
            outcome = stop.outcome
            self.conditions.summarize(stalled=outcome.result == STALLED_RESULT)
        else:
            self.conditions.summarize()
        await self._write_status()
        if outcome.result in (ERROR, STALLED_RESULT, INVALID):
            self.logger.warning(outcome.message)
        return outcome

    async def delete(self) -> Outcome:
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
            credential = await self._credentials(spec)
            async with self._resources(credential, spec) as resources:
                await self._remove_role_assignment(resources, spec)
                await self._azure(ACCOUNT, lambda token: resources.delete_account(spec, token), key=DELETION)
        except _Stop as stop:
            self.conditions.summarize(stalled=False)
            await self._write_status()
            return stop.outcome
        kopf.info(self.body, reason="Deleted", message=f"account {spec.account_name} deleted (deletionPolicy Delete)")
        return Outcome(DELETED)

    async def _parts(self, spec: ClusterSpec) -> Outcome:
        credential = await self._credentials(spec)
        async with self._resources(credential, spec) as resources:
            keys_in_use = await self._keys_in_use(spec)
            account = await self._azure(ACCOUNT, lambda token: resources.ensure_account(
                spec, token, keys_in_use=keys_in_use))
            assert isinstance(account, AccountReady)
            self.new_status["accountEndpoint"] = account.document_endpoint
            self.new_status["consistency"] = spec.consistency.level.value
            self.new_status.update(account.settings)
            self._ready(ACCOUNT, self._account_reason(account),
                        f"account {spec.account_name} ({account.provisioning_state}) at {account.document_endpoint}")
            await self._azure(DATABASE, lambda token: resources.ensure_database(spec, token))
            self._ready(DATABASE, "Ready", f"database {spec.database}")
            await self._azure(CONTAINER, lambda token: resources.ensure_container(spec, token))
            self._ready(CONTAINER, "Ready", f"container {spec.container}")
            throughput = await self._azure(THROUGHPUT, lambda token: resources.ensure_throughput(spec, token))
            assert isinstance(throughput, ThroughputReady)
            self.new_status["throughput"] = {"mode": throughput.mode.value, "requestUnits": throughput.request_units}
            self._ready(THROUGHPUT, throughput.mode.value, f"{throughput.mode.value} {throughput.request_units} RU/s"
                        + (" (maximum)" if throughput.mode.value == "Autoscale" else ""))
            await self._role_assignment(resources, spec)
            keys = None
            if spec.data_plane_auth is DataPlaneAuth.KEY:
                keys = await self._azure(KEYS, lambda _: resources.list_keys(spec), long_running=False)
        both = await self._keys(account.document_endpoint, keys, keys_in_use=keys_in_use)
        await self._network_policy(spec)
        serving = await self._tls(spec)
        return await self._shim(spec, account.document_endpoint, children.keys_checksum(both), serving)

    def _record_tls_mode(self, spec: ClusterSpec) -> None:
        """The TLS mode in force goes to status at the first pass, before any part can stop it: a
        later operator tells an object it created from one an earlier operator served in plain text."""
        mode, _ = pki.mode_in_effect(spec.shim.tls, self.status)
        self.new_status["tls"] = {**(self.status.get("tls") or {}), "mode": mode.value}

    async def _tls(self, spec: ClusterSpec) -> children.ServingTLS | None:
        try:
            outcome = await pki.reconcile(self.kube, self.body, spec.shim.tls, self.status,
                                          policy=self.context.tls_policy, now=self.context.clock())
        except pki.TLSError as e:
            self._fail(TLS, e.reason, e.message, retryable=True)
        self.conditions.set(outcome.condition)
        if outcome.plain_text is None:
            self.conditions.remove(PLAIN_TEXT)
        else:
            self.conditions.set(outcome.plain_text)
        self.new_status["tls"] = outcome.status
        for type_, reason, message in outcome.events:
            kopf.event(self.body, type=type_, reason=reason, message=message)
        return outcome.serving

    async def _shim(self, spec: ClusterSpec, account_endpoint: str, keys_digest: str,
                    serving: children.ServingTLS | None) -> Outcome:
        await self._kube(SHIM, children.service_account(self.body, spec))
        await self._kube(SHIM, children.service(self.body))
        await self._kube(SHIM, children.pod_disruption_budget(self.body))
        deployment = await self._kube(SHIM, children.deployment(
            self.body, spec, image=self.context.shim_image, account_endpoint=account_endpoint,
            keys_digest=keys_digest, tls=serving))
        self.new_status["endpoint"] = children.endpoint(self.name, self.namespace, serving)
        shim = _shim_condition(deployment)
        self.conditions.set(shim)
        return Outcome(READY_RESULT if shim.status == TRUE else PROGRESSING, shim.message)

    async def _role_assignment(self, resources: CosmosResources, spec: ClusterSpec) -> None:
        """EntraID: the shim's identity holds the data-plane role (one for an identity the spec no longer
        names is removed); Key: no role assignment of the operator's is left."""
        if spec.data_plane_auth is DataPlaneAuth.KEY:
            await self._remove_role_assignment(resources, spec)
            self._ready(ROLE_ASSIGNMENT, "NotUsed", "spec.azure.dataPlaneAuth Key: the shim signs in with the "
                        "account keys")
            return
        ready = await self._azure(ROLE_ASSIGNMENT, lambda token: role_assignment.reconcile(resources, spec, token))
        made = self.status.get("roleAssignment") or {}
        if made and made.get("id", "").lower() != ready.id.lower():
            await self._remove_role_assignment(resources, spec)
        self.new_status["roleAssignment"] = ready.as_status()
        self._ready(ROLE_ASSIGNMENT, "Assigned", f"{role_assignment.DATA_CONTRIBUTOR_NAME} for principal "
                    f"{ready.principal_id} on {ready.scope} (assignment {ready.id})")

    async def _remove_role_assignment(self, resources: CosmosResources, spec: ClusterSpec) -> None:
        """The role assignment in ``status.roleAssignment`` (the operator's) is deleted."""
        made = self.status.get("roleAssignment")
        if not made:
            return
        await self._azure(ROLE_ASSIGNMENT, lambda token: role_assignment.remove(resources, spec, made["id"], token),
                          key=ROLE_ASSIGNMENT_REMOVAL)
        self.new_status["roleAssignment"] = None  # a merge patch's None removes the field

    async def _keys_in_use(self, spec: ClusterSpec) -> bool:
        """Whether shim pods that sign in with the account keys may still run: in Key mode, and while a
        switch to EntraID rolls out (then the account keeps accepting keys and the keys Secret stays, so
        that no request fails; both go at the first pass after the rollout)."""
        if spec.data_plane_auth is DataPlaneAuth.KEY:
            return True
        return children.keys_in_use(await self._read(ACCOUNT, object_path("apps/v1", "Deployment", self.namespace,
                                                                          self.name)))

    async def _keys(self, account_endpoint: str, keys, *, keys_in_use: bool) -> tuple[str, ...]:
        """With ``keys`` (Key mode), the keys Secret; without (EntraID), none: the operator's own is deleted
        once no pod uses it."""
        if keys is not None:
            both = (keys.primary_master_key, keys.secondary_master_key)
            secret = children.keys_secret(self.body, account_endpoint=account_endpoint, keys=both)
            await self._kube(KEYS, secret)
            self._ready(KEYS, "Stored", f"account endpoint and keys in Secret {secret['metadata']['name']}")
            return both
        if keys_in_use:
            self._ready(KEYS, "Keyless", "spec.azure.dataPlaneAuth EntraID: switching; the account accepts keys and "
                        "the keys Secret stays until every shim pod signs in with Entra ID")
            return ()
        name = children.keys_secret_name(self.name)
        path = object_path("v1", "Secret", self.namespace, name)
        found = await self._read(KEYS, path)
        if found is not None and any(owner.get("uid") == self.body["metadata"].get("uid")
                                     for owner in found["metadata"].get("ownerReferences") or []):
            try:
                await self.kube.delete(path, uid=found["metadata"]["uid"])
            except KubeError as e:
                self._fail(KEYS, e.reason, str(e), retryable=True)
            kopf.info(self.body, reason="KeysRemoved", message=f"Secret {name} deleted: with dataPlaneAuth EntraID "
                      f"no account key is kept in the cluster")
        self._ready(KEYS, "Keyless", "spec.azure.dataPlaneAuth EntraID: no account key is read or stored, and "
                    "local (key) authentication is disabled on the account")
        return ()

    async def _network_policy(self, spec: ClusterSpec) -> None:
        condition, change = await network_policy.reconcile(self.kube, self.body, spec)
        if condition.status != TRUE:
            self._fail(NETWORK_POLICY, condition.reason, condition.message, retryable=True)
        self._restored(NETWORK_POLICY, "NetworkPolicy", self.name, change)
        self.conditions.set(condition)

    async def _credentials(self, spec: ClusterSpec):
        secret_name = spec.credentials.service_principal_secret
        if secret_name is None:
            credential, who = self.context.credentials.default(), "the operator's own identity"
        else:
            secret = await self._read(CREDENTIALS, object_path("v1", "Secret", self.namespace, secret_name))
            if secret is None:
                self._fail(CREDENTIALS, "SecretNotFound", f"Secret {secret_name!r} not found in namespace "
                           f"{self.namespace}", retryable=True)
            data = {key: base64.b64decode(value).decode("utf-8", errors="replace")
                    for key, value in (secret.get("data") or {}).items()}
            try:
                credential = self.context.credentials.for_service_principal(data, secret_name)
            except InvalidCredentials as e:
                self._fail(CREDENTIALS, "InvalidSecret", str(e), retryable=True)
            who = f"service principal {data['clientId']} (Secret {secret_name})"
        try:
            await credential.get_token(self.context.cloud.credential_scope)
        except ClientAuthenticationError as e:  # refused by the authority, or no identity at all
            self._fail(CREDENTIALS, "AuthenticationFailed", _first_line(e.message), retryable=True)
        except AzureCoreError as e:  # the authority did not answer
            self._fail(CREDENTIALS, "TokenRequestFailed", _first_line(e.message), retryable=True)
        self._ready(CREDENTIALS, "SignedIn", f"signed in to {self.context.cloud.resource_manager} as {who}")
        return credential

    def _resources(self, credential, spec: ClusterSpec) -> CosmosResources:
        return CosmosResources(credential, self.context.cloud, spec.subscription_id,
                               polling_interval=self.context.polling_interval)

    async def _azure(self, part: str, call, *, key: str | None = None, long_running: bool = True):
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
            self._fail(part, e.code, message, retryable=e.retryable, delay=e.retry_after)
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
            raise _Stop(Outcome(PENDING, f"{part}: {result.operation} in progress", delay=result.retry_after))
        AZURE_OPERATIONS.labels(part, "ready" if not isinstance(result, Deleted) else "deleted").inc()
        if key in self.pending:
            self.pending_changes[key] = None
        return result

    async def _read(self, part: str, path: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(path)
        except KubeError as e:
            self._fail(part, e.reason, str(e), retryable=True)

    async def _kube(self, part: str, desired: dict[str, Any]) -> dict[str, Any]:
        """Create, update or restore one child; a restoration gets an event."""
        try:
            stored, change = await self.kube.ensure(desired)
        except KubeError as e:
            self._fail(part, e.reason, str(e), retryable=True)
        self._restored(part, desired["kind"], desired["metadata"]["name"], change)
        return stored

    def _restored(self, part: str, kind: str, name: str, change: str | None) -> None:
        """A child found missing or edited while its part was ready (and the spec unchanged) gets an event."""
        if change == "created" and self.before.status_of(part) == TRUE:
            kopf.info(self.body, reason="Restored", message=f"{kind} {name} was missing: created again")
        elif change == "updated" and self.before.status_of(part) == TRUE and self.generation == self.observed:
            kopf.info(self.body, reason="Restored", message=f"{kind} {name} differed from the spec: set back")

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

    def _account_reason(self, account: AccountReady) -> str:
        """Created or Adopted, as first seen: later passes find every account existing."""
        previous = self.conditions.get(ACCOUNT) or {}
        if previous.get("status") == TRUE:
            return previous["reason"]
        return "Adopted" if account.adopted else "Created"

    def _ready(self, part: str, reason: str, message: str) -> None:
        self.conditions.set(Condition(part, TRUE, reason, message))

    def _fail(self, part: str, reason: str, message: str, *, retryable: bool, delay: float | None = None):
        RECONCILE_ERRORS.labels(self.namespace, self.name, part, reason).inc()
        self.conditions.set(Condition(part, FALSE, reason, message))
        self.conditions.wait_after(part)
        raise _Stop(Outcome(ERROR if retryable else STALLED_RESULT, f"{part}: {reason}: {message}", delay))

    async def _write_status(self) -> None:
        """One status write, and none when nothing changed (no watch event, no resourceVersion)."""
        status = {"observedGeneration": self.generation, "conditions": self.conditions.as_list(), **self.new_status}
        stored = {key: value for key, value in self.status.items() if key != "kopf"}
        _remove_dropped_fields(status, stored)
        if self.pending_changes:
            status["pendingOperations"] = self.pending_changes
        _record_state(self.namespace, self.name, {**stored, **status})
        if contains(stored, {key: value for key, value in status.items() if key != "pendingOperations"}) and \
                all(stored.get("pendingOperations", {}).get(key) == value
                    for key, value in self.pending_changes.items()):
            return
        await _patch_status(self.kube, self.namespace, self.name, status)
        _post_events(self.body, self.status.get("conditions"), status["conditions"])


def _remove_dropped_fields(status: dict[str, Any], stored: dict[str, Any]) -> None:
    """A merge patch keeps fields it does not name: an object of the status that lost a field (the
    periodic backup's interval when it became continuous) names it with None, which removes it."""
    for key, value in status.items():
        if key != "pendingOperations" and isinstance(value, dict) and isinstance(stored.get(key), dict):
            for dropped in stored[key].keys() - value.keys():
                value[dropped] = None


def _shim_condition(deployment: dict[str, Any] | None) -> Condition:
    if deployment is None:
        return Condition(SHIM, FALSE, "DeploymentMissing", "the shim's Deployment is missing")
    available, wanted = children.available_replicas(deployment)
    message = f"{available} of {wanted} replicas available"
    return Condition(SHIM, TRUE, "Available", message) if available > 0 else \
        Condition(SHIM, FALSE, UNAVAILABLE, message)


def _record_state(namespace: str, name: str, status: dict[str, Any]) -> None:
    """The cluster's Ready status and throughput in force, for the operator's gauges."""
    ready = (Conditions(status.get("conditions"), 0).get(READY) or {}).get("status", "Unknown")
    throughput = status.get("throughput") or {}
    CLUSTERS.record(namespace, name, ClusterState(ready, throughput.get("mode"), throughput.get("requestUnits")))


def _post_events(body: dict[str, Any], before: list[dict[str, Any]] | None, after: list[dict[str, Any]]) -> None:
    for type_, reason, message in events(before, after):
        kopf.event(body, type=type_, reason=reason, message=message)


async def _patch_status(kube: Kube, namespace: str, name: str, status: dict[str, Any]) -> None:
    try:
        await kube.merge_patch(cluster_path(namespace, name) + "/status", {"status": status})
    except KubeError as e:
        if e.status != 404:  # deleted meanwhile: nothing to report on
            raise


def _first_line(message: str | None) -> str:
    return (message or "").strip().splitlines()[0][:500] if (message or "").strip() else "authentication failed"
