"""Database, container, throughput, keys and deletion against the ARM stand-in, through the real SDK."""
from __future__ import annotations

import dataclasses

import pytest

from cosmos_etcd_operator.arm import AccountKeys, Deleted, Pending, Ready, ThroughputReady
from cosmos_etcd_operator.spec import InvalidSpec, Throughput, ThroughputMode
from cosmos_etcd_shim.storage.cosmos.layout import INDEXING_POLICY, PARTITION_KEY
from tests.harness import arm
from tests.harness.arm import settle

ACCOUNT = "tenant-a-etcd"
NAMES = (arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT, "EtcdDB", "EtcdData")


@pytest.fixture
def account(arm_stand_in):
    return arm_stand_in.add_account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)


def _with_throughput(spec, mode: ThroughputMode, request_units: int):
    return dataclasses.replace(spec, throughput=Throughput(mode, request_units))


def _changes(stand_in, since: int) -> list[tuple[str, str]]:
    return [(r.method, r.path.rsplit("/", 1)[-1]) for r in stand_in.requests[since:]
            if r.method != "GET" and "/oauth2/" not in r.path]


async def _container(resources, spec, database_token=None):
    assert isinstance((await settle(resources.ensure_database, spec, database_token))[0], Ready)
    container, _ = await settle(resources.ensure_container, spec)
    assert container == Ready("EtcdData")


async def test_database_and_container_are_created_as_the_shim_defines_them(arm_stand_in, arm_resources, arm_spec,
                                                                           account):
    started = await arm_resources.ensure_database(arm_spec)
    assert isinstance(started, Pending) and started.operation == "create database EtcdDB"
    assert "EtcdDB" not in account.databases  # not waited for

    await _container(arm_resources, arm_spec, started.token)

    container = arm_stand_in.container(*NAMES)
    assert container.partition_key == PARTITION_KEY
    assert container.indexing_policy == INDEXING_POLICY
    assert dataclasses.astuple(container.throughput) == ("Manual", 400)
    before = len(arm_stand_in.requests)
    assert await arm_resources.ensure_database(arm_spec) == Ready("EtcdDB")
    assert await arm_resources.ensure_container(arm_spec) == Ready("EtcdData")
    assert await arm_resources.ensure_throughput(arm_spec) == ThroughputReady(ThroughputMode.MANUAL, 400)
    assert _changes(arm_stand_in, before) == []


async def test_a_container_is_created_with_autoscale_throughput(arm_stand_in, arm_resources, arm_spec, account):
    await _container(arm_resources, _with_throughput(arm_spec, ThroughputMode.AUTOSCALE, 5000))
    assert dataclasses.astuple(arm_stand_in.container(*NAMES).throughput) == ("Autoscale", 5000)


async def test_a_container_with_another_partition_key_is_refused(arm_stand_in, arm_resources, arm_spec, account):
    await settle(arm_resources.ensure_database, arm_spec)
    account.databases["EtcdDB"].containers["EtcdData"] = arm.Container(
        "EtcdData", {"paths": ["/tenant"], "kind": "Hash", "version": 2}, dict(INDEXING_POLICY),
        arm.ThroughputState("Manual", 400))

    with pytest.raises(InvalidSpec, match=r"spec.cosmos.container.*\['/tenant'\].*\['/pk'\]"):
        await arm_resources.ensure_container(arm_spec)


async def test_a_drifted_indexing_policy_is_restored(arm_stand_in, arm_resources, arm_spec, account):
    await _container(arm_resources, arm_spec)
    container = arm_stand_in.container(*NAMES)
    container.indexing_policy = {"indexingMode": "consistent", "automatic": True, "includedPaths": [{"path": "/*"}],
                                 "excludedPaths": []}

    started = await arm_resources.ensure_container(arm_spec)
    assert started.operation == "restore the indexing policy of container EtcdData"
    await settle(arm_resources.ensure_container, arm_spec, started.token)

    assert arm_stand_in.container(*NAMES).indexing_policy == INDEXING_POLICY
    assert dataclasses.astuple(arm_stand_in.container(*NAMES).throughput) == ("Manual", 400)


