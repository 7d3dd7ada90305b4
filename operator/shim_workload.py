"""The ``Shim`` part of a reconciliation: the shim's ServiceAccount, Service, PodDisruptionBudget and
Deployment (rendered by :mod:`cosmos_etcd_operator.children`), and its availability.

The part is ready once one replica of the Deployment is available; until then the pass ends as
progressing, not as an error, and the handler that follows the Deployment's events
(:func:`availability`) moves the condition as pods come and go.
"""
from __future__ import annotations

from typing import Any

from cosmos_etcd_operator import children
from cosmos_etcd_operator.conditions import FALSE, SHIM, TRUE, UNAVAILABLE, Condition
from cosmos_etcd_operator.reconciliation import PROGRESSING, READY_RESULT, Outcome, Reconciliation
from cosmos_etcd_operator.spec import ClusterSpec


async def reconcile(step: Reconciliation, spec: ClusterSpec, *, account_endpoint: str, keys_digest: str,
                    serving: children.ServingTLS | None) -> Outcome:
    """The shim's objects as the spec says; ``keys_digest`` changes the pod template when the keys do
    (a rotation rolls the pods), ``serving`` is the TLS part's certificate (None: plain text)."""
    await step.child(SHIM, children.service_account(step.body, spec))
    await step.child(SHIM, children.service(step.body))
    await step.child(SHIM, children.pod_disruption_budget(step.body))
    deployment = await step.child(SHIM, children.deployment(
        step.body, spec, image=step.context.shim_image, account_endpoint=account_endpoint,
        keys_digest=keys_digest, tls=serving))
    step.new_status["endpoint"] = children.endpoint(step.name, step.namespace, serving)
    shim = availability(deployment)
    step.conditions.set(shim)
    return Outcome(READY_RESULT if shim.status == TRUE else PROGRESSING, shim.message)


def availability(deployment: dict[str, Any] | None) -> Condition:
    """The ``Shim`` condition of the Deployment as stored."""
    if deployment is None:
        return Condition(SHIM, FALSE, "DeploymentMissing", "the shim's Deployment is missing")
    available, wanted = children.available_replicas(deployment)
    message = f"{available} of {wanted} replicas available"
    return Condition(SHIM, TRUE, "Available", message) if available > 0 else \
        Condition(SHIM, FALSE, UNAVAILABLE, message)
