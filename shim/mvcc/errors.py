"""Errors of the MVCC core, named as etcd names them; ``api.errors`` maps each to etcd's gRPC status."""


class MVCCError(Exception):
    """Base class: a request the core refuses without changing anything."""


class CompactedError(MVCCError):
    """The requested revision is older than the compact revision."""


class FutureRevisionError(MVCCError):
    """The requested revision is newer than the current revision."""


class KeyNotFoundError(MVCCError):
    """ignore_value / ignore_lease on a key that does not exist."""


class LeaseNotFoundError(MVCCError):
    """A Put names a lease that does not exist."""


class StorageUnavailableError(MVCCError):
    """The durable log could not be written; the request was not applied."""


class LeaseExistsError(MVCCError):
    """LeaseGrant with the ID of a lease that exists."""


class LeaseTTLTooLargeError(MVCCError):
    """LeaseGrant with a TTL above etcd's maximum."""
