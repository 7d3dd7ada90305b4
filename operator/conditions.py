"""The CosmosEtcdCluster's status conditions, kept as kstatus and Kubernetes' API conventions say.

Every condition has the fields of ``metav1.Condition`` (type, status, reason, message,
observedGeneration, lastTransitionTime); ``lastTransitionTime`` moves only when ``status`` changes.

* One condition per part, in the order the operator reconciles them (:data:`PARTS`).
* ``Ready``: ``True`` when every part is; else ``False`` with reason ``<Part>NotReady`` naming the
  first part that is not (or ``InvalidSpec``) and that part's message.
* kstatus' abnormal-true conditions: ``Reconciling`` (``True`` while the operator works towards the
  spec: an Azure operation in progress, a retryable error, pods not yet available) and ``Stalled``
  (``True`` when it cannot progress until someone acts: an invalid spec, an Azure error that retrying
  will not fix). Each is removed when it stops being true, so that with ``status.observedGeneration``
  equal to ``metadata.generation`` Flux, Argo CD and ``kstatus`` read the object as Current.
* ``DataLossOnFailover``: ``True`` (reason ``Accepted``) while the spec accepts that Azure's own
  failover of a multi-region BoundedStaleness account can lose acknowledged writes
  (``spec.account.acceptDataLossOnFailover``); absent otherwise. Like Reconciling and Stalled it is
  abnormal-true, so it does not change how kstatus reads the object, only what a person sees.
* ``PlainText``: ``True`` while the shim serves clients without TLS (reason ``Disabled``: the spec
  says so; ``NotOptedIn``: a cluster created before managed TLS, see :mod:`.pki`); absent otherwise.
  Abnormal-true as well, with a Warning event when it turns true.

:func:`events` turns what changed between two lists into Kubernetes events, one per transition
(not one per reconciliation), for ``kubectl describe``.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

CREDENTIALS = "Credentials"
ACCOUNT = "Account"
DATABASE = "Database"
CONTAINER = "Container"
THROUGHPUT = "Throughput"
ROLE_ASSIGNMENT = "RoleAssignment"
KEYS = "Keys"
NETWORK_POLICY = "NetworkPolicy"
TLS = "TLS"
SHIM = "Shim"
PARTS = (CREDENTIALS, ACCOUNT, DATABASE, CONTAINER, THROUGHPUT, ROLE_ASSIGNMENT, KEYS, NETWORK_POLICY, TLS, SHIM)

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
DATA_LOSS_ON_FAILOVER = "DataLossOnFailover"
PLAIN_TEXT = "PlainText"

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"

INVALID_SPEC = "InvalidSpec"
WAITING = "Waiting"
IN_PROGRESS = "InProgress"
UNAVAILABLE = "Unavailable"
ACCEPTED = "Accepted"

# metav1.Condition's rules for reason; Azure's error codes are mostly CamelCase already.
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
_MESSAGE_LIMIT = 2048


@dataclasses.dataclass(frozen=True)
class Condition:
    """What one condition says (the bookkeeping fields are added by :class:`Conditions`)."""
    type: str
    status: str
    reason: str
    message: str


def reason(text: str, fallback: str = "Error") -> str:
    """``text`` as a valid condition reason: Azure's error codes pass unchanged."""
    cleaned = re.sub(r"[^A-Za-z0-9_,:]", "", text or "").lstrip("0123456789_,:").rstrip(",:")
    return cleaned if _REASON.match(cleaned) else fallback


