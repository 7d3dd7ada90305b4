"""TLS on the client listener: the real etcdctl over TLS and mutual TLS against the shim and a real
etcd 3.5.1 started with the same flags, certificate rotation without a restart, --auto-tls,
--cipher-suites, and one-line errors for TLS flags that cannot work.

Certificates come from `trustme` CAs. Where both servers can answer, every etcdctl command runs on
both and the exit codes and outputs (etcdctl's last error line for failures) must be equal.
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import ssl
import subprocess
import urllib.request

import grpc
import pytest
import trustme
from cryptography import x509

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from tests.harness import processes
from tests.harness.tls_files import SecretVolume, served_certificate

from .conftest import shim_only
from .test_cli import assert_one_line_error, run_shim, serve_args
from .test_etcdctl import ETCDCTL, ctl_env

pytestmark = shim_only

FAST = ["--dial-timeout=2s", "--command-timeout=4s"]  # refusals fail at the deadline: keep it short


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two CAs; a server certificate for 127.0.0.1 and a client certificate (CN alice) from the first,
    and a client certificate from the second."""
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(d / "other-ca.pem"))
    write_pair(ca.issue_cert("127.0.0.1", "localhost"), d / "server.pem", d / "server-key.pem")
    write_pair(ca.issue_cert("alice", common_name="alice"), d / "client.pem", d / "client-key.pem")
    write_pair(other_ca.issue_cert("mallory", common_name="mallory"), d / "other-client.pem", d / "other-client-key.pem")
    return d


def write_pair(issued: trustme.LeafCert, cert: pathlib.Path, key: pathlib.Path) -> None:
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))


def credentials(ca: pathlib.Path, cert: pathlib.Path | None = None, key: pathlib.Path | None = None):
    """Readiness-probe credentials for processes.start_*."""
    def make():
        return grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                            cert.read_bytes() if cert else None)
    return make


def server_flags(pki: pathlib.Path) -> list[str]:
    return ["--cert-file", str(pki / "server.pem"), "--key-file", str(pki / "server-key.pem")]


def mtls_flags(pki: pathlib.Path) -> list[str]:
    return [*server_flags(pki), "--trusted-ca-file", str(pki / "ca.pem"), "--client-cert-auth"]


def client_flags(pki: pathlib.Path, who: str = "client", ca: str = "ca") -> list[str]:
    return [f"--cacert={pki / f'{ca}.pem'}", f"--cert={pki / f'{who}.pem'}", f"--key={pki / f'{who}-key.pem'}"]


def ctl(server: processes.Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ETCDCTL, f"--endpoints={server.url}", *args], capture_output=True, text=True,
                          timeout=60, env=ctl_env())


def outcome(r: subprocess.CompletedProcess) -> tuple[int, str]:
    """The exit code and stdout, or for a failure etcdctl's error line (its client log lines vary)."""
    if r.returncode == 0:
        return 0, r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    return r.returncode, errors[-1] if errors else r.stderr


def same_on_both(etcd, shim, *args: str) -> tuple[int, str]:
    expected, got = outcome(ctl(etcd, *args)), outcome(ctl(shim, *args))
    assert got == expected, f"etcdctl {' '.join(args)}\n  etcd: {expected}\n  shim: {got}"
    return got


@contextlib.contextmanager
def both(tmp_path: pathlib.Path, flags: list[str], probe):
    """etcd and the shim on https:// client URLs with the same flags; stopped on exit."""
    with processes.running(processes.start_etcd(tmp_path / "etcd", flags, scheme="https", credentials=probe)) as etcd, \
            processes.running(processes.start_shim(tmp_path / "shim", extra_args=flags, scheme="https",
                                                   credentials=probe)) as shim:
        yield etcd, shim


@pytest.fixture(scope="module")
def tls_pair(pki, tmp_path_factory):
    with both(tmp_path_factory.mktemp("tls"), server_flags(pki), credentials(pki / "ca.pem")) as servers:
        yield servers


