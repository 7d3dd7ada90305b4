"""A fault-injecting HTTP/1.1 proxy for outage tests (plain HTTP upstream, e.g. the Cosmos test
server started with ``--no-ssl``).

Requests pass through unchanged until a :class:`Rule` matches (by Cosmos operation -- ``create``,
``upsert``, ``query``, ``read``, ``replace``, ``delete`` --, method, path substring, body
substring); the first matching rule with uses left decides what happens to that request:

* ``delay``            wait ``seconds``, then forward as usual
* ``delay_after``      forward, wait for the upstream answer, hold it ``seconds``, then relay it
                       (the request ran at once; its answer arrives late, e.g. a stale read)
* ``status``           answer ``status`` (e.g. 429 with ``Retry-After``, 503, 408) without forwarding
* ``status_after``     forward, drop the upstream answer, answer ``status`` instead (the request
                       ran, the client is told it failed: a 408/503 of unknown outcome)
* ``reset_before``     close the client's connection without forwarding (the request never ran)
* ``reset_after``      forward, wait for the upstream answer, then close the client's connection
                       without relaying it (the request ran; its answer is lost)
* ``hang_after``       forward, then never answer (the client times out; the request ran)

``proxy.authorize`` (a function of the method, target and request message) can refuse a request
before any rule: it returns the whole HTTP answer to send instead (see :func:`http_answer`), or None
to let it pass; the refusal is logged with action ``refused:<status>``. With ``ssl_context`` the
proxy serves HTTPS (``endpoint`` says so), as an authorization gate must for bearer tokens.

``proxy.refuse = True`` makes the proxy close every new and pending request (an outage);
``proxy.log`` records (operation, path, action) of every request seen (``account`` is the
database account read, ``GET /``). ``proxy.rewrite_account`` (a function of the account's JSON
object) changes what the upstream answered to ``GET /``, e.g. to advertise other regions.

Run it in the test's event loop (``await proxy.start()``) or on a thread of its own
(``ThreadedFaultProxy``) for servers in other processes.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import threading
from collections.abc import Callable

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}


@dataclasses.dataclass
class Rule:
    action: str  # delay | delay_after | status | status_after | reset_before | reset_after | hang_after
    operation: str | None = None  # create | upsert | query | read | replace | delete | patch
    method: str | None = None
    path: str | None = None  # substring of the request target
    body: bytes | None = None  # substring of the request body
    times: int = 1  # how many requests it applies to (-1: all)
    seconds: float = 0.0
    status: int = 503
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    hits: int = 0
    answered: int = 0  # requests it matched that the upstream then answered (those it forwarded)

    def matches(self, operation: str, method: str, path: str, body: bytes) -> bool:
        if self.times == 0:
            return False
        if self.operation and self.operation != operation:
            return False
        if self.method and self.method != method:
            return False
        if self.path and self.path not in path:
            return False
        if self.body and self.body not in body:
            return False
        return True


def throttled(retry_after_seconds: float = 0.2, *, ms_header: bool = True, **match) -> Rule:
    """Cosmos's 429: ``x-ms-retry-after-ms`` (as the service sends) and/or ``Retry-After``."""
    headers = {"Retry-After": f"{retry_after_seconds:g}"}
    if ms_header:
        headers["x-ms-retry-after-ms"] = str(int(retry_after_seconds * 1000))
    return Rule("status", status=429, headers=headers, **match)


def cosmos_operation(message: "_Message", method: str, target: str) -> str:
    """What a Cosmos REST request does, from its method, path and headers."""
    if method == "GET" and target == "/":
        return "account"
    on_document = "/docs/" in target.rstrip("/") + "/" and not target.rstrip("/").endswith("/docs")
    if method == "POST":
        if (message.header(b"x-ms-documentdb-isquery") or b"").lower() == b"true":
            return "query"
        if (message.header(b"x-ms-documentdb-is-upsert") or b"").lower() == b"true":
            return "upsert"
        return "create" if target.rstrip("/").endswith("/docs") else "other"
    if method == "GET":
        return "read" if on_document else "other"
    return {"PUT": "replace", "DELETE": "delete", "PATCH": "patch"}.get(method, "other") if on_document else "other"


class _Message:
    def __init__(self, head: bytes, body: bytes) -> None:
        self.head = head
        self.body = body

    @property
    def first_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    def replace_body(self, body: bytes) -> None:
        """A new body, and the content-length to match (_read_message always leaves one)."""
        self.head = b"\r\n".join(line for line in self.head.split(b"\r\n")
                                  if not line.lower().startswith(b"content-length:"))
        self.head += b"\r\ncontent-length: " + str(len(body)).encode()
        self.body = body


