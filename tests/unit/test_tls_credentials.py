"""shim/tls.py and the TLS flags of shim/config.py: etcd's cipher names, certificate reloading,
--auto-tls certificates, and the flag combinations refused in one line.

The served TLS itself (etcdctl, rotation seen by a client) is tested end to end in tests/e2e/test_tls.py.
"""
from __future__ import annotations

import ipaddress
import os
import stat

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cosmos_etcd_shim import tls
from cosmos_etcd_shim.config import ConfigError, ServeConfig


# ------------------------------------------------------------------------------------------------
# --cipher-suites
# ------------------------------------------------------------------------------------------------

def test_cipher_suites_map_to_boringssl_names_in_order_without_repeats():
    suites = ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
              "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA")
    assert tls.cipher_list(suites) == "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:AES128-SHA"
    assert tls.cipher_list(()) == ""


@pytest.mark.parametrize("suites, message", [
    (("TLS_FOO",), "unexpected TLS cipher suite 'TLS_FOO'"),
    (("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "tls_ecdhe_rsa_with_aes_256_gcm_sha384"),
     "unexpected TLS cipher suite 'tls_ecdhe_rsa_with_aes_256_gcm_sha384'"),
    (("TLS_ECDHE_RSA_WITH_RC4_128_SHA",), "not available in gRPC's TLS library"),
    (("TLS_RSA_WITH_3DES_EDE_CBC_SHA",), "not available in gRPC's TLS library"),
    (("TLS_AES_256_GCM_SHA384",), "no TLS 1.2 cipher suite"),
])
def test_bad_cipher_suites(suites, message):
    with pytest.raises(ConfigError, match=message):
        tls.cipher_list(suites)


def test_cipher_suites_after_grpc_is_loaded_are_refused(monkeypatch):
    import grpc  # noqa: F401 - what the check looks for

    monkeypatch.delenv(tls.CIPHER_SUITES_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match="before gRPC is loaded"):
        tls.use_cipher_suites(ServeConfig(cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",)))
    monkeypatch.setenv(tls.CIPHER_SUITES_VARIABLE, "ECDHE-RSA-AES128-GCM-SHA256")  # what the cli set earlier
    tls.use_cipher_suites(ServeConfig(cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",)))


# ------------------------------------------------------------------------------------------------
# reloading
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def ca():
    return trustme.CA()


def write_pair(directory, ca, *hosts, name="server"):
    issued = ca.issue_cert(*hosts)
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def serial(chain: bytes) -> int:
    return x509.load_pem_x509_certificate(chain).serial_number


def replace(path: str, content: bytes) -> None:
    """Rotate a file as tools do: write aside, then rename over it."""
    aside = path + ".new"
    with open(aside, "wb") as f:
        f.write(content)
    os.replace(aside, path)


def test_unchanged_files_are_not_reloaded(tmp_path, ca):
    cert, key = write_pair(tmp_path, ca, "127.0.0.1")
    files = tls.CertificateFiles(cert, key, None)
    assert files.initial_configuration() is not None
    assert files.fetch() is None
    os.utime(cert)  # touched, same content
    assert files.fetch() is None


def test_rotated_pair_is_served_once_complete(tmp_path, ca):
    cert, key = write_pair(tmp_path, ca, "127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    files = tls.CertificateFiles(cert, key, str(tmp_path / "ca.pem"))
    first = serial(files.material.chain)
    new_cert, new_key = write_pair(tmp_path, ca, "127.0.0.1", "rotated.example", name="next")

    replace(cert, open(new_cert, "rb").read())  # the certificate first: it does not match the old key
    assert files.fetch() is None
    assert serial(files.material.chain) == first
    assert files.fetch() is None  # reported once, not re-read at every handshake

    replace(key, open(new_key, "rb").read())
    assert files.fetch() is not None
    assert serial(files.material.chain) != first
    assert files.material.client_cas == ca.cert_pem.bytes()
    assert files.fetch() is None


def test_a_trust_bundle_that_changes_alone_is_reloaded(tmp_path, ca):
    """A CA rotation changes only ca.crt at its first and last steps: a successor CA joins the
    bundle, later the old one leaves it. Each is served from the next handshake, the pair unchanged."""
    cert, key = write_pair(tmp_path, ca, "127.0.0.1")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    files = tls.CertificateFiles(cert, key, str(bundle))
    pair = serial(files.material.chain)
    successor = trustme.CA()

    replace(str(bundle), ca.cert_pem.bytes() + successor.cert_pem.bytes())
    assert files.fetch() is not None
    assert files.material.client_cas == ca.cert_pem.bytes() + successor.cert_pem.bytes()
    replace(str(bundle), successor.cert_pem.bytes())
    assert files.fetch() is not None
    assert files.material.client_cas == successor.cert_pem.bytes()
    assert serial(files.material.chain) == pair
    replace(str(bundle), b"not a certificate")  # a broken bundle keeps the last good one
    assert files.fetch() is None and files.material.client_cas == successor.cert_pem.bytes()


def test_vanished_or_broken_files_keep_the_last_good_pair(tmp_path, ca, caplog):
    cert, key = write_pair(tmp_path, ca, "127.0.0.1")
    files = tls.CertificateFiles(cert, key, None)
    good = files.material
    os.remove(key)
    assert files.fetch() is None
    assert files.fetch() is None
    replace(key, b"not a key")
    assert files.fetch() is None
    assert files.material == good
    warnings = [r for r in caplog.records if r.name == "cosmos_etcd_shim.tls" and r.levelname == "WARNING"]
    assert len(warnings) == 2, "each bad version is reported once, not at every handshake"


@pytest.mark.parametrize("breakage, message", [
    ("missing cert", "cannot read --cert-file"),
    ("garbage cert", "holds no PEM certificate"),
    ("garbage key", "holds no unencrypted PEM private key"),
    ("other key", "is not the key of --cert-file"),
    ("garbage ca", "--trusted-ca-file .* holds no PEM certificate"),
])
def test_unusable_files_at_startup(tmp_path, ca, breakage, message):
    cert, key = write_pair(tmp_path, ca, "127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    if breakage == "missing cert":
        os.remove(cert)
    elif breakage == "garbage cert":
        replace(cert, b"-----BEGIN CERTIFICATE-----\nnope\n")
    elif breakage == "garbage key":
        replace(key, b"nope")
    elif breakage == "other key":
        _, other_key = write_pair(tmp_path, ca, "127.0.0.1", name="other")
        replace(key, open(other_key, "rb").read())
    else:
        ca_file.write_bytes(b"nope")
    with pytest.raises(ConfigError, match=message):
        tls.CertificateFiles(cert, key, str(ca_file))


# ------------------------------------------------------------------------------------------------
# --auto-tls
# ------------------------------------------------------------------------------------------------

def test_auto_tls_makes_etcds_certificate_once(tmp_path):
    config = ServeConfig(data_dir=str(tmp_path / "data"), auto_tls=True, self_signed_cert_validity=2,
                         listen_client_urls=("https://127.0.0.1:2379", "https://localhost:2380"))
    cert_file, key_file = tls.auto_tls_files(config)
    assert cert_file == str(tmp_path / "data" / "fixtures" / "client" / "cert.pem")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(open(cert_file, "rb").read())
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "etcd"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert 729 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 731
    tls.CertificateFiles(cert_file, key_file, None)  # a matching pair

    before = open(cert_file, "rb").read()
    assert tls.auto_tls_files(config) == (cert_file, key_file)
    assert open(cert_file, "rb").read() == before  # kept across restarts, as etcd keeps it


# ------------------------------------------------------------------------------------------------
# flag combinations (ServeConfig)
# ------------------------------------------------------------------------------------------------

HTTPS = ("https://127.0.0.1:2379",)


@pytest.mark.parametrize("flags, message", [
    (dict(listen_client_urls=HTTPS),
     "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"),
    (dict(cert_file="c.pem"), "--cert-file and --key-file must be given together"),
    (dict(key_file="k.pem"), "--cert-file and --key-file must be given together"),
    (dict(listen_client_urls=HTTPS, auto_tls=True, client_cert_auth=True), "--client-cert-auth needs --trusted-ca-file"),
    (dict(listen_client_urls=("https://127.0.0.1:2379", "http://127.0.0.1:2379"), auto_tls=True),
     "one address cannot serve both http and https"),
    (dict(tls_min_version="TLS1.1"), "unexpected TLS version 'TLS1.1' (must be one of: TLS1.2, TLS1.3)"),
    (dict(tls_max_version="tls1.3"), "unexpected TLS version 'tls1.3'"),
    (dict(tls_min_version="TLS1.3", tls_max_version="TLS1.2"), "min version (TLS1.3) is greater than max version (TLS1.2)"),
    (dict(tls_min_version="TLS1.3", cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",)),
     "cipher suites cannot be configured when only TLS1.3 is enabled"),
    (dict(tls_min_version="TLS1.3"), "gRPC for Python cannot restrict"),
    (dict(tls_max_version="TLS1.2"), "gRPC for Python cannot restrict"),
    (dict(self_signed_cert_validity=0), "--self-signed-cert-validity must be positive"),
    (dict(listen_metrics_urls=("https://127.0.0.1:2381",)), "expected a URL like http://"),
    (dict(max_concurrent_streams=0), "--max-concurrent-streams must be positive"),
    (dict(max_watchers_per_stream=-1), "--max-watchers-per-stream must be positive"),
    (dict(max_range_keys=0), "--max-range-keys must be positive"),
])
def test_refused_flag_combinations(flags, message):
    with pytest.raises(ConfigError) as refused:
        ServeConfig(**flags)
    assert message in str(refused.value)


def test_client_certificates_are_required_as_in_etcd():
    assert not ServeConfig().requires_client_certificates
    assert ServeConfig(trusted_ca_file="ca.pem").requires_client_certificates  # etcd: the CA alone requires them
    assert ServeConfig(trusted_ca_file="ca.pem", client_cert_auth=True).requires_client_certificates


def test_default_advertised_url_follows_tls():
    assert ServeConfig().advertise_client_urls == ("http://localhost:2379",)
    assert ServeConfig(listen_client_urls=HTTPS, auto_tls=True).advertise_client_urls == ("https://localhost:2379",)
    given = ("https://10.0.0.5:2379",)
    assert ServeConfig(listen_client_urls=HTTPS, auto_tls=True, advertise_client_urls=given).advertise_client_urls == given
    mixed = ServeConfig(listen_client_urls=("https://127.0.0.1:2379", "http://127.0.0.1:2380"), auto_tls=True)
    assert mixed.tls_addresses == ["127.0.0.1:2379"]
