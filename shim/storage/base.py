"""The log interface every storage backend implements, and what a backend recovers on open.

Durability is a log of revision records (``storage_pb2.Revision``: the events of one revision)
plus a base: the live key-values just before the compact revision. Appending the record whose
revision is head+1 is the compare-and-swap on the log head: it fails with
:class:`LogConflictError` when that revision already exists (another writer got there first), and
nothing is written. Compaction at revision R folds the records *before* R into the base and
removes them; record R itself stays, so a watch may still start exactly at the compact revision.

Leases live beside the log: granting one does not create a revision, as in etcd. So does the
auth state (users, roles, whether auth is enabled): one opaque record whose version every save
increments, saved only if nobody saved another version meanwhile (a compare-and-swap). And so
do the alarms (etcd's NOSPACE and CORRUPT, per member id): a set of (member id, alarm type) pairs
that every server of a shared log follows, kept by the backend as it last saw it
(:attr:`RevisionLog.alarms`), so that checking them costs no request.
"""
from __future__ import annotations

import abc
import dataclasses
import pathlib
from collections.abc import AsyncIterator, Iterable, Sequence

from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Lease, Revision

# etcd's store starts at revision 1: the first write is revision 2.
INITIAL_REVISION = 1


class StorageError(Exception):
    """The backend failed; what was being written was not made durable."""


class StorageThrottledError(StorageError):
    """The backend kept answering "too many requests" until the operation's deadline: back-pressure,
    not an outage (nothing was written; the client may retry later)."""


class StorageRejectedError(StorageError):
    """The backend refused the request with an answer that retrying will not change (a missing
    permission, a rotated key, a full partition, a malformed request); nothing was written."""


class LogConflictError(StorageError):
    """The first revision of an append already exists in the log: catch up and retry."""


class LogFencedError(StorageError):
    """Another server fenced the log (a later leader, :meth:`RevisionLog.fence_next`): this server's
    append or compaction was refused and nothing was written. It no longer leads."""


class LogCompactedError(StorageError):
    """The records asked for were compacted away (by another writer) before this one read them."""


class AuthConflictError(StorageError):
    """Another server saved the auth state since this one read it: read it again and retry."""


class LeaderConflictError(StorageError):
    """The leader record changed since it was read (another server renewed or took it)."""


@dataclasses.dataclass(frozen=True)
class AuthRecord:
    """The auth state as a backend keeps it: bytes the backend does not interpret, and a version."""

    version: int
    data: bytes


@dataclasses.dataclass(frozen=True, order=True)
class StoredAlarm:
    """One raised alarm: etcd's AlarmMember (``member_id`` is a uint64, ``alarm`` an AlarmType)."""

    member_id: int
    alarm: int


@dataclasses.dataclass(frozen=True)
class LeaderRecord:
    """Who leads the servers of a shared log, as the leader record says (see :class:`LeaderLease`)."""

    holder: int  # the leader's member id; 0: nobody (never claimed, or released)
    address: str  # where the holder takes forwarded requests (its advertised peer URL)
    term: int  # incremented by every change of holder
    token: str  # the holder's peer token for this term: forwarded requests carry it
    renewals: int  # incremented by every renewal, so that each one is a new version
    # The servers taking part as the holder last recorded them (itself and those following it):
    # MemberList of every server while a leader exists. Each: id, name, peerURLs, clientURLs.
    members: tuple[dict, ...] = ()
    version: str = ""  # opaque, set by the backend: what a conditional write compares


class LeaderLease(abc.ABC):
    """One record every server of a shared log can read and replace conditionally: the leader
    election's only shared state. The backend keeps no time; lease expiry is the readers' business
    (a record unchanged for a lease period has expired)."""

    @abc.abstractmethod
    async def read(self) -> LeaderRecord:
        """The record as stored now."""

    @abc.abstractmethod
    async def replace(self, record: LeaderRecord, expected_version: str) -> LeaderRecord:
        """Store ``record`` if the stored one is still ``expected_version``; the stored record (with
        its new version), or :class:`LeaderConflictError`."""