@pytest.mark.parametrize("before, wanted, operation, requests", [
    (("Manual", 400), (ThroughputMode.MANUAL, 1200), "set the manual throughput of container EtcdData to 1200 RU/s",
     [("PUT", "default")]),
    # Cosmos migrates 400 RU/s to a 4000 RU/s maximum; the value is set afterwards.
    (("Manual", 400), (ThroughputMode.AUTOSCALE, 6000), "migrate the throughput of container EtcdData to Autoscale",
     [("POST", "migrateToAutoscale"), ("PUT", "default")]),
    (("Autoscale", 6000), (ThroughputMode.MANUAL, 400), "migrate the throughput of container EtcdData to Manual",
     [("POST", "migrateToManualThroughput"), ("PUT", "default")]),
    (("Autoscale", 6000), (ThroughputMode.AUTOSCALE, 4000),
     "set the autoscale throughput of container EtcdData to 4000 RU/s", [("PUT", "default")]),
], ids=["manual-value", "manual-to-autoscale", "autoscale-to-manual", "autoscale-value"])
async def test_a_changed_throughput_is_applied_and_modes_are_migrated(arm_stand_in, arm_resources, arm_spec, account,
                                                                      before, wanted, operation, requests):
    await _container(arm_resources, arm_spec)
    arm_stand_in.set_throughput(*NAMES, mode=before[0], request_units=before[1])
    since = len(arm_stand_in.requests)

    wanted_spec = _with_throughput(arm_spec, *wanted)
    started = await arm_resources.ensure_throughput(wanted_spec)
    assert started.operation == operation
    result, _ = await settle(arm_resources.ensure_throughput, wanted_spec, started.token)

    assert result == ThroughputReady(*wanted)
    assert dataclasses.astuple(arm_stand_in.container(*NAMES).throughput) == (wanted[0].value, wanted[1])
    assert _changes(arm_stand_in, since) == requests


async def test_throughput_changed_behind_the_operators_back_is_corrected(arm_stand_in, arm_resources, arm_spec,
                                                                         account):
    await _container(arm_resources, arm_spec)
    arm_stand_in.set_throughput(*NAMES, mode="Autoscale", request_units=10_000)

    result, _ = await settle(arm_resources.ensure_throughput, arm_spec)

    assert result == ThroughputReady(ThroughputMode.MANUAL, 400)
    assert dataclasses.astuple(arm_stand_in.container(*NAMES).throughput) == ("Manual", 400)


async def test_keys_are_listed_and_rotated_keys_seen_and_never_shown(arm_stand_in, arm_resources, arm_spec, account):
    keys = await arm_resources.list_keys(arm_spec)
    assert keys == AccountKeys(account.keys["primaryMasterKey"], account.keys["secondaryMasterKey"])
    assert account.keys["primaryMasterKey"] not in repr(keys) + str(keys)

    rotated = arm_stand_in.rotate_keys(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT)
    assert (await arm_resources.list_keys(arm_spec)).primary_master_key == rotated["primaryMasterKey"]
    assert rotated["primaryMasterKey"] != keys.primary_master_key


async def test_delete_starts_and_resumes_and_an_absent_account_is_deleted_at_once(arm_stand_in, arm_resources,
                                                                                  arm_spec, account):
    started = await arm_resources.delete_account(arm_spec)
    assert started.operation == f"delete account {ACCOUNT}"
    assert account.provisioning_state == "Deleting"

    result, _ = await settle(arm_resources.delete_account, arm_spec, started.token)

    assert result == Deleted()
    assert arm_stand_in.account(arm.SUBSCRIPTION, arm.RESOURCE_GROUP, ACCOUNT) is None
    before = len(arm_stand_in.requests)
    assert await arm_resources.delete_account(arm_spec) == Deleted()
    assert _changes(arm_stand_in, before) == []
