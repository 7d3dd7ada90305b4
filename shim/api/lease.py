"""The Lease service: Grant, Revoke, KeepAlive (a stream), TimeToLive, Leases.

With auth enabled, as etcd 3.5: revoking a lease needs write permission on every key it holds;
Grant and Revoke refuse an invalid token; KeepAlive, TimeToLive and Leases check nothing. A raised
NOSPACE alarm refuses Grant, CORRUPT refuses Grant and Revoke (see ``mvcc.alarms``); keep-alives
go on. Lease expiry goes on under CORRUPT too (etcd's expiry revokes are refused like a client's).
The space quota (``mvcc.quota``) checks Grant before anything else, as etcd's quota wrapper does.
"""
from __future__ import annotations

from cosmos_etcd_shim.api import validation
from cosmos_etcd_shim.api.callers import Callers
from cosmos_etcd_shim.api.errors import unary_rpc
from cosmos_etcd_shim.api.header import ResponseHeaders
from cosmos_etcd_shim.mvcc.errors import LeaseNotFoundError
from cosmos_etcd_shim.mvcc.quota import SpaceQuota
from cosmos_etcd_shim.mvcc.store import MVCCStore
from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from cosmos_etcd_shim.replication.reads import Reads
from cosmos_etcd_shim.replication.writes import Writes


class LeaseServicer(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, store: MVCCStore, writes: Writes, reads: Reads, quota: SpaceQuota, headers: ResponseHeaders,
                 max_request_bytes: int, callers: Callers) -> None:
        self.store = store
        self.writes = writes
        self.reads = reads
        self.quota = quota
        self.callers = callers
        self.leases = store.leases
        self.headers = headers
        self.max_request_bytes = max_request_bytes

    @unary_rpc
    async def LeaseGrant(self, request, context):
        await self.quota.check_lease_grant()
        self.callers.of(context)
        validation.check_size(request, self.max_request_bytes)
        self.store.alarms.check_lease_grant()
        lease = await self.leases.grant(request.ID, request.TTL)
        response = rpc_pb2.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def LeaseRevoke(self, request, context):
        caller = self.callers.of(context)
        validation.check_size(request, self.max_request_bytes)
        self.store.alarms.check_lease_revoke()
        self.callers.auth.check_lease_revoke(caller, self.leases.keys(request.ID))
        response = await self.writes.revoke_lease(request)
        self.headers.fill(response.header)
        return response

    async def LeaseKeepAlive(self, request_iterator, context):
        async for request in request_iterator:
            response = rpc_pb2.LeaseKeepAliveResponse(ID=request.ID, TTL=await self.leases.renew(request.ID))
            self.headers.fill(response.header)
            yield response

    @unary_rpc
    async def LeaseTimeToLive(self, request, context):
        await self.reads.current()  # its keys as of every write acknowledged anywhere (etcd asks its leader)
        try:
            lease = await self.leases.get(request.ID)
        except LeaseNotFoundError:
            response = rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)  # etcd answers -1, not an error
        else:
            response = rpc_pb2.LeaseTimeToLiveResponse(
                ID=lease.id, TTL=self.leases.remaining(lease), grantedTTL=lease.ttl,
                keys=self.leases.keys(lease.id) if request.keys else [])
        self.headers.fill(response.header)
        return response

    @unary_rpc
    async def LeaseLeases(self, request, context):
        by_expiry = sorted(self.leases.leases.values(), key=lambda lease: lease.expiry)  # as etcd lists them
        response = rpc_pb2.LeaseLeasesResponse(leases=[rpc_pb2.LeaseStatus(ID=lease.id) for lease in by_expiry])
        self.headers.fill(response.header)
        return response