def now() -> str:
    """A condition timestamp: RFC 3339 in UTC at second precision, as metav1.Time serialises."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Conditions:
    """The conditions list of one status, updated in place for one ``generation``."""

    def __init__(self, existing: Iterable[Mapping[str, Any]] | None, generation: int, *, timestamp: str | None = None):
        self._by_type: dict[str, dict[str, Any]] = {item["type"]: dict(item) for item in existing or ()}
        self._generation = generation
        self._timestamp = timestamp or now()

    def get(self, type_: str) -> dict[str, Any] | None:
        return self._by_type.get(type_)

    def status_of(self, type_: str) -> str | None:
        found = self._by_type.get(type_)
        return found["status"] if found else None

    def set(self, condition: Condition) -> None:
        previous = self._by_type.get(condition.type)
        changed = previous is None or previous.get("status") != condition.status
        self._by_type[condition.type] = {
            "type": condition.type,
            "status": condition.status,
            "reason": reason(condition.reason),
            "message": condition.message[:_MESSAGE_LIMIT],
            "observedGeneration": self._generation,
            "lastTransitionTime": self._timestamp if changed else previous.get("lastTransitionTime", self._timestamp),
        }

    def remove(self, type_: str) -> None:
        self._by_type.pop(type_, None)

    def wait_after(self, part: str) -> None:
        """Parts after ``part`` that never had a condition say that they wait for it."""
        for later in PARTS[PARTS.index(part) + 1:]:
            if later not in self._by_type:
                self.set(Condition(later, UNKNOWN, WAITING, f"waiting for {part}"))

    def summarize(self, *, stalled: bool = False, invalid_spec: str | None = None) -> None:
        """Set Ready, Reconciling and Stalled from the parts.

        ``stalled``: the first unready part cannot progress without someone acting (a permanent
        Azure error). ``invalid_spec``: the spec's problem, which stalls everything.
        """
        if invalid_spec is not None:
            self.set(Condition(READY, FALSE, INVALID_SPEC, invalid_spec))
            self.set(Condition(STALLED, TRUE, INVALID_SPEC, invalid_spec))
            self.remove(RECONCILING)
            return
        unready = next((part for part in PARTS if self.status_of(part) != TRUE), None)
        if unready is None:
            self.set(Condition(READY, TRUE, "Ready", "every part is ready"))
            self.remove(RECONCILING)
            self.remove(STALLED)
            return
        part = self._by_type.get(unready) or {"reason": WAITING, "message": "not reconciled yet"}
        message = f"{unready}: {part['message']}"
        self.set(Condition(READY, FALSE, f"{unready}NotReady", message))
        if stalled:
            self.set(Condition(STALLED, TRUE, part["reason"], message))
            self.remove(RECONCILING)
        else:
            self.set(Condition(RECONCILING, TRUE, part["reason"], message))
            self.remove(STALLED)

    def as_list(self) -> list[dict[str, Any]]:
        """Ready, Reconciling, Stalled, DataLossOnFailover, PlainText, then the parts in order, then anything else."""
        order = {type_: index for index, type_ in enumerate((READY, RECONCILING, STALLED, DATA_LOSS_ON_FAILOVER,
                                                             PLAIN_TEXT, *PARTS))}
        return sorted(self._by_type.values(), key=lambda item: (order.get(item["type"], len(order)), item["type"]))


def events(before: Iterable[Mapping[str, Any]] | None, after: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the events that the change from ``before`` to ``after`` deserves:
    Ready becoming True, a part becoming not ready (Normal for work in progress, Warning for an
    error), and a Warning when the spec starts accepting data loss on failover or plain text."""
    old = {item["type"]: (item["status"], item["reason"]) for item in before or ()}
    found = []
    for item in after:
        if old.get(item["type"]) == (item["status"], item["reason"]) or item["reason"] == WAITING:
            continue
        if item["type"] == READY and item["status"] == TRUE:
            found.append(("Normal", READY, item["message"]))
        elif item["type"] == READY and item["reason"] == INVALID_SPEC:
            found.append(("Warning", INVALID_SPEC, item["message"]))
        elif item["type"] in PARTS and item["status"] != TRUE:
            kind = "Normal" if item["reason"] in (IN_PROGRESS, UNAVAILABLE) else "Warning"
            found.append((kind, item["reason"], f"{item['type']}: {item['message']}"))
        elif item["type"] in (DATA_LOSS_ON_FAILOVER, PLAIN_TEXT) and item["status"] == TRUE:
            found.append(("Warning", item["type"], item["message"]))
    return found
