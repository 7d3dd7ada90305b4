"""The Azure Cosmos DB backend: the revision log in a Cosmos container (``azure.cosmos.aio``).

Modules: ``layout`` (the public container layout; no Azure import, for the operator),
``codec`` (payload encoding), ``stats`` (request and RU accounting), ``account`` (the account's
consistency check and regions), ``client`` (connection, write-region routing, retries, writes of
unknown outcome), ``checkpoint`` (the base as page sets), ``leadership`` (the leader record) and ``log``
(:class:`CosmosLog`, the :class:`~cosmos_etcd_shim.storage.base.RevisionLog`).

Importing this package does not import the Azure SDK: ``CosmosLog`` and friends load on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["CosmosLog", "CosmosStats", "CosmosUnavailableError", "LogCompactedError", "LogCorruptError", "operation"]

if TYPE_CHECKING:  # pragma: no cover
    from cosmos_etcd_shim.storage.cosmos.client import CosmosUnavailableError
    from cosmos_etcd_shim.storage.cosmos.log import CosmosLog, LogCompactedError, LogCorruptError
    from cosmos_etcd_shim.storage.cosmos.stats import CosmosStats, operation


def __getattr__(name: str):
    if name in ("CosmosLog", "LogCompactedError", "LogCorruptError"):
        from cosmos_etcd_shim.storage.cosmos import log
        return getattr(log, name)
    if name == "CosmosUnavailableError":
        from cosmos_etcd_shim.storage.cosmos import client
        return client.CosmosUnavailableError
    if name in ("CosmosStats", "operation"):
        from cosmos_etcd_shim.storage.cosmos import stats
        return getattr(stats, name)
    raise AttributeError(name)
