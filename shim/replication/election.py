"""Leader election among the servers of one shared log, through the backend's leader record.

The record (:class:`~cosmos_etcd_shim.storage.base.LeaderRecord`) names a holder, its peer
address, a term and the term's peer token. Every server runs :meth:`Election.run_forever`, one
round per ``lease_seconds / 3``:

* **the leader renews**: one conditional replace of the version it wrote last (the renewal count
  makes every renewal a new version). A refusal (412: another server took the record) makes it a
  follower at once. It counts as leader until ``lease_seconds - CLOCK_MARGIN_SECONDS`` after it
  *sent* its last successful renewal; a leader that cannot renew within that time (Cosmos
  unreachable, the process paused) stops counting as leader by its own clock, without a request.
* **a follower reads** the record (a point read). It remembers when it first saw each version, by
  its own monotonic clock. A version unchanged for ``lease_seconds`` has expired: the follower
  replaces it, conditionally, with itself as holder, the next term and a fresh token; of several
  followers doing so one wins, the others get 412 and follow the winner. A record with no holder
  (released by a leader that stopped cleanly) is taken at once.

Clocks: no two servers compare timestamps. The leader's validity ends, by its clock,
``lease_seconds - CLOCK_MARGIN_SECONDS`` after it sent the renewal; a follower takes over no
earlier than ``lease_seconds`` after it *received* that renewal's version, by its clock. The old
leader has stopped counting itself leader before the new one starts, as long as the two clocks
run at the same rate within ``CLOCK_MARGIN_SECONDS`` per lease period (a margin far above real
clock drift, left for scheduling delays). Nothing about the data depends on this: the log's
compare-and-swap stays the only safety (see the package docstring).

A follower takes over within ``lease_seconds`` plus two rounds (default 6 s + 2 × 2 s) of the
leader's last renewal: it may see a renewal up to a round after it was made, and check for expiry
up to a round late. A follower whose forwarded request could not reach the leader reads the
record every :data:`SUSPICIOUS_ROUND_SECONDS` instead, until the leader renews or changes, which
narrows both. The cost is one request per round per server: a renewal or a read.

Answers that are not the record's (decided here, since the backend is silent on them):

* A renewal or claim whose answer was lost after it ran (a timeout, a 503 or reset after the
  replace) is retried by the connection and then refused as changed (412): the record is read back,
  and if it holds this server's own write (its term's token and renewal count), that write stands.
  Without this, one lost answer deposed a healthy leader and started a new term.
* Any other failure (throttling after its retries, 401, 403, 400, 413, an outage) fails the round
  only: it is logged and the next round tries again, a leader within its lease sooner (it renews
  before the lease runs out). A leader that cannot renew stops counting as leader when its lease
  runs out, by its clock, and a follower takes over a lease after it last saw the record change: two
  servers never both count as leader. A renewal that succeeded too late to count (its retries
  outlasted the lease) is renewed again at once, without waiting a round as nobody's leader.

Membership: the leader records in every renewal the servers taking part, itself and those whose
push stream (``Peer.Follow``) is open; followers learn them from the record they read anyway.
MemberList comes from there while a leader exists: no heartbeat requests of its own (see
:attr:`Election.members`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterable

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.storage import LeaderConflictError, LeaderLease, LeaderRecord, StorageError

logger = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 6.0
CLOCK_MARGIN_SECONDS = 1.0
SUSPICIOUS_ROUND_SECONDS = 0.5
NO_LEADER = 0


@dataclasses.dataclass(frozen=True)
class Leader:
    """The leader as this server knows it."""

    member_id: int
    address: str
    term: int
    token: str


NOBODY = Leader(NO_LEADER, "", 0, "")


class Election:
    """This server's side of the election: who leads, and whether it is this server."""

    def __init__(self, lease: LeaderLease, member: dict, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 followers: Callable[[], Iterable[dict]] = tuple) -> None:
        """``member``: this server as MemberList shows it (``id``, ``name``, ``peerURLs`` -- the first
        is where it takes forwarded requests --, ``clientURLs``); ``followers``: the servers that
        follow it now (their push streams), recorded while it leads."""
        if lease_seconds <= 2 * CLOCK_MARGIN_SECONDS:
            raise ValueError(f"a leader lease must be longer than {2 * CLOCK_MARGIN_SECONDS:g} seconds")
        self.lease = lease
        self.member = member
        self.member_id = member["id"]
        self.address = member["peerURLs"][0]
        self.followers = followers
        self.lease_seconds = lease_seconds
        self.round_seconds = lease_seconds / 3
        self._clock = clock
        self._record: LeaderRecord | None = None  # as last read or written
        self._seen_at = 0.0  # when this server first saw the record's version
        self._valid_until = -1.0  # this server leads until then (its clock)
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._known = NOBODY
        self._suspected: Leader | None = None  # a leader a forwarded request could not reach

    # -- what the rest of the server asks -----------------------------------------------------

    @property
    def leader(self) -> Leader:
        """The leader as last learned (this server when it leads); :data:`NOBODY` when unknown."""
        if self.is_leader:
            return self._known
        return self._known if self._known.member_id != self.member_id else NOBODY

    @property
    def is_leader(self) -> bool:
        return self._known.member_id == self.member_id and self._clock() < self._valid_until

    @property
    def members(self) -> list[dict]:
        """The servers taking part: while this server leads, itself and its followers now; otherwise
        those the leader recorded at its last renewal as read here, and this server. (An expired
        record's list is kept until another server takes over and records its own.)"""
        if self.is_leader:
            listed = [self.member, *self.followers()]
        else:
            listed = [self.member, *(self._record.members if self._record is not None else ())]
        return list({m["id"]: m for m in reversed(listed)}.values())

    async def changed(self, than: Leader) -> Leader:
        """Wait until the leader is another than ``than``; the new one."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.leader != than)
            return self.leader

    def suspect(self, leader: Leader) -> None:
        """A forwarded request found ``leader`` gone or not leading: read the record now, and every
        :data:`SUSPICIOUS_ROUND_SECONDS` until it is renewed or another server leads, so that requests
        waiting for the next leader learn of it soon after it takes over."""
        if self.leader == leader:
            self._suspected = leader
            self._wake.set()

    # -- the rounds ---------------------------------------------------------------------------

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()  # before the round: a wake-up asked for during it is kept
            try:
                await self._round()
            except StorageError as e:
                logger.warning("leader election round failed", extra={"error": str(e)})
            await self._publish()
            delay = self.round_seconds
            if self._suspected is not None and self._suspected == self.leader:
                delay = SUSPICIOUS_ROUND_SECONDS
            if self.is_leader:  # renew before the lease runs out (and step down then if renewals keep failing)
                delay = min(delay, max(0.0, self._valid_until - self._clock()))
            elif self._holds_record():  # renewed, but too late to count: renew again now
                delay = 0.0
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _holds_record(self) -> bool:
        """Whether the record as last written is this server's current term."""
        record = self._record
        return record is not None and record.holder == self.member_id and self._known.member_id == self.member_id

    async def _round(self) -> None:
        if self._holds_record():
            await self._renew(self._record)
            return
        record = await self.lease.read()
        now = self._clock()
        if self._record is None or record.version != self._record.version:
            self._record, self._seen_at = record, now
            self._suspected = None  # renewed (the leader lives) or changed: rounds as usual
        if record.holder == self.member_id and self._known.member_id != self.member_id:
            # Our own record from before a restart: a new term, so that the old token is dead.
            await self._claim(record)
        elif record.holder == NO_LEADER or now - self._seen_at >= self.lease_seconds:
            await self._claim(record)
        else:
            self._known = Leader(record.holder, record.address, record.term, record.token)

    async def _renew(self, record: LeaderRecord) -> None:
        sent = self._clock()
        renewal = dataclasses.replace(record, renewals=record.renewals + 1, members=tuple(self.members))
        try:
            try:
                stored = await self.lease.replace(renewal, record.version)
            except LeaderConflictError:
                stored = await self._own_write_or_none(renewal)
        except StorageError:
            if self._clock() >= self._valid_until:
                logger.warning("stepping down: the leader lease ran out before a renewal succeeded",
                               extra={"term": record.term})
                self._known, self._record = NOBODY, None
            raise
        if stored is None:
            logger.warning("lost the leadership: another server took the leader record", extra={"term": record.term})
            self._valid_until = -1.0
            self._known, self._record = NOBODY, None
            return
        self._record = stored
        self._valid_until = sent + self.lease_seconds - CLOCK_MARGIN_SECONDS
        if self._clock() >= self._valid_until:
            logger.warning("a renewal succeeded after the leader lease ran out; renewing again",
                           extra={"term": record.term})

    async def _own_write_or_none(self, written: LeaderRecord) -> LeaderRecord | None:
        """After a refusal as changed: the record if the change was this server's own ``written``
        (an earlier attempt of the same replace ran, and its answer was lost), else None."""
        stored = await self.lease.read()
        if (stored.holder, stored.term, stored.token, stored.renewals) == \
                (written.holder, written.term, written.token, written.renewals):
            logger.info("the leader record holds this server's write, whose answer was lost",
                        extra={"term": stored.term})
            return stored
        return None

    async def _claim(self, record: LeaderRecord) -> None:
        sent = self._clock()
        claim = LeaderRecord(holder=self.member_id, address=self.address, term=record.term + 1,
                             token=secrets.token_urlsafe(24), renewals=0, members=(self.member,))
        try:
            stored = await self.lease.replace(claim, record.version)
        except LeaderConflictError:
            stored = await self._own_write_or_none(claim)
            if stored is None:
                self._record = None  # another server was faster: read who at the next round
                self._wake.set()
                return
        self._record, self._seen_at = stored, sent
        self._valid_until = sent + self.lease_seconds - CLOCK_MARGIN_SECONDS
        self._known = Leader(self.member_id, self.address, stored.term, stored.token)
        metrics.LEADER_CHANGES.inc()
        logger.info("became the leader", extra={"term": stored.term, "previous_leader": f"{record.holder:x}"})

    async def _publish(self) -> None:
        metrics.IS_LEADER.set(1 if self.is_leader else 0)
        async with self._changed:
            self._changed.notify_all()

    async def release(self) -> None:
        """Give the record up (a clean stop): another server takes it at its next round instead of
        waiting for the lease to run out."""
        record = self._record
        if not self.is_leader or record is None:
            return
        self._valid_until = -1.0
        self._known = NOBODY
        self._suspected = None
        try:
            await self.lease.replace(LeaderRecord(NO_LEADER, "", record.term, "", 0), record.version)
        except StorageError as e:
            logger.info("could not release the leader record; it expires instead", extra={"error": str(e)})