async def _read_message(reader: asyncio.StreamReader, *, response: bool = False, request_method: str = "") -> _Message | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ConnectionError("truncated message head") from None
        return None
    message = _Message(head[:-4], b"")
    status = int(message.first_line.split(" ")[1]) if response else 0
    if response and (request_method == "HEAD" or status in (204, 304) or 100 <= status < 200):
        return message
    encoding = (message.header(b"transfer-encoding") or b"").lower()
    length = message.header(b"content-length")
    if b"chunked" in encoding:
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                # trailers (rare) end with an empty line: data already consumed "\r\n"
                break
            parts.append(data[:-2])
        message.body = b"".join(parts)
        message.head = b"\r\n".join(line for line in message.head.split(b"\r\n")
                                    if not line.lower().startswith(b"transfer-encoding"))
        message.head += b"\r\ncontent-length: " + str(len(message.body)).encode()
    elif length is not None:
        message.body = await reader.readexactly(int(length))
    elif response:
        message.body = await reader.read()  # until the server closes
        message.head += b"\r\ncontent-length: " + str(len(message.body)).encode()
    return message


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port = host, port
        self.ssl_context = ssl_context
        self.rules: list[Rule] = []
        self.refuse = False
        self.log: list[tuple[str, str, str]] = []
        self.rewrite_account: Callable[[dict], dict] | None = None
        self.authorize: Callable[[str, str, _Message], bytes | None] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}/"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def add(self, *rules: Rule) -> None:
        self.rules.extend(rules)

    def clear(self) -> None:
        self.rules.clear()
        self.refuse = False

    def reset_connections(self) -> None:
        """Abort every open connection (both sides see a reset)."""
        for writer in list(self._writers):
            writer.transport.abort()

    def _pick(self, operation: str, method: str, path: str, body: bytes) -> Rule | None:
        for rule in self.rules:
            if rule.matches(operation, method, path, body):
                if rule.times > 0:
                    rule.times -= 1
                rule.hits += 1
                return rule
        return None

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        self._writers.add(client_writer)
        upstream_writer = None
        try:
            if self.refuse:
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            while True:
                request = await _read_message(client_reader)
                if request is None:
                    return
                method, target = request.first_line.split(" ")[:2]
                if self.refuse:
                    self.log.append((method, target, "refused"))
                    return
                operation = cosmos_operation(request, method, target)
                refusal = self.authorize(method, target, request) if self.authorize is not None else None
                if refusal is not None:
                    self.log.append((operation, target, f"refused:{refusal.split(b' ', 2)[1].decode()}"))
                    client_writer.write(refusal)
                    await client_writer.drain()
                    continue
                rule = self._pick(operation, method, target, request.body)
                action = rule.action if rule else "pass"
                self.log.append((operation, target, action))
                if action == "delay":
                    await asyncio.sleep(rule.seconds)
                elif action == "status":
                    client_writer.write(_synthetic(rule.status, rule.headers))
                    await client_writer.drain()
                    continue
                elif action == "reset_before":
                    client_writer.transport.abort()
                    return
                upstream_writer.write(request.head + b"\r\n\r\n" + request.body)
                await upstream_writer.drain()
                response = await _read_message(upstream_reader, response=True, request_method=method)
                if response is None:
                    return
                if rule is not None:
                    rule.answered += 1
                if action == "reset_after":
                    client_writer.transport.abort()
                    return
                if action == "delay_after":
                    await asyncio.sleep(rule.seconds)
                if action == "status_after":
                    client_writer.write(_synthetic(rule.status, rule.headers))
                    await client_writer.drain()
                    continue
                if action == "hang_after":
                    await asyncio.sleep(3600)
                    return
                if self.refuse:
                    return
                if (operation == "account" and self.rewrite_account is not None
                        and response.first_line.split(" ")[1] == "200"):
                    response.replace_body(json.dumps(self.rewrite_account(json.loads(response.body))).encode())
                client_writer.write(response.head + b"\r\n\r\n" + response.body)
                await client_writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(client_writer)
            client_writer.transport.abort()
            if upstream_writer is not None:
                self._writers.discard(upstream_writer)
                upstream_writer.transport.abort()
            self._connections.discard(task)


def _synthetic(status: int, headers: dict[str, str]) -> bytes:
    code = {408: "RequestTimeout", 429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "Error")
    return http_answer(status, code, f"injected by the fault proxy: {status}", headers)


def http_answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer with Cosmos DB's error body ``{"code", "message"}``."""
    reason = {401: "Unauthorized", 403: "Forbidden", 408: "Request Timeout", 429: "Too Many Requests",
              449: "Retry With", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    body = json.dumps({"code": code, "message": message}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
             "x-ms-request-charge: 0", "x-ms-activity-id: 00000000-0000-0000-0000-000000000000"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ThreadedFaultProxy:
    """A FaultProxy on its own event loop thread, for clients in other processes or loops."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.proxy = FaultProxy(upstream_host, upstream_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self.proxy

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def call(self, fn: Callable[[FaultProxy], None]) -> None:
        """Change rules from another thread, safely."""
        self._loop.call_soon_threadsafe(fn, self.proxy)
