"""The real operator, in-process, against a Kubernetes API and the ARM stand-in.

The Kubernetes API is kmock's emulator (:class:`tests.harness.kube.KubeAPI`, the fast inner loop)
or a namespace of a real kube-apiserver (:class:`tests.harness.kube_live.LiveKubeAPI`): both give
:class:`ClusterDriver` the same interface (``put_object``, ``patch_object``, ``delete_object``,
``get``, ``history``, ``wait_for``).

:class:`OperatorProcess` runs ``cosmos_etcd_operator.main.run`` with the configuration that
``cosmos-etcd operator`` builds from these flags (the custom cloud at the stand-in, its CA file)
in a thread of the test process, and stops it through kopf's stop flag, as SIGTERM would. It logs
in to the Kubernetes API through the ``KUBECONFIG`` that the test's fixture writes.
:func:`operators` starts as many as a test asks for and stops them all when it ends.

:class:`ClusterDriver` plays the rest of the cluster for one CosmosEtcdCluster: it applies and
patches the object as kubectl would, plays the Deployment controller (pods become available), and
waits for conditions by awaiting the API's changes, never by sleeping.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from cosmos_etcd_operator import main, reconciliation
from tests.harness import arm as arm_harness
from tests.harness.kube import CLUSTERS, DEPLOYMENTS, SECRETS, KubeAPI
from tests.harness.kube_live import LiveKubeAPI
from tests.harness.processes import free_port

NAMESPACE = "control-planes"
SHIM_IMAGE = "registry.example/cosmos-etcd:test"


def operator_flags(arm: arm_harness.ArmStandIn, *, drift_interval: float = 3600, retry_delay: float = 0.2,
                   namespaces: tuple[str, ...] = (), arm_audience: str | None = None) -> list[str]:
    """The flags of ``cosmos-etcd operator`` for the stand-in: a custom cloud at its address, trusting
    its CA; free local ports; no drift pass unless a test asks (``drift_interval``); ``--arm-audience``
    if given (else the operator reads the stand-in's metadata)."""
    flags = ["--cloud", "custom", "--arm-endpoint", arm.url, "--authority-host", arm.authority_host,
             "--azure-ca-file", arm.ca_file, "--liveness-address", f"127.0.0.1:{free_port()}",
             "--metrics-address", f"127.0.0.1:{free_port()}", "--shim-image", SHIM_IMAGE, "--log-level", "debug",
             "--drift-interval", str(drift_interval), "--retry-delay", str(retry_delay)]
    for namespace in namespaces:
        flags += ["--namespace", namespace]
    if arm_audience is not None:
        flags += ["--arm-audience", arm_audience]
    return flags


class OperatorProcess:
    """``cosmos-etcd operator FLAGS`` in a thread of this process, with its own event loop.

    Not a task of the test's loop: when kopf stops, it cancels every task of its loop that it did
    not find there when it started, which in a shared loop includes the test's own and the API
    emulator's. The test's loop keeps serving the Kubernetes API and ARM meanwhile.
    """

    def __init__(self, flags: list[str], clock: Callable[[], datetime.datetime] | None = None):
        self.config = main.parse_args(flags)
        self.clock = clock or reconciliation.utc_now  # the managed PKI's time (a test may move it)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None

    async def start(self) -> "OperatorProcess":
        ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="operator", daemon=True)
        self._thread.start()
        if not await asyncio.to_thread(ready.wait, 30):
            raise AssertionError(f"the operator did not become ready within 30 s ({self.error!r})")
        return self

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(main.run(self.config, stop_flag=self._stop, ready_flag=ready, clock=self.clock))
        except BaseException as e:  # reported by start() and stop()
            self.error = e

    async def stop(self) -> None:
        """Stop as on SIGTERM: kopf cancels the handlers in flight and exits."""
        if self._thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 30)
        alive, self._thread = self._thread.is_alive(), None
        assert not alive, "the operator did not stop within 30 s"
        assert self.error is None, f"the operator failed: {self.error!r}"


@contextlib.asynccontextmanager
async def operators(arm: arm_harness.ArmStandIn, **defaults) -> AsyncIterator[Callable[..., Awaitable[OperatorProcess]]]:
    """``start(clock=None, **options)`` starts an operator with :func:`operator_flags` (``defaults``
    overridden by ``options``) and, if given, that clock for its PKI; every operator started is stopped
    when the block ends."""
    started: list[OperatorProcess] = []

    async def start(clock: Callable[[], datetime.datetime] | None = None, **options) -> OperatorProcess:
        process = await OperatorProcess(operator_flags(arm, **{**defaults, **options}), clock).start()
        started.append(process)
        return process
    try:
        yield start
    finally:
        for process in started:
            await process.stop()


