"""The Maintenance service: Status and Alarm; the rest answers UNIMPLEMENTED until it exists."""
from __future__ import annotations

import dataclasses

from cosmos_etcd_shim.api.errors import etcd_errors
from cosmos_etcd_shim.api.header import RAFT_TERM, ResponseHeaders
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """What Status reports about this server beyond the store."""

    etcd_version: str
    storage_version: str
    quota_backend_bytes: int


class MaintenanceServicer(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, store: MVCCStore, headers: ResponseHeaders, info: ServerInfo) -> None:
        self.store = store
        self.headers = headers
        self.info = info

    @etcd_errors
    async def Status(self, request, context):
        db_size, db_size_in_use = self.store.log.size()
        response = rpc_pb2.StatusResponse(
            version=self.info.etcd_version,
            dbSize=db_size,
            dbSizeInUse=db_size_in_use,
            leader=self.headers.member_id,
            # No raft log: the revision is this server's count of applied changes.
            raftIndex=self.store.revision,
            raftAppliedIndex=self.store.revision,
            raftTerm=RAFT_TERM,
            storageVersion=self.info.storage_version,
            dbSizeQuota=self.info.quota_backend_bytes,
        )
        self.headers.fill(response.header)
        return response

    @etcd_errors
    async def Alarm(self, request, context):
        # No alarm is ever raised (no space quota alarm, no corruption check), so none is listed;
        # activating or deactivating one is accepted as etcd accepts it, with nothing to report.
        response = rpc_pb2.AlarmResponse()
        self.headers.fill(response.header)
        return response
