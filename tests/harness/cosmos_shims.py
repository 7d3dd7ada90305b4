"""A shim process on the Cosmos backend for end-to-end tests: its gRPC channel (KV, Watch,
Maintenance, Cluster stubs), its Prometheus metrics and health endpoints (``--listen-metrics-urls``
on a free port), its JSON log, and the checks every such test makes (the process is still running).

The account key comes from ``LOCAL_COSMOS_KEY`` (the environment variable), unless ``extra_args``
give ``--cosmos-key-file``. The local server accepts any key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from collections.abc import Iterator

import grpc

from cosmos_etcd_shim.proto import rpc_pb2_grpc
from tests.harness import processes
from tests.harness.backends import LOCAL_COSMOS_KEY
from tests.harness.health import Answer, ask
from tests.harness.metrics import scrape


@dataclasses.dataclass
class Shim:
    server: processes.Server
    metrics_port: int
    channel: grpc.Channel
    name: str = ""  # its --name

    @property
    def kv(self) -> rpc_pb2_grpc.KVStub:
        return rpc_pb2_grpc.KVStub(self.channel)

    @property
    def maintenance(self) -> rpc_pb2_grpc.MaintenanceStub:
        return rpc_pb2_grpc.MaintenanceStub(self.channel)

    @property
    def cluster(self) -> rpc_pb2_grpc.ClusterStub:
        return rpc_pb2_grpc.ClusterStub(self.channel)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def log_entries(self) -> list[dict]:
        """The shim's JSON log lines, parsed (other lines skipped)."""
        entries = []
        for line in self.server.log().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries

    def http(self, path: str) -> Answer:
        """``/readyz``, ``/livez``, ``/health`` ... on the metrics port."""
        return ask(self.metrics_port, path)

    def close(self) -> None:
        self.channel.close()
        self.server.stop()

    def assert_alive(self) -> None:
        assert self.server.process.poll() is None, \
            f"the shim {self.name} exited with {self.server.process.returncode}:\n{self.server.log()[-5000:]}"


def elected(lease_seconds: float | None = None) -> list[str]:
    """The flags of a replica that takes part in the leader election: a peer listener on a free
    port, advertised as it is (``--listen-peer-urls``, ``--initial-advertise-peer-urls``)."""
    url = f"http://127.0.0.1:{processes.free_port()}"
    flags = ["--listen-peer-urls", url, "--initial-advertise-peer-urls", url]
    if lease_seconds is not None:
        flags += ["--leader-lease-seconds", str(lease_seconds)]
    return flags


def start_shim(workdir: pathlib.Path, endpoint: str, container: str, name: str,
               extra_args: list[str] = (), env: dict[str, str] | None = None) -> Shim:
    """``--name name`` on ``container`` of the Cosmos server (or proxy) at ``endpoint``; its files
    in ``workdir / name``."""
    metrics_port = processes.free_port()
    server = processes.start_shim(
        workdir / name, backend="cosmos", data_dir=workdir / name / "data",
        env=LOCAL_COSMOS_KEY if env is None else env,
        extra_args=["--name", name, "--cosmos-endpoint", endpoint, "--cosmos-container", container,
                    "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}", *extra_args])
    return Shim(server, metrics_port, grpc.insecure_channel(server.endpoint), name)


@contextlib.contextmanager
def replicas(workdir: pathlib.Path, endpoint: str, container: str, *names: str,
             extra_args: list[str] = (), election: bool = False) -> Iterator[list[Shim]]:
    """Shims named ``names`` on one container, all closed (stopped by pid) however the block ends;
    with ``election``, each one with a peer listener of its own (see :func:`elected`)."""
    started: list[Shim] = []
    try:
        for name in names:
            flags = [*extra_args, *(elected() if election else ())]
            started.append(start_shim(workdir, endpoint, container, name, flags))
        yield started
    finally:
        for shim in started:
            shim.close()
