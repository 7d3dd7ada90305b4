"""A follower's calls to the leader's peer listener (the ``Peer`` service of ``peer.proto``).

One channel to the current leader's advertised peer URL, made again when the leader changes. The
channel uses the client TLS settings (``--trusted-ca-file``, ``--cert-file``, ``--key-file``) when
the URL is https: every replica serves the same certificate, issued for the names clients use, so
the name checked is the host of this server's first advertised client URL rather than the
leader's pod address.

How errors stay exact: the leader answers a forwarded request with the status its own API would
give a client (etcd's code and message), and :class:`ForwardedError` carries both back to the
client unchanged. Two answers mean the request was not run, so that the follower may send it
again once the leader is known: :data:`NOT_LEADER` (the receiver does not lead, or the token is
of another term) and a channel that could not connect. Any other failure after the request left
(the leader died while running it) is etcd's ``leader changed``: the write may or may not have
happened, as with etcd's own timeouts, and the client reads before writing again.
"""
from __future__ import annotations

import asyncio
import logging
import pathlib
from urllib.parse import urlsplit

import grpc

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.proto import peer_pb2_grpc
from cosmos_etcd_shim.replication.election import Leader

logger = logging.getLogger(__name__)

TOKEN_METADATA = "cosmos-etcd-peer-token"
NOT_LEADER = "cosmos-etcd: not the leader of this term"
# How long a call waits for the leader's channel to connect before the leader counts as gone.
CONNECT_SECONDS = 2.0
# A forwarded request gets as long as a client's request may take on the leader.
CALL_SECONDS = 60.0


class ForwardedError(Exception):
    """The leader's refusal of a forwarded request (or etcd's answer when there is no leader to
    ask): what the client gets, code and message unchanged."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


NO_LEADER = ForwardedError(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
LEADER_CHANGED = ForwardedError(grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")


class NotSent(Exception):
    """The request did not run on the leader: it may be sent again to the next one."""


class TlsFiles:
    """The client TLS settings, read again for every new channel (certificates are renewed in place)."""

    def __init__(self, ca_file: str, cert_file: str, key_file: str, server_name: str) -> None:
        self.ca_file, self.cert_file, self.key_file, self.server_name = ca_file, cert_file, key_file, server_name

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            return pathlib.Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


class Forwarder:
    """Sends requests to the leader's ``Peer`` service."""

    def __init__(self, tls: TlsFiles | None) -> None:
        self.tls = tls
        self._channel: grpc.aio.Channel | None = None
        self._address = ""

    async def call(self, leader: Leader, method: str, request, timeout: float = CALL_SECONDS):
        try:
            stub = peer_pb2_grpc.PeerStub(await self.channel_to(leader.address))
            response = await getattr(stub, method)(request, timeout=timeout,
                                                   metadata=((TOKEN_METADATA, leader.token),))
        except grpc.aio.UsageError:
            # The channel was closed before the call started (another request found a new leader
            # while this one waited for the connection): nothing was sent.
            raise NotSent("the channel to the former leader was closed") from None
        except grpc.aio.AioRpcError as e:
            metrics.FORWARDED_REQUESTS.labels(method, e.code().name).inc()
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION and e.details() == NOT_LEADER:
                raise NotSent(NOT_LEADER) from None
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                            grpc.StatusCode.UNKNOWN) and not _from_etcd(e.details()):
                logger.warning("the leader did not answer a forwarded request",
                               extra={"method": method, "leader": leader.address, "code": e.code().name})
                raise LEADER_CHANGED from None
            raise ForwardedError(e.code(), e.details()) from None
        metrics.FORWARDED_REQUESTS.labels(method, grpc.StatusCode.OK.name).inc()
        return response

    async def channel_to(self, address: str) -> grpc.aio.Channel:
        if address != self._address or self._channel is None:
            # Replaced before anything is awaited, so that requests arriving meanwhile share it;
            # calls still on the old channel end (CANCELLED: "leader changed", or "not sent").
            old, self._channel, self._address = self._channel, self._open(address), address
            if old is not None:
                await old.close()
        channel = self._channel
        if channel.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY:
            try:
                async with asyncio.timeout(CONNECT_SECONDS):
                    await channel.channel_ready()
            except TimeoutError:
                logger.warning("cannot reach the leader", extra={"leader": address})
                raise NotSent(f"cannot reach the leader at {address}") from None
        return channel

    def _open(self, address: str) -> grpc.aio.Channel:
        url = urlsplit(address)
        if url.scheme == "https":
            if self.tls is None:
                raise NotSent(f"the leader's peer URL {address} is https, and this server has no client TLS settings")
            options = [("grpc.ssl_target_name_override", self.tls.server_name)] if self.tls.server_name else []
            return grpc.aio.secure_channel(url.netloc, self.tls.credentials(), options=options)
        return grpc.aio.insecure_channel(url.netloc)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._address = None, ""


def _from_etcd(message: str) -> bool:
    """Whether a status was given by the leader's etcd API (its messages all carry a prefix),
    rather than by gRPC for a call that broke."""
    return message.startswith(("etcdserver: ", "cosmos-etcd: ", "mvcc: ", "auth: "))
