"""Server credentials for the client listener, from etcd's TLS flags and with etcd's meanings.

- ``--cert-file``/``--key-file``: the certificate served on ``https://`` client URLs. gRPC asks
  :meth:`CertificateFiles.fetch` at the start of every handshake; it compares the files' stat
  signatures with those last read and re-reads them only when one changed, so a rotated
  certificate is served to the next connection without a restart (etcd re-reads its files on
  every handshake). A pair that does not match (a rotation that has replaced the certificate but
  not yet the key) or does not parse is not served: the last good one stays until the files change
  again.
- ``--trusted-ca-file``: the CAs client certificates must chain to. As in etcd, giving it (or
  ``--client-cert-auth``) makes a verified client certificate mandatory. Reloaded like the pair.
- ``--auto-tls``: without ``--cert-file``, a self-signed certificate for the listen hosts, made
  once and kept in ``<data-dir>/fixtures/client`` as etcd does (organisation "etcd",
  ``--self-signed-cert-validity`` years). For development only: clients cannot verify it. Its key
  is ECDSA P-256, not etcd's P-521: gRPC's C-core clients (Python's among them) offer no P-521
  signature algorithm, and could not connect.
- ``--cipher-suites``: etcd's (Go's IANA) names, mapped to the names of gRPC's TLS library
  (BoringSSL). gRPC reads them from ``GRPC_SSL_CIPHER_SUITES`` once, when it is first imported,
  so :func:`use_cipher_suites` must run before anything imports grpc: this module imports it only
  where it builds credentials. As in Go, they govern TLS 1.2; TLS 1.3's suites are always on.
- ``--tls-min-version``/``--tls-max-version``: gRPC for Python cannot restrict the protocol
  versions of a server; it serves TLS 1.2 and 1.3, which are etcd's defaults. Other bounds are
  refused at startup rather than silently not enforced.
"""
from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import os
import pathlib
import sys
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cosmos_etcd_shim import metrics
from cosmos_etcd_shim.config import ConfigError, ServeConfig

logger = logging.getLogger(__name__)

CIPHER_SUITES_VARIABLE = "GRPC_SSL_CIPHER_SUITES"

# etcd's names (Go's crypto/tls, which are IANA's) -> BoringSSL's, for the TLS 1.2 suites BoringSSL has.
_TLS12_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",  # Go's older name
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",  # Go's older name
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
# Always enabled by TLS 1.3 (Go ignores them in its list too).
_TLS13_CIPHER_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
# Names etcd accepts that BoringSSL no longer implements (RC4, 3DES, RSA key exchange with SHA-256 CBC).
_REMOVED_CIPHER_SUITES = {
    "TLS_RSA_WITH_RC4_128_SHA", "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "TLS_RSA_WITH_AES_128_CBC_SHA256",
}


def cipher_list(cipher_suites: tuple[str, ...]) -> str:
    """etcd's ``--cipher-suites`` as BoringSSL's cipher list ("" for the library's defaults)."""
    names = []
    for suite in cipher_suites:
        if suite in _REMOVED_CIPHER_SUITES:
            raise ConfigError(f"TLS cipher suite {suite!r} is not available in gRPC's TLS library (BoringSSL)")
        if suite not in _TLS12_CIPHER_SUITES and suite not in _TLS13_CIPHER_SUITES:
            raise ConfigError(f"unexpected TLS cipher suite {suite!r}")  # etcd's message
        if suite in _TLS12_CIPHER_SUITES and _TLS12_CIPHER_SUITES[suite] not in names:
            names.append(_TLS12_CIPHER_SUITES[suite])
    if cipher_suites and not names:
        raise ConfigError("--cipher-suites names no TLS 1.2 cipher suite (TLS 1.3's cannot be chosen)")
    return ":".join(names)


def use_cipher_suites(config: ServeConfig) -> None:
    """Hand ``--cipher-suites`` to gRPC. Must run before grpc is imported (it reads them once)."""
    wanted = cipher_list(config.cipher_suites)
    if not wanted:
        return
    if "grpc" in sys.modules and os.environ.get(CIPHER_SUITES_VARIABLE) != wanted:
        raise ConfigError("--cipher-suites must be applied before gRPC is loaded")
    os.environ[CIPHER_SUITES_VARIABLE] = wanted


@dataclasses.dataclass(frozen=True)
class _Material:
    """The PEM bytes gRPC serves: the key, the certificate chain and the client CAs."""

    key: bytes
    chain: bytes
    client_cas: bytes | None
    not_after: float  # of the leaf certificate, Unix time


