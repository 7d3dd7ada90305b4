"""The Kubernetes objects that run the shim for one CosmosEtcdCluster, as plain dicts.

Pure functions of the cluster's name, namespace, parsed spec and what Azure told the operator
(the account endpoint and key): the Deployment running ``cosmos-etcd serve --backend cosmos``,
the Service in front of it, its PodDisruptionBudget, its ServiceAccount and the Secret holding the
account key. Every object is owned by the CosmosEtcdCluster (Kubernetes' garbage collector deletes
them with it).

With ``spec.azure.dataPlaneAuth: EntraID`` there is no key: the ServiceAccount carries
``azure.workload.identity/client-id`` (``spec.shim.identity.clientId``), the pods carry the label
``azure.workload.identity/use: "true"``, so that Azure Workload Identity's webhook projects a
federated token into them, and the shim runs with ``--cosmos-auth entra-id`` (no key file, no key
Secret mounted, no keys checksum).

Children carry ``app.kubernetes.io/name``, ``component``, ``part-of`` and ``managed-by`` labels
and ``cosmosetcd.io/cluster: <name>``, but neither the owner's labels nor
``app.kubernetes.io/instance``: GitOps tools track their own objects by such labels, and children
that carried them would be shown as out of sync or pruned.

The etcd endpoint is the Service: ``https://<name>.<namespace>.svc:2379`` when the shim serves
TLS (:class:`ServingTLS`, which :mod:`cosmos_etcd_operator.pki` decides), ``http://...`` without.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import kopf

from cosmos_etcd_operator.spec import ClusterSpec, DataPlaneAuth

CLIENT_PORT = 2379
PEER_PORT = 2380
METRICS_PORT = 2381
SHIM_UID = 65532
DATA_DIR = "/var/lib/cosmos-etcd"
TLS_DIR = "/etc/cosmos-etcd/tls"
KEYS_DIR = "/etc/cosmos-etcd/cosmos"
SECRET_ENDPOINT = "endpoint"
SECRET_KEY = "key"  # the primary key alone, for people and tools that read the Secret
SECRET_KEYS = "keys"  # both keys, one a line: the file the shim reads (cosmos-etcd serve --cosmos-key-file)
CLUSTER_LABEL = "cosmosetcd.io/cluster"
MANAGED_BY = "cosmos-etcd-operator"
KEYS_CHECKSUM_ANNOTATION = "cosmosetcd.io/keys-checksum"
# Azure Workload Identity's contract with its mutating webhook.
WORKLOAD_IDENTITY_USE_LABEL = "azure.workload.identity/use"
WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"

DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


@dataclasses.dataclass(frozen=True)
class ServingTLS:
    """The TLS the shim serves: the kubernetes.io/tls Secret it mounts (tls.crt, tls.key, ca.crt)."""
    secret_name: str
    client_cert_auth: bool = True


def keys_secret_name(name: str) -> str:
    return f"{name}-cosmos-keys"


def endpoint(name: str, namespace: str, tls: ServingTLS | None) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://{name}.{namespace}.svc:{CLIENT_PORT}"


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "cosmos-etcd", CLUSTER_LABEL: name}


def labels(name: str) -> dict[str, str]:
    return {**selector(name), "app.kubernetes.io/component": "etcd", "app.kubernetes.io/part-of": "cosmos-etcd",
            "app.kubernetes.io/managed-by": MANAGED_BY}


def child(owner: Mapping[str, Any], api_version: str, kind: str, name: str | None = None,
           **fields: Any) -> dict[str, Any]:
    """An object in the owner's namespace, labelled for it and owned by it (named after it by default)."""
    cluster, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    obj = {"apiVersion": api_version, "kind": kind,
           "metadata": {"name": name or cluster, "namespace": namespace, "labels": labels(cluster)}, **fields}
    kopf.append_owner_reference(obj, owner=owner)
    return obj


