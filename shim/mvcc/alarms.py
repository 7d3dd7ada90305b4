"""Alarms: etcd's NOSPACE and CORRUPT conditions, raised per member id, which refuse some requests
until they are disarmed (etcd 3.5's alarm store, its "capped" and "corrupt" appliers).

What a raised alarm refuses, as etcd 3.5 (checked against etcd 3.5.1):

* NOSPACE (etcd's ErrNoSpace, RESOURCE_EXHAUSTED "etcdserver: mvcc: database space exceeded"):
  Put, a Txn with a Put in either branch (whichever branch its compares would take), LeaseGrant.
  Range, DeleteRange, a Txn without Puts, Compact, LeaseRevoke and keep-alives go on, so that
  space can be freed and clients keep their leases.
* CORRUPT (etcd's ErrCorrupt, DATA_LOSS "etcdserver: corrupt cluster"): every change a client
  asks for: Put, DeleteRange, a Txn that may write, Compact, LeaseGrant, LeaseRevoke. Range, a
  read-only Txn and keep-alives go on. The shim runs no corruption check of its own: CORRUPT is
  raised only through the Alarm API.

With both raised, CORRUPT's refusal comes first, as on an etcd restarted with both alarms.

The Alarm API (etcd's applier): ACTIVATE stores (member id, type) for any member id, 0 and ids of
no member included (etcd checks neither) and answers it, also when it was raised already;
ACTIVATE of type NONE does nothing and answers no alarm. DEACTIVATE answers the alarm it removed,
or none. GET lists every alarm of the given type, all of them for NONE; it ignores the member id.

The state lives in the storage backend (:attr:`RevisionLog.alarms`): durable, and on a log shared
by several replicas followed by each of them from the log's tail (see the backend). The checks
below read it from memory, so they cost nothing per request.

NOSPACE is raised by the space quota (``--quota-backend-bytes``, see ``mvcc.quota``): as etcd's
quota check before a write, it calls :meth:`Alarms.activate` with this member's id and NOSPACE,
then refuses the request with :class:`NoSpaceError`; every request NOSPACE refuses is refused
from then on, on every replica, until an operator disarms it.

Deliberate differences from etcd 3.5.1:

* A Put nested in a Txn counts like one at the top level (etcd 3.5.1 counts only the top level,
  which lets a nested Txn write while NOSPACE is raised).
* Each raised type refuses what it refuses until that type is disarmed. etcd swaps one applier
  for another instead: raising NOSPACE while CORRUPT is raised replaces the corrupt applier (a
  DeleteRange then passes), and disarming either type brings back the normal applier although
  the other type is still raised.
* ACTIVATE of a type etcd 3.5 does not know is refused with INVALID_ARGUMENT; etcd stores it and
  then panics, and does so again at every restart.
"""
from __future__ import annotations

import logging

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc.errors import CorruptError, NoSpaceError, UnknownAlarmTypeError, from_storage
from cosmos_etcd_shim.proto.rpc_pb2 import CORRUPT, NONE, NOSPACE, AlarmMember, AlarmType, TxnRequest
from cosmos_etcd_shim.storage import RevisionLog, StorageError, StoredAlarm

logger = logging.getLogger(__name__)

# The alarm types etcd 3.5 raises and enforces (NONE is "no alarm").
ALARM_TYPES = (NOSPACE, CORRUPT)


class Alarms:
    """The raised alarms, what they refuse, and raising and disarming them."""

    def __init__(self, log: RevisionLog) -> None:
        self.log = log
        for alarm in ALARM_TYPES:
            metrics.ALARMS.labels(AlarmType.Name(alarm)).set_function(lambda alarm=alarm: len(self._of_type(alarm)))

    def get(self, alarm: int = NONE) -> list[AlarmMember]:
        """The raised alarms of type ``alarm`` (every one for NONE), by type and member id."""
        return [AlarmMember(memberID=a.member_id, alarm=a.alarm) for a in self._of_type(alarm)]

    def _of_type(self, alarm: int) -> list[StoredAlarm]:
        return sorted((a for a in self.log.alarms if alarm == NONE or a.alarm == alarm),
                      key=lambda a: (a.alarm, a.member_id))

    def raised(self, alarm: int) -> bool:
        return any(a.alarm == alarm for a in self.log.alarms)

    async def activate(self, member_id: int, alarm: int) -> AlarmMember | None:
        """Raise ``alarm`` for ``member_id``; the alarm raised (None for NONE, which raises nothing)."""
        if alarm == NONE:
            return None
        if alarm not in ALARM_TYPES:
            raise UnknownAlarmTypeError(alarm)
        first = not self.raised(alarm)
        try:
            await self.log.activate_alarm(StoredAlarm(member_id, alarm))
        except StorageError as e:
            raise from_storage(e) from None
        if first:
            logger.warning("alarm raised", extra={"alarm": AlarmType.Name(alarm), "from": f"{member_id:x}"})
        return AlarmMember(memberID=member_id, alarm=alarm)

    async def deactivate(self, member_id: int, alarm: int) -> AlarmMember | None:
        """Disarm ``alarm`` of ``member_id``; the alarm disarmed, None if it was not raised."""
        try:
            removed = await self.log.deactivate_alarm(StoredAlarm(member_id, alarm))
        except StorageError as e:
            raise from_storage(e) from None
        if not removed:
            return None
        if alarm in ALARM_TYPES and not self.raised(alarm):
            logger.warning("alarm disarmed", extra={"alarm": AlarmType.Name(alarm), "from": f"{member_id:x}"})
        return AlarmMember(memberID=member_id, alarm=alarm)

    # -- what the raised alarms refuse ----------------------------------------------------------

    def check_put(self) -> None:
        self._refuse_changes()
        self._refuse_growth()

    def check_txn(self, t: TxnRequest) -> None:
        """For a Txn that may write (a read-only one is served as a Range is, unrefused)."""
        self._refuse_changes()
        if _has_put(t):
            self._refuse_growth()

    def check_lease_grant(self) -> None:
        self._refuse_changes()
        self._refuse_growth()

    def check_delete_range(self) -> None:
        self._refuse_changes()

    def check_compact(self) -> None:
        self._refuse_changes()

    def check_lease_revoke(self) -> None:
        self._refuse_changes()

    def _refuse_changes(self) -> None:
        if self.raised(CORRUPT):
            raise CorruptError()

    def _refuse_growth(self) -> None:
        if self.raised(NOSPACE):
            raise NoSpaceError()


def _has_put(t: TxnRequest) -> bool:
    """Whether either branch, at any depth, holds a Put (etcd's quota cost of a Txn is above 0)."""
    for op in (*t.success, *t.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put" or (kind == "request_txn" and _has_put(op.request_txn)):
            return True
    return False