class CertificateFiles:
    """The certificate pair and client CAs on disk, as gRPC's certificate-config fetcher."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str | None) -> None:
        self.paths = {"--cert-file": cert_file, "--key-file": key_file}
        if ca_file:
            self.paths["--trusted-ca-file"] = ca_file
        self._lock = threading.Lock()  # gRPC calls fetch from its own threads
        self._signature = self._stat()
        self.material = self._read()  # at startup, a bad file is the user's to fix: raise
        self._publish_expiry()

    def initial_configuration(self):
        return _certificate_configuration(self.material)

    def fetch(self):
        """Called by gRPC at each handshake: a new configuration if the files changed, else None."""
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return None
            self._signature = signature  # a bad new version is reported once, not at every handshake
            try:
                material = self._read()
            except ConfigError as e:
                logger.warning("TLS files changed but cannot be used; serving the previous certificate",
                               extra={"error": str(e)})
                return None
            if material == self.material:
                return None
            self.material = material
            self._publish_expiry()
        logger.info("TLS files reloaded", extra={"files": list(self.paths.values())})
        return _certificate_configuration(material)

    def _publish_expiry(self) -> None:
        metrics.TLS_CERTIFICATE_EXPIRY.labels(self.paths["--cert-file"]).set(self.material.not_after)

    def _stat(self) -> tuple:
        """What changes when a file is replaced or rewritten (None for a file that is missing)."""
        signature = []
        for path in self.paths.values():
            try:
                st = os.stat(path)  # follows symlinks: Kubernetes swaps a Secret's files by symlink
            except OSError:
                signature.append(None)
            else:
                signature.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(signature)

    def _read(self) -> _Material:
        contents = {}
        for flag, path in self.paths.items():
            try:
                contents[flag] = pathlib.Path(path).read_bytes()
            except OSError as e:
                raise ConfigError(f"cannot read {flag} {path}: {e.strerror}") from None
        leaf = _check_pair(contents["--cert-file"], contents["--key-file"], self.paths)
        client_cas = contents.get("--trusted-ca-file")
        if client_cas is not None:
            _load_certificates(client_cas, "--trusted-ca-file", self.paths["--trusted-ca-file"])
        return _Material(contents["--key-file"], contents["--cert-file"], client_cas,
                         leaf.not_valid_after_utc.timestamp())


def _load_certificates(pem: bytes, flag: str, path: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{flag} {path} holds no PEM certificate") from None


def _check_pair(chain_pem: bytes, key_pem: bytes, paths: dict[str, str]) -> x509.Certificate:
    """The leaf certificate, if the key is its key."""
    leaf = _load_certificates(chain_pem, "--cert-file", paths["--cert-file"])[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"--key-file {paths['--key-file']} holds no unencrypted PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(f"--key-file {paths['--key-file']} is not the key of --cert-file {paths['--cert-file']}")
    return leaf


def _certificate_configuration(material: _Material):
    import grpc  # see the module docstring: not before use_cipher_suites

    return grpc.ssl_server_certificate_configuration([(material.key, material.chain)],
                                                      root_certificates=material.client_cas)


def auto_tls_files(config: ServeConfig) -> tuple[str, str]:
    """etcd's --auto-tls: the self-signed pair in <data-dir>/fixtures/client, made on first use."""
    directory = pathlib.Path(config.data_dir) / "fixtures" / "client"
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return str(cert_path), str(key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365 * config.self_signed_cert_validity))
        .add_extension(x509.SubjectAlternativeName(_subject_names(config)), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.touch(mode=0o600)
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    except OSError as e:
        raise ConfigError(f"--auto-tls: cannot write {directory}: {e.strerror}") from None
    return str(cert_path), str(key_path)


def _subject_names(config: ServeConfig) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for address in config.listen_addresses:
        host = address.rpartition(":")[0].strip("[]")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def server_credentials(config: ServeConfig):
    """The credentials of the https:// client URLs, reloading the certificate files when they change."""
    import grpc  # see the module docstring: not before use_cipher_suites

    cert_file, key_file = config.cert_file, config.key_file
    if not cert_file:
        cert_file, key_file = auto_tls_files(config)
    files = CertificateFiles(cert_file, key_file, config.trusted_ca_file or None)
    # Warnings only once the files are good: a refused start is one line.
    if not config.cert_file:
        logger.warning("serving the self-signed --auto-tls certificate (development only)",
                       extra={"cert_file": cert_file})
    elif config.auto_tls:
        logger.warning("ignoring --auto-tls since --cert-file and --key-file are given")
    return grpc.dynamic_ssl_server_credentials(files.initial_configuration(), files.fetch,
                                               require_client_authentication=config.requires_client_certificates)