def keys_secret(owner: Mapping[str, Any], *, account_endpoint: str, keys: Sequence[str]) -> dict[str, Any]:
    """The Secret the shim reads the account keys from, primary first (base64 in ``data``, as the
    API returns it). Both keys are there so that a shim whose key was just regenerated moves to
    the other one at its first 401, without waiting for the mounted Secret to be updated."""
    return child(owner, "v1", "Secret", keys_secret_name(owner["metadata"]["name"]), type="Opaque",
                  data={SECRET_ENDPOINT: _b64(account_endpoint), SECRET_KEY: _b64(keys[0]),
                        SECRET_KEYS: _b64("".join(f"{key}\n" for key in keys))})


def secret(owner: Mapping[str, Any], name: str, *, type_: str, data: Mapping[str, str],
           annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Secret of the cluster's (``data`` in base64), such as the managed PKI's."""
    obj = child(owner, "v1", "Secret", name, type=type_, data=dict(data))
    if annotations:
        obj["metadata"]["annotations"] = dict(annotations)
    return obj


def keys_checksum(keys: Sequence[str]) -> str:
    """A digest of the keys for the pod template: rotated keys roll the pods too (it reveals nothing)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def service(owner: Mapping[str, Any]) -> dict[str, Any]:
    """The etcd endpoint, and the shims' /metrics for the chart's ServiceMonitor (which selects
    Services, not pods)."""
    return child(owner, "v1", "Service", spec={
        "type": "ClusterIP",
        "selector": selector(owner["metadata"]["name"]),
        "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP",
                   "appProtocol": "grpc"},
                  {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP",
                   "appProtocol": "http"}],
    })


def service_account(owner: Mapping[str, Any], spec: ClusterSpec) -> dict[str, Any]:
    """The shim pods' own ServiceAccount (named after the cluster, no API token mounted); with
    EntraID, annotated with the client id of the Entra ID identity it federates with."""
    obj = child(owner, "v1", "ServiceAccount", automountServiceAccountToken=False)
    if spec.data_plane_auth is DataPlaneAuth.ENTRA_ID:
        obj["metadata"]["annotations"] = {WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION: spec.shim.identity.client_id}
    return obj


def pod_disruption_budget(owner: Mapping[str, Any]) -> dict[str, Any]:
    return child(owner, "policy/v1", "PodDisruptionBudget",
                  spec={"maxUnavailable": 1, "selector": {"matchLabels": selector(owner["metadata"]["name"])}})


