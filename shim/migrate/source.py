"""The etcd a migration copies from: a gRPC client of etcd's own API (etcd 3.4 and later).

What the migration needs from it, and the etcd request behind each:

* a consistent image with its full history since the last compaction, the auth state (bcrypt
  hashes, which no other request returns) and the alarms: ``Maintenance.Snapshot``, checked
  against the SHA-256 etcd appends;
* every change after that image, revision by revision: one ``Watch`` of the whole key space from
  the image's revision + 1 (etcd never splits a revision across watch responses);
* its current revision (a linearizable ``Range`` header), its compact revision (``HashKV``), its
  leases and their TTLs (``LeaseLeases``, ``LeaseTimeToLive``), and a digest of its key-values at
  a revision (paginated ``Range`` at that revision) to verify the copy at cutover.

With etcd's auth enabled the user must hold the root role (Snapshot and HashKV need it).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator

import grpc

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc

RANGE_PAGE = 1000
TIMEOUT = 60.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 2**31 - 1)]


class SourceError(Exception):
    """The source etcd refused or failed a request the migration needs."""


@dataclasses.dataclass(frozen=True)
class SourceTLS:
    """etcdctl's client TLS flags: CA bundle, client certificate and key (PEM files)."""

    cacert: str = ""
    cert: str = ""
    key: str = ""


def state_digest(kvs) -> str:
    """A digest of key-values in key order: key, value, create and mod revision, version, lease."""
    digest = hashlib.sha256()
    for kv in kvs:
        for field in (kv.key, kv.value):
            digest.update(len(field).to_bytes(8, "big") + field)
        for number in (kv.create_revision, kv.mod_revision, kv.version, kv.lease):
            digest.update(number.to_bytes(8, "big", signed=True))
    return digest.hexdigest()


class SourceEtcd:
    def __init__(self, endpoint: str, tls: SourceTLS | None = None, user: str = "") -> None:
        self.endpoint = endpoint
        if tls is not None:
            read = lambda path: open(path, "rb").read() if path else None  # noqa: E731
            credentials = grpc.ssl_channel_credentials(read(tls.cacert), read(tls.key), read(tls.cert))
            self.channel = grpc.aio.secure_channel(endpoint, credentials, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch_stub = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.auth = rpc_pb2_grpc.AuthStub(self.channel)
        self.user = user
        self.metadata: tuple = ()

    async def connect(self) -> None:
        """Sign in when a user was given (``name:password``, as etcdctl's --user)."""
        if self.user:
            name, _, password = self.user.partition(":")
            answer = await self._call(self.auth.Authenticate(pb.AuthenticateRequest(name=name, password=password),
                                                             timeout=TIMEOUT))
            self.metadata = (("token", answer.token),)

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, call):
        try:
            return await call
        except grpc.aio.AioRpcError as e:
            raise SourceError(f"{self.endpoint}: {e.code().name} {e.details()}") from None

    async def cluster_id(self) -> int:
        status = await self._call(self.maintenance.Status(pb.StatusRequest(), timeout=TIMEOUT, metadata=self.metadata))
        return status.header.cluster_id

    async def revision(self) -> int:
        answer = await self._call(self.kv.Range(pb.RangeRequest(key=b"\0", limit=1, keys_only=True),
                                                timeout=TIMEOUT, metadata=self.metadata))
        return answer.header.revision

    async def compact_revision(self) -> int:
        answer = await self._call(self.maintenance.HashKV(pb.HashKVRequest(revision=0), timeout=TIMEOUT,
                                                          metadata=self.metadata))
        return answer.compact_revision

    async def snapshot(self) -> bytes:
        """etcd's database at one revision, without the SHA-256 etcd appends (checked here)."""
        chunks = []
        try:
            async for answer in self.maintenance.Snapshot(pb.SnapshotRequest(), metadata=self.metadata):
                chunks.append(answer.blob)
        except grpc.aio.AioRpcError as e:
            raise SourceError(f"{self.endpoint}: snapshot: {e.code().name} {e.details()}") from None
        data = b"".join(chunks)
        content, digest = data[:-32], data[-32:]
        if hashlib.sha256(content).digest() != digest:
            raise SourceError(f"{self.endpoint}: the snapshot's SHA-256 does not match (damaged in transit)")
        return content

    async def changes(self, start_revision: int) -> AsyncIterator[pb.WatchResponse]:
        """Every watch response with events of the whole key space from ``start_revision``."""
        create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"\0", range_end=b"\0", start_revision=start_revision))
        call = self.watch_stub.Watch(iter([create]), metadata=self.metadata)
        try:
            async for answer in call:
                if answer.canceled:
                    reason = answer.cancel_reason or f"compacted at {answer.compact_revision}"
                    raise SourceError(f"{self.endpoint}: the watch from revision {start_revision} was canceled: "
                                      f"{reason}")
                if answer.events:
                    yield answer
        except grpc.aio.AioRpcError as e:
            raise SourceError(f"{self.endpoint}: watch: {e.code().name} {e.details()}") from None
        finally:
            call.cancel()
        raise SourceError(f"{self.endpoint}: the watch ended")

    async def leases(self) -> dict[int, tuple[int, int]]:
        """Lease id -> (granted TTL, remaining TTL), of every lease the source holds now."""
        listed = await self._call(self.lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=TIMEOUT,
                                                         metadata=self.metadata))
        found = {}
        for lease in listed.leases:
            answer = await self._call(self.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID),
                                                                 timeout=TIMEOUT, metadata=self.metadata))
            if answer.TTL > 0:  # -1: expired between the two requests
                found[lease.ID] = (answer.grantedTTL, answer.TTL)
        return found

    async def digest_at(self, revision: int) -> tuple[str, int]:
        """(state digest, number of keys) of the source's key-values at ``revision``."""
        kvs = []
        key = b"\0"
        while True:
            answer = await self._call(self.kv.Range(
                pb.RangeRequest(key=key, range_end=b"\0", revision=revision, limit=RANGE_PAGE),
                timeout=TIMEOUT, metadata=self.metadata))
            kvs.extend(answer.kvs)
            if not answer.more:
                return state_digest(kvs), len(kvs)
            key = answer.kvs[-1].key + b"\0"
