"""The Cosmos DB parts of a reconciliation: ``Account``, ``Database``, ``Container``, ``Throughput``.

Each is one Azure step of :mod:`cosmos_etcd_operator.arm` (which reads the resource, compares it
with the spec and changes only what differs), run through :meth:`Reconciliation.azure` so that a
long-running operation resumes from its continuation token; each sets its condition and the status
fields it owns. The account's deletion is here too: the last step of a ``Delete`` policy.
"""
from __future__ import annotations

from cosmos_etcd_operator.arm import AccountReady, CosmosResources, ThroughputReady
from cosmos_etcd_operator.conditions import ACCOUNT, CONTAINER, DATABASE, THROUGHPUT, TRUE
from cosmos_etcd_operator.reconciliation import Reconciliation
from cosmos_etcd_operator.spec import ClusterSpec

DELETION = "deletion"  # the key of the account deletion in status.pendingOperations


async def reconcile_account(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec, *,
                            keys_in_use: bool) -> AccountReady:
    """The account (``keys_in_use``: whether it must still accept keys); its endpoint, consistency
    and settings go to status."""
    account = await step.azure(ACCOUNT, lambda token: resources.ensure_account(spec, token, keys_in_use=keys_in_use))
    assert isinstance(account, AccountReady)
    step.new_status["accountEndpoint"] = account.document_endpoint
    step.new_status["consistency"] = spec.consistency.level.value
    step.new_status.update(account.settings)
    step.ready(ACCOUNT, _account_reason(step, account),
               f"account {spec.account_name} ({account.provisioning_state}) at {account.document_endpoint}")
    return account


def _account_reason(step: Reconciliation, account: AccountReady) -> str:
    """Created or Adopted, as first seen: later passes find every account existing."""
    previous = step.conditions.get(ACCOUNT) or {}
    if previous.get("status") == TRUE:
        return previous["reason"]
    return "Adopted" if account.adopted else "Created"


async def reconcile_database(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec) -> None:
    await step.azure(DATABASE, lambda token: resources.ensure_database(spec, token))
    step.ready(DATABASE, "Ready", f"database {spec.database}")


async def reconcile_container(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec) -> None:
    await step.azure(CONTAINER, lambda token: resources.ensure_container(spec, token))
    step.ready(CONTAINER, "Ready", f"container {spec.container}")


async def reconcile_throughput(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec) -> None:
    throughput = await step.azure(THROUGHPUT, lambda token: resources.ensure_throughput(spec, token))
    assert isinstance(throughput, ThroughputReady)
    step.new_status["throughput"] = {"mode": throughput.mode.value, "requestUnits": throughput.request_units}
    step.ready(THROUGHPUT, throughput.mode.value, f"{throughput.mode.value} {throughput.request_units} RU/s"
               + (" (maximum)" if throughput.mode.value == "Autoscale" else ""))


async def delete_account(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec) -> None:
    await step.azure(ACCOUNT, lambda token: resources.delete_account(spec, token), key=DELETION)
