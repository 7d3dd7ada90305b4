"""operator/conditions.py: kstatus-style conditions with honest transition times."""
from __future__ import annotations

from cosmos_etcd_operator.conditions import (ACCOUNT, DATA_LOSS_ON_FAILOVER, PARTS, READY, RECONCILING, SHIM,
                                             STALLED, Condition, Conditions, events, reason)


def _all_true(conditions: Conditions) -> None:
    for part in PARTS:
        conditions.set(Condition(part, "True", "Ready", f"{part} ok"))


def test_every_condition_has_metav1_fields():
    conditions = Conditions([], 3, timestamp="2026-01-01T00:00:00Z")
    _all_true(conditions)
    conditions.summarize()
    items = conditions.as_list()
    assert [item["type"] for item in items] == [READY, *PARTS]
    for item in items:
        assert set(item) == {"type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"}
        assert item["observedGeneration"] == 3
    assert items[0] == {"type": READY, "status": "True", "reason": "Ready", "message": "every part is ready",
                        "observedGeneration": 3, "lastTransitionTime": "2026-01-01T00:00:00Z"}


def test_transition_time_moves_only_when_status_changes():
    first = Conditions([], 1, timestamp="2026-01-01T00:00:00Z")
    first.set(Condition(ACCOUNT, "False", "InProgress", "create account a: in progress"))
    second = Conditions(first.as_list(), 2, timestamp="2026-01-01T00:05:00Z")
    second.set(Condition(ACCOUNT, "False", "Conflict", "another message"))
    assert second.get(ACCOUNT)["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second.get(ACCOUNT)["observedGeneration"] == 2
    assert second.get(ACCOUNT)["reason"] == "Conflict"
    third = Conditions(second.as_list(), 2, timestamp="2026-01-01T00:09:00Z")
    third.set(Condition(ACCOUNT, "True", "Created", "account a"))
    assert third.get(ACCOUNT)["lastTransitionTime"] == "2026-01-01T00:09:00Z"


def test_ready_names_the_first_unready_part_and_reconciling_says_why():
    conditions = Conditions([], 1)
    _all_true(conditions)
    conditions.set(Condition("Throughput", "False", "InProgress", "migrate to autoscale: in progress"))
    conditions.set(Condition(SHIM, "False", "Unavailable", "0 of 2 replicas available"))
    conditions.summarize()
    assert conditions.get(READY)["status"] == "False"
    assert conditions.get(READY)["reason"] == "ThroughputNotReady"
    assert conditions.get(READY)["message"] == "Throughput: migrate to autoscale: in progress"
    assert conditions.get(RECONCILING)["status"] == "True"
    assert conditions.get(RECONCILING)["reason"] == "InProgress"
    assert conditions.get(STALLED) is None


def test_stalled_replaces_reconciling_and_goes_when_ready():
    conditions = Conditions([], 1)
    conditions.set(Condition("Credentials", "False", "AuthorizationFailed", "no role on the resource group"))
    conditions.wait_after("Credentials")
    conditions.summarize(stalled=True)
    assert conditions.get(STALLED)["reason"] == "AuthorizationFailed"
    assert conditions.get(RECONCILING) is None
    assert conditions.get(ACCOUNT)["status"] == "Unknown" and conditions.get(ACCOUNT)["reason"] == "Waiting"
    _all_true(conditions)
    conditions.summarize()
    assert conditions.get(READY)["status"] == "True"
    assert conditions.get(STALLED) is None and conditions.get(RECONCILING) is None


def test_invalid_spec_stalls_with_its_own_reason():
    conditions = Conditions([], 4)
    conditions.summarize(invalid_spec="spec.account.name must be ...")
    assert conditions.get(READY)["reason"] == "InvalidSpec"
    assert conditions.get(STALLED)["reason"] == "InvalidSpec"
    assert conditions.get(READY)["message"] == "spec.account.name must be ..."


def test_reasons_follow_the_api_rules():
    assert reason("ResourceGroupNotFound") == "ResourceGroupNotFound"
    assert reason("Some.Code-With spaces") == "SomeCodeWithspaces"
    assert reason("404") == "Error"
    assert reason("") == "Error"


def test_events_mark_transitions_not_passes():
    before = Conditions([], 1)
    before.set(Condition(ACCOUNT, "False", "InProgress", "create account a: in progress"))
    before.wait_after(ACCOUNT)
    before.summarize()
    assert events([], before.as_list()) == [("Normal", "InProgress", "Account: create account a: in progress")]
    again = Conditions(before.as_list(), 1)
    again.set(Condition(ACCOUNT, "False", "InProgress", "create account a: in progress"))
    again.summarize()
    assert events(before.as_list(), again.as_list()) == []  # another poll, no news
    failed = Conditions(again.as_list(), 1)
    failed.set(Condition(ACCOUNT, "False", "Conflict", "busy"))
    failed.summarize()
    assert events(again.as_list(), failed.as_list()) == [("Warning", "Conflict", "Account: busy")]
    done = Conditions(failed.as_list(), 1)
    _all_true(done)
    done.summarize()
    assert events(failed.as_list(), done.as_list()) == [("Normal", READY, "every part is ready")]
    invalid = Conditions(done.as_list(), 2)
    invalid.summarize(invalid_spec="spec.x is wrong")
    assert events(done.as_list(), invalid.as_list()) == [("Warning", "InvalidSpec", "spec.x is wrong")]


def test_accepted_data_loss_is_listed_early_and_warned_about_once():
    accepted = Condition(DATA_LOSS_ON_FAILOVER, "True", "Accepted", "a failover can lose writes")
    first = Conditions([], 1)
    _all_true(first)
    first.set(accepted)
    first.summarize()
    assert [item["type"] for item in first.as_list()][:2] == [READY, DATA_LOSS_ON_FAILOVER]
    assert ("Warning", DATA_LOSS_ON_FAILOVER, "a failover can lose writes") in events([], first.as_list())
    again = Conditions(first.as_list(), 2)
    again.set(accepted)
    again.summarize()
    assert events(first.as_list(), again.as_list()) == []
    withdrawn = Conditions(again.as_list(), 3)
    withdrawn.remove(DATA_LOSS_ON_FAILOVER)
    withdrawn.summarize()
    assert withdrawn.get(DATA_LOSS_ON_FAILOVER) is None
    assert events(again.as_list(), withdrawn.as_list()) == []