@dataclasses.dataclass
class StoreImage:
    """Everything a store holds, revisions included: what a snapshot carries, and what
    :meth:`RevisionLog.import_image` fills an empty store with (a restore, a migration)."""

    compact_revision: int
    base: Iterable[KeyValue]  # the live key-values just before the compact revision
    revisions: Iterable[Revision]  # from the compact revision on, in order, contiguous
    leases: Iterable[Lease]
    auth: AuthRecord | None
    alarms: Iterable[StoredAlarm]


@dataclasses.dataclass
class IndexCheckpoint:
    """The store's index at ``revision`` as a backend keeps it (see :mod:`cosmos_etcd_shim.mvcc.history`):
    every version kept, by key then revision, only each key's newest with its value."""

    revision: int
    events: Sequence[Event]


@dataclasses.dataclass
class RecoveredState:
    """What a backend holds: the base at the compact revision, and the log after it; or, when a
    usable checkpoint exists, that checkpoint (then ``base`` is empty) and the log after it."""

    compact_revision: int
    base: Iterable[KeyValue]
    revisions: Sequence[Revision]
    leases: Sequence[Lease]
    checkpoint: IndexCheckpoint | None = None


class RevisionLog(abc.ABC):
    """A durable, append-only log of revisions with a compacted base."""

    #: Whether other servers append to the same log (then the store tails it and syncs reads).
    shared: bool = False
    #: How often a shared log is read for other writers' revisions right after activity; the
    #: interval doubles while nothing happens, up to ``idle_poll_interval``.
    poll_interval: float = 0.1
    idle_poll_interval: float = 1.0

    @property
    @abc.abstractmethod
    def compact_revision(self) -> int:
        """The compact revision as this instance last saw it (with a shared log, another writer
        may have compacted; the store follows after each catch-up)."""

    @abc.abstractmethod
    async def open(self) -> RecoveredState:
        """Open (creating when absent) and return everything needed to rebuild the index."""

    @abc.abstractmethod
    async def append(self, revisions: Sequence[Revision]) -> None:
        """Make consecutive revisions durable, all or none, starting at head+1."""

    @abc.abstractmethod
    async def read_after(self, revision: int, limit: int | None = None) -> Sequence[Revision]:
        """The records after ``revision`` in order, at most ``limit`` of them."""

    @abc.abstractmethod
    async def read_revisions(self, revisions: Sequence[int]) -> dict[int, Revision]:
        """The records of the given revisions that the log still holds, by revision: the values a
        read at an old revision needs (a compaction may have removed those below it, whose
        values are then in the base)."""

    @abc.abstractmethod
    async def read_base(self, keys: Sequence[bytes]) -> dict[bytes, KeyValue]:
        """The base's key-values (live just before the compact revision) of those of ``keys`` it
        holds, by key: the values of versions whose records were folded into it."""

    @abc.abstractmethod
    async def save_checkpoint(self, revision: int, pages: AsyncIterator[bytes]) -> bool:
        """Keep the index at ``revision`` (its pages: serialized ``Revision`` messages of events,
        see :class:`IndexCheckpoint`) as the checkpoint the next :meth:`open` starts from, once
        every page is stored, and only if it is newer than the stored one and the log still
        holds every record after ``revision``; whether it was kept. A checkpoint interrupted
        half-way is never used."""

    async def tail(self, revision: int) -> Sequence[Revision]:
        """Every record after ``revision``, for a store catching up with other writers (a shared
        log also learns their compactions here, see :attr:`compact_revision`)."""
        return await self.read_after(revision)

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Make ``revision`` the compact revision (durably: every server sharing the log follows
        it); the records before it are folded into the base now or in the background. Raises
        :class:`LogCompactedError` if ``revision`` is not above the compact revision."""

    @abc.abstractmethod
    async def save_lease(self, lease: Lease) -> None:
        """Make a granted lease durable."""

    @abc.abstractmethod
    async def delete_lease(self, lease_id: int) -> None:
        """Forget a revoked or expired lease."""

    @abc.abstractmethod
    async def load_leases(self) -> Sequence[Lease]:
        """Every lease as stored now (on a shared log: granted or renewed by any server)."""

    @abc.abstractmethod
    async def load_auth(self) -> AuthRecord | None:
        """The auth state as stored now (on a shared log: saved by any server); None if never saved."""

    def auth_may_have_changed(self, version: int) -> bool:
        """Whether another server may have saved an auth state newer than ``version`` (a shared log
        that announces changes answers False when none was announced)."""
        return True

    @abc.abstractmethod
    async def save_auth(self, record: AuthRecord) -> None:
        """Store ``record`` if the stored version is ``record.version - 1`` (0 when none is stored),
        else raise :class:`AuthConflictError` and store nothing."""

    @property
    @abc.abstractmethod
    def alarms(self) -> frozenset[StoredAlarm]:
        """The alarms as this server last saw them: loaded by :meth:`open`, changed by
        :meth:`activate_alarm` and :meth:`deactivate_alarm`; a shared log also learns the changes
        other servers made when it tails the log."""

    @abc.abstractmethod
    async def activate_alarm(self, alarm: StoredAlarm) -> None:
        """Store ``alarm`` (nothing changes if it is stored already)."""

    @abc.abstractmethod
    async def deactivate_alarm(self, alarm: StoredAlarm) -> bool:
        """Remove ``alarm``; whether it was stored."""

    @abc.abstractmethod
    async def import_image(self, image: StoreImage) -> None:
        """Fill this store, open and empty (no revision, no compaction), with ``image``, every
        revision unchanged; StorageError and nothing written if the store is not empty."""

    @abc.abstractmethod
    async def load_migration(self) -> str | None:
        """The mark of a migration into this store that has not been cut over (its source, as
        the migration wrote it); None when there is none."""

    @abc.abstractmethod
    async def save_migration(self, source: str | None) -> None:
        """Set the migration mark (None: clear it, at cutover)."""

    @abc.abstractmethod
    async def defragment(self) -> None:
        """Give the space of removed records back (etcd's Defragment)."""

    @abc.abstractmethod
    async def snapshot(self, destination: pathlib.Path) -> None:
        """Write a consistent copy of everything the backend holds to ``destination``."""

    @abc.abstractmethod
    def size(self) -> tuple[int, int]:
        """(bytes the backend occupies, bytes in use): Status' dbSize and dbSizeInUse."""

    async def heartbeat(self, member: dict) -> None:
        """Record this server as alive (a shared log lists every live server in MemberList)."""
        self._member = member

    async def members(self, max_age_seconds: float) -> list[dict]:
        """The servers whose heartbeat is at most ``max_age_seconds`` old."""
        member = getattr(self, "_member", None)
        return [member] if member is not None else []

    async def remove_member(self, identity: int | str) -> None:
        """Forget a server that stops (a shared log also forgets those silent for long)."""
        self._member = None

    def leader_lease(self) -> LeaderLease | None:
        """The leader record of a shared log; None for a log only one server writes."""
        return None

    async def fence_next(self, term: int) -> None:
        """As the leader of ``term``, once caught up with the log: make the next revision this
        server's to write, so that from now on an append by another server (a former leader that
        is not aware yet) fails with :class:`LogFencedError`, until a later term fences in turn.
        :class:`LogConflictError` if the head moved (catch up and fence again);
        :class:`LogFencedError` if a later term fenced already. Nothing to do for a log only this
        server writes."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend; further calls are errors."""


def fold(base: dict[bytes, KeyValue], revision: Revision) -> None:
    """Apply one revision's events to a key -> live KeyValue map (the base)."""
    for event in revision.events:
        if event.type == Event.PUT:
            base[event.kv.key] = event.kv
        else:
            base.pop(event.kv.key, None)
