"""Differential testing: send the same requests to a real etcd and to the shim, compare every answer.

A `Connection` holds one gRPC channel per server for a whole test session. Each scenario (a test,
or one hypothesis example) is a `DifferentialPair` with its own key namespace, so that the servers
can be shared by every test of the session:

* Namespaces are ``b"~t000042/"`` with a strictly increasing number. ``~`` (0x7e) sorts above every
  other printable key, and a later scenario's keys sort above an earlier one's; so a range from a
  key of the current namespace to ``range_end=b"\\x00"`` (all keys >= key) sees only the current
  scenario's keys (later namespaces hold no keys yet). Other tests sharing the servers must keep
  their keys inside a pair's namespace too.
* At scenario start one Put of a *marker key* (``b"~t000042"``: the namespace without its final
  slash, so it sorts after every earlier scenario and before this scenario's keys, and no range of
  the namespace sees it) is sent to each server; that Put's revision is the side's *base*.
* Revisions are compared relative to the base. In responses every ``revision``,
  ``create_revision``, ``mod_revision`` and ``compact_revision`` at any nesting level becomes
  ``absolute - base`` (0 stays 0; whether a field was 0 is compared separately, so 0 and
  ``base`` are never confused). Header ``cluster_id``, ``member_id`` and ``raft_term`` are ignored
  at every level (Txn responses nest headers).
* In requests, write a revision as ``pair.rev(n)``: a placeholder integer that each side turns
  into its own ``base + n`` (fields ``revision``, ``min/max_mod_revision``,
  ``min/max_create_revision``, Compare ``create_revision``/``mod_revision``, ``start_revision``,
  Compaction ``revision``, at any nesting level). Any other value (0, a literal) is sent as is.
  Or pass a callable ``request(side) -> message``; ``side.rev(n)`` is then the absolute revision.
* Errors are compared as (gRPC status code, details message), exactly.

On any difference `pair.call` raises `Mismatch` (an AssertionError) with a readable diff. The raw
answers of the last call stay available: ``pair.last.raw["etcd"]``, ``pair.raw("shim")``.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import typing

import grpc
from google.protobuf import descriptor, message, text_format

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from cosmos_etcd_shim.proto import rpc_pb2_grpc

DEFAULT_TIMEOUT = 30.0
# No client-side size limits: what is too large is for the servers to say.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 256 * 1024 * 1024)]

# --- revision placeholders -----------------------------------------------------------------------

_REL = 1 << 52  # pair.rev(n) == _REL + n
_BAND = 1 << 40  # |value - _REL| < _BAND marks a placeholder


def rev(n: int) -> int:
    """The placeholder for the revision ``base + n`` (each side substitutes its own base)."""
    if abs(n) >= _BAND:
        raise ValueError(f"relative revision out of range: {n}")
    return _REL + n


def is_placeholder(value: int) -> bool:
    return abs(value - _REL) < _BAND


def prefix_end(key: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd: the smallest key greater than every key starting with `key`."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"  # all keys >= key


# --- request builders ----------------------------------------------------------------------------

COMPARE_TARGETS = {
    "VERSION": (pb.Compare.VERSION, "version"),
    "CREATE": (pb.Compare.CREATE, "create_revision"),
    "MOD": (pb.Compare.MOD, "mod_revision"),
    "VALUE": (pb.Compare.VALUE, "value"),
    "LEASE": (pb.Compare.LEASE, "lease"),
}
COMPARE_RESULTS = {
    "=": pb.Compare.EQUAL, "==": pb.Compare.EQUAL, "EQUAL": pb.Compare.EQUAL,
    ">": pb.Compare.GREATER, "GREATER": pb.Compare.GREATER,
    "<": pb.Compare.LESS, "LESS": pb.Compare.LESS,
    "!=": pb.Compare.NOT_EQUAL, "NOT_EQUAL": pb.Compare.NOT_EQUAL,
}


def compare(key: bytes, target: str, result: str, value: typing.Any = None, *, range_end: bytes = b"",
            union: str | None = None) -> pb.Compare:
    """A Compare: ``compare(k, "MOD", "<", pair.rev(3))``. `union` overrides the target_union
    field that carries `value` (to send one that does not match the target); None sends none."""
    target_enum, field = COMPARE_TARGETS[target]
    c = pb.Compare(key=key, target=target_enum, result=COMPARE_RESULTS[result], range_end=range_end)
    field = union or field
    if value is not None:
        setattr(c, field, value)
    return c


def op_range(key: bytes, **fields) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **fields))


def op_put(key: bytes, value: bytes = b"", **fields) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **fields))


def op_delete(key: bytes, **fields) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, **fields))


def op_txn(compare=(), success=(), failure=()) -> pb.RequestOp:
    return pb.RequestOp(request_txn=pb.TxnRequest(compare=list(compare), success=list(success),
                                                  failure=list(failure)))


# --- outcomes ------------------------------------------------------------------------------------


class Error(typing.NamedTuple):
    """A gRPC error as etcd clients see it."""

    code: grpc.StatusCode
    details: str

    def __repr__(self) -> str:
        return f"Error({self.code.name}, {self.details!r})"


class Mismatch(AssertionError):
    """The two servers answered the same request differently."""


_RESPONSE_REVISION_FIELDS = frozenset({"revision", "create_revision", "mod_revision", "compact_revision"})
_REQUEST_REVISION_FIELDS = frozenset({
    "revision", "min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision",
    "create_revision", "mod_revision", "start_revision",
})
_HEADER_IGNORED = ("cluster_id", "member_id", "raft_term")
_INT64 = descriptor.FieldDescriptor.TYPE_INT64


def _is_repeated(fd: descriptor.FieldDescriptor) -> bool:
    is_repeated = getattr(fd, "is_repeated", None)  # protobuf >= 5; `label` is gone in 7
    return is_repeated if is_repeated is not None else fd.label == fd.LABEL_REPEATED


def translate_request(msg: message.Message, base: int) -> message.Message:
    """A copy of `msg` with every revision placeholder replaced by ``base + n``."""
    out = type(msg)()
    out.CopyFrom(msg)
    _translate(out, base)
    return out


def _translate(msg: message.Message, base: int) -> None:
    for fd, value in msg.ListFields():
        if fd.message_type is not None:
            if _is_repeated(fd):
                if fd.message_type.GetOptions().map_entry:
                    continue
                for item in value:
                    _translate(item, base)
            else:
                _translate(value, base)
        elif fd.type == _INT64 and not _is_repeated(fd) and fd.name in _REQUEST_REVISION_FIELDS \
                and is_placeholder(value):
            setattr(msg, fd.name, base + (value - _REL))


def normalise_response(msg: message.Message, base: int) -> tuple[message.Message, frozenset[str]]:
    """A copy of `msg` with revisions relative to `base` and header identities cleared, plus the
    set of paths of revision fields that were non-zero (so that 0 and `base` stay distinct)."""
    out = type(msg)()
    out.CopyFrom(msg)
    nonzero: set[str] = set()
    _normalise(out, base, "", nonzero)
    return out, frozenset(nonzero)


def _normalise(msg: message.Message, base: int, path: str, nonzero: set[str]) -> None:
    is_header = msg.DESCRIPTOR.full_name == pb.ResponseHeader.DESCRIPTOR.full_name
    for fd, value in msg.ListFields():
        here = f"{path}.{fd.name}" if path else fd.name
        if fd.message_type is not None:
            if _is_repeated(fd):
                if fd.message_type.GetOptions().map_entry:
                    continue
                for i, item in enumerate(value):
                    _normalise(item, base, f"{here}[{i}]", nonzero)
            else:
                _normalise(value, base, here, nonzero)
        elif is_header and fd.name in _HEADER_IGNORED:
            msg.ClearField(fd.name)
        elif fd.type == _INT64 and not _is_repeated(fd) and fd.name in _RESPONSE_REVISION_FIELDS:
            nonzero.add(here)
            setattr(msg, fd.name, value - base)


_PLACEHOLDER_RE = re.compile(r"\b(\d{15,17})\b")


def _show_placeholders(text: str) -> str:
    def sub(m: re.Match) -> str:
        v = int(m.group(1))
        return f"rev({v - _REL})" if is_placeholder(v) else m.group(0)
    return _PLACEHOLDER_RE.sub(sub, text)


def _clip(text: str, width: int = 300, lines: int = 400) -> str:
    out = [line if len(line) <= width else line[:width] + f"...[{len(line) - width} more]"
           for line in text.splitlines()]
    if len(out) > lines:
        out = out[:lines] + [f"...[{len(out) - lines} more lines]"]
    return "\n".join(out)


def describe(outcome: "message.Message | Error") -> str:
    if isinstance(outcome, Error):
        return repr(outcome)
    return f"{type(outcome).__name__} {{\n{text_format.MessageToString(outcome)}}}"


# --- servers and scenarios -----------------------------------------------------------------------


@dataclasses.dataclass
class Side:
    """One server of the pair: its name ("etcd" or "shim"), process handle and channel."""

    name: str
    server: typing.Any  # tests.harness.processes.Server
    channel: grpc.Channel
    _stubs: dict = dataclasses.field(default_factory=dict)

    def describe_process(self, tail: int = 30) -> str:
        """Whether the server process still runs, and the end of its log (for failure reports)."""
        proc = getattr(self.server, "process", None)
        if proc is None:
            return f"{self.name}: no process handle"
        code = proc.poll()
        state = "running" if code is None else f"EXITED with code {code}"
        try:
            log = self.server.log().splitlines()[-tail:]
        except Exception as e:  # noqa: BLE001 - a report helper must not hide the real failure
            log = [f"(log unreadable: {e})"]
        return f"{self.name} ({self.server.endpoint}) is {state}; log tail:\n" + "\n".join(log)

    def stub(self, service: str):
        if service not in self._stubs:
            if service == "Health":
                from grpc_health.v1 import health_pb2_grpc
                self._stubs[service] = health_pb2_grpc.HealthStub(self.channel)
            else:
                self._stubs[service] = getattr(rpc_pb2_grpc, f"{service}Stub")(self.channel)
        return self._stubs[service]

    def invoke(self, service: str, method: str, request: message.Message, timeout: float = DEFAULT_TIMEOUT,
               token: str | None = None):
        """The raw outcome of one unary call (with etcd's auth ``token`` metadata when given): the
        response message, or an `Error`."""
        metadata = [("token", token)] if token is not None else None
        try:
            return getattr(self.stub(service), method)(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            return Error(e.code(), e.details())


@dataclasses.dataclass
class SideView:
    """What a request-building callable gets: one side of the current scenario."""

    name: str
    base: int
    prefix: bytes

    def rev(self, n: int) -> int:
        """The absolute revision `base + n` on this side."""
        return self.base + n

    def k(self, name: bytes = b"") -> bytes:
        return self.prefix + name


@dataclasses.dataclass
class Exchange:
    """One request sent to both sides, and what each answered."""

    service: str
    method: str
    requests: dict  # side name -> the request actually sent
    raw: dict  # side name -> response message or Error, untouched
    normalised: dict  # side name -> normalised response or Error
    nonzero: dict  # side name -> frozenset of paths of non-zero revision fields


_namespaces = itertools.count(1)


class Connection:
    """Channels to the two servers, shared by every scenario of a test session."""

    def __init__(self, etcd_server, shim_server, *, shim_name: str = "shim"):
        self.sides = [
            Side("etcd", etcd_server, grpc.insecure_channel(etcd_server.endpoint, options=CHANNEL_OPTIONS)),
            Side(shim_name, shim_server, grpc.insecure_channel(shim_server.endpoint, options=CHANNEL_OPTIONS)),
        ]

    def new_pair(self) -> "DifferentialPair":
        return DifferentialPair(self.sides, next(_namespaces))

    def close(self) -> None:
        for side in self.sides:
            side.channel.close()


class DifferentialPair:
    """One scenario: a fresh key namespace on both servers, and the comparison of every answer."""

    def __init__(self, sides: list[Side], number: int):
        self.sides = sides
        self.number = number
        self.prefix = b"~t%06d/" % number
        self.marker = self.prefix[:-1]
        self.base: dict[str, int] = {}
        self.last: Exchange | None = None
        self.history: list[Exchange] = []
        for side in sides:
            out = side.invoke("KV", "Put", pb.PutRequest(key=self.marker, value=b"marker"))
            if isinstance(out, Error):
                raise AssertionError(f"{side.name}: scenario marker Put failed: {out!r}\n"
                                     + _clip(side.describe_process()))
            self.base[side.name] = out.header.revision

    # -- keys and revisions
    def k(self, name: bytes = b"") -> bytes:
        """The key `name` inside this scenario's namespace."""
        return self.prefix + name

    @staticmethod
    def rev(n: int) -> int:
        """The revision `base + n` as a placeholder that each side resolves to its own base."""
        return rev(n)

    def view(self, side: Side | str) -> SideView:
        name = side if isinstance(side, str) else side.name
        return SideView(name, self.base[name], self.prefix)

    def side(self, name: str) -> Side:
        return next(s for s in self.sides if s.name == name)

    # -- the comparison
    def request_for(self, side: Side, request) -> message.Message:
        if callable(request):
            request = request(self.view(side))
        return translate_request(request, self.base[side.name])

    def call(self, service: str, method: str, request, *, timeout: float = DEFAULT_TIMEOUT,
             tokens: dict[str, str] | None = None):
        """Send `request` (a message with `rev()` placeholders, or a callable of a `SideView`) to
        both servers, each with its own auth token from `tokens` (side name -> token) if given;
        raise `Mismatch` unless they answer alike. Returns the normalised response (revisions
        relative to the base), or the `Error` both returned."""
        requests, raw, normalised, nonzero = {}, {}, {}, {}
        for side in self.sides:
            req = self.request_for(side, request)
            out = side.invoke(service, method, req, timeout, token=(tokens or {}).get(side.name))
            requests[side.name], raw[side.name] = req, out
            if isinstance(out, Error):
                normalised[side.name], nonzero[side.name] = out, frozenset()
            else:
                normalised[side.name], nonzero[side.name] = normalise_response(out, self.base[side.name])
        exchange = Exchange(service, method, requests, raw, normalised, nonzero)
        self.last = exchange
        self.history.append(exchange)
        a, b = (s.name for s in self.sides)
        if normalised[a] != normalised[b] or nonzero[a] != nonzero[b]:
            raise Mismatch(self._mismatch_report(exchange, request))
        return normalised[a]

    def call_side(self, side: str, service: str, method: str, request, *, timeout: float = DEFAULT_TIMEOUT,
                  tokens: dict[str, str] | None = None):
        """Send `request` to one side only (for behaviour the reference cannot show, e.g. requests
        that crash etcd 3.5.1). Returns the normalised response or the `Error`; nothing compared."""
        s = self.side(side)
        out = s.invoke(service, method, self.request_for(s, request), timeout, token=(tokens or {}).get(side))
        return out if isinstance(out, Error) else normalise_response(out, self.base[side])[0]

    def raw(self, side: str):
        """The untouched answer of `side` ("etcd" or "shim") to the last call."""
        return self.last.raw[side]

    def _mismatch_report(self, ex: Exchange, template) -> str:
        a, b = (s.name for s in self.sides)
        if callable(template):
            shown = f"(built per side) {a}: {text_format.MessageToString(ex.requests[a], as_one_line=True)}"
        else:
            shown = _show_placeholders(text_format.MessageToString(template, as_one_line=True))
        if len(shown) > 3000:
            shown = shown[:3000] + f"...[{len(shown) - 3000} more characters]"
        left = describe(ex.normalised[a]).splitlines(keepends=False)
        right = describe(ex.normalised[b]).splitlines(keepends=False)
        diff = "\n".join(difflib.unified_diff(left, right, a, b, lineterm="", n=4))
        lines = [
            f"{ex.service}.{ex.method}: {a} and {b} answered differently "
            f"(revisions relative to the scenario base; bases {a}={self.base[a]} {b}={self.base[b]})",
            f"request: {shown}",
            "--- diff:", _clip(diff, lines=150) if diff else "(no textual difference)",
        ]
        if ex.nonzero[a] != ex.nonzero[b]:
            lines.append(f"revision fields non-zero only on {a}: {sorted(ex.nonzero[a] - ex.nonzero[b])}; "
                         f"only on {b}: {sorted(ex.nonzero[b] - ex.nonzero[a])}")
        lines += [f"--- {a} answered:", _clip(describe(ex.normalised[a]), lines=100),
                  f"--- {b} answered:", _clip(describe(ex.normalised[b]), lines=100)]
        for side in self.sides:
            out = ex.raw[side.name]
            if isinstance(out, Error) and out.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                                       grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                lines.append(side.describe_process())
        lines.append(f"(scenario {self.prefix!r}, call #{len(self.history)})")
        return _clip("\n".join(lines), lines=600)

    # -- conveniences: KV calls that must succeed on both sides
    def ok(self, service: str, method: str, request, *, tokens: dict[str, str] | None = None):
        out = self.call(service, method, request, tokens=tokens)
        if isinstance(out, Error):
            raise AssertionError(f"{service}.{method} failed on both sides with {out!r}; "
                                 f"request: {_show_placeholders(text_format.MessageToString(request)) if not callable(request) else request}")
        return out

    def expect_error(self, service: str, method: str, request, code: grpc.StatusCode, details: str, *,
                     tokens: dict[str, str] | None = None) -> Error:
        """Both sides must fail alike, with exactly this code and message."""
        out = self.call(service, method, request, tokens=tokens)
        expected = Error(code, details)
        if out != expected:
            raise AssertionError(f"{service}.{method}: expected {expected!r} from both sides, both answered {describe(out)}")
        return out

    def range(self, key: bytes, **fields) -> pb.RangeResponse:
        return self.ok("KV", "Range", pb.RangeRequest(key=key, **fields))

    def put(self, key: bytes, value: bytes = b"", **fields) -> pb.PutResponse:
        return self.ok("KV", "Put", pb.PutRequest(key=key, value=value, **fields))

    def delete(self, key: bytes, **fields) -> pb.DeleteRangeResponse:
        return self.ok("KV", "DeleteRange", pb.DeleteRangeRequest(key=key, **fields))

    def txn(self, compare=(), success=(), failure=()) -> pb.TxnResponse:
        return self.ok("KV", "Txn", pb.TxnRequest(compare=list(compare), success=list(success),
                                                 failure=list(failure)))

    def compact(self, n: int, physical: bool = False) -> pb.CompactionResponse:
        """Compact at the relative revision `n` (compaction is global: stay inside the scenario)."""
        return self.ok("KV", "Compact", pb.CompactionRequest(revision=rev(n), physical=physical))

    def state(self) -> pb.RangeResponse:
        """The whole namespace and the current revision, compared on both sides (normalised)."""
        return self.range(self.prefix, range_end=prefix_end(self.prefix))

    def revision(self) -> int:
        """The current revision, relative to the base (compared on both sides)."""
        return self.state().header.revision