class ClusterDriver:
    """One CosmosEtcdCluster as a user and the rest of the cluster act on it."""

    def __init__(self, kube: KubeAPI | LiveKubeAPI, name: str = "tenant-a", namespace: str = NAMESPACE):
        self.kube, self.name, self.namespace = kube, name, namespace
        self.operator: OperatorProcess | None = None  # the operator that a test started for it, if it says

    @staticmethod
    def manifest(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster",
                "metadata": {"name": name, "namespace": namespace}, "spec": copy.deepcopy(spec)}

    async def apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self.kube.put_object(CLUSTERS, self.manifest(self.name, self.namespace, spec))

    async def patch_spec(self, patch: dict[str, Any]) -> dict[str, Any]:
        return await self.kube.patch_object(CLUSTERS, self.namespace, self.name, {"spec": patch})

    async def delete(self) -> None:
        await self.kube.delete_object(CLUSTERS, self.namespace, self.name)

    async def add_secret(self, name: str, data: dict[str, str]) -> None:
        await self.kube.put_object(SECRETS, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": self.namespace},
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}})

    @property
    def body(self) -> dict[str, Any] | None:
        return self.kube.get(CLUSTERS, self.namespace, self.name)

    def condition(self, type_: str) -> dict[str, Any] | None:
        body = self.body or {}
        return next((item for item in (body.get("status") or {}).get("conditions", []) if item["type"] == type_),
                    None)

    async def wait_condition(self, type_: str, status: str, reason: str | None = None, *,
                             timeout: float = 30) -> dict[str, Any]:
        def matches():
            found = self.condition(type_)
            if found and found["status"] == status and (reason is None or found["reason"] == reason):
                return found
            return None
        return await self.kube.wait_for(matches, timeout=timeout,
                                        what=f"{type_}={status} {reason or ''} on {self.name} "
                                             f"(conditions: {self.conditions_summary()})")

    async def wait_handled(self, *, timeout: float = 30) -> None:
        """Until kopf is done with the object's latest change (succeeded or given up): it then
        stores the spec it handled and keeps no handler progress."""
        def handled():
            kopf_state = ((self.body or {}).get("status") or {}).get("kopf") or {}
            return "lastHandledConfiguration" in kopf_state and not kopf_state.get("progress")
        await self.kube.wait_for(handled, timeout=timeout, what=f"kopf done with {self.name}")

    async def wait_gone(self, *, timeout: float = 30) -> None:
        await self.kube.wait_for(lambda: self.body is None, timeout=timeout, what=f"{self.name} deleted")

    def history(self) -> list[dict[str, Any]]:
        """Every version the object had, oldest first."""
        return self.kube.history(CLUSTERS, self.namespace, self.name)

    def ever(self, type_: str, status: str, reason: str | None = None) -> bool:
        """Whether some version of the object had that condition (states may pass between two looks)."""
        return any(item["type"] == type_ and item["status"] == status and reason in (None, item["reason"])
                   for version in self.history() for item in (version.get("status") or {}).get("conditions", []))

    def conditions_summary(self) -> str:
        body = self.body or {}
        return ", ".join(f"{item['type']}={item['status']}/{item['reason']}"
                         for item in (body.get("status") or {}).get("conditions", []))

    async def make_pods_available(self, available: int | None = None) -> dict[str, Any]:
        """Play the Deployment controller: the shim's pods are up (``available`` of them)."""
        deployment = await self.kube.wait_for(lambda: self.kube.get(DEPLOYMENTS, self.namespace, self.name),
                                              what="the shim's Deployment")
        replicas = deployment["spec"]["replicas"]
        count = replicas if available is None else available
        return await self.kube.patch_object(DEPLOYMENTS, self.namespace, self.name, {"status": {
            "observedGeneration": deployment["metadata"]["generation"], "replicas": replicas,
            "readyReplicas": count, "availableReplicas": count, "updatedReplicas": replicas}}, subresource="status")

    async def wait_ready(self, *, timeout: float = 30) -> dict[str, Any]:
        """Until the Azure parts are done, then make the pods available, then until Ready."""
        await self.wait_condition("Keys", "True", timeout=timeout)
        await self.make_pods_available()
        await self.wait_condition("Ready", "True", timeout=timeout)
        return self.body
