"""Leases: TTLs granted to clients, the keys attached to each, and their expiry.

As in etcd, granting, renewing and checking a lease create no revision; revoking one (or its
expiry) deletes its keys in one revision, through the store's commit pipeline so that it is
ordered with every other write. Granted leases are durable; on restart every lease gets its full
TTL again, as etcd renews leases when a new leader takes over.

On a log shared by several servers, a server expires only the leases it *keeps*: those granted
or kept alive through it. Another server's lease may be kept alive there, and revoking it on a
stale deadline would delete live keys; a lease whose server and client are both gone then stays
until revoked (coordinated expiry across replicas is not built yet).

Which keys a lease holds is derived from the committed events (a PUT attaches its key to the
PUT's lease and detaches it from the previous one, a DELETE detaches), so it cannot drift from
the data.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc.errors import LeaseExistsError, LeaseNotFoundError, LeaseTTLTooLargeError
from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Lease as LeaseRecord
from cosmos_etcd_shim.proto.storage_pb2 import Revision
from cosmos_etcd_shim.storage import RevisionLog

logger = logging.getLogger(__name__)

# etcd's minimum TTL: 1.5 election timeouts of the default 1 s election, rounded up.
MIN_TTL_SECONDS = 2
MAX_TTL_SECONDS = 9_000_000_000
NO_LEASE = 0
# How often expiry is checked, as etcd's lessor does.
EXPIRY_CHECK_SECONDS = 0.5


@dataclasses.dataclass(eq=False)
class Lease:
    id: int
    ttl: int
    expiry: float
    keys: set[bytes] = dataclasses.field(default_factory=set)


class Lessor:
    def __init__(self, log: RevisionLog, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.leases: dict[int, Lease] = {}
        self._kept: set[int] = set()  # the leases this server expires
        self._key_lease: dict[bytes, int] = {}
        self._revoking: set[int] = set()

    def recover(self, records: Iterable[LeaseRecord], live: Iterable[KeyValue]) -> None:
        now = self.clock()
        for record in records:
            self.leases[record.id] = Lease(record.id, record.ttl, now + record.ttl)
            if not self.log.shared:
                self._kept.add(record.id)
        for kv in live:
            if kv.lease:
                self._attach(kv.key, kv.lease)

    def exists(self, lease_id: int) -> bool:
        return lease_id in self.leases and lease_id not in self._revoking

    # -- requests -----------------------------------------------------------------------------

    async def grant(self, lease_id: int, ttl: int) -> Lease:
        if ttl > MAX_TTL_SECONDS:
            raise LeaseTTLTooLargeError()
        while lease_id == NO_LEASE:
            candidate = secrets.randbits(63)
            lease_id = candidate if candidate not in self.leases else NO_LEASE
        if lease_id in self.leases:
            raise LeaseExistsError()
        ttl = max(ttl, MIN_TTL_SECONDS)
        await self.log.save_lease(LeaseRecord(id=lease_id, ttl=ttl))
        if lease_id in self.leases:  # granted concurrently while this one was being saved
            raise LeaseExistsError()
        lease = self.leases[lease_id] = Lease(lease_id, ttl, self.clock() + ttl)
        self._kept.add(lease_id)
        metrics.LEASES.set(len(self.leases))
        return lease

    def renew(self, lease_id: int) -> int:
        """KeepAlive: the lease's full TTL again; its TTL, or 0 if it does not exist (as etcd)."""
        lease = self.leases.get(lease_id)
        if lease is None or lease_id in self._revoking:
            return 0
        lease.expiry = self.clock() + lease.ttl
        self._kept.add(lease_id)
        return lease.ttl

    def get(self, lease_id: int) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError()
        return lease

    def remaining(self, lease: Lease) -> int:
        return max(0, int(lease.expiry - self.clock()))

    def begin_revoke(self, lease_id: int) -> list[bytes]:
        """The keys to delete for ``lease_id``; from now on no Put may attach to it.

        Called again for the same lease if its batch is evaluated again after a log conflict.
        """
        if lease_id not in self.leases:
            raise LeaseNotFoundError()
        self._revoking.add(lease_id)
        return sorted(self.leases[lease_id].keys)

    def abort_revoke(self, lease_id: int) -> None:
        self._revoking.discard(lease_id)

    async def finish_revoke(self, lease_id: int) -> None:
        self.leases.pop(lease_id, None)
        self._kept.discard(lease_id)
        metrics.LEASES.set(len(self.leases))
        self._revoking.discard(lease_id)
        await self.log.delete_lease(lease_id)

    def expired(self) -> list[int]:
        now = self.clock()
        return [lease.id for lease in self.leases.values()
                if lease.expiry <= now and lease.id in self._kept and lease.id not in self._revoking]

    # -- keeping attachments in step with the data --------------------------------------------

    def on_commit(self, records: list[Revision]) -> None:
        for record in records:
            for event in record.events:
                key = event.kv.key
                self._detach(key)
                if event.type == Event.PUT and event.kv.lease:
                    self._attach(key, event.kv.lease)

    def _attach(self, key: bytes, lease_id: int) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)
            self._key_lease[key] = lease_id

    def _detach(self, key: bytes) -> None:
        lease_id = self._key_lease.pop(key, None)
        if lease_id is not None and lease_id in self.leases:
            self.leases[lease_id].keys.discard(key)


async def expire_forever(lessor: Lessor, revoke: Callable[[int], "asyncio.Future"]) -> None:
    """Revoke leases whose TTL ran out; runs for the life of the server."""
    while True:
        await asyncio.sleep(EXPIRY_CHECK_SECONDS)
        for lease_id in lessor.expired():
            try:
                await revoke(lease_id)
            except LeaseNotFoundError:
                pass  # revoked by a client meanwhile
            except Exception:
                logger.exception("lease expiry failed", extra={"lease": f"{lease_id:x}"})
