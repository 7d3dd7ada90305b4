"""Wiring: configuration -> storage backend -> MVCC store -> gRPC server, until a signal stops it."""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pathlib
import signal
import socket
import urllib.parse

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cosmos_etcd_shim import ETCD_CLUSTER_VERSION, ETCD_VERSION
from cosmos_etcd_shim import member, metrics, tls
from cosmos_etcd_shim.api.auth import AuthServicer
from cosmos_etcd_shim.api.callers import Callers
from cosmos_etcd_shim.api.cluster import ClusterServicer
from cosmos_etcd_shim.api.decoding import DecodeErrors
from cosmos_etcd_shim.api.errors import answer_unimplemented
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.api.kv import KVServicer
from cosmos_etcd_shim.api.lease import LeaseServicer
from cosmos_etcd_shim.api.watch import WatchServicer
from cosmos_etcd_shim.api.maintenance import MaintenanceServicer, ServerInfo
from cosmos_etcd_shim.api.peer import PeerServicer
from cosmos_etcd_shim.config import COSMOS_KEY_VARIABLE, ConfigError, ServeConfig
from cosmos_etcd_shim.health import HealthChecks, http_routes
from cosmos_etcd_shim.mvcc.auth import AuthStore
from cosmos_etcd_shim.mvcc.quota import SpaceQuota
from cosmos_etcd_shim.mvcc.reads import RangeLimits
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.mvcc.watch import WatchHub
from cosmos_etcd_shim.proto import peer_pb2_grpc, rpc_pb2, rpc_pb2_grpc
from cosmos_etcd_shim.replication.election import Election
from cosmos_etcd_shim.replication.fencing import Fencing
from cosmos_etcd_shim.replication.forwarding import Forwarder, TlsFiles
from cosmos_etcd_shim.replication.push import CommitFeed, PushFollower
from cosmos_etcd_shim.replication.reads import Reads
from cosmos_etcd_shim.replication.writes import Writes
from cosmos_etcd_shim.storage import RevisionLog, StorageError
from cosmos_etcd_shim.storage.embedded import EmbeddedLog
from cosmos_etcd_shim.supervision import Supervisor

logger = logging.getLogger(__name__)

# etcd lets gRPC receive this much beyond --max-request-bytes, so that its own, clearer
# "request is too large" answers requests a little over the limit.
GRPC_OVERHEAD_BYTES = 512 * 1024
# The largest message gRPC sends, as etcd's (math.MaxInt32); a Range answer is refused before it is built beyond it.
MAX_SEND_BYTES = 2**31 - 1
# gRPC takes --max-concurrent-streams as a C int; at or above this it means no limit, as etcd's default.
GRPC_MAX_INT = 2**31 - 1
SHUTDOWN_GRACE_SECONDS = 5


class StartupError(Exception):
    """The server cannot start; the message is the one line the user sees."""


# Replicas on a shared log without an election (no --listen-peer-urls) record themselves this
# often, read the list of members every MEMBER_READ_HEARTBEATS heartbeats, and list those whose
# heartbeat is this recent. Elected replicas learn the members from the leader record instead.
HEARTBEAT_SECONDS = 5.0
MEMBER_READ_HEARTBEATS = 2
MEMBER_MAX_AGE_SECONDS = 15.0


def open_backend(config: ServeConfig) -> RevisionLog:
    if config.backend == "embedded":
        return EmbeddedLog(config.data_dir)
    from cosmos_etcd_shim.storage.cosmos import CosmosLog  # the Azure SDK only when it is used

    key = _cosmos_key(config)
    credential = None
    if key is None:
        from azure.identity.aio import DefaultAzureCredential

        # Who signs in is not a secret; with workload identity, AZURE_CLIENT_ID names it.
        logger.info("signing in to Cosmos DB with Entra ID (no account key)",
                    extra={"client_id": os.environ.get("AZURE_CLIENT_ID", "")})
        credential = DefaultAzureCredential()
    if config.cosmos_endpoint.startswith("http://"):
        logger.warning("Cosmos DB endpoint without TLS: only for local test servers",
                       extra={"endpoint": config.cosmos_endpoint})
    if config.cosmos_insecure_skip_tls_verify:
        logger.warning("Cosmos DB certificate not verified: only for local test servers",
                       extra={"endpoint": config.cosmos_endpoint})
    return CosmosLog(config.cosmos_endpoint, key=key, credential=credential, database=config.cosmos_database,
                     container=config.cosmos_container, create=not config.cosmos_no_create,
                     insecure_skip_tls_verify=config.cosmos_insecure_skip_tls_verify,
                     poll_interval=config.cosmos_poll_interval, key_loader=_key_file_reader(config))


