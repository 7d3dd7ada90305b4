"""The operator's own Kubernetes API calls: reading Secrets and the CosmosEtcdCluster, writing its
status, and keeping the shim's objects as the operator renders them.

kopf watches and patches the CosmosEtcdCluster itself; everything else goes through the
``kubernetes`` client. Both log in the same way, from :func:`load_configuration`: the pod's
service account in a cluster, else the kubeconfig that ``KUBECONFIG`` names when the login happens
(the client library reads that variable once, at import; :func:`connection_info` hands the result
to kopf's login). The client is synchronous, so every call runs in a worker thread: called from the
event loop directly, it would stall kopf (and, in tests, the in-process API server that answers it).

Children are written with server-side apply (field manager ``cosmos-etcd-operator``, forced), and
only when the stored object differs from the rendered one, so a steady state costs one GET per
child and no write; a missing child is created, a changed one set back.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes

from cosmos_etcd_operator.spec import GROUP, PLURAL, VERSION

FIELD_MANAGER = "cosmos-etcd-operator"

# apiVersion and kind of everything the operator writes -> the collection's URL part.
_PLURALS = {
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    (f"{GROUP}/{VERSION}", "CosmosEtcdCluster"): PLURAL,
}


class KubeError(Exception):
    """A Kubernetes API call failed; the message is the API's (never an object's content)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason = status, reason


def load_configuration() -> kubernetes.client.Configuration:
    """In a pod, its service account; elsewhere the kubeconfig (``KUBECONFIG`` or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                           client_configuration=configuration)
    return configuration


def connection_info(configuration: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """The same login for kopf's own API client."""
    header = (configuration.get_api_key_with_prefix("BearerToken")
              or configuration.get_api_key_with_prefix("authorization") or "")
    scheme, _, token = header.partition(" ") if " " in header else ("", "", header)
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert, insecure=not configuration.verify_ssl,
        username=configuration.username or None, password=configuration.password or None,
        scheme=scheme or None, token=token or None,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file)


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{_PLURALS[api_version, kind]}"
    return f"{path}/{name}" if name else path


def cluster_path(namespace: str, name: str) -> str:
    return object_path(f"{GROUP}/{VERSION}", "CosmosEtcdCluster", namespace, name)


def contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` has every field of ``wanted`` with the same value (lists item by item).

    What the API server adds (defaults, status, managed fields) does not count as a difference."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(key in actual and contains(actual[key], value)
                                                   for key, value in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(actual) == len(wanted)
                and all(contains(a, w) for a, w in zip(actual, wanted)))
    return actual == wanted


class Kube:
    """A thin asyncio front of the ``kubernetes`` client's ApiClient, for JSON objects as dicts."""

    def __init__(self, configuration: kubernetes.client.Configuration):
        self._client = kubernetes.client.ApiClient(configuration)

    def close(self) -> None:
        self._client.close()

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        return await self._request("GET", path, missing_ok=True)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", path, body=body)

    async def apply(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of ``body`` as the operator's field manager."""
        return await self._request("PATCH", path, body=body, content_type="application/apply-patch+yaml",
                                   query={"fieldManager": FIELD_MANAGER, "force": "true"})

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    async def delete(self, path: str, *, uid: str) -> bool:
        """Delete the object if it is still the one with ``uid`` (a precondition: never a namesake made
        meanwhile); False when it was already gone."""
        return await self._request("DELETE", path, body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                         "preconditions": {"uid": uid}},
                                   missing_ok=True) is not None

    async def ensure(self, desired: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Make the stored object contain ``desired``: (the object, "created", "updated" or None)."""
        metadata = desired["metadata"]
        collection = object_path(desired["apiVersion"], desired["kind"], metadata["namespace"])
        path = f"{collection}/{metadata['name']}"
        current = await self.get(path)
        if current is None:
            # Created by server-side apply as well: a POST's fields belong to a manager of operation
            # Update named after the client library, and a later apply that drops one of them (a
            # volume, a port) would leave it in place and find the child different at every pass.
            return await self.apply(path, desired), "created"
        if contains(current, desired):
            return current, None
        return await self.apply(path, desired), "updated"

    async def _request(self, method: str, path: str, *, body: Mapping[str, Any] | None = None,
                       content_type: str = "application/json", query: Mapping[str, str] | None = None,
                       missing_ok: bool = False) -> dict[str, Any] | None:
        def call():
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            _, url, headers, serialized, _ = self._client.param_serialize(
                method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
                auth_settings=["BearerToken"])
            response = self._client.call_api(method, url, header_params=headers, body=serialized)
            return response.status, response.read()

        status, data = await asyncio.to_thread(call)
        if status == 404 and missing_ok:
            return None
        answer = json.loads(data) if data else {}
        if status >= 400:
            raise KubeError(status, str(answer.get("reason", "Error")), str(answer.get("message", ""))[:500])
        return answer
