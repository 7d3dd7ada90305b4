"""TLS files as a pod sees them, and the certificate a server hands a new connection.

:class:`SecretVolume` lays files out as the kubelet mounts a Secret: each name a symlink through
``..data`` into a versioned directory, and a new version swapped in with one atomic rename, so a
reader never sees half of an update. :func:`served_certificate` opens a fresh TLS connection and
returns the server's certificate without verifying it (to read serials and names).
"""
from __future__ import annotations

import base64
import os
import pathlib
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from cryptography import x509


class SecretVolume:
    """Files as Kubernetes mounts a Secret: names that point through the ``..data`` symlink into a
    versioned directory, swapped atomically when the Secret changes."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.version = 0

    def publish(self, files: Mapping[str, bytes]) -> None:
        self.version += 1
        target = self.root / f"..{self.version}"
        target.mkdir(parents=True)
        for name, content in files.items():
            (target / name).write_bytes(content)
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(pathlib.Path("..data") / name)
        (self.root / "..data_tmp").symlink_to(target.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")

    def publish_secret(self, secret: Mapping[str, Any]) -> None:
        """What the kubelet writes for a Secret object: its ``data``, decoded."""
        self.publish({key: base64.b64decode(value) for key, value in secret["data"].items()})

    def path(self, name: str) -> str:
        return str(self.root / name)

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


def served_certificate(endpoint: str) -> x509.Certificate:
    """The certificate a new connection is served (read without verifying it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    host, port = endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))