@pytest.fixture(scope="module")
def mtls_pair(pki, tmp_path_factory):
    with both(tmp_path_factory.mktemp("mtls"), mtls_flags(pki),
              credentials(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")) as servers:
        yield servers


# ------------------------------------------------------------------------------------------------
# server TLS and mutual TLS, compared with etcd
# ------------------------------------------------------------------------------------------------

def test_etcdctl_over_tls(tls_pair, pki):
    etcd, shim = tls_pair
    ca = f"--cacert={pki / 'ca.pem'}"
    assert same_on_both(etcd, shim, ca, "put", "tls/a", "1") == (0, "OK\n")
    assert same_on_both(etcd, shim, ca, "get", "tls/a") == (0, "tls/a\n1\n")
    assert same_on_both(etcd, shim, ca, "del", "tls/a") == (0, "1\n")
    for side in (etcd, shim):
        assert json.loads(ctl(side, ca, "endpoint", "health", "-w", "json").stdout)[0]["health"] is True
    # without the CA the client does not trust the server; an other CA neither
    rc, error = same_on_both(etcd, shim, *FAST, "get", "tls/a")
    assert rc != 0 and "deadline exceeded" in error
    assert same_on_both(etcd, shim, *FAST, f"--cacert={pki / 'other-ca.pem'}", "get", "tls/a")[0] != 0
    # a client certificate is not needed, and not refused either
    assert same_on_both(etcd, shim, *client_flags(pki), "get", "tls/a") == (0, "")


def test_member_list_advertises_https(tls_pair, pki):
    _, shim = tls_pair
    r = ctl(shim, f"--cacert={pki / 'ca.pem'}", "member", "list", "-w", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["members"][0]["clientURLs"] == [shim.url]


def test_etcdctl_over_mutual_tls(mtls_pair, pki):
    etcd, shim = mtls_pair
    assert same_on_both(etcd, shim, *client_flags(pki), "put", "mtls/a", "1") == (0, "OK\n")
    assert same_on_both(etcd, shim, *client_flags(pki), "get", "mtls/a", "--print-value-only") == (0, "1\n")
    # no client certificate, or one from a CA the server does not trust: refused
    rc, error = same_on_both(etcd, shim, *FAST, f"--cacert={pki / 'ca.pem'}", "get", "mtls/a")
    assert rc != 0 and "deadline exceeded" in error
    rc, error = same_on_both(etcd, shim, *FAST, *client_flags(pki, "other-client"), "put", "mtls/b", "2")
    assert rc != 0 and "deadline exceeded" in error
    assert same_on_both(etcd, shim, *client_flags(pki), "get", "mtls/b") == (0, "")  # nothing was written


def test_plain_http_is_refused_by_a_tls_listener(mtls_pair):
    _, shim = mtls_pair
    with grpc.insecure_channel(shim.endpoint) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"mtls/a"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------------------------------------
# rotation without a restart
# ------------------------------------------------------------------------------------------------

def pem_files(server: trustme.LeafCert, ca: trustme.CA) -> dict[str, bytes]:
    return {"tls.crt": server.cert_chain_pems[0].bytes(), "tls.key": server.private_key_pem.bytes(),
            "ca.crt": ca.cert_pem.bytes()}


def test_rotated_certificate_is_served_without_restart(tmp_path, pki):
    first_ca, second_ca = trustme.CA(), trustme.CA()
    client_dir = tmp_path / "clients"
    client_dir.mkdir()
    for name, ca in (("first", first_ca), ("second", second_ca)):
        ca.cert_pem.write_to_path(str(client_dir / f"{name}-ca.pem"))
        write_pair(ca.issue_cert(f"{name}-client"), client_dir / f"{name}.pem", client_dir / f"{name}-key.pem")
    volume = SecretVolume(tmp_path / "secret")
    volume.publish(pem_files(first_ca.issue_cert("127.0.0.1"), first_ca))
    flags = ["--cert-file", volume.path("tls.crt"), "--key-file", volume.path("tls.key"),
             "--trusted-ca-file", volume.path("ca.crt"), "--client-cert-auth"]
    shim = processes.start_shim(tmp_path / "shim", extra_args=flags, scheme="https",
                                credentials=credentials(client_dir / "first-ca.pem", client_dir / "first.pem",
                                                        client_dir / "first-key.pem"))
    try:
        first = served_certificate(shim.endpoint)
        assert ctl(shim, *client_flags(client_dir, "first", "first-ca"), "put", "rot/a", "1").returncode == 0

        volume.publish(pem_files(second_ca.issue_cert("127.0.0.1", "rotated.example"), second_ca))
        second = served_certificate(shim.endpoint)
        assert second.serial_number != first.serial_number
        assert "rotated.example" in second.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        # the new CA verifies the server and is the one client certificates must chain to now
        r = ctl(shim, *client_flags(client_dir, "second", "second-ca"), "get", "rot/a", "--print-value-only")
        assert (r.returncode, r.stdout) == (0, "1\n"), r.stderr
        r = ctl(shim, *FAST, *client_flags(client_dir, "first", "second-ca"), "get", "rot/a")
        assert r.returncode != 0
        assert shim.process.poll() is None  # the same process all along

        # a broken publication (a key that is not the certificate's) keeps the last good pair
        broken = pem_files(second_ca.issue_cert("127.0.0.1"), second_ca)
        broken["tls.key"] = second_ca.issue_cert("127.0.0.1").private_key_pem.bytes()
        volume.publish(broken)
        assert served_certificate(shim.endpoint).serial_number == second.serial_number
        assert "cannot be used" in shim.log()
    finally:
        shim.stop()


# ------------------------------------------------------------------------------------------------
# --auto-tls, --cipher-suites, the metrics listener
# ------------------------------------------------------------------------------------------------

INSECURE = ["--insecure-skip-tls-verify", "--insecure-transport=false"]  # etcdctl 3.5 needs both


def etcd_argv(data_dir: pathlib.Path, client: int, *flags: str) -> list[str]:
    peer = processes.free_port()
    return [str(processes.ETCD), "--data-dir", str(data_dir), "--log-level", "error",
            "--listen-client-urls", f"https://127.0.0.1:{client}", "--advertise-client-urls", f"https://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}", *flags]


def start_etcd_with_auto_tls(workdir: pathlib.Path) -> processes.Server:
    """etcd's --auto-tls certificate is ECDSA P-521, which gRPC's C-core clients (the harness's
    readiness probe) cannot verify: readiness is polled with etcdctl instead."""
    workdir.mkdir()
    client = processes.free_port()
    argv = etcd_argv(workdir / "data", client, "--auto-tls")
    log_path = workdir / "etcd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = processes.Server("etcd", f"127.0.0.1:{client}", workdir / "data", process, log_path, argv, scheme="https")
    for _ in range(60):
        if ctl(server, *INSECURE, *FAST, "endpoint", "health").returncode == 0:
            return server
        assert process.poll() is None, server.log()
    server.stop()
    raise TimeoutError(f"etcd --auto-tls not healthy:\n{server.log()}")


def test_auto_tls(tmp_path):
    metrics_port = processes.free_port()
    shim_flags = ["--auto-tls", "--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}"]
    probe = credentials(tmp_path / "shim" / "shim.data" / "fixtures" / "client" / "cert.pem")
    with processes.running(start_etcd_with_auto_tls(tmp_path / "etcd")) as etcd, \
            processes.running(processes.start_shim(tmp_path / "shim", extra_args=shim_flags, scheme="https",
                                                   credentials=probe)) as shim:
        assert same_on_both(etcd, shim, *INSECURE, "put", "auto/a", "1") == (0, "OK\n")
        assert same_on_both(etcd, shim, *INSECURE, "get", "auto/a", "--print-value-only") == (0, "1\n")
        # a self-signed certificate: clients that verify cannot trust it
        assert same_on_both(etcd, shim, *FAST, "get", "auto/a")[0] != 0
        for side in (etcd, shim):
            cert = x509.load_pem_x509_certificate((side.data_dir / "fixtures" / "client" / "cert.pem").read_bytes())
            assert served_certificate(side.endpoint) == cert
        # /metrics stays plain http
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            assert b"cosmos_etcd_grpc_requests_total" in answer.read()


def tls12_handshake(endpoint: str, cipher: str) -> str | None:
    """The cipher a TLS 1.2 client offering only `cipher` (OpenSSL name) gets, or None if refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    context.set_alpn_protocols(["h2"])
    host, port = endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as conn:
            return conn.cipher()[0]
    except (ssl.SSLError, ConnectionError):
        return None


def test_cipher_suites(tmp_path, pki):
    # etcd (Go's HTTP/2 server) insists on an AES_128_GCM_SHA256 suite in the list
    flags = [*server_flags(pki), "--cipher-suites",
             "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"]
    with both(tmp_path, flags, credentials(pki / "ca.pem")) as (etcd, shim):
        offered = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-GCM-SHA384"]
        expected = {cipher: tls12_handshake(etcd.endpoint, cipher) for cipher in offered}
        assert expected == {"ECDHE-ECDSA-AES128-GCM-SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
                            "ECDHE-ECDSA-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
                            "ECDHE-ECDSA-AES256-GCM-SHA384": None}
        assert {cipher: tls12_handshake(shim.endpoint, cipher) for cipher in offered} == expected
        assert same_on_both(etcd, shim, f"--cacert={pki / 'ca.pem'}", "put", "cipher/a", "1") == (0, "OK\n")


# ------------------------------------------------------------------------------------------------
# flags that cannot work: one line, and a refusal from etcd too where it has the flag
# ------------------------------------------------------------------------------------------------

def etcd_refuses(tmp_path: pathlib.Path, *flags: str) -> bool:
    argv = etcd_argv(tmp_path / "etcd", processes.free_port(), *flags)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        return process.wait(20) != 0
    except subprocess.TimeoutExpired:
        processes.stop_process(process)
        return False


def https_args(tmp_path: pathlib.Path, *flags: str) -> list[str]:
    port = processes.free_port()
    args = serve_args(tmp_path / "data", port, *flags)
    return [a.replace("http://", "https://") for a in args]


@pytest.mark.parametrize("flags, mentions, etcd_too", [
    ([], "must be provided for client url", True),
    (["--cert-file", "{pki}/server.pem"], "must be given together", False),
    (["--cert-file", "{pki}/missing.pem", "--key-file", "{pki}/server-key.pem"], "cannot read --cert-file", True),
    (["--cert-file", "{pki}/server.pem", "--key-file", "{pki}/client-key.pem"], "is not the key of --cert-file", True),
    (["--auto-tls", "--cipher-suites", "TLS_FOO"], "unexpected TLS cipher suite", True),
    (["--auto-tls", "--cipher-suites", "TLS_ECDHE_RSA_WITH_RC4_128_SHA"], "not available", False),
    (["--auto-tls", "--tls-min-version", "TLS1.1"], "unexpected TLS version", False),
    (["--auto-tls", "--tls-max-version", "TLS1.2"], "cannot restrict", False),
    (["--auto-tls", "--client-cert-auth"], "needs --trusted-ca-file", False),
    (["--cert-file", "{pki}/server.pem", "--key-file", "{pki}/server-key.pem", "--trusted-ca-file",
      "{pki}/server-key.pem"], "holds no PEM certificate", True),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_bad_tls_flags(tmp_path, pki, flags, mentions, etcd_too):
    flags = [f.format(pki=pki) for f in flags]
    assert_one_line_error(run_shim(https_args(tmp_path, *flags), cwd=tmp_path), mentions)
    if etcd_too:  # etcd 3.5.1 has no --tls-*-version and knows no BoringSSL; where it can, it refuses as well
        assert etcd_refuses(tmp_path, *flags)
