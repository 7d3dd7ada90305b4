"""The KV service: Range, Put, DeleteRange, Txn and Compact.

With auth enabled each request is checked against the caller's permissions after etcd's request
checks (and the size check of writes), so refusals come in etcd's order. Compact needs no
permission (etcd 3.5 lets any caller compact), only a valid token if one is given. A raised alarm
(see ``mvcc.alarms``) refuses writes just before the permission check, where etcd's alarm
appliers refuse them. The space quota (``mvcc.quota``) checks Put and every Txn before anything
else, as etcd's quota wrapper of the KV service does. Writes then go to the leader
(``replication.writes``); reads are answered here, linearizable ones once this server's store is
current (``replication.reads``).
"""
from __future__ import annotations

from cosmos_etcd_shim.api import validation
from cosmos_etcd_shim.api.callers import Callers
from cosmos_etcd_shim.api.errors import unary_rpc
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.mvcc.quota import SpaceQuota
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.mvcc.txn import is_write
from cosmos_etcd_shim.proto import rpc_pb2_grpc
from cosmos_etcd_shim.replication.reads import Reads
from cosmos_etcd_shim.replication.writes import Writes


class KVServicer(rpc_pb2_grpc.KVServicer):
    def __init__(self, store: MVCCStore, writes: Writes, reads: Reads, quota: SpaceQuota, headers: ResponseHeaders,
                 max_request_bytes: int, max_txn_ops: int, callers: Callers) -> None:
        self.store = store
        self.writes = writes
        self.reads = reads
        self.quota = quota
        self.callers = callers
        self.auth = callers.auth
        self.headers = headers
        self.max_request_bytes = max_request_bytes
        self.max_txn_ops = max_txn_ops

    @unary_rpc
    async def Range(self, request, context):
        validation.check_range(request)
        caller = self.callers.of(context)
        if not request.serializable:
            await self.reads.current()
        self.auth.check_read(caller, request.key, request.range_end)
        response = await self.store.range(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Put(self, request, context):
        await self.quota.check_put(request)
        validation.check_put(request)
        caller = self.callers.of(context)
        validation.check_size(request, self.max_request_bytes)
        self.store.alarms.check_put()
        self.auth.check_put(caller, request, self.store.leases.keys(request.lease) if request.lease else ())
        response = await self.writes.put(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def DeleteRange(self, request, context):
        validation.check_delete_range(request)
        caller = self.callers.of(context)
        validation.check_size(request, self.max_request_bytes)
        self.store.alarms.check_delete_range()
        self.auth.check_delete_range(caller, request)
        response = await self.writes.delete_range(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Txn(self, request, context):
        await self.quota.check_txn(request)
        validation.check_txn(request, self.max_txn_ops)
        caller = self.callers.of(context)
        writing = is_write(request)
        if writing:  # only writes travel through etcd's raft log and its size limit
            validation.check_size(request, self.max_request_bytes)
            self.store.alarms.check_txn(request)
        self.auth.check_txn(caller, request)
        if writing:
            response = await self.writes.txn(request)
        else:  # a read: etcd makes a read-only Txn linearizable too
            await self.reads.current()
            response = await self.store.txn(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Compact(self, request, context):
        self.callers.of(context)
        validation.check_size(request, self.max_request_bytes)
        self.store.alarms.check_compact()
        response = await self.writes.compact(request)
        self.headers.fill(response.header)
        return response
