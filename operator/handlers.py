"""The kopf handlers of CosmosEtcdCluster: reconcile, delete, correct drift, follow the shim's pods.

This module holds kopf's registrations and the order of the parts. One pass
(:class:`~cosmos_etcd_operator.reconciliation.Reconciliation`) runs the parts in order — credentials
(:mod:`.credentials`), account, database, container and throughput (:mod:`.cosmos_account`), the
data-plane role assignment (:mod:`.role_assignment`), keys (:mod:`.account_keys`), NetworkPolicy
(:mod:`.network_policy`), TLS (:mod:`.pki`), shim (:mod:`.shim_workload`) — each idempotent (it
reads, compares, and changes only what differs) and each reporting its own condition (see
:mod:`cosmos_etcd_operator.conditions`). It stops at the first part that is not ready and writes the
status once:

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

Deletion: with ``deletionPolicy: Retain`` the Azure account stays (and the role assignment with it);
with ``Delete`` the role assignment the operator made and then the account are deleted (long-running
operations, handled like the others). Children go with the object through their owner references.
"""
from __future__ import annotations

import time
from typing import Any

import kopf

from cosmos_etcd_operator import account_keys, children, cosmos_account, network_policy, pki, role_assignment, \
    shim_workload
from cosmos_etcd_operator.conditions import INVALID_SPEC, READY, SHIM, STALLED, TRUE, WAITING, Conditions
from cosmos_etcd_operator.credentials import sign_in
from cosmos_etcd_operator.kubeapi import cluster_path, connection_info, load_configuration, object_path
from cosmos_etcd_operator.metrics import CLUSTERS, RECONCILE_SECONDS, RECONCILIATIONS
from cosmos_etcd_operator.reconciliation import (DELETED, ERROR, INVALID, PENDING, SKIPPED, STALLED_RESULT,
                                                 OperatorContext, Outcome, Reconciliation, patch_status, post_events,
                                                 record_state)
from cosmos_etcd_operator.spec import GROUP, PLURAL, VERSION, ClusterSpec

FINALIZER = f"{GROUP}/finalizer"


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
        outcome = await Reconciliation(context, body, logger).delete(_deletion)
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
        shim = shim_workload.availability(deployment)
        current = conditions.get(SHIM)
        if (current["status"], current["message"]) == (shim.status, shim.message):
            return
        conditions.set(shim)
        conditions.summarize(stalled=conditions.status_of(STALLED) == TRUE)
        await patch_status(context.kube, namespace, name, {"conditions": conditions.as_list()})
        record_state(namespace, name, {**status, "conditions": conditions.as_list()})
        post_events(cluster, status.get("conditions"), conditions.as_list())


# -- the order of the parts -----------------------------------------------------------------------

async def reconcile(context: OperatorContext, namespace: str, name: str, logger, *, trigger: str) -> Outcome:
    """One reconciliation of the object as stored now (``trigger``: change or drift)."""
    started = time.monotonic()
    async with context.lock(namespace, name):
        body = await context.kube.get(cluster_path(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return Outcome(SKIPPED)
        if trigger == "drift" and not _settled(body):
            return Outcome(SKIPPED)
        outcome = await Reconciliation(context, body, logger).run(_parts)
    RECONCILIATIONS.labels(trigger, outcome.result).inc()
    RECONCILE_SECONDS.observe(time.monotonic() - started)
    return outcome


def _settled(body: dict[str, Any]) -> bool:
    """The handlers have processed the current spec, and it was valid: the timer may look."""
    status = body.get("status") or {}
    ready = Conditions(status.get("conditions"), 0).get(READY) or {}
    return status.get("observedGeneration") == body["metadata"].get("generation") and \
        ready.get("reason") != INVALID_SPEC


async def _parts(step: Reconciliation, spec: ClusterSpec) -> Outcome:
    pki.record_mode(step, spec)
    credential = await sign_in(step, spec)
    async with step.resources(credential, spec) as resources:
        keys_in_use = await account_keys.in_use(step, spec)
        account = await cosmos_account.reconcile_account(step, resources, spec, keys_in_use=keys_in_use)
        await cosmos_account.reconcile_database(step, resources, spec)
        await cosmos_account.reconcile_container(step, resources, spec)
        await cosmos_account.reconcile_throughput(step, resources, spec)
        await role_assignment.reconcile_part(step, resources, spec)
        keys = await account_keys.reconcile(step, resources, spec, account.document_endpoint, keys_in_use=keys_in_use)
    await network_policy.reconcile_part(step, spec)
    serving = await pki.reconcile_part(step, spec)
    return await shim_workload.reconcile(step, spec, account_endpoint=account.document_endpoint,
                                         keys_digest=children.keys_checksum(keys), serving=serving)


async def _deletion(step: Reconciliation, spec: ClusterSpec) -> None:
    credential = await sign_in(step, spec)
    async with step.resources(credential, spec) as resources:
        await role_assignment.remove_part(step, resources, spec)
        await cosmos_account.delete_account(step, resources, spec)
