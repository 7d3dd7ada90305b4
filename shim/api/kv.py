"""The KV service: Range, Put, DeleteRange, Txn and Compact."""
from __future__ import annotations

from cosmos_etcd_shim.api import validation
from cosmos_etcd_shim.api.errors import unary_rpc
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.mvcc.txn import is_write
from cosmos_etcd_shim.proto import rpc_pb2_grpc


class KVServicer(rpc_pb2_grpc.KVServicer):
    def __init__(self, store: MVCCStore, headers: ResponseHeaders, max_request_bytes: int, max_txn_ops: int) -> None:
        self.store = store
        self.headers = headers
        self.max_request_bytes = max_request_bytes
        self.max_txn_ops = max_txn_ops

    @unary_rpc
    async def Range(self, request, context):
        validation.check_range(request)
        if not request.serializable:
            await self.store.sync()
        response = self.store.range(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Put(self, request, context):
        validation.check_put(request)
        validation.check_size(request, self.max_request_bytes)
        response = await self.store.put(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def DeleteRange(self, request, context):
        validation.check_delete_range(request)
        validation.check_size(request, self.max_request_bytes)
        response = await self.store.delete_range(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Txn(self, request, context):
        validation.check_txn(request, self.max_txn_ops)
        if is_write(request):  # only writes travel through etcd's raft log and its size limit
            validation.check_size(request, self.max_request_bytes)
        response = await self.store.txn(request)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def Compact(self, request, context):
        validation.check_size(request, self.max_request_bytes)
        response = await self.store.compact(request)
        self.headers.fill(response.header)
        return response
