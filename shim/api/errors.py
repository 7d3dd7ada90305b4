"""etcd's gRPC errors: the exact status code and message etcd answers for each refusal."""
from __future__ import annotations

import dataclasses
import functools
import logging
import time

import grpc

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.mvcc import errors as core
from cosmos_etcd_shim.replication.forwarding import ForwardedError
from cosmos_etcd_shim.storage import StorageError

logger = logging.getLogger(__name__)


class EtcdRpcError(Exception):
    """A request refused with etcd's status; raised by validation, turned into a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class EtcdStatus:
    code: grpc.StatusCode
    message: str

    def error(self) -> EtcdRpcError:
        return EtcdRpcError(self.code, self.message)


_INVALID = grpc.StatusCode.INVALID_ARGUMENT
EMPTY_KEY = EtcdStatus(_INVALID, "etcdserver: key is not provided")
KEY_NOT_FOUND = EtcdStatus(_INVALID, "etcdserver: key not found")
VALUE_PROVIDED = EtcdStatus(_INVALID, "etcdserver: value is provided")
LEASE_PROVIDED = EtcdStatus(_INVALID, "etcdserver: lease is provided")
TOO_MANY_OPS = EtcdStatus(_INVALID, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = EtcdStatus(_INVALID, "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION = EtcdStatus(_INVALID, "etcdserver: invalid sort option")
REQUEST_TOO_LARGE = EtcdStatus(_INVALID, "etcdserver: request is too large")
COMPACTED = EtcdStatus(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = EtcdStatus(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
LEASE_NOT_FOUND = EtcdStatus(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXISTS = EtcdStatus(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = EtcdStatus(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
_FAILED = grpc.StatusCode.FAILED_PRECONDITION
PERMISSION_DENIED = EtcdStatus(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
# A watch the caller may not create is cancelled with the formatted status as its reason.
WATCH_PERMISSION_DENIED = f"rpc error: code = PermissionDenied desc = {PERMISSION_DENIED.message}"

_FROM_CORE = {
    core.CompactedError: COMPACTED,
    core.FutureRevisionError: FUTURE_REV,
    core.KeyNotFoundError: KEY_NOT_FOUND,
    core.LeaseNotFoundError: LEASE_NOT_FOUND,
    core.LeaseExistsError: LEASE_EXISTS,
    core.LeaseTTLTooLargeError: LEASE_TTL_TOO_LARGE,
    core.TooManyRequestsError: EtcdStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    core.NotLeaderError: EtcdStatus(grpc.StatusCode.UNAVAILABLE, "etcdserver: not leader"),
    core.NoSpaceError: EtcdStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    core.CorruptError: EtcdStatus(grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster"),
    core.RootUserNotExistError: EtcdStatus(_FAILED, "etcdserver: root user does not exist"),
    core.RootRoleNotExistError: EtcdStatus(_FAILED, "etcdserver: root user does not have root role"),
    core.UserAlreadyExistError: EtcdStatus(_FAILED, "etcdserver: user name already exists"),
    core.UserEmptyError: EtcdStatus(_INVALID, "etcdserver: user name is empty"),
    core.UserNotFoundError: EtcdStatus(_FAILED, "etcdserver: user name not found"),
    core.RoleAlreadyExistError: EtcdStatus(_FAILED, "etcdserver: role name already exists"),
    core.RoleNotFoundError: EtcdStatus(_FAILED, "etcdserver: role name not found"),
    core.RoleEmptyError: EtcdStatus(_INVALID, "etcdserver: role name is empty"),
    core.AuthFailedError: EtcdStatus(_INVALID, "etcdserver: authentication failed, invalid user ID or password"),
    core.PermissionNotGivenError: EtcdStatus(_INVALID, "etcdserver: permission not given"),
    core.PermissionDeniedError: PERMISSION_DENIED,
    core.RoleNotGrantedError: EtcdStatus(_FAILED, "etcdserver: role is not granted to the user"),
    core.PermissionNotGrantedError: EtcdStatus(_FAILED, "etcdserver: permission is not granted to the role"),
    core.AuthNotEnabledError: EtcdStatus(_FAILED, "etcdserver: authentication is not enabled"),
    core.InvalidAuthTokenError: EtcdStatus(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"),
    core.InvalidAuthMgmtError: EtcdStatus(_INVALID, "etcdserver: invalid auth management"),
    # etcd has no gRPC error for this one: its clients get the auth package's text, code Unknown.
    core.NoPasswordUserError: EtcdStatus(grpc.StatusCode.UNKNOWN, core.NoPasswordUserError.message),
}


def status_of(error: Exception) -> EtcdStatus:
    if isinstance(error, (EtcdRpcError, ForwardedError)):  # the leader's answer to a forwarded request, as it was
        return EtcdStatus(error.code, error.message)
    known = _FROM_CORE.get(type(error))
    if known is not None:
        return known
    if isinstance(error, StorageError):  # a storage failure the core passed on as it was
        return status_of(core.from_storage(error))
    if isinstance(error, core.StorageUnavailableError):
        # Clients retry UNAVAILABLE. As with etcd's "request timed out", a write whose outcome was
        # unknown may still have been applied: the client reads before it writes again.
        return EtcdStatus(grpc.StatusCode.UNAVAILABLE, f"cosmos-etcd: storage unavailable: {error}")
    if isinstance(error, core.UnknownAlarmTypeError):
        return EtcdStatus(_INVALID, f"cosmos-etcd: {error}")
    if isinstance(error, core.RangeTooLargeError):
        # etcd has no such limit; RESOURCE_EXHAUSTED is what it answers for a response over gRPC's send limit.
        bound = "--max-range-keys" if error.unit == "keys" else "the gRPC send limit"
        message = (f"cosmos-etcd: range answer has more than {error.limit} {error.unit} ({bound}); "
                   "read it in pages with limit")
        return EtcdStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    logger.error("unexpected error", exc_info=error)
    return EtcdStatus(grpc.StatusCode.INTERNAL, f"cosmos-etcd: internal error: {type(error).__name__}")


def unary_rpc(method):
    """Wrap a unary servicer method: every refusal reaches the client as etcd's status, and every
    call is counted and timed by method and status code."""
    name = method.__name__
    seconds = metrics.GRPC_SECONDS.labels(name)
    answered = metrics.GRPC_REQUESTS.labels(name, grpc.StatusCode.OK.name)

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        started = time.perf_counter()
        try:
            response = await method(self, request, context)
        except Exception as e:  # etcd's refusals, and INTERNAL for a bug rather than a hang
            status = status_of(e)
        else:
            answered.inc()
            seconds.observe(time.perf_counter() - started)
            return response
        metrics.GRPC_REQUESTS.labels(name, status.code.name).inc()
        seconds.observe(time.perf_counter() - started)
        await context.abort(status.code, status.message)

    return wrapper


def answer_unimplemented(servicer, service: type) -> None:
    """Make each method of the generated ``service`` base class that ``servicer`` does not
    override answer UNIMPLEMENTED with a clear message (the generated default raises, which gRPC
    reports with a Python exception's text)."""
    for name, method in vars(service).items():
        if name.startswith("_") or not callable(method) or getattr(type(servicer), name) is not method:
            continue
        setattr(servicer, name, _unimplemented(f"{service.__name__.removesuffix('Servicer')}.{name}"))


def _unimplemented(name: str):
    message = f"cosmos-etcd: {name} is not implemented"

    async def refuse(request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return refuse
