"""One namespace of a real kube-apiserver, seen through the interface of tests/harness/kube.py's
KubeAPI, so that :class:`tests.harness.operator.ClusterDriver` drives a CosmosEtcdCluster on the
real server exactly as on kmock.

:class:`LiveKubeAPI` mirrors the objects of the resources it is given in its namespace as an
informer does: it lists each resource, then follows its watch from the list's resourceVersion (a
watch the server ends is resumed from the last event; one too old relists), keeping every version
it saw (``history``) and waking :meth:`wait_for` on every event, so that tests wait for the API's
changes, never for time. Reads (``get``, ``list``, ``history``) come from the mirror; writes
(``put_object``, ``patch_object``, ``delete_object``) go to the server and return once the mirror
has seen what they wrote (read your writes). A refusal raises :class:`Refused`, a
``tests.harness.kube.Invalid`` with the server's status, reason and message. :meth:`request` is the
plain client (dry runs, refusals asserted on their status). Everything is asyncio (aiohttp): the
ARM stand-in serves from the same event loop.

:func:`install_crd` creates a CRD and returns once the server has it Established (awaited on a
watch).
"""
from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp

from tests.harness.kube import Invalid, collection_path
from tests.harness.kube_apiserver import ApiServer, Kube, Reply

# The longest line (one watch event) a mirrored object may take.
MAX_EVENT_BYTES = 4 * 1024 * 1024
MAX_THROTTLED_RETRIES = 30


class Refused(Invalid):
    """The API server refused a request."""

    def __init__(self, reply: Reply):
        super().__init__(reply.message or f"HTTP {reply.status}")
        self.status, self.reason, self.body = reply.status, reply.reason, reply.body


