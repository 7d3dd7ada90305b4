"""Control planes for the Kubernetes tests: a datastore (a real etcd, the shim on its embedded
store, or two shim replicas on one container of a local Cosmos server) with a kube-apiserver on it,
and on demand kube-controller-manager and kube-scheduler; and :func:`on_both`, which runs one step
on etcd and on the shim and compares what the API server answered.

Every kube-apiserver runs with :func:`apiserver_args`: ``--etcd-compaction-interval=5s`` by default
(its own compactor compacts the datastore every few seconds, to the revision it saw one interval
before) and ``--watch-cache-sizes=secrets#0`` (ConfigMaps go through the watch cache, fed by a watch
on the datastore; Secrets straight to the datastore, so that both paths are checked).

A step is a function of a :class:`Stack` and a fresh namespace returning what the API server
answered, normalised (names, data, statuses and reasons, resourceVersion *ordering*, never
resourceVersion values: those are the datastore's revisions, which differ between datastores with
kube-apiserver's own writes). It runs once on etcd (the answer is kept for the session) and once per
shim datastore.

Synchronisation is by polling with deadlines; every process is started here and stopped by pid.
"""
from __future__ import annotations

import dataclasses
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from cosmos_etcd_shim.proto import rpc_pb2_grpc

from tests.harness import cosmos as cosmos_harness
from tests.harness import processes
from tests.harness.cosmos_shims import Shim, elected
from tests.harness.cosmos_shims import start_shim as start_cosmos_shim
from tests.harness.kube_apiserver import ApiServer, Kube, Reply, start_apiserver
from tests.harness.kube_controllers import (
    Component,
    start_controller_manager,
    start_scheduler,
)

COMPACTION_INTERVAL = "5s"


def apiserver_args(compaction_interval: str = COMPACTION_INTERVAL) -> list[str]:
    return [f"--etcd-compaction-interval={compaction_interval}", "--watch-cache-sizes=secrets#0", "--event-ttl=5m"]



# --- datastores -----------------------------------------------------------------------------


@dataclasses.dataclass
class Datastore:
    """What a kube-apiserver stores into: one or more etcd endpoints and how to stop them."""

    name: str
    endpoints: list[str]
    stop: Callable[[], None]
    replicas: list[Shim] = dataclasses.field(default_factory=list)  # Cosmos shim replicas

    def kv(self) -> tuple[grpc.Channel, rpc_pb2_grpc.KVStub]:
        """A gRPC channel to the first live endpoint and its KV stub (close the channel)."""
        live = [r.endpoint for r in self.replicas if r.server.process.poll() is None] or self.endpoints
        channel = grpc.insecure_channel(live[0])
        return channel, rpc_pb2_grpc.KVStub(channel)


# The replicas elect a leader as the operator runs them (--listen-peer-urls). A lease of 3 s rather
# than the default 6 s: after a kill -9 of the leader the other replica takes over within 4 s, well
# inside the 10 s in which kube-controller-manager must renew its own leader Lease.
LEADER_LEASE_SECONDS = 3


def start_cosmos_pair(workdir: pathlib.Path) -> Datastore:
    """A local Cosmos server and two shim replicas on one container of it, electing a leader."""
    cosmos_harness.require()
    cosmos = cosmos_harness.start_cosmos(workdir / "cosmos")
    container = f"kube-{uuid.uuid4().hex[:8]}"
    replicas: list[Shim] = []

    def stop() -> None:
        for replica in replicas:
            replica.close()
        cosmos.stop()

    try:
        for name in ("replica-a", "replica-b"):
            replicas.append(start_cosmos_shim(workdir, cosmos.endpoint, container, name,
                                              elected(LEADER_LEASE_SECONDS)))
    except BaseException:
        stop()
        raise
    return Datastore("cosmos", [r.endpoint for r in replicas], stop, replicas)


def start_datastore(kind: str, workdir: pathlib.Path) -> Datastore:
    if kind == "etcd":
        server = processes.start_etcd(workdir, extra_args=["--unsafe-no-fsync"])
        return Datastore("etcd", [server.endpoint], server.stop)
    if kind == "embedded":
        server = processes.start_shim(workdir)
        return Datastore("embedded", [server.endpoint], server.stop)
    if kind == "cosmos":
        return start_cosmos_pair(workdir)
    raise ValueError(kind)


@dataclasses.dataclass
class Stack:
    """A datastore with a kube-apiserver on it, and the controllers once started."""

    datastore: Datastore
    apiserver: ApiServer
    controllers: list[Component] = dataclasses.field(default_factory=list)

    @property
    def kube(self) -> Kube:
        return self.apiserver.client

    def start_controllers(self) -> list[Component]:
        """kube-controller-manager and kube-scheduler on this stack's API server (once)."""
        if not self.controllers:
            workdir = self.apiserver.workdir.parent
            self.controllers.append(start_controller_manager(workdir / "kube-controller-manager", self.apiserver))
            self.controllers.append(start_scheduler(workdir / "kube-scheduler", self.apiserver))
        return self.controllers

    def stop(self) -> None:
        try:
            for component in self.controllers:
                component.stop()
            self.apiserver.stop()
        finally:
            self.datastore.stop()

    def assert_alive(self) -> None:
        for component in self.controllers:
            component.assert_alive()
        self.apiserver.assert_alive()
        for replica in self.datastore.replicas:
            replica.assert_alive()


def start_stack(kind: str, workdir: pathlib.Path, compaction_interval: str = COMPACTION_INTERVAL) -> Stack:
    datastore = start_datastore(kind, workdir / kind)
    try:
        apiserver = start_apiserver(workdir / f"kube-apiserver-{kind}", datastore.endpoints,
                                    apiserver_args(compaction_interval))
    except BaseException:
        datastore.stop()
        raise
    return Stack(datastore, apiserver)


_oracle_answers: dict[str, Any] = {}


def new_namespace(kube: Kube) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.post("/api/v1/namespaces", {"metadata": {"name": name}}).expect(201)
    return name


def on_both(step: Callable[[Stack, str], Any], etcd_stack: Stack, shim_stack: Stack) -> Any:
    """Run ``step`` on etcd (once per session) and on the shim, each in a fresh namespace; assert
    the answers are equal and return the shim's."""
    if step.__name__ not in _oracle_answers:
        _oracle_answers[step.__name__] = step(etcd_stack, new_namespace(etcd_stack.kube))
    expected = _oracle_answers[step.__name__]
    got = step(shim_stack, new_namespace(shim_stack.kube))
    shim_stack.assert_alive()
    assert got == expected, f"{step.__name__}: the shim ({shim_stack.datastore.name}) answered\n{got}\netcd:\n{expected}"
    return got


def rv(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


def status_of(reply: Reply) -> tuple[int, str]:
    return reply.status, reply.reason
