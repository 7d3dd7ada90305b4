"""The ``Keys`` part of a reconciliation: the account keys the shim signs in with, or none.

Data-plane access (``spec.azure.dataPlaneAuth``):

* ``Key``: the account's keys (both, so that the shim moves to the other one when the first is
  rotated) and endpoint go into the Secret ``<name>-cosmos-keys``, which the shim mounts. A key
  rotated in Azure is written into the Secret at the next pass.
* ``EntraID``: the role assignment part gives the shim's identity the Data Contributor role on
  the database (:mod:`cosmos_etcd_operator.role_assignment`), the account has local auth disabled,
  and this part reads no key and writes no Secret. A keys Secret that the operator made while the
  cluster was in Key mode (owned by this CosmosEtcdCluster) is deleted, since its keys no longer
  open anything and must not linger in the cluster; a Secret of that name that someone else owns
  is left alone.

A switch from Key to EntraID loses no request: until the shim's Deployment has rolled out its
keyless template (no pod of the old one left, :func:`in_use`), the account keeps accepting keys
and the keys Secret stays; the first pass after the rollout disables local auth and deletes the
Secret.
"""
from __future__ import annotations

import kopf

from cosmos_etcd_operator import children
from cosmos_etcd_operator.arm import CosmosResources
from cosmos_etcd_operator.conditions import ACCOUNT, KEYS
from cosmos_etcd_operator.kubeapi import KubeError, object_path
from cosmos_etcd_operator.reconciliation import Reconciliation
from cosmos_etcd_operator.spec import ClusterSpec, DataPlaneAuth


async def in_use(step: Reconciliation, spec: ClusterSpec) -> bool:
    """Whether shim pods that sign in with the account keys may still run: in Key mode, and while a
    switch to EntraID rolls out (read for the account part, which keeps local auth on meanwhile)."""
    if spec.data_plane_auth is DataPlaneAuth.KEY:
        return True
    return children.keys_in_use(await step.read(ACCOUNT, object_path("apps/v1", "Deployment", step.namespace,
                                                                      step.name)))


async def reconcile(step: Reconciliation, resources: CosmosResources, spec: ClusterSpec, account_endpoint: str, *,
                    keys_in_use: bool) -> tuple[str, ...]:
    """Key mode: the account's keys, listed, in the keys Secret. EntraID: no Secret; the operator's
    own is deleted once no pod uses it. Returns the keys the shim gets."""
    if spec.data_plane_auth is DataPlaneAuth.KEY:
        keys = await step.azure(KEYS, lambda _: resources.list_keys(spec), long_running=False)
        both = (keys.primary_master_key, keys.secondary_master_key)
        secret = children.keys_secret(step.body, account_endpoint=account_endpoint, keys=both)
        await step.child(KEYS, secret)
        step.ready(KEYS, "Stored", f"account endpoint and keys in Secret {secret['metadata']['name']}")
        return both
    if keys_in_use:
        step.ready(KEYS, "Keyless", "spec.azure.dataPlaneAuth EntraID: switching; the account accepts keys and "
                   "the keys Secret stays until every shim pod signs in with Entra ID")
        return ()
    name = children.keys_secret_name(step.name)
    path = object_path("v1", "Secret", step.namespace, name)
    found = await step.read(KEYS, path)
    if found is not None and any(owner.get("uid") == step.body["metadata"].get("uid")
                                 for owner in found["metadata"].get("ownerReferences") or []):
        try:
            await step.kube.delete(path, uid=found["metadata"]["uid"])
        except KubeError as e:
            step.fail(KEYS, e.reason, str(e), retryable=True)
        kopf.info(step.body, reason="KeysRemoved", message=f"Secret {name} deleted: with dataPlaneAuth EntraID "
                  f"no account key is kept in the cluster")
    step.ready(KEYS, "Keyless", "spec.azure.dataPlaneAuth EntraID: no account key is read or stored, and "
               "local (key) authentication is disabled on the account")
    return ()
