"""Wiring: configuration -> storage backend -> MVCC store -> gRPC server, until a signal stops it."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cosmos_etcd_shim import ETCD_CLUSTER_VERSION, ETCD_VERSION
from cosmos_etcd_shim import member, metrics
from cosmos_etcd_shim.api.cluster import ClusterServicer
from cosmos_etcd_shim.api.errors import answer_unimplemented
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.api.kv import KVServicer
from cosmos_etcd_shim.api.lease import LeaseServicer
from cosmos_etcd_shim.api.watch import WatchServicer
from cosmos_etcd_shim.api.maintenance import MaintenanceServicer, ServerInfo
from cosmos_etcd_shim.config import ServeConfig
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.mvcc.watch import WatchHub
from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from cosmos_etcd_shim.storage import StorageError, RevisionLog
from cosmos_etcd_shim.storage.embedded import EmbeddedLog

logger = logging.getLogger(__name__)

# etcd lets gRPC receive this much beyond --max-request-bytes, so that its own, clearer
# "request is too large" answers requests a little over the limit.
GRPC_OVERHEAD_BYTES = 512 * 1024
SHUTDOWN_GRACE_SECONDS = 5


class StartupError(Exception):
    """The server cannot start; the message is the one line the user sees."""


def open_backend(config: ServeConfig) -> RevisionLog:
    return EmbeddedLog(config.data_dir)


def grpc_options(config: ServeConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        # Another process on the same port must be an error, not a silent second listener.
        ("grpc.so_reuseport", 0),
    ]


class Server:
    """The shim: one store, one gRPC server on the configured client URLs."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store: MVCCStore | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self._progress: asyncio.Task | None = None
        self.watch_hub: WatchHub | None = None

    async def start(self) -> None:
        config = self.config
        for address in (*config.listen_addresses, *config.metrics_addresses):
            _check_can_listen(address)  # before anything is opened or logged: one clear line
        self.store = store = MVCCStore(open_backend(config))
        try:
            await store.open()
            identity = member.load_or_create(config.data_dir)
        except (StorageError, OSError) as e:
            await store.close()
            self.store = None
            raise StartupError(str(e)) from None
        headers = ResponseHeaders(identity.cluster_id, identity.member_id, lambda: store.revision)
        this_member = rpc_pb2.Member(
            ID=identity.member_id,
            name=config.name,
            peerURLs=config.initial_advertise_peer_urls,
            clientURLs=config.advertise_client_urls,
        )

        server = grpc.aio.server(options=grpc_options(config))
        hub = WatchHub(store.index, store.log, lambda: store.revision, lambda: store.compact_revision)
        store.on_commit(hub.on_commit)
        self.watch_hub = hub
        self._progress = asyncio.create_task(hub.notify_progress_every(config.watch_progress_notify_interval))
        servicers = [
            (KVServicer(store, headers, config.max_request_bytes, config.max_txn_ops), rpc_pb2_grpc.KVServicer,
             rpc_pb2_grpc.add_KVServicer_to_server),
            (WatchServicer(hub, headers, config.max_request_bytes + GRPC_OVERHEAD_BYTES), rpc_pb2_grpc.WatchServicer,
             rpc_pb2_grpc.add_WatchServicer_to_server),
            (LeaseServicer(store, headers, config.max_request_bytes), rpc_pb2_grpc.LeaseServicer,
             rpc_pb2_grpc.add_LeaseServicer_to_server),
            (ClusterServicer(headers, lambda: [this_member]), rpc_pb2_grpc.ClusterServicer,
             rpc_pb2_grpc.add_ClusterServicer_to_server),
            (MaintenanceServicer(store, headers, ServerInfo(ETCD_VERSION, ETCD_CLUSTER_VERSION,
                                                            config.quota_backend_bytes)),
             rpc_pb2_grpc.MaintenanceServicer, rpc_pb2_grpc.add_MaintenanceServicer_to_server),
            # Auth arrives with its issue; until then every Auth call answers UNIMPLEMENTED.
            (rpc_pb2_grpc.AuthServicer(), rpc_pb2_grpc.AuthServicer, rpc_pb2_grpc.add_AuthServicer_to_server),
        ]
        for servicer, service, add_to_server in servicers:
            answer_unimplemented(servicer, service)
            add_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for address in config.listen_addresses:
            _bind(server, address)
        await server.start()
        for address in config.metrics_addresses:
            metrics.serve_metrics(address)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.grpc_server = server
        logger.info("serving client traffic", extra={
            "listen": config.listen_addresses, "member_name": config.name, "data_dir": config.data_dir,
            "backend": config.backend, "revision": store.revision,
            "member_id": f"{identity.member_id:x}", "cluster_id": f"{identity.cluster_id:x}",
        })

    async def stop(self) -> None:
        if self._progress is not None:
            self._progress.cancel()
            self._progress = None
        if self.grpc_server is not None:
            await self.health.enter_graceful_shutdown()
            # Watch streams never end by themselves: end them now, as etcd does, so that the
            # grace period serves the requests in flight rather than waiting for watchers.
            self.watch_hub.close_all()
            await self.grpc_server.stop(SHUTDOWN_GRACE_SECONDS)
            self.grpc_server = None
            logger.info("stopped serving")
        if self.store is not None:
            await self.store.close()
            self.store = None


def _bind(server: grpc.aio.Server, address: str) -> None:
    try:
        server.add_insecure_port(address)
    except RuntimeError:
        raise StartupError(f"cannot listen on {address}") from None


def _check_can_listen(address: str) -> None:
    """Bind a plain socket where gRPC will listen: gRPC does not say why a bind fails, a socket does."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise StartupError(f"cannot listen on {address}: {e.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with contextlib.closing(socket.socket(family, kind, proto)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's own listener does
            try:
                probe.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL and family == socket.AF_INET6:
                    continue  # localhost may resolve to ::1 on a host without IPv6; gRPC skips it too
                raise StartupError(f"cannot listen on {address}: {e.strerror}") from None


async def serve(config: ServeConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly: in-flight requests finish, the store closes."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server = Server(config)
    try:
        await server.start()
        await stopping.wait()
        logger.info("received a signal, shutting down")
    finally:
        await server.stop()
