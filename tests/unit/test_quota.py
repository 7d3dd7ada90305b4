"""The space quota's arithmetic (``mvcc.quota``), on the real embedded log with its size set by
the test: etcd's rule ``size + cost < quota`` at its boundary, etcd's costs of Put, Txn and
LeaseGrant, a negative quota that disables the check, and a refusal that stands when the alarm
cannot be stored. The behaviour against a real etcd is in ``tests/e2e/test_quota.py``.
"""
from __future__ import annotations

import pytest

from cosmos_etcd_shim.mvcc.alarms import Alarms
from cosmos_etcd_shim.mvcc.errors import NoSpaceError
from cosmos_etcd_shim.mvcc.quota import LEASE_GRANT_COST_BYTES, PUT_OVERHEAD_BYTES, SpaceQuota
from cosmos_etcd_shim.proto.rpc_pb2 import NOSPACE, AlarmMember, PutRequest, RangeRequest, RequestOp, TxnRequest
from cosmos_etcd_shim.storage import StorageError
from cosmos_etcd_shim.storage.embedded import EmbeddedLog

pytestmark = pytest.mark.timeout(60)

LIMIT = 10_000
MEMBER = 0xFEED


class SizedLog(EmbeddedLog):
    """The embedded log, whose size is what the test says; its alarm writes may fail."""

    bytes_used = 0
    alarm_writes_fail = False

    def size(self) -> tuple[int, int]:
        return self.bytes_used, self.bytes_used

    async def activate_alarm(self, alarm) -> None:
        if self.alarm_writes_fail:
            raise StorageError("injected: the alarm cannot be stored")
        await super().activate_alarm(alarm)


@pytest.fixture
async def log(tmp_path):
    log = SizedLog(tmp_path / "data")
    await log.open()
    yield log
    await log.close()


def quota_of(log: SizedLog, limit: int = LIMIT) -> tuple[SpaceQuota, Alarms]:
    alarms = Alarms(log)
    return SpaceQuota(log, alarms, MEMBER, limit), alarms


def put_of(value_bytes: int) -> PutRequest:
    return PutRequest(key=b"k", value=b"v" * value_bytes)


async def test_a_put_fits_only_strictly_under_the_quota_and_one_that_does_not_raises_nospace(log):
    quota, alarms = quota_of(log)
    put = put_of(100)
    cost = PUT_OVERHEAD_BYTES + 1 + 100
    log.bytes_used = LIMIT - cost - 1
    await quota.check_put(put)
    assert alarms.get() == []
    log.bytes_used = LIMIT - cost  # size + cost == quota: etcd refuses
    with pytest.raises(NoSpaceError):
        await quota.check_put(put)
    assert alarms.get() == [AlarmMember(memberID=MEMBER, alarm=NOSPACE)]


async def test_a_txn_costs_its_costlier_branch_nested_puts_included_and_a_read_only_one_nothing(log):
    quota, _ = quota_of(log)
    put = RequestOp(request_put=put_of(100))
    nested = RequestOp(request_txn=TxnRequest(success=[put, put]))
    txn = TxnRequest(success=[put], failure=[nested])  # the failure branch costs two puts
    two_puts = 2 * (PUT_OVERHEAD_BYTES + 1 + 100)
    log.bytes_used = LIMIT - two_puts - 1
    await quota.check_txn(txn)
    log.bytes_used = LIMIT - two_puts
    with pytest.raises(NoSpaceError):
        await quota.check_txn(txn)
    read_only = TxnRequest(success=[RequestOp(request_range=RangeRequest(key=b"k"))])
    log.bytes_used = LIMIT - 1
    await quota.check_txn(read_only)
    log.bytes_used = LIMIT  # at the quota, even a Txn that costs nothing is refused, as in etcd
    with pytest.raises(NoSpaceError):
        await quota.check_txn(read_only)


async def test_a_lease_grant_costs_etcds_lease_overhead(log):
    quota, _ = quota_of(log)
    log.bytes_used = LIMIT - LEASE_GRANT_COST_BYTES - 1
    await quota.check_lease_grant()
    log.bytes_used = LIMIT - LEASE_GRANT_COST_BYTES
    with pytest.raises(NoSpaceError):
        await quota.check_lease_grant()


async def test_a_negative_quota_checks_nothing(log):
    quota, alarms = quota_of(log, limit=-1)
    log.bytes_used = 10 * LIMIT
    await quota.check_put(put_of(100))
    await quota.check_lease_grant()
    assert alarms.get() == []


async def test_the_refusal_stands_when_the_alarm_cannot_be_stored(log):
    quota, alarms = quota_of(log)
    log.bytes_used = LIMIT
    log.alarm_writes_fail = True
    with pytest.raises(NoSpaceError):
        await quota.check_put(put_of(1))
    assert alarms.get() == []
    log.alarm_writes_fail = False  # the next write that does not fit raises it
    with pytest.raises(NoSpaceError):
        await quota.check_put(put_of(1))
    assert alarms.get() == [AlarmMember(memberID=MEMBER, alarm=NOSPACE)]
