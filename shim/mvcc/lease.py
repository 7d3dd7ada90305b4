"""Leases: TTLs granted to clients, the keys attached to each, and their expiry.

As in etcd, granting, renewing and checking a lease create no revision; revoking one (or its
expiry) deletes its keys in one revision, through the store's commit pipeline so that it is
ordered with every other write. Granted leases are durable; on restart of a lone server every
lease gets its full TTL again, as etcd renews leases when a new leader takes over.

On a log shared by several servers there is no leader: a lease record carries a wall-clock
deadline. A keep-alive on any server renews the lease there at once and writes the new deadline
when the stored one is less than half a TTL ahead (at most about two writes per TTL). A server
that finds a lease expired reads the stored deadline again before revoking it, so a lease kept
alive elsewhere is never revoked; two servers revoking the same lease are harmless (the second
deletes nothing). Leases granted or revoked elsewhere are learned by reading the lease records
periodically and whenever a request names a lease this server does not know.

Which keys a lease holds is derived from the committed events (a PUT attaches its key to the
PUT's lease and detaches it from the previous one, a DELETE detaches), so it cannot drift from
the data, and it is known even for a lease this server has not loaded yet.
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


# On a shared log: how often lease records are read to learn other servers' grants and
# revocations, and how far clocks may disagree before a deadline counts as passed.
REFRESH_SECONDS = 5.0
CLOCK_MARGIN_SECONDS = 1.0


@dataclasses.dataclass(eq=False)
class Lease:
    id: int
    ttl: int
    expiry: float  # on this server's monotonic clock
    stored_deadline_ms: int = 0  # the deadline last written (shared log only)
    learned: int = 0  # the Lessor's count of leases learned when this one was (see Lessor.refresh)


class Lessor:
    def __init__(self, log: RevisionLog, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.clock = clock
        self.wall_clock = wall_clock
        self.leases: dict[int, Lease] = {}
        self._keys: dict[int, set[bytes]] = {}  # lease id -> keys attached, known or not
        self._key_lease: dict[bytes, int] = {}
        self._revoking: set[int] = set()
        self._saving: set[int] = set()
        self._learned = 0  # leases learned so far, by grant or by reading the records

    def recover(self, records: Iterable[LeaseRecord], live: Iterable[KeyValue]) -> None:
        for record in records:
            self._learn(record)
        for kv in live:
            if kv.lease:
                self._attach(kv.key, kv.lease)

    def _learn(self, record: LeaseRecord) -> None:
        if self.log.shared:
            expiry = self.clock() + (record.deadline_ms / 1000 - self.wall_clock())
        else:
            expiry = self.clock() + record.ttl  # a lone server renews every lease on restart
        self._learned += 1
        self.leases[record.id] = Lease(record.id, record.ttl, expiry, record.deadline_ms, self._learned)
        metrics.LEASES.set(len(self.leases))

    def exists(self, lease_id: int) -> bool:
        return lease_id in self.leases and lease_id not in self._revoking

    def keys(self, lease_id: int) -> list[bytes]:
        return sorted(self._keys.get(lease_id, ()))

    async def refresh(self) -> None:
        """Learn the leases other servers granted, forget those they revoked (shared logs)."""
        if not self.log.shared:
            return
        asked = self._learned
        stored = {record.id: record for record in await self.log.load_leases()}
        for lease_id, record in stored.items():
            known = self.leases.get(lease_id)
            if known is None or record.deadline_ms > known.stored_deadline_ms:  # new, or renewed elsewhere
                self._learn(record)
        # A lease granted here while the records were being read may be missing from the answer:
        # only a lease learned before the read began and absent from it was revoked elsewhere.
        for lease_id in [i for i, lease in self.leases.items()
                         if i not in stored and i not in self._revoking and lease.learned <= asked]:
            del self.leases[lease_id]
        metrics.LEASES.set(len(self.leases))

    async def refresh_unknown(self, lease_ids: Iterable[int]) -> None:
        """Before refusing a lease this server does not know, ask the shared store once."""
        if self.log.shared and any(i and i not in self.leases for i in lease_ids):
            await self.refresh()

    # -- requests -----------------------------------------------------------------------------

    async def grant(self, lease_id: int, ttl: int) -> Lease:
        if ttl > MAX_TTL_SECONDS:
            raise LeaseTTLTooLargeError()
        if lease_id == NO_LEASE:
            # 63 random bits: another server choosing the same id is not worth a read of the store.
            while lease_id == NO_LEASE or lease_id in self.leases:
                lease_id = secrets.randbits(63)
        else:
            await self.refresh_unknown([lease_id])  # a client's id may exist on another server
        if lease_id in self.leases:
            raise LeaseExistsError()
        ttl = max(ttl, MIN_TTL_SECONDS)
        record = LeaseRecord(id=lease_id, ttl=ttl, deadline_ms=self._deadline_ms(ttl))
        await self.log.save_lease(record)
        if lease_id in self.leases:  # granted concurrently while this one was being saved
            raise LeaseExistsError()
        self._learn(record)
        return self.leases[lease_id]

    async def renew(self, lease_id: int) -> int:
        """KeepAlive: the lease's full TTL again; its TTL, or 0 if it does not exist (as etcd)."""
        await self.refresh_unknown([lease_id])
        lease = self.leases.get(lease_id)
        if lease is None or lease_id in self._revoking:
            return 0
        lease.expiry = self.clock() + lease.ttl
        if self.log.shared and lease.stored_deadline_ms - self.wall_clock() * 1000 < lease.ttl * 500:
            if lease_id not in self._saving:
                self._saving.add(lease_id)
                asyncio.create_task(self._save_deadline(lease))
        return lease.ttl

    async def _save_deadline(self, lease: Lease) -> None:
        deadline = self._deadline_ms(lease.ttl)
        try:
            await self.log.save_lease(LeaseRecord(id=lease.id, ttl=lease.ttl, deadline_ms=deadline))
            lease.stored_deadline_ms = deadline
        except Exception:  # the next keep-alive tries again; expiry re-reads the store first
            logger.warning("cannot store a lease renewal", extra={"lease": f"{lease.id:x}"})
        finally:
            self._saving.discard(lease.id)

    def _deadline_ms(self, ttl: int) -> int:
        return int((self.wall_clock() + ttl) * 1000)

    async def get(self, lease_id: int) -> Lease:
        await self.refresh_unknown([lease_id])
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
        return self.keys(lease_id)

    def abort_revoke(self, lease_id: int) -> None:
        self._revoking.discard(lease_id)

    async def finish_revoke(self, lease_id: int) -> None:
        self.leases.pop(lease_id, None)
        self._revoking.discard(lease_id)
        metrics.LEASES.set(len(self.leases))
        await self.log.delete_lease(lease_id)

    async def expired(self) -> list[int]:
        """Leases past their deadline. On a shared log the stored deadlines are read first: a lease
        kept alive through another server has a later one there."""
        now = self.clock()
        due = [lease.id for lease in self.leases.values() if lease.expiry <= now and lease.id not in self._revoking]
        if not due or not self.log.shared:
            return due
        await self.refresh()
        now, wall_ms = self.clock(), self.wall_clock() * 1000
        margin_ms = CLOCK_MARGIN_SECONDS * 1000
        return [lease.id for lease in self.leases.values()
                if lease.expiry <= now and lease.stored_deadline_ms + margin_ms <= wall_ms
                and lease.id not in self._revoking]

    # -- keeping attachments in step with the data --------------------------------------------

    def on_commit(self, records: list[Revision]) -> None:
        for record in records:
            for event in record.events:
                key = event.kv.key
                self._detach(key)
                if event.type == Event.PUT and event.kv.lease:
                    self._attach(key, event.kv.lease)

    def _attach(self, key: bytes, lease_id: int) -> None:
        self._keys.setdefault(lease_id, set()).add(key)
        self._key_lease[key] = lease_id

    def _detach(self, key: bytes) -> None:
        lease_id = self._key_lease.pop(key, None)
        if lease_id is not None:
            keys = self._keys.get(lease_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys[lease_id]


async def expire_forever(lessor: Lessor, revoke: Callable[[int], "asyncio.Future"]) -> None:
    """Revoke leases whose TTL ran out (and, on a shared log, keep up with the lease records);
    runs for the life of the server."""
    refreshed = lessor.clock()
    while True:
        await asyncio.sleep(EXPIRY_CHECK_SECONDS)
        try:
            if lessor.log.shared and lessor.clock() - refreshed >= REFRESH_SECONDS:
                await lessor.refresh()
                refreshed = lessor.clock()
            due = await lessor.expired()
        except Exception:
            logger.warning("cannot read the lease records", exc_info=True)
            continue
        for lease_id in due:
            try:
                await revoke(lease_id)
            except LeaseNotFoundError:
                pass  # revoked by a client meanwhile
            except Exception:
                logger.exception("lease expiry failed", extra={"lease": f"{lease_id:x}"})
