"""Who a gRPC request comes from, as etcd decides it (``AuthInfoFromCtx``, ``AuthInfoFromTLS``).

The token is etcd's metadata ``token`` (or ``authorization``, the key etcd's HTTP gateway uses).
Without a token, and only when client certificates are verified (``--client-cert-auth``), the
user is the common name of the client certificate that the TLS handshake verified.
"""
from __future__ import annotations

import grpc

from cosmos_etcd_shim.mvcc.auth import AuthInfo, AuthStore

TOKEN_KEYS = ("token", "authorization")


class Callers:
    def __init__(self, auth: AuthStore, client_cert_auth: bool) -> None:
        self.auth = auth
        self.client_cert_auth = client_cert_auth

    def of(self, context: grpc.aio.ServicerContext) -> AuthInfo | None:
        """The caller; raises InvalidAuthTokenError for a token this server did not issue (or
        that expired)."""
        return self.auth.identify(token_of(context), common_name_of(context) if self.client_cert_auth else None)


def token_of(context: grpc.aio.ServicerContext) -> str | None:
    metadata = dict(context.invocation_metadata() or ())
    return next((metadata[key] for key in TOKEN_KEYS if key in metadata), None)


def common_name_of(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's subject CN (gRPC puts it in the auth context only for a
    certificate the handshake checked against the trusted CA)."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None