def _key_file_reader(config: ServeConfig):
    """Reads --cosmos-key-file again (after a 401: Kubernetes updates a mounted Secret in place
    when a key is rotated); None when the key does not come from a file."""
    if not config.cosmos_key_file:
        return None
    path = pathlib.Path(config.cosmos_key_file)
    return lambda: _keys_in(path)


def _keys_in(path: pathlib.Path) -> list[str]:
    """The keys in a key file, one a line (the account's primary and secondary keys: the shim uses
    the first and moves to the next when Cosmos refuses it)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _cosmos_key(config: ServeConfig) -> str | None:
    if config.cosmos_auth == "entra-id":
        if os.environ.get(COSMOS_KEY_VARIABLE):
            raise StartupError(f"--cosmos-auth entra-id signs in without a key: unset ${COSMOS_KEY_VARIABLE}")
        return None
    if config.cosmos_key_file:
        try:
            return _keys_in(pathlib.Path(config.cosmos_key_file))[0]
        except IndexError:
            raise StartupError(f"--cosmos-key-file {config.cosmos_key_file} holds no key") from None
        except OSError as e:
            raise StartupError(f"cannot read --cosmos-key-file {config.cosmos_key_file}: {e.strerror}") from None
    key = os.environ.get(COSMOS_KEY_VARIABLE) or None
    if key is None and config.cosmos_auth == "key":
        raise StartupError(f"--cosmos-auth key needs the account key: --cosmos-key-file or ${COSMOS_KEY_VARIABLE}")
    return key


def identity_of(config: ServeConfig) -> member.MemberIdentity:
    if config.backend == "embedded":
        return member.load_or_create(config.data_dir)
    return member.for_shared_log(config.name, config.cosmos_endpoint, config.cosmos_database,
                                 config.cosmos_container)


def grpc_options(config: ServeConfig) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", config.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # Another process on the same port must be an error, not a silent second listener.
        ("grpc.so_reuseport", 0),
    ]
    if config.max_concurrent_streams < GRPC_MAX_INT:
        options.append(("grpc.max_concurrent_streams", config.max_concurrent_streams))
    return options


class Server:
    """The shim: one store, one gRPC server on the configured client URLs."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store: MVCCStore | None = None
        self.grpc_server: grpc.aio.Server | None = None
        # /metrics and the health endpoints on --listen-metrics-urls
        self.http_listener: web.AppRunner | None = None
        self.health = health.aio.HealthServicer()
        self.supervisor = Supervisor()
        self._background: list[asyncio.Task] = []
        self._members: list[rpc_pb2.Member] = []
        self._this_member_id = 0  # known once started
        self.watch_hub: WatchHub | None = None
        self.election: Election | None = None  # with --listen-peer-urls
        self.peer_server: grpc.aio.Server | None = None
        self.forwarder: Forwarder | None = None
        self.feed: CommitFeed | None = None

    async def start(self) -> None:
        config = self.config
        for address in (*config.listen_addresses, *config.metrics_addresses, *(a for a, _ in config.peer_addresses)):
            _check_can_listen(address)  # before anything is opened or logged: one clear line
        credentials = _tls_credentials(config)
        self.store = store = MVCCStore(open_backend(config), RangeLimits(config.max_range_keys, MAX_SEND_BYTES),
                                       self.supervisor, config.history_cache_bytes, config.checkpoint_interval)
        auth = AuthStore(store.log, config.bcrypt_cost, config.auth_token_ttl)
        try:
            await store.open()
            migration = await store.log.load_migration()
            if migration is not None:
                raise StartupError(f"this store is being filled and is not complete ({migration}): finish the "
                                   "migration with cosmos-etcd migrate --cutover, or empty it and restore again")
            await auth.open()
            identity = identity_of(config)
        except Exception as e:  # storage, credentials, files: the user's to fix, in one line
            await store.close()
            self.store = None
            if isinstance(e, StartupError):
                raise
            raise StartupError(f"cannot open the {config.backend} store: {e}") from None
        headers = ResponseHeaders(identity.cluster_id, identity.member_id, lambda: store.revision)
        this_member = rpc_pb2.Member(
            ID=identity.member_id,
            name=config.name,
            peerURLs=config.initial_advertise_peer_urls,
            clientURLs=config.advertise_client_urls,
        )
        self._members = [this_member]
        self._this_member_id = this_member.ID
        self._background = [self.supervisor.start("auth-upkeep", auth.maintain_forever)]
        writes, reads = self._replication(store, this_member)
        if self.election is None:
            self._background.append(self.supervisor.start("member-heartbeat",
                                                          lambda: self._heartbeat_forever(this_member)))
        callers = Callers(auth, config.requires_client_certificates)
        quota = SpaceQuota(store.log, store.alarms, identity.member_id, config.quota_backend_bytes)

        server = grpc.aio.server(options=grpc_options(config), interceptors=[DecodeErrors()])
        hub = WatchHub(store.index, store.log, lambda: store.revision, lambda: store.compact_revision,
                       config.max_watchers_per_stream)
        store.on_commit(hub.on_commit)
        self.watch_hub = hub
        self._background.append(self.supervisor.start(
            "watch-progress", lambda: hub.notify_progress_every(config.watch_progress_notify_interval)))
        servicers = [
            (KVServicer(store, writes, reads, quota, headers, config.max_request_bytes, config.max_txn_ops, callers),
             rpc_pb2_grpc.KVServicer, rpc_pb2_grpc.add_KVServicer_to_server),
            (WatchServicer(hub, headers, config.max_request_bytes + GRPC_OVERHEAD_BYTES, callers),
             rpc_pb2_grpc.WatchServicer, rpc_pb2_grpc.add_WatchServicer_to_server),
            (LeaseServicer(store, writes, reads, quota, headers, config.max_request_bytes, callers),
             rpc_pb2_grpc.LeaseServicer, rpc_pb2_grpc.add_LeaseServicer_to_server),
            (ClusterServicer(headers, self._member_list), rpc_pb2_grpc.ClusterServicer,
             rpc_pb2_grpc.add_ClusterServicer_to_server),
            (MaintenanceServicer(store, headers, ServerInfo(ETCD_VERSION, ETCD_CLUSTER_VERSION,
                                                            config.quota_backend_bytes,
                                                            config.snapshot_format), callers,
                                 self._leader_id),
             rpc_pb2_grpc.MaintenanceServicer, rpc_pb2_grpc.add_MaintenanceServicer_to_server),
            (AuthServicer(callers, headers), rpc_pb2_grpc.AuthServicer, rpc_pb2_grpc.add_AuthServicer_to_server),
        ]
        for servicer, service, add_to_server in servicers:
            answer_unimplemented(servicer, service)
            add_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for address in config.listen_addresses:
            _bind(server, address, credentials if address in config.tls_addresses else None)
        await server.start()
        if self.election is not None:
            await self._serve_peers(PeerServicer(writes, reads, self.election, self.feed, headers))
        if config.metrics_addresses:
            self.http_listener = await metrics.serve_metrics(config.metrics_addresses,
                                                             http_routes(HealthChecks(store, self.supervisor,
                                                                                      make_current=reads.current)))
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.grpc_server = server
        logger.info("serving client traffic", extra={
            "listen": list(config.listen_client_urls), "member_name": config.name, "data_dir": config.data_dir,
            "backend": config.backend, "revision": store.revision,
            "member_id": f"{identity.member_id:x}", "cluster_id": f"{identity.cluster_id:x}",
        })

    def _replication(self, store: MVCCStore, this_member: rpc_pb2.Member) -> tuple[Writes, Reads]:
        """With --listen-peer-urls: an election among the replicas, writes that go to the leader, and
        linearizable reads made current by it."""
        config = self.config
        if not config.listen_peer_urls:
            return Writes(store), Reads(store)
        self.feed = CommitFeed(store)
        self.election = Election(store.log.leader_lease(), _member_record(this_member), config.leader_lease_seconds,
                                 followers=self.feed.members)
        client_tls = None
        if config.cert_file:
            server_name = urllib.parse.urlsplit(config.advertise_client_urls[0]).hostname or ""
            client_tls = TlsFiles(config.trusted_ca_file, config.cert_file, config.key_file, server_name)
        self.forwarder = Forwarder(client_tls)
        store.expires_leases = False  # until the election says this server leads
        follower = PushFollower(store, self.election, self.forwarder)
        fencing = Fencing(store, self.election)
        self._background += [self.supervisor.start("leader-election", self.election.run_forever, core=True),
                             self.supervisor.start("leader-push", follower.run_forever),
                             self.supervisor.start("leader-fence", fencing.run_forever)]
        return (Writes(store, self.election, self.forwarder, fencing),
                Reads(store, self.election, self.forwarder, fencing))

    async def _serve_peers(self, servicer: PeerServicer) -> None:
        """The peer listener: the leader's side of forwarded writes and read indexes (``api.peer``)."""
        server = grpc.aio.server(options=grpc_options(self.config), interceptors=[DecodeErrors()])
        peer_pb2_grpc.add_PeerServicer_to_server(servicer, server)
        for address, secure in self.config.peer_addresses:
            _bind(server, address, tls.server_credentials(self.config) if secure else None)
        await server.start()
        self.peer_server = server

    def _leader_id(self) -> int:
        """Status' leader: the elected one with --listen-peer-urls (0 while there is none), else this server."""
        if self.election is None:
            return self._this_member_id
        return self.election.leader.member_id

    def _member_list(self) -> list[rpc_pb2.Member]:
        """MemberList: with an election, the members the leader record names (this one always);
        otherwise those whose heartbeat is recent."""
        if self.election is None:
            return self._members
        return _members(self.election.members)

    async def _heartbeat_forever(self, this_member: rpc_pb2.Member) -> None:
        """Record this member and learn the others (MemberList) on a shared log without an election."""
        record = _member_record(this_member)
        beats = 0
        while True:
            try:
                await self.store.log.heartbeat(record)
                if beats % MEMBER_READ_HEARTBEATS == 0:
                    self._members = _members(await self.store.log.members(MEMBER_MAX_AGE_SECONDS)) or [this_member]
            except StorageError as e:
                logger.warning("member heartbeat failed", extra={"error": str(e)})
            beats += 1
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def stop(self) -> None:
        if self.election is not None:
            await self.election.release()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        if self.store is not None and self._this_member_id and self.election is None:
            # A rollout replaces every pod: leave no record behind for the others to keep reading.
            with contextlib.suppress(StorageError):
                await self.store.log.remove_member(self._this_member_id)
        if self.http_listener is not None:  # first: probes then fail while requests drain
            await self.http_listener.cleanup()
            self.http_listener = None
        if self.grpc_server is not None:
            await self.health.enter_graceful_shutdown()
            # Watch streams never end by themselves: end them now, as etcd does, so that the
            # grace period serves the requests in flight rather than waiting for watchers.
            self.watch_hub.close_all()
            await self.grpc_server.stop(SHUTDOWN_GRACE_SECONDS)
            self.grpc_server = None
            logger.info("stopped serving")
        if self.peer_server is not None:
            await self.peer_server.stop(SHUTDOWN_GRACE_SECONDS)
            self.peer_server = None
        if self.forwarder is not None:
            await self.forwarder.close()
        if self.store is not None:
            await self.store.close()
            self.store = None


