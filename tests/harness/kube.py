"""The Kubernetes API for the operator's tests: kmock's in-memory emulator, made faithful enough
for kopf and for the CosmosEtcdCluster CRD.

:class:`KubeAPI` adds to ``kmock.KubernetesEmulator`` what the operator depends on and kmock
leaves out (see the shared TESTING.md notes):

* ``metadata.uid``, ``resourceVersion``, ``creationTimestamp`` on create, a name from
  ``generateName``; ``generation`` (for objects with a ``spec``) starting at 1 and incremented when
  ``spec`` changes, as the API server does.
* The status subresource: a patch of ``.../status`` changes only ``status``, a patch of the object
  never changes ``status``.
* Admission of CosmosEtcdClusters by the CRD in ``crds/`` (:class:`CrdAdmission`): the schema's
  defaults are applied, the OpenAPI schema is checked with ``jsonschema`` and every
  ``x-kubernetes-validations`` rule is evaluated by a real CEL interpreter (``celpy``), transition
  rules (``oldSelf``) on updates only. A refused request answers 422 ``Invalid`` and changes nothing.
* ``calls``: every request of the clients under test (kopf's and the operator's, not the test's
  own kmock client) as ``(method, path)``, the path with its query string when it has one
  (``?watch=true`` tells a watch from a list); the ``kube_api_calls`` fixture exposes it, for the
  chart's RBAC test. ``writes``: every request with a body, as ``(method, path, body)``.
* ``changed()``: an awaitable that fires on every change, so that tests wait for events, not time.

:func:`kube_api` (fixture) starts it on 127.0.0.1, declares the resources the operator uses, and
points ``KUBECONFIG`` at a kubeconfig file naming its URL: kopf and the ``kubernetes`` client log in
through it exactly as in a cluster.
"""
from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import pathlib
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import celpy
import jsonschema
import kmock
import pytest_asyncio
import yaml
from aiohttp import web
from kmock._internal import dicts as kmock_dicts

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "cosmosetcd.io_cosmosetcdclusters.yaml"

APPLY_PATCH = "application/apply-patch+yaml"
CLUSTERS = "cosmosetcd.io/v1alpha1/cosmosetcdclusters"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
PDBS = "policy/v1/poddisruptionbudgets"
SECRETS = "v1/secrets"
SERVICE_ACCOUNTS = "v1/serviceaccounts"
NETWORK_POLICIES = "networking.k8s.io/v1/networkpolicies"
EVENTS = "v1/events"

# What the operator and kopf discover, read and write.
RESOURCES = {
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch", "get"}),
    CLUSTERS: kmock.ResourceInfo(kind="CosmosEtcdCluster", singular="cosmosetcdcluster", namespaced=True,
                                 shortnames={"cec"}, categories={"cosmosetcd"}, subresources={"status"},
                                 verbs={"list", "watch", "get", "patch", "create", "delete", "update"}),
    EVENTS: kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"create", "list"}),
    DEPLOYMENTS: kmock.ResourceInfo(kind="Deployment", namespaced=True, subresources={"status"},
                                    verbs={"list", "watch", "get", "patch", "create", "delete"}),
    SERVICES: kmock.ResourceInfo(kind="Service", namespaced=True, verbs={"list", "watch", "get", "patch", "create", "delete"}),
    PDBS: kmock.ResourceInfo(kind="PodDisruptionBudget", namespaced=True,
                             verbs={"list", "watch", "get", "patch", "create", "delete"}),
    SECRETS: kmock.ResourceInfo(kind="Secret", namespaced=True, verbs={"list", "watch", "get", "patch", "create", "delete"}),
    SERVICE_ACCOUNTS: kmock.ResourceInfo(kind="ServiceAccount", namespaced=True,
                                         verbs={"list", "watch", "get", "patch", "create", "delete"}),
    NETWORK_POLICIES: kmock.ResourceInfo(kind="NetworkPolicy", namespaced=True,
                                         verbs={"list", "watch", "get", "patch", "create", "delete"}),
}


