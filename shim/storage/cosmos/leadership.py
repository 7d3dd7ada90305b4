"""The leader record in Cosmos DB: one document, replaced only if unchanged since read (its etag).

The document (``leader`` in the ``member`` partition, see :mod:`layout`) exists from the first
open of the container on, so reading it is a point read (1 RU) and every change is a replace with
``IfNotModified``: of two servers replacing the same version, one gets 412. Member ids are stored
as decimal text, and the members as JSON text (Cosmos numbers are doubles; a 64-bit id would lose
its low bits).
"""
from __future__ import annotations

import json

from azure.cosmos import exceptions as cosmos_exceptions

from cosmos_etcd_shim.storage.base import LeaderConflictError, LeaderLease, LeaderRecord
from cosmos_etcd_shim.storage.cosmos import layout
from cosmos_etcd_shim.storage.cosmos.client import CosmosConnection

UNCLAIMED = {"id": layout.LEADER_ID, "pk": layout.MEMBER_PARTITION, "kind": layout.KIND_LEADER,
             "h": "0", "a": "", "t": 0, "k": "", "n": 0, "ms": "[]"}


class CosmosLeaderLease(LeaderLease):
    def __init__(self, conn: CosmosConnection) -> None:
        self.conn = conn

    async def read(self) -> LeaderRecord:
        return _record(await self.conn.read_item("leader_read", layout.LEADER_ID, layout.MEMBER_PARTITION))

    async def replace(self, record: LeaderRecord, expected_version: str) -> LeaderRecord:
        document = {**UNCLAIMED, "h": str(record.holder), "a": record.address, "t": record.term, "k": record.token,
                    "n": record.renewals, "ms": json.dumps(list(record.members), sort_keys=True)}
        try:
            stored = await self.conn.replace_if_match("leader_write", document, expected_version)
        except cosmos_exceptions.CosmosAccessConditionFailedError:
            raise LeaderConflictError("the leader record changed since it was read") from None
        return _record(stored)


def _record(document: dict) -> LeaderRecord:
    return LeaderRecord(holder=int(document["h"]), address=document["a"], term=document["t"], token=document["k"],
                        renewals=document["n"], members=tuple(json.loads(document.get("ms", "[]"))),
                        version=document["_etag"])