def deployment(owner: Mapping[str, Any], spec: ClusterSpec, *, image: str, account_endpoint: str,
               keys_digest: str, tls: ServingTLS | None) -> dict[str, Any]:
    """The shim's Deployment. ``image`` is used when the spec names none; ``keys_digest`` is
    :func:`keys_checksum` of the key in the Secret; ``tls``: what the shim serves (None: plain text)."""
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    scheme = "https" if tls else "http"
    args = [
        "serve", "--backend", "cosmos",
        "--name", "$(POD_NAME)",
        "--data-dir", DATA_DIR,
        "--cosmos-endpoint", account_endpoint,
        "--cosmos-database", spec.database,
        "--cosmos-container", spec.container,
        "--cosmos-no-create",
        "--listen-client-urls", f"{scheme}://0.0.0.0:{CLIENT_PORT}",
        "--advertise-client-urls", endpoint(name, namespace, tls),
        "--listen-metrics-urls", f"http://0.0.0.0:{METRICS_PORT}",
        "--listen-peer-urls", f"{scheme}://0.0.0.0:{PEER_PORT}",
        "--initial-advertise-peer-urls", f"{scheme}://$(POD_IP):{PEER_PORT}",
    ]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": DATA_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
    pod_labels, pod_annotations = labels(name), {}
    if spec.data_plane_auth is DataPlaneAuth.ENTRA_ID:
        # No key anywhere: the webhook gives the pod AZURE_CLIENT_ID, AZURE_TENANT_ID,
        # AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST, which the shim's credential reads.
        args += ["--cosmos-auth", "entra-id"]
        pod_labels[WORKLOAD_IDENTITY_USE_LABEL] = "true"
    else:
        # A mounted Secret (not an environment variable) is updated in place when the keys rotate.
        args += ["--cosmos-key-file", f"{KEYS_DIR}/{SECRET_KEYS}"]
        mounts.append({"name": "cosmos-keys", "mountPath": KEYS_DIR, "readOnly": True})
        volumes.append({"name": "cosmos-keys", "secret": {
            "secretName": keys_secret_name(name), "defaultMode": 0o440,
            "items": [{"key": SECRET_KEYS, "path": SECRET_KEYS}]}})
        pod_annotations[KEYS_CHECKSUM_ANNOTATION] = keys_digest
    if tls:
        args += ["--cert-file", f"{TLS_DIR}/tls.crt", "--key-file", f"{TLS_DIR}/tls.key"]
        if tls.client_cert_auth:
            args += ["--trusted-ca-file", f"{TLS_DIR}/ca.crt", "--client-cert-auth"]
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": tls.secret_name, "defaultMode": 0o440}})
    container = {
        "name": "shim",
        "image": spec.shim.image or image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["cosmos-etcd"],
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "ports": [{"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
                  {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        **_probes(),
        "resources": dict(spec.shim.resources) or DEFAULT_RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    pod = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,  # the shim never calls the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": SHIM_UID, "runAsGroup": SHIM_UID, "fsGroup": SHIM_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector(name)}},
        }]}},
        "containers": [container],
        "volumes": volumes,
    }
    return child(owner, "apps/v1", "Deployment", spec={
        "replicas": spec.shim.replicas,
        "selector": {"matchLabels": selector(name)},
        "template": {"metadata": {"labels": pod_labels, "annotations": pod_annotations}, "spec": pod},
    })


def _probes() -> dict[str, Any]:
    """Liveness, readiness and startup probes on the shim's health endpoints (etcd 3.6's).

    They are served on the metrics port, plain http whether or not the client port speaks TLS.
    Liveness asks ``/livez`` (this process answers from memory: a Cosmos DB outage does not restart
    it), readiness ``/readyz`` (a linearizable read: a replica that cannot reach the log takes no
    traffic). The startup probe allows five minutes: a replica replays the log since the last
    compaction before it serves.
    """
    def on(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "metrics"}}
    return {
        "startupProbe": {**on("/livez"), "periodSeconds": 5, "failureThreshold": 60, "timeoutSeconds": 3},
        "readinessProbe": {**on("/readyz"), "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 3},
        "livenessProbe": {**on("/livez"), "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 5},
    }


def keys_in_use(deployment_object: Mapping[str, Any] | None) -> bool:
    """Whether pods of the shim's Deployment may sign in with the account keys: its template mounts
    the key file, or a keyless template has not replaced every older pod yet (its controller has not
    reported the latest generation with every replica updated and no other left)."""
    if not deployment_object:
        return False
    template = deployment_object.get("spec", {}).get("template", {}).get("spec", {})
    if any("--cosmos-key-file" in container.get("args", []) for container in template.get("containers", [])):
        return True
    wanted = deployment_object.get("spec", {}).get("replicas", 1)
    status = deployment_object.get("status") or {}
    rolled_out = (status.get("observedGeneration", 0) >= deployment_object.get("metadata", {}).get("generation", 0)
                  and status.get("updatedReplicas", 0) == wanted and status.get("replicas", 0) == wanted)
    return not rolled_out


def available_replicas(deployment_object: Mapping[str, Any] | None) -> tuple[int, int]:
    """(available, wanted) replicas of a Deployment as its controller last reported them."""
    if not deployment_object:
        return 0, 0
    wanted = deployment_object.get("spec", {}).get("replicas", 1)
    status = deployment_object.get("status") or {}
    if status.get("observedGeneration", 0) < deployment_object.get("metadata", {}).get("generation", 0):
        return 0, wanted  # the controller has not seen the latest spec yet
    return status.get("availableReplicas", 0), wanted


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