def _member_record(member: rpc_pb2.Member) -> dict:
    """A member as it is stored (heartbeats, the leader record) and sent to the leader."""
    return {"id": member.ID, "name": member.name, "peerURLs": list(member.peerURLs),
            "clientURLs": list(member.clientURLs)}


def _members(records: list[dict]) -> list[rpc_pb2.Member]:
    members = [rpc_pb2.Member(ID=m["id"], name=m["name"], peerURLs=m["peerURLs"], clientURLs=m["clientURLs"])
               for m in records]
    return sorted(members, key=lambda m: m.name)


def _tls_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """The https:// client URLs' credentials; None when every client URL is plain http."""
    if not config.tls_enabled:
        if config.cert_file or config.auto_tls:  # as etcd warns
            logger.warning("client URLs are http: ignoring --cert-file, --key-file and --auto-tls")
        return None
    try:
        tls.use_cipher_suites(config)
        return tls.server_credentials(config)
    except ConfigError as e:
        raise StartupError(str(e)) from None


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> None:
    try:
        if credentials is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, credentials)
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
        signalled = asyncio.create_task(stopping.wait())
        await asyncio.wait([signalled, server.store.failed], return_when=asyncio.FIRST_COMPLETED)
        if not signalled.done():
            signalled.cancel()
            raise StartupError(f"stopping: {server.store.failed.result()}")
        logger.info("received a signal, shutting down")
    finally:
        await server.stop()