class Invalid(Exception):
    """The request breaks the CRD's schema or one of its CEL rules."""


class CrdAdmission:
    """What the API server does with a custom resource before storing it, for one CRD version."""

    def __init__(self, crd: Mapping[str, Any]):
        version = crd["spec"]["versions"][0]
        self.schema = version["schema"]["openAPIV3Schema"]
        self._validator = jsonschema.Draft202012Validator(self.schema)
        self._cel = celpy.Environment()
        self._programs: dict[str, Any] = {}

    def admit(self, new: dict[str, Any], old: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return ``new`` with the schema's defaults, or raise :class:`Invalid` with every error."""
        admitted = copy.deepcopy(new)
        apply_defaults(self.schema, admitted)
        errors = [f"{_path(error.absolute_path)}: {error.message}"
                  for error in self._validator.iter_errors(_without_metadata(admitted))]
        if not errors:  # the API server evaluates rules on schema-valid objects only
            old_admitted = None
            if old is not None:
                old_admitted = copy.deepcopy(dict(old))
                apply_defaults(self.schema, old_admitted)
            errors = list(self._rule_errors(self.schema, admitted, old_admitted, "", root=True))
        if errors:
            raise Invalid("; ".join(errors))
        return admitted

    def _rule_errors(self, schema: Mapping[str, Any], value: Any, old: Any, path: str, *, root: bool = False):
        for rule in schema.get("x-kubernetes-validations", ()):
            transition = "oldSelf" in rule["rule"]
            if transition and old is None:
                continue
            scope = {"self": celpy.json_to_cel(_visible(value, root))}
            if transition:
                scope["oldSelf"] = celpy.json_to_cel(_visible(old, root))
            result = self._program(rule["rule"]).evaluate(scope)
            if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                where = path + rule.get("fieldPath", "")
                yield f"{where or '<root>'}: Invalid value: {rule.get('message') or 'failed rule: ' + rule['rule']}"
        if isinstance(value, Mapping):
            properties = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                child = properties.get(key) or (extra if isinstance(extra, Mapping) else None)
                if child is None or (root and key == "metadata"):
                    continue
                previous = old.get(key) if isinstance(old, Mapping) else None
                yield from self._rule_errors(child, item, previous, f"{path}.{key}" if path else key)
        elif isinstance(value, list) and "items" in schema:
            if schema.get("x-kubernetes-list-type") == "map":  # unique keys, as the API server checks
                keys = [tuple(item.get(key) for key in schema["x-kubernetes-list-map-keys"]) for item in value]
                for index, key in enumerate(keys):
                    if key in keys[:index]:
                        yield f"{path}[{index}]: Duplicate value: {dict(zip(schema['x-kubernetes-list-map-keys'], key))}"
            for index, item in enumerate(value):  # items are not correlated with old items here
                yield from self._rule_errors(schema["items"], item, None, f"{path}[{index}]")

    def _program(self, rule: str):
        if rule not in self._programs:
            self._programs[rule] = self._cel.program(self._cel.compile(rule))
        return self._programs[rule]


def apply_defaults(schema: Mapping[str, Any], value: Any) -> None:
    """Structural defaulting: a missing property with a ``default`` gets it, recursively."""
    if isinstance(value, dict):
        for key, child in schema.get("properties", {}).items():
            if key not in value and "default" in child:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                apply_defaults(child, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key in set(value) - set(schema.get("properties", {})):
                apply_defaults(extra, value[key])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(schema["items"], item)


def _visible(value: Any, root: bool) -> Any:
    """At the root, CEL sees only metadata.name and metadata.namespace (and generateName)."""
    if not root or not isinstance(value, Mapping):
        return value
    metadata = {key: value["metadata"][key] for key in ("name", "namespace", "generateName")
                if key in value.get("metadata", {})}
    return {**value, "metadata": metadata}


def _without_metadata(value: Mapping[str, Any]) -> dict[str, Any]:
    return {key: item for key, item in value.items() if key != "metadata"}


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


@attrs.define(kw_only=True)
class KubeAPI(kmock.KubernetesEmulator):
    """kmock's emulator with object bookkeeping, the status subresource, CRD admission and a call log."""

    admission: dict[str, CrdAdmission] = attrs.field(factory=dict)
    status_subresources: frozenset[str] = frozenset({CLUSTERS, DEPLOYMENTS})
    calls: list[tuple[str, str]] = attrs.field(factory=list, init=False)
    writes: list[tuple[str, str, Any]] = attrs.field(factory=list, init=False)  # (method, path, body)
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _change: asyncio.Condition | None = attrs.field(default=None, init=False)

    async def _handle(self, request: kmock.Request):
        path = request.url.path + (f"?{request.url.query_string}" if request.url.query_string else "")
        if not request.headers.get("User-Agent", "").startswith("kmock/"):  # not the test's own client
            self.calls.append((request.method.value, path))
        if request.method.value != "GET":
            self.writes.append((request.method.value, path, copy.deepcopy(request.data)))
        if self._applies_to_a_missing_object(request):
            return await self._create_by_apply(request)
        try:
            self._prepare(request)
        except Invalid as e:
            return await self._render_error(kmock.KubernetesError(
                status=422, reason="Invalid", message=f"{request.resource.plural} {request.name or ''}: {e}".strip()))
        try:
            return await super()._handle(request)
        finally:
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE):
                await self._notify()

    def _applies_to_a_missing_object(self, request: kmock.Request) -> bool:
        if request.method.value != "PATCH" or request.resource is None or request.subresource is not None \
                or not request.headers.get("Content-Type", "").startswith(APPLY_PATCH):
            return False
        key = (request.resource, request.namespace, request.name)
        return key not in self.objects or self.objects[key].deleted

    async def _create_by_apply(self, request: kmock.Request) -> web.StreamResponse:
        """Server-side apply of a missing object creates it (201), as a POST of the same body would;
        the API server then authorizes the verb create besides patch, and so does the call log."""
        collection = collection_path(_resource_name(request.resource), request.namespace)
        if not request.headers.get("User-Agent", "").startswith("kmock/"):
            self.calls.append(("POST", collection))
        async with self.post(collection, json=request.data) as response:
            return web.json_response(await response.json(), status=response.status)

    def _prepare(self, request: kmock.Request) -> None:
        """Fill in what the API server sets, and admit custom resources, by editing the request."""
        if request.resource is None or not isinstance(request.data, dict):
            return
        resource = _resource_name(request.resource)
        admission = self.admission.get(resource)
        data = request.data
        if request.action == kmock.action.CREATE:
            if admission is not None:
                data.update(admission.admit(data))
            metadata = data.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
            metadata.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)),
                            creationTimestamp=_timestamp())
            if "spec" in data:  # the API server counts generations of objects with a spec
                metadata["generation"] = 1
            if request.namespace and "namespace" not in metadata:
                metadata["namespace"] = request.namespace
        elif request.action == kmock.action.UPDATE:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                return  # kmock answers 404
            old = copy.deepcopy(self.objects[key].raw)
            if request.subresource == "status":  # through it only the status changes
                for field in set(data) - {"status"}:
                    del data[field]
            elif resource in self.status_subresources:  # and only through it
                data.pop("status", None)
            new = kmock_dicts.patch_dict(old, data)
            if admission is not None and request.subresource is None:
                admitted = admission.admit(dict(new), old)
                _merge_additions(data, new, admitted)
                new = admitted
            metadata = data.setdefault("metadata", {})
            metadata["resourceVersion"] = str(next(self._versions))
            if new.get("spec") != old.get("spec"):
                metadata["generation"] = old.get("metadata", {}).get("generation", 1) + 1

    async def _notify(self) -> None:
        if self._change is None:
            self._change = asyncio.Condition()
        async with self._change:
            self._change.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
        """Wait until ``predicate()`` is truthy, re-checking on every change; return its value."""
        if self._change is None:
            self._change = asyncio.Condition()

        async def until():
            async with self._change:
                while not (result := predicate()):
                    await self._change.wait()
                return result
        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}") from None

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object, or None."""
        key = (kmock.resource(resource), namespace, name)  # `in` takes parsed resources only
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The stored objects of a resource (in one namespace), in order of creation."""
        wanted = kmock.resource(resource)
        return [copy.deepcopy(obj.raw) for (found, found_namespace, _), obj in self.objects.items()
                if found == wanted and namespace in (None, found_namespace) and not obj.deleted]

    def history(self, resource: str, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """Every stored version of the object, oldest first (deletions left out)."""
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects:
            return []
        return [copy.deepcopy(version.raw) for version in self.objects[key].history if version is not None]

    async def put_object(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create an object through the HTTP API, as kubectl would (admission included)."""
        namespace = body["metadata"].get("namespace")
        async with self.post(collection_path(resource, namespace), json=body) as response:
            answer = await response.json()
            if response.status >= 400:
                raise Invalid(answer.get("message", answer))
            return answer

    async def patch_object(self, resource: str, namespace: str | None, name: str, patch: dict[str, Any],
                           *, subresource: str | None = None) -> dict[str, Any]:
        """A merge patch through the HTTP API; raises :class:`Invalid` with the API's message."""
        path = f"{collection_path(resource, namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        async with self.patch(path, json=patch, headers={"Content-Type": "application/merge-patch+json"}) as response:
            answer = await response.json()
            if response.status >= 400:
                raise Invalid(answer.get("message", answer))
            return answer

    async def delete_object(self, resource: str, namespace: str | None, name: str) -> None:
        async with self.delete(f"{collection_path(resource, namespace)}/{name}") as response:
            assert response.status < 400, await response.text()


def _merge_additions(patch: dict[str, Any], merged: Mapping[str, Any], admitted: Mapping[str, Any]) -> None:
    """Add to a merge patch what defaulting added to its result, so that the stored object has it."""
    for key, value in admitted.items():
        if key not in merged:
            patch[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(merged[key], Mapping):
            inner = patch.get(key)
            if not isinstance(inner, dict):
                inner = {}
            _merge_additions(inner, merged[key], value)
            if inner:
                patch[key] = inner


def _resource_name(resource: kmock.resource) -> str:
    """``group/version/plural`` of a parsed resource (``version/plural`` in the core group)."""
    return f"{resource.group + '/' if resource.group else ''}{resource.version}/{resource.plural}"


def collection_path(resource: str, namespace: str | None) -> str:
    """The URL path of ``resource``'s objects (``group/version/plural``; in ``namespace`` if given)."""
    *group, version, plural = resource.split("/")
    prefix = f"/apis/{group[0]}/{version}" if group else f"/api/{version}"
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def _timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def write_kubeconfig(path: pathlib.Path, server: str) -> pathlib.Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "operator", "user": {"token": "kmock-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}],
        "current-context": "kmock",
    }))
    return path


@pytest_asyncio.fixture
async def kube_api(tmp_path, monkeypatch):
    """A running :class:`KubeAPI` with the operator's resources and the CRD's admission;
    ``KUBECONFIG`` points at it for the duration of the test."""
    crd = load_crd()
    api = KubeAPI(admission={CLUSTERS: CrdAdmission(crd)})
    for resource, info in RESOURCES.items():
        api.resources[resource] = info
    async with api, kmock.Server(api):
        api.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]] = crd
        url = str(api.url).rstrip("/")
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", url)))
        yield api


@pytest_asyncio.fixture
async def kube_api_calls(kube_api) -> list[tuple[str, str]]:
    """Every Kubernetes API call that the operator made in the test so far, as (method, path[?query])."""
    return kube_api.calls

