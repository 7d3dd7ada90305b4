"""Errors of the MVCC core, named as etcd names them; ``api.errors`` maps each to etcd's gRPC status."""
from cosmos_etcd_shim.storage import LogFencedError, StorageError, StorageThrottledError


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


class NotLeaderError(StorageUnavailableError):
    """This server no longer leads the log (another server fenced it, see ``MVCCStore.may_write``):
    the request was not applied, and the next leader may run it."""


class TooManyRequestsError(MVCCError):
    """The storage backend is throttling (its request units are spent): back-pressure, as etcd's
    "too many requests"; the request was not applied."""


def from_storage(error: StorageError) -> MVCCError:
    """What a client is told when the storage failed its request."""
    if isinstance(error, StorageThrottledError):
        return TooManyRequestsError()
    if isinstance(error, LogFencedError):
        return NotLeaderError(str(error))
    return StorageUnavailableError(str(error))


class RangeTooLargeError(MVCCError):
    """A Range would answer more than its limit of keys or bytes (``limit`` in ``unit``)."""

    def __init__(self, limit: int, unit: str) -> None:
        super().__init__(f"more than {limit} {unit}")
        self.limit = limit
        self.unit = unit


class LeaseExistsError(MVCCError):
    """LeaseGrant with the ID of a lease that exists."""


class LeaseTTLTooLargeError(MVCCError):
    """LeaseGrant with a TTL above etcd's maximum."""


class NoSpaceError(MVCCError):
    """A NOSPACE alarm is raised: the request would make the store grow (etcd's ErrNoSpace)."""


class CorruptError(MVCCError):
    """A CORRUPT alarm is raised: the request would change the store (etcd's ErrCorrupt)."""


class UnknownAlarmTypeError(MVCCError):
    """An alarm type etcd 3.5 does not know was to be raised (etcd would store it and crash)."""

    def __init__(self, alarm: int) -> None:
        super().__init__(f"unknown alarm type {alarm}")
        self.alarm = alarm


class AuthError(MVCCError):
    """A refusal of the auth store; ``message`` is the text of etcd's ``auth`` package, which
    etcd's Maintenance service answers as is (the other services translate it)."""

    message = "auth: error"

    def __init__(self) -> None:
        super().__init__(self.message)


def _auth_error(name: str, message: str) -> type[AuthError]:
    return type(name, (AuthError,), {"message": message, "__doc__": message})


RootUserNotExistError = _auth_error("RootUserNotExistError", "auth: root user does not exist")
RootRoleNotExistError = _auth_error("RootRoleNotExistError", "auth: root user does not have root role")
UserAlreadyExistError = _auth_error("UserAlreadyExistError", "auth: user already exists")
UserEmptyError = _auth_error("UserEmptyError", "auth: user name is empty")
UserNotFoundError = _auth_error("UserNotFoundError", "auth: user not found")
RoleAlreadyExistError = _auth_error("RoleAlreadyExistError", "auth: role already exists")
RoleNotFoundError = _auth_error("RoleNotFoundError", "auth: role not found")
RoleEmptyError = _auth_error("RoleEmptyError", "auth: role name is empty")
PermissionNotGivenError = _auth_error("PermissionNotGivenError", "auth: permission not given")
AuthFailedError = _auth_error("AuthFailedError", "auth: authentication failed, invalid user ID or password")
NoPasswordUserError = _auth_error("NoPasswordUserError",
                                  "auth: authentication failed, password was given for no password user")
PermissionDeniedError = _auth_error("PermissionDeniedError", "auth: permission denied")
RoleNotGrantedError = _auth_error("RoleNotGrantedError", "auth: role is not granted to the user")
PermissionNotGrantedError = _auth_error("PermissionNotGrantedError", "auth: permission is not granted to the role")
AuthNotEnabledError = _auth_error("AuthNotEnabledError", "auth: authentication is not enabled")
InvalidAuthTokenError = _auth_error("InvalidAuthTokenError", "auth: invalid auth token")
InvalidAuthMgmtError = _auth_error("InvalidAuthMgmtError", "auth: invalid auth management")
