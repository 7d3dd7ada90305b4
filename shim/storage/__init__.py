"""Storage backends: the durable log of revisions behind one small interface.

The MVCC core is written once against :class:`RevisionLog`; each backend (``embedded``: SQLite
in a local data directory; ``cosmos``: Azure Cosmos DB) implements it in a module of its own.
"""
from cosmos_etcd_shim.storage.base import (
    AuthConflictError,
    AuthRecord,
    LeaderConflictError,
    LeaderLease,
    LeaderRecord,
    LogCompactedError,
    LogConflictError,
    LogFencedError,
    RecoveredState,
    RevisionLog,
    StorageError,
    StorageRejectedError,
    StorageThrottledError,
    StoreImage,
    StoredAlarm,
)

__all__ = ["AuthConflictError", "AuthRecord", "LeaderConflictError", "LeaderLease", "LeaderRecord",
           "LogCompactedError", "LogConflictError", "LogFencedError", "RecoveredState", "RevisionLog", "StorageError",
           "StorageRejectedError", "StorageThrottledError", "StoreImage", "StoredAlarm"]
