"""The Maintenance service: Status, Alarm, Defragment, Hash, HashKV, Snapshot.

MoveLeader and Downgrade answer UNIMPLEMENTED: there is no raft leader to move or cluster to
downgrade. With auth enabled, Hash, HashKV, Defragment and Snapshot need the root role and refuse
others as etcd 3.5 does (code UNKNOWN, the auth package's text); Status checks nothing.

Alarm raises, disarms and lists etcd's alarms as etcd 3.5 does (see ``mvcc.alarms`` for what they
refuse); Status lists the raised ones in ``errors``, in etcd's text (``memberID:<id> alarm:NOSPACE ``,
the member id left out when it is 0). Alarm refuses an invalid token; with auth enabled ACTIVATE
and DEACTIVATE also need the root role (etcd's errors: "etcdserver: permission denied" ...), as
etcd does since 3.5.28 (3.5.1 let any caller raise an alarm, i.e. stop every write); GET stays open
to any caller, as in 3.5.1. A GET on a shared log first catches up with it, as etcd's goes
through raft: it lists an alarm raised through any replica.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import pathlib
import tempfile
from collections.abc import Callable

import grpc

from cosmos_etcd_shim.api.callers import Callers
from cosmos_etcd_shim.api.errors import EtcdRpcError, unary_rpc
from cosmos_etcd_shim.api.header import RAFT_TERM, ResponseHeaders
from cosmos_etcd_shim.mvcc.errors import AuthError
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from cosmos_etcd_shim.proto.rpc_pb2 import AlarmMember, AlarmRequest, AlarmType
from cosmos_etcd_shim.snapshot.etcd_db import write_etcd_database


SNAPSHOT_CHUNK_BYTES = 32 * 1024  # etcd's snapshot send buffer


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """What Status reports about this server beyond the store."""

    etcd_version: str
    storage_version: str
    quota_backend_bytes: int
    snapshot_format: str = "etcd"


class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, store: MVCCStore, headers: ResponseHeaders, info: ServerInfo, callers: Callers,
                 leader_id: Callable[[], int]) -> None:
        self.store = store
        self.leader_id = leader_id  # 0 while the servers of a shared log elect one, as etcd's "no leader"
        self.callers = callers
        self.headers = headers
        self.info = info

    @unary_rpc
    async def Status(self, request, context):
        db_size, db_size_in_use = self.store.log.size()
        response = rpc_pb2.StatusResponse(
            version=self.info.etcd_version,
            dbSize=db_size,
            dbSizeInUse=db_size_in_use,
            leader=self.leader_id(),
            # No raft log: the revision is this server's count of applied changes.
            raftIndex=self.store.revision,
            raftAppliedIndex=self.store.revision,
            raftTerm=RAFT_TERM,
            storageVersion=self.info.storage_version,
            dbSizeQuota=self.info.quota_backend_bytes,
            errors=[_alarm_text(alarm) for alarm in self.store.alarms.get()],
        )
        self.headers.fill(response.header)
        return response

    def _require_admin(self, context) -> None:
        try:
            self.callers.auth.check_admin(self.callers.of(context))
        except AuthError as e:
            raise EtcdRpcError(grpc.StatusCode.UNKNOWN, e.message) from None

    @unary_rpc
    async def Alarm(self, request, context):
        caller = self.callers.of(context)
        alarms = self.store.alarms
        response = rpc_pb2.AlarmResponse()
        if request.action == AlarmRequest.GET:
            await self.store.sync()
            response.alarms.extend(alarms.get(request.alarm))
        elif request.action in (AlarmRequest.ACTIVATE, AlarmRequest.DEACTIVATE):
            self.callers.auth.check_admin(caller)
            change = alarms.activate if request.action == AlarmRequest.ACTIVATE else alarms.deactivate
            changed = await change(request.memberID, request.alarm)
            if changed is not None:
                response.alarms.append(changed)
        # Any other action changes nothing and lists nothing (etcd 3.5.1 crashes on one).
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Defragment(self, request, context):
        self._require_admin(context)
        await self.store.log.defragment()
        response = rpc_pb2.DefragmentResponse()
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def HashKV(self, request, context):
        self._require_admin(context)
        revision, compact_revision, digest = await self.store.hash_kv(request.revision)
        response = rpc_pb2.HashKVResponse(hash=digest, compact_revision=compact_revision, hash_revision=revision)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Hash(self, request, context):
        self._require_admin(context)
        _, _, digest = await self.store.hash_kv(0)
        response = rpc_pb2.HashResponse(hash=digest)
        self.headers.fill(response.header)
        return response

    async def Snapshot(self, request, context):
        """etcd's database as a bbolt file (``--snapshot-format etcd``, see ``snapshot/etcd_db.py``)
        or the store image itself (``sqlite``), then its SHA-256, as etcd appends one: ``etcdctl
        snapshot save`` writes it, and ``etcdutl snapshot restore`` checks it."""
        try:
            self._require_admin(context)
        except EtcdRpcError as e:
            await context.abort(e.code, e.message)
        with tempfile.TemporaryDirectory() as scratch:
            path = image = pathlib.Path(scratch) / "store.db"
            await self.store.log.snapshot(image)
            if self.info.snapshot_format == "etcd":
                path = pathlib.Path(scratch) / "etcd.db"
                await asyncio.to_thread(write_etcd_database, image, path, self.headers.member_id, RAFT_TERM)
            total = path.stat().st_size + hashlib.sha256().digest_size
            checksum = hashlib.sha256()
            sent = 0
            with open(path, "rb") as snapshot:
                while chunk := snapshot.read(SNAPSHOT_CHUNK_BYTES):
                    checksum.update(chunk)
                    sent += len(chunk)
                    yield self._snapshot_response(total - sent, chunk)
            yield self._snapshot_response(0, checksum.digest())

    def _snapshot_response(self, remaining: int, blob: bytes) -> rpc_pb2.SnapshotResponse:
        response = rpc_pb2.SnapshotResponse(remaining_bytes=remaining, blob=blob, version=self.info.storage_version)
        self.headers.fill(response.header)
        return response


def _alarm_text(alarm: AlarmMember) -> str:
    """An alarm as etcd's Status lists it: gogo protobuf's compact text, a space after each field."""
    member = f"memberID:{alarm.memberID} " if alarm.memberID else ""
    return f"{member}alarm:{AlarmType.Name(alarm.alarm)} "