class LiveKubeAPI:
    """The objects of ``resources`` (as ``group/version/plural``, e.g. ``apps/v1/deployments``) in
    ``namespace`` of ``server``, mirrored; the namespace is created if need be."""

    def __init__(self, server: ApiServer, namespace: str, resources: Iterable[str]):
        self.namespace = namespace
        self._base = server.url
        self._client: Kube = server.client
        self._resources = tuple(resources)
        # (resource, name) -> every version seen, oldest first; None after a deletion.
        self._versions: dict[tuple[str, str], list[dict[str, Any] | None]] = {}
        self._change = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._watchers: list[asyncio.Task] = []
        self._failure: BaseException | None = None

    async def __aenter__(self) -> "LiveKubeAPI":
        self._session = aiohttp.ClientSession(
            base_url=self._base, read_bufsize=MAX_EVENT_BYTES,
            connector=aiohttp.TCPConnector(ssl=self._client.context),
            headers={"Authorization": f"Bearer {self._client.token}"})
        try:
            created = await self.request("POST", "/api/v1/namespaces", {"metadata": {"name": self.namespace}})
            assert created.status in (201, 409), f"namespace {self.namespace}: HTTP {created.status} {created.body}"
            for resource in self._resources:
                resource_version = await self._list(resource)
                self._watchers.append(asyncio.create_task(self._follow(resource, resource_version),
                                                          name=f"watch {resource}"))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the plain client ------------------------------------------------------------------------

    async def request(self, method: str, path: str, body: Any = None, *,
                      content_type: str = "application/json", params: Mapping[str, str] | None = None,
                      accept: str = "application/json") -> Reply:
        """One request; the answer whatever its status, but for 429s, which are retried after the
        server's Retry-After as client-go does (a new CRD's storage answers them while it initialises)."""
        data = None if body is None else json.dumps(body)
        headers = {"Accept": accept, **({"Content-Type": content_type} if body is not None else {})}
        for _ in range(MAX_THROTTLED_RETRIES):
            async with self._session.request(method, path, data=data, headers=headers, params=params) as response:
                text = await response.text()
                retry_after = response.headers.get("Retry-After")
            if response.status != 429 or retry_after is None:
                break
            await asyncio.sleep(float(retry_after))
        try:
            return Reply(response.status, json.loads(text))
        except json.JSONDecodeError:
            return Reply(response.status, text)

    # -- KubeAPI's interface ---------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object as last seen, or None."""
        self._check_namespace(namespace)
        versions = self._versions.get((resource, name))
        return copy.deepcopy(versions[-1]) if versions else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The objects of ``resource`` as last seen, in the order the mirror first saw them."""
        return [copy.deepcopy(versions[-1]) for (kind, _), versions in self._versions.items()
                if kind == resource and versions[-1]]

    def history(self, resource: str, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """Every version of the object seen, oldest first (deletions left out)."""
        self._check_namespace(namespace)
        return [copy.deepcopy(version) for version in self._versions.get((resource, name), []) if version]

    async def wait_for(self, predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
        """Wait until ``predicate()`` is truthy, re-checking on every watch event; return its value."""
        async def until():
            async with self._change:
                while not (result := predicate()):
                    if self._failure is not None:
                        raise AssertionError(f"a watch of {self.namespace} failed") from self._failure
                    await self._change.wait()
                return result
        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}") from None

    async def put_object(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the object (as kubectl create)."""
        namespace = body["metadata"].get("namespace")
        self._check_namespace(namespace)
        return await self._write(resource, await self.request("POST", collection_path(resource, namespace), body))

    async def patch_object(self, resource: str, namespace: str | None, name: str, patch: dict[str, Any],
                           *, subresource: str | None = None) -> dict[str, Any]:
        """A merge patch (of ``subresource``, e.g. ``status``)."""
        self._check_namespace(namespace)
        path = f"{collection_path(resource, namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        reply = await self.request("PATCH", path, patch, content_type="application/merge-patch+json")
        return await self._write(resource, reply)

    async def delete_object(self, resource: str, namespace: str | None, name: str) -> None:
        """Ask for the deletion (with finalizers the object stays until they are removed)."""
        self._check_namespace(namespace)
        reply = await self.request("DELETE", f"{collection_path(resource, namespace)}/{name}")
        if not reply.ok:
            raise Refused(reply)

    # -- the mirror ------------------------------------------------------------------------------

    async def _write(self, resource: str, reply: Reply) -> dict[str, Any]:
        """The written object, once the mirror has it (or a newer version)."""
        if not reply.ok:
            raise Refused(reply)
        written = reply.body
        name, version = written["metadata"]["name"], int(written["metadata"]["resourceVersion"])

        def seen():
            versions = self._versions.get((resource, name)) or []
            return any(item and int(item["metadata"]["resourceVersion"]) >= version for item in versions)
        await self.wait_for(seen, what=f"{resource} {name} at resourceVersion {version} in the mirror")
        return written

    async def _list(self, resource: str) -> str:
        """Replace the mirror's objects of ``resource`` by a list's; its resourceVersion."""
        reply = await self.request("GET", collection_path(resource, self.namespace))
        listed = reply.expect(200)
        async with self._change:
            names = set()
            for item in listed["items"]:
                names.add(item["metadata"]["name"])
                self._record(resource, item["metadata"]["name"], item)
            for kind, name in list(self._versions):
                if kind == resource and name not in names:
                    self._record(resource, name, None)
            self._change.notify_all()
        return listed["metadata"]["resourceVersion"]

    async def _follow(self, resource: str, resource_version: str) -> None:
        path = collection_path(resource, self.namespace)
        try:
            while True:
                params = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true"}
                async with self._session.get(path, params=params, headers={"Accept": "application/json"},
                                             timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
                    if response.status != 200:
                        raise AssertionError(f"watch {path}: HTTP {response.status}: {await response.text()}")
                    async for line in response.content:
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            if obj.get("code") != 410:
                                raise AssertionError(f"watch {path}: {obj}")
                            resource_version = await self._list(resource)  # too old: relist
                            break
                        resource_version = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        async with self._change:
                            self._record(resource, obj["metadata"]["name"], None if event["type"] == "DELETED" else obj)
                            self._change.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # wake the waiters: they fail with it
            self._failure = e
            async with self._change:
                self._change.notify_all()
            raise

    def _record(self, resource: str, name: str, obj: dict[str, Any] | None) -> None:
        versions = self._versions.setdefault((resource, name), [])
        latest = versions[-1] if versions else None
        if obj is None:
            if latest is not None:
                versions.append(None)
        elif latest is None or latest["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            versions.append(obj)

    def _check_namespace(self, namespace: str | None) -> None:
        if namespace != self.namespace:
            raise ValueError(f"this mirror holds namespace {self.namespace}, not {namespace}")


def install_crd(kube: Kube, crd: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Create ``crd`` (or find it) and return it once Established (served), awaited on a watch."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    created = kube.post(path, crd)
    if created.status == 409:
        created = kube.get(f"{path}/{crd['metadata']['name']}")
    stored = created.expect(200, 201)

    def established(obj: Mapping[str, Any]) -> bool:
        return any(condition["type"] == "Established" and condition["status"] == "True"
                   for condition in (obj.get("status") or {}).get("conditions") or ())
    if established(stored):
        return stored
    events = kube.watch(f"{path}?fieldSelector=metadata.name%3D{crd['metadata']['name']}",
                        stored["metadata"]["resourceVersion"],
                        lambda seen: bool(seen) and established(seen[-1]["object"]), timeout=timeout)
    assert events and established(events[-1]["object"]), f"the CRD was not established: {events}"
    return events[-1]["object"]
