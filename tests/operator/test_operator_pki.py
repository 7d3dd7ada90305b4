"""Managed TLS (operator/pki.py) with real TLS peers: the part issues its Secrets through the
Kubernetes API (kmock), a real shim process serves the server Secret's files with the Deployment's
TLS flags, and real clients (etcdctl, Go's TLS; gRPC's C core) use the three files of
``<name>-etcd-client``.

Time is injected: the part takes ``now``. Certificates must be valid at the real time of the
handshakes, so a test starts its clock in the past with short lifetimes and moves it up to the
present (or an hour past it, for a step that issues nothing).

Secrets reach the shim and the clients as the kubelet mounts them (:class:`SecretVolume`: one atomic
swap per update), published in the order that makes each step hardest for the overlap.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import pathlib
import urllib.request

import grpc
import kubernetes_validate
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cosmos_etcd_operator import children, pki
from cosmos_etcd_operator.kubeapi import Kube, load_configuration
from cosmos_etcd_operator.spec import InvalidSpec, TLSMode, parse
from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from tests.harness import arm, processes
from tests.harness.kube import CLUSTERS, DEPLOYMENTS, EVENTS, SECRETS
from tests.harness.operator import NAMESPACE, ClusterDriver
from tests.harness.tls_files import SecretVolume, served_certificate
from tests.operator.test_operator_children import KUBERNETES_VERSION

NAME = "tenant-a"
AZURE = {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "location": "westeurope"}
# 127.0.0.1 as an extra name: etcdctl (Go) checks the address it dials against the certificate.
SPEC = {"azure": AZURE, "account": {"name": "tenant-a-etcd"}, "shim": {"tls": {"extraNames": ["127.0.0.1"]}}}
SERVICE_NAME = f"{NAME}.{NAMESPACE}.svc"
# For the tests that run the whole operator (against the ARM stand-in).
OPERATOR_SPEC = {
    "azure": {"subscriptionId": arm.SUBSCRIPTION, "resourceGroup": arm.RESOURCE_GROUP, "location": "westeurope",
              "credentials": {"servicePrincipalSecretRef": {"name": "azure-sp"}}},
    "account": {"name": "tenant-a-etcd"},
}
DAY, HOUR = datetime.timedelta(days=1), datetime.timedelta(hours=1)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ManagedCluster:
    """One CosmosEtcdCluster's TLS part, run at chosen times, and its Secrets as files."""

    def __init__(self, kube_api, owner: dict, policy: pki.Policy, root: pathlib.Path):
        self.kube_api, self.owner, self.policy = kube_api, owner, policy
        self.spec = parse(owner["spec"], name=NAME)
        self.kube = Kube(load_configuration())
        self.server = SecretVolume(root / "server")  # what the shim's pods mount
        self.client = SecretVolume(root / "client")  # what kube-apiserver's files are
        self.outcomes: list[pki.Outcome] = []

    async def reconcile(self, now: datetime.datetime) -> pki.Outcome:
        outcome = await pki.reconcile(self.kube, self.owner, self.spec.shim.tls, {}, policy=self.policy, now=now)
        self.outcomes.append(outcome)
        return outcome

    def secret(self, name: str) -> dict:
        return self.kube_api.get(SECRETS, NAMESPACE, name)

    def files(self, name: str) -> dict[str, bytes]:
        return {key: base64.b64decode(value) for key, value in self.secret(name)["data"].items()}

    def certificate(self, name: str, key: str = "tls.crt") -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.files(name)[key])

    def bundle(self, name: str) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.files(name)["ca.crt"])

    def publish_server(self) -> None:
        self.server.publish_secret(self.secret(pki.server_secret_name(NAME)))

    def publish_client(self) -> None:
        self.client.publish_secret(self.secret(pki.client_secret_name(NAME)))

    def shim_tls_flags(self) -> list[str]:
        """The TLS flags of the Deployment the operator renders, with the mount at the volume."""
        deployment = children.deployment(self.owner, self.spec, image="i", account_endpoint="https://a/",
                                         keys_digest="d", tls=self.outcomes[-1].serving)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[args.index("--listen-client-urls") + 1] == "https://0.0.0.0:2379"
        [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == pki.server_secret_name(NAME)
        flags = args[args.index("--cert-file"):]
        return [flag.replace(children.TLS_DIR, str(self.server.root)) for flag in flags]

    def start_shim(self, workdir: pathlib.Path) -> processes.Server:
        return processes.start_shim(workdir, extra_args=self.shim_tls_flags(), scheme="https",
                                    credentials=lambda: client_credentials(self.client))


def client_credentials(volume: SecretVolume) -> grpc.ChannelCredentials:
    """kube-apiserver's --etcd-cafile, --etcd-certfile and --etcd-keyfile, as they are now."""
    return grpc.ssl_channel_credentials(volume.read("ca.crt"), volume.read("tls.key"), volume.read("tls.crt"))


def channel(endpoint: str, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    """A channel of its own (no shared subchannel): a new connection, a new TLS handshake."""
    return grpc.aio.secure_channel(endpoint, credentials, options=[("grpc.use_local_subchannel_pool", 1),
                                                                   ("grpc.ssl_target_name_override", SERVICE_NAME)])


async def put_and_get(endpoint: str, credentials: grpc.ChannelCredentials, key: bytes) -> bytes:
    async with channel(endpoint, credentials) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        await kv.Put(rpc_pb2.PutRequest(key=key, value=key), timeout=10)
        return (await kv.Range(rpc_pb2.RangeRequest(key=key), timeout=10)).kvs[0].value


def etcdctl(shim: processes.Server, *flags: str) -> tuple[int, str]:
    # Refusals end at the deadline: keep it short (the last --command-timeout given counts).
    result = processes.etcdctl(shim.url, ["--dial-timeout=2s", "--command-timeout=3s", *flags, "get", "probe",
                                          "--print-value-only"])
    return result.returncode, result.stdout + result.stderr


def client_flags(volume: SecretVolume) -> list[str]:
    return [f"--cacert={volume.path('ca.crt')}", f"--cert={volume.path('tls.crt')}", f"--key={volume.path('tls.key')}"]


@pytest.fixture
async def managed(kube_api, tmp_path):
    """A fresh cluster (no status: Managed) with lifetimes short enough to step through."""
    clusters: list[ManagedCluster] = []

    async def make(policy: pki.Policy) -> ManagedCluster:
        owner = await kube_api.put_object(CLUSTERS, ClusterDriver.manifest(NAME, NAMESPACE, SPEC))
        clusters.append(ManagedCluster(kube_api, owner, policy, tmp_path))
        return clusters[-1]
    yield make
    for cluster in clusters:
        cluster.kube.close()


# -- what is issued ------------------------------------------------------------------------------------

async def test_issued_secrets_are_what_kube_apiserver_and_a_careful_ca_need(managed):
    cluster = await managed(pki.Policy())
    now = utc_now()
    outcome = await cluster.reconcile(now)
    assert (outcome.condition.type, outcome.condition.status, outcome.condition.reason) == ("TLS", "True", "Managed")
    assert outcome.serving == children.ServingTLS("tenant-a-etcd-server", client_cert_auth=True)
    assert outcome.status["mode"] == "Managed" and outcome.status["clientSecret"] == "tenant-a-etcd-client"
    assert outcome.events == ()  # a first issue is no news; the condition says it

    for name in ("tenant-a-etcd-ca", "tenant-a-etcd-server", "tenant-a-etcd-client"):
        kubernetes_validate.validate(cluster.secret(name), KUBERNETES_VERSION, strict=True)
    client = cluster.secret("tenant-a-etcd-client")
    assert client["type"] == "kubernetes.io/tls" and set(client["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert client["metadata"]["ownerReferences"][0]["uid"] == cluster.owner["metadata"]["uid"]
    [ca] = cluster.bundle("tenant-a-etcd-client")
    assert cluster.bundle("tenant-a-etcd-server") == [ca] == [cluster.certificate("tenant-a-etcd-ca")]

    # The CA: ten years, P-256, a CA for leaves only.
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(True, 0)
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.not_valid_after_utc - now == pki.Policy().ca_lifetime - datetime.timedelta(microseconds=now.microsecond)

    server, client_cert = cluster.certificate("tenant-a-etcd-server"), cluster.certificate("tenant-a-etcd-client")
    for leaf in (server, client_cert):
        leaf.verify_directly_issued_by(ca)
        assert leaf.public_key().curve.name == "secp256r1"
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime == pki.Policy().leaf_lifetime + pki.BACKDATE
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "tenant-a", "tenant-a.control-planes", "tenant-a.control-planes.svc",
        "tenant-a.control-planes.svc.cluster.local"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # The replicas present the server certificate to one another on the peer listener, too.
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    assert client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert client_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kube-apiserver"

    # A second pass with nothing due writes nothing.
    versions = {name: len(cluster.kube_api.history(SECRETS, NAMESPACE, name)) for name in
                ("tenant-a-etcd-ca", "tenant-a-etcd-server", "tenant-a-etcd-client")}
    await cluster.reconcile(now + HOUR)
    assert {name: len(cluster.kube_api.history(SECRETS, NAMESPACE, name)) for name in versions} == versions


async def test_a_changed_name_or_common_name_issues_again_from_the_same_ca(managed):
    cluster = await managed(pki.Policy())
    now = utc_now()
    await cluster.reconcile(now)
    ca, server = cluster.certificate("tenant-a-etcd-ca"), cluster.certificate("tenant-a-etcd-server")
    cluster.spec = parse({**SPEC, "shim": {"tls": {"extraNames": ["etcd.example.com"],
                                                   "clientCommonName": "apiserver-b"}}}, name=NAME)
    outcome = await cluster.reconcile(now + HOUR)
    assert sorted(reason for _, reason, _ in outcome.events) == ["CertificateIssued", "CertificateIssued"]
    renewed = cluster.certificate("tenant-a-etcd-server")
    assert renewed.serial_number != server.serial_number and cluster.certificate("tenant-a-etcd-ca") == ca
    assert "etcd.example.com" in renewed.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert cluster.certificate("tenant-a-etcd-client").subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)[0].value == "apiserver-b"


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
async def test_a_lost_ca_is_replaced_loudly_and_every_certificate_follows(managed, kube_api, damage):
    cluster = await managed(pki.Policy())
    now = utc_now()
    await cluster.reconcile(now)
    old_ca = cluster.certificate("tenant-a-etcd-ca")
    if damage == "deleted":
        await kube_api.delete_object(SECRETS, NAMESPACE, "tenant-a-etcd-ca")
    else:
        await kube_api.patch_object(SECRETS, NAMESPACE, "tenant-a-etcd-ca",
                                    {"data": {"tls.key": base64.b64encode(b"not a key").decode()}})
    outcome = await cluster.reconcile(now + HOUR)
    [(kind, reason, message)] = [event for event in outcome.events if event[1] == "CAReplaced"]
    assert kind == "Warning" and "tenant-a-etcd-client" in message
    [new_ca] = cluster.bundle("tenant-a-etcd-client")
    assert new_ca != old_ca and cluster.certificate("tenant-a-etcd-ca") == new_ca
    for name in ("tenant-a-etcd-server", "tenant-a-etcd-client"):
        cluster.certificate(name).verify_directly_issued_by(new_ca)
        assert cluster.bundle(name) == [new_ca]


@pytest.mark.parametrize("tls, message", [
    ({"mode": "Managed", "clientCertAuth": False}, "clientCertAuth: false is only for mode Secret"),
    ({"extraNames": ["Not A Name"]}, "extraNames must be a list of DNS names or IP addresses"),
    ({"secretName": "mine", "extraNames": ["a.example"]}, "only apply to mode Managed"),
    ({"mode": "Disabled", "clientCommonName": "x"}, "only apply to mode Managed"),
    ({"clientCommonName": "x" * 65}, "clientCommonName must be 1-64 printable characters"),
])
def test_contradictory_tls_specs_are_refused(tls, message):
    with pytest.raises(InvalidSpec, match=message):
        parse({"azure": AZURE, "shim": {"tls": tls}}, name=NAME)


@pytest.mark.parametrize("tls, status, expected", [
    ({}, {}, (TLSMode.MANAGED, False)),  # a new object
    ({}, {"endpoint": "http://tenant-a.control-planes.svc:2379"}, (TLSMode.DISABLED, False)),  # served before
    ({}, {"tls": {"mode": "Managed"}, "endpoint": "http://x"}, (TLSMode.MANAGED, False)),  # recorded wins
    ({"secretName": "mine"}, {"endpoint": "http://x"}, (TLSMode.SECRET, True)),  # as before the mode existed
    ({"mode": "Managed"}, {"endpoint": "http://x", "tls": {"mode": "Disabled"}}, (TLSMode.MANAGED, True)),
])
def test_mode_in_effect(tls, status, expected):
    assert pki.mode_in_effect(parse({"azure": AZURE, "shim": {"tls": tls}}, name=NAME).shim.tls, status) == expected


# -- a real shim, real clients -------------------------------------------------------------------------

async def test_client_secret_connects_and_other_clients_are_refused(managed, kube_api, tmp_path):
    cluster = await managed(pki.Policy())
    await cluster.reconcile(utc_now())
    cluster.publish_server()
    cluster.publish_client()
    stranger_ca = trustme.CA()
    stranger = SecretVolume(tmp_path / "stranger")
    stranger_leaf = stranger_ca.issue_cert("kube-apiserver", common_name="kube-apiserver")
    stranger.publish({"ca.crt": cluster.client.read("ca.crt"), "tls.crt": stranger_leaf.cert_chain_pems[0].bytes(),
                      "tls.key": stranger_leaf.private_key_pem.bytes()})
    shim = cluster.start_shim(tmp_path / "shim")
    try:
        # gRPC's C core (Python) and Go's TLS (etcdctl, as kube-apiserver) with the three files.
        assert await put_and_get(shim.endpoint, client_credentials(cluster.client), b"probe") == b"probe"
        assert etcdctl(shim, *client_flags(cluster.client)) == (0, "probe\n")
        # No client certificate: refused. A certificate of another CA: refused.
        code, output = etcdctl(shim, f"--cacert={cluster.client.path('ca.crt')}")
        assert code != 0 and "probe" not in output
        code, output = etcdctl(shim, *client_flags(stranger))
        assert code != 0 and "probe" not in output
        for credentials in (grpc.ssl_channel_credentials(cluster.client.read("ca.crt")), client_credentials(stranger)):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await put_and_get(shim.endpoint, credentials, b"refused")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The server's certificate does not verify against another CA either.
        stranger.publish({"ca.crt": stranger_ca.cert_pem.bytes(), "tls.crt": cluster.client.read("tls.crt"),
                          "tls.key": cluster.client.read("tls.key")})
        code, _ = etcdctl(shim, *client_flags(stranger))
        assert code != 0
        assert_no_private_key(shim.log(), kube_api)
    finally:
        shim.stop()


async def test_the_client_certificates_common_name_is_the_etcd_user(managed, kube_api, tmp_path):
    """kube-apiserver has no etcd password: with auth on, its requests are the user its CN names."""
    cluster = await managed(pki.Policy())
    cluster.spec = parse({**SPEC, "shim": {"tls": {"extraNames": ["127.0.0.1"], "clientCommonName": "tenant-a"}}},
                         name=NAME)
    await cluster.reconcile(utc_now())
    cluster.publish_server()
    cluster.publish_client()
    shim = cluster.start_shim(tmp_path / "shim")
    try:
        def ctl(*args: str) -> tuple[int, str]:
            result = processes.etcdctl(shim.url, [*client_flags(cluster.client), *args])
            return result.returncode, result.stdout + result.stderr
        for command in (["user", "add", "root", "--new-user-password=rootpw"], ["user", "grant-role", "root", "root"],
                        ["role", "add", "tenant-a"],
                        ["role", "grant-permission", "tenant-a", "readwrite", "/tenant-a/", "--prefix"],
                        ["user", "add", "tenant-a", "--no-password"], ["user", "grant-role", "tenant-a", "tenant-a"],
                        ["auth", "enable"]):
            assert ctl(*command)[0] == 0, command
        assert ctl("put", "/tenant-a/registry/x", "1") == (0, "OK\n")
        code, output = ctl("get", "/tenant-b/", "--prefix")
        assert code != 0 and "permission denied" in output
    finally:
        shim.stop()


async def test_renewal_replaces_the_server_certificate_under_an_open_client(managed, kube_api, tmp_path):
    policy = pki.Policy(leaf_lifetime=3 * DAY)
    cluster = await managed(policy)
    start = utc_now() - 2 * DAY - 12 * HOUR  # leaves valid until 12 hours from now, due since 12 hours ago
    await cluster.reconcile(start)
    cluster.publish_server()
    cluster.publish_client()
    shim = cluster.start_shim(tmp_path / "shim")
    try:
        first = served_certificate(shim.endpoint)
        assert first.serial_number == cluster.certificate("tenant-a-etcd-server").serial_number
        async with channel(shim.endpoint, client_credentials(cluster.client)) as open_channel:
            kv = rpc_pb2_grpc.KVStub(open_channel)
            await kv.Put(rpc_pb2.PutRequest(key=b"open", value=b"1"), timeout=10)

            outcome = await cluster.reconcile(utc_now())
            assert [(kind, reason) for kind, reason, _ in outcome.events] == [
                ("Normal", "CertificateIssued"), ("Normal", "CertificateIssued")]
            assert all("due for renewal" in message for _, _, message in outcome.events)
            renewed = cluster.certificate("tenant-a-etcd-server")
            assert renewed.serial_number != first.serial_number
            cluster.publish_server()

            # A new connection is served the new certificate; the open one keeps working.
            assert served_certificate(shim.endpoint).serial_number == renewed.serial_number
            await kv.Put(rpc_pb2.PutRequest(key=b"open", value=b"2"), timeout=10)
            assert (await kv.Range(rpc_pb2.RangeRequest(key=b"open"), timeout=10)).kvs[0].value == b"2"
        # The renewed client certificate works, and so does the old one until it expires (same CA).
        old_client = SecretVolume(tmp_path / "old-client")
        old_client.publish({name: cluster.client.read(name) for name in ("ca.crt", "tls.crt", "tls.key")})
        cluster.publish_client()
        assert await put_and_get(shim.endpoint, client_credentials(cluster.client), b"new") == b"new"
        assert await put_and_get(shim.endpoint, client_credentials(old_client), b"old") == b"old"
        assert shim.process.poll() is None  # the same process all along
        assert_no_private_key(shim.log(), kube_api)
    finally:
        shim.stop()


class RequestLoop:
    """A client issuing requests one after another, each on a new connection with the client files
    as they are at that moment (a client that reloads them, or a restarted kube-apiserver)."""

    def __init__(self, endpoint: str, volume: SecretVolume):
        self.endpoint, self.volume = endpoint, volume
        self.done, self.failures = 0, []
        self._progress = asyncio.Condition()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "RequestLoop":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            key = f"loop/{self.done}".encode()
            try:
                assert await put_and_get(self.endpoint, client_credentials(self.volume), key) == key
            except (grpc.aio.AioRpcError, AssertionError) as e:
                self.failures.append(repr(e))
            async with self._progress:
                self.done += 1
                self._progress.notify_all()

    async def requests(self, count: int) -> None:
        """Until ``count`` more requests have been made."""
        target = self.done + count
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.done >= target), 60)


async def test_ca_rotation_completes_with_no_failed_request(managed, kube_api, tmp_path):
    policy = pki.Policy(ca_lifetime=3 * DAY, leaf_lifetime=3 * DAY, overlap=HOUR)
    cluster = await managed(policy)
    present = utc_now()
    start = present - 2 * DAY - HOUR  # the CA (and the leaves) fall due an hour ago
    await cluster.reconcile(start)
    old_ca = cluster.certificate("tenant-a-etcd-ca")
    cluster.publish_server()
    cluster.publish_client()
    old_client = SecretVolume(tmp_path / "old-client")
    old_client.publish({name: cluster.client.read(name) for name in ("ca.crt", "tls.crt", "tls.key")})
    shim = cluster.start_shim(tmp_path / "shim")
    try:
        async with RequestLoop(shim.endpoint, cluster.client) as loop:
            await loop.requests(3)

            # Step 1: both CAs trusted; the old one still signs (the due leaves are renewed by it).
            outcome = await cluster.reconcile(present - HOUR)
            assert outcome.condition.reason == "RotatingCA"
            assert "CARotationStarted" in [reason for _, reason, _ in outcome.events]
            new_ca = cluster.bundle("tenant-a-etcd-ca")[1]
            assert cluster.bundle("tenant-a-etcd-server") == cluster.bundle("tenant-a-etcd-client") == [old_ca, new_ca]
            for name in ("tenant-a-etcd-server", "tenant-a-etcd-client"):
                cluster.certificate(name).verify_directly_issued_by(old_ca)
            await cluster.reconcile(present - 30 * datetime.timedelta(minutes=1))  # within the overlap: no step
            assert cluster.certificate("tenant-a-etcd-ca") == old_ca
            for publish in (cluster.publish_server, cluster.publish_client):
                publish()
                await loop.requests(3)

            # Step 2: the new CA signs new leaves; the server's reaches the shim before the client's files.
            outcome = await cluster.reconcile(present)
            assert [message.split(" (")[1].split(")")[0] for _, reason, message in outcome.events
                    if reason == "CertificateIssued"] == ["CA rotation", "CA rotation"]
            assert cluster.certificate("tenant-a-etcd-ca") == new_ca
            for name in ("tenant-a-etcd-server", "tenant-a-etcd-client"):
                cluster.certificate(name).verify_directly_issued_by(new_ca)
            for publish in (cluster.publish_server, cluster.publish_client):
                publish()
                await loop.requests(3)
            assert served_certificate(shim.endpoint).issuer == new_ca.subject

            # Step 3: the old CA leaves the bundle; the client's files first, the shim's after.
            outcome = await cluster.reconcile(present + HOUR)
            assert [reason for _, reason, _ in outcome.events] == ["CARotated"]
            assert outcome.condition.reason == "Managed"
            assert cluster.bundle("tenant-a-etcd-client") == cluster.bundle("tenant-a-etcd-server") == [new_ca]
            assert "next.key" not in cluster.secret("tenant-a-etcd-ca")["data"]
            for publish in (cluster.publish_client, cluster.publish_server):
                publish()
                await loop.requests(3)
        assert loop.failures == [] and loop.done >= 21

        # It is over: the old CA's client certificate is refused now, the new files serve.
        with pytest.raises(grpc.aio.AioRpcError):
            await put_and_get(shim.endpoint, grpc.ssl_channel_credentials(
                cluster.client.read("ca.crt"), old_client.read("tls.key"), old_client.read("tls.crt")), b"x")
        assert etcdctl(shim, *client_flags(cluster.client))[0] == 0
        assert shim.process.poll() is None
        assert_no_private_key(shim.log(), kube_api)
    finally:
        shim.stop()


# -- no key anywhere but in its Secret -----------------------------------------------------------------

def private_key_bodies(kube_api) -> list[str]:
    """Lines of every private key ever stored in a Secret (PEM body lines, and the Secrets' base64)."""
    bodies = []
    for secret in kube_api.list(SECRETS):
        for version in kube_api.history(SECRETS, secret["metadata"]["namespace"], secret["metadata"]["name"]):
            for value in (version.get("data") or {}).values():
                pem = base64.b64decode(value).decode(errors="replace")
                if "PRIVATE KEY" in pem:
                    bodies += [line for line in pem.splitlines() if "PRIVATE KEY" not in line and len(line) > 16]
                    bodies.append(value[:64])
    return bodies


def assert_no_private_key(text: str, kube_api) -> None:
    bodies = private_key_bodies(kube_api)
    assert bodies, "no private key was issued: the check would prove nothing"
    assert "PRIVATE KEY" not in text
    leaked = [body for body in bodies if body in text]
    assert not leaked, f"{len(leaked)} private key lines found"


async def test_no_private_key_in_logs_events_status_or_metrics(kube_api, arm_stand_in, arm_service_principal,
                                                              start_operator, caplog):
    caplog.set_level(logging.DEBUG)
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    cluster.operator = await start_operator()
    await cluster.apply(OPERATOR_SPEC)
    await cluster.wait_condition("TLS", "True", "Managed")
    await cluster.make_pods_available()
    await cluster.wait_condition("Shim", "True")
    metrics = urllib.request.urlopen(f"http://{cluster.operator.config.metrics_address}/metrics", timeout=10).read()
    everything = "\n".join([caplog.text, json.dumps(kube_api.list(EVENTS)), json.dumps(cluster.history()),
                            json.dumps(kube_api.list(DEPLOYMENTS)), metrics.decode()])
    assert "tenant-a-etcd-client" in everything  # the status names the Secret, and no more of it
    assert "/secrets/tenant-a-etcd-server" in caplog.text  # the operator's own debug logs were captured
    assert_no_private_key(everything, kube_api)


# -- renewal by the running operator -------------------------------------------------------------------

class MovableClock:
    """The operator's PKI clock: the real time plus what the test adds."""

    def __init__(self):
        self.ahead = datetime.timedelta(0)

    def __call__(self) -> datetime.datetime:
        return utc_now() + self.ahead


async def test_the_drift_pass_renews_a_due_certificate_without_rolling_the_shim(kube_api, arm_stand_in,
                                                                                arm_service_principal, start_operator):
    clock = MovableClock()
    cluster = ClusterDriver(kube_api)
    await cluster.add_secret("azure-sp", arm_service_principal)
    cluster.operator = await start_operator(drift_interval=0.2, clock=clock)
    await cluster.apply(OPERATOR_SPEC)
    await cluster.wait_ready()

    def server_serial() -> int:
        secret = kube_api.get(SECRETS, NAMESPACE, "tenant-a-etcd-server")
        return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"])).serial_number
    first, before = server_serial(), kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")
    not_after = cluster.body["status"]["tls"]["serverNotAfter"]

    clock.ahead = 250 * DAY  # past two thirds of a year
    await kube_api.wait_for(lambda: server_serial() != first, what="the server certificate renewed")
    await kube_api.wait_for(lambda: cluster.body["status"]["tls"]["serverNotAfter"] > not_after,
                            what="status.tls with the new expiry")
    renewed = [event["message"] for event in kube_api.list(EVENTS, NAMESPACE) if event["reason"] == "CertificateIssued"]
    assert len(renewed) == 2 and all("due for renewal" in message for message in renewed), renewed
    # The shim reloads its files: the Deployment (and so its pods) stays as it was.
    after = kube_api.get(DEPLOYMENTS, NAMESPACE, "tenant-a")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"] == before["spec"]["template"]
    assert cluster.condition("Ready")["status"] == "True"


# -- upgrades ------------------------------------------------------------------------------------------

def shim_args(kube_api, name: str) -> list[str]:
    [container] = kube_api.get(DEPLOYMENTS, NAMESPACE, name)["spec"]["template"]["spec"]["containers"]
    return container["args"]


def warnings(kube_api, name: str) -> list[tuple[str, str]]:
    return [(event["reason"], event["message"]) for event in kube_api.list(EVENTS, NAMESPACE)
            if event["involvedObject"]["name"] == name and event["type"] == "Warning"]


async def test_upgrade_keeps_plain_text_and_new_objects_get_managed_tls(kube_api, arm_stand_in,
                                                                        arm_service_principal, start_operator):
    # What an operator before managed TLS left: a plain-text cluster that kube-apiserver uses.
    old = ClusterDriver(kube_api, name="tenant-old")
    await old.add_secret("azure-sp", arm_service_principal)
    await old.apply({**OPERATOR_SPEC, "account": {"name": "tenant-old-etcd"}})
    await kube_api.patch_object(CLUSTERS, NAMESPACE, "tenant-old", {"status": {
        "observedGeneration": 1, "endpoint": "http://tenant-old.control-planes.svc:2379",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "every part is ready",
                        "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
        subresource="status")
    new = ClusterDriver(kube_api, name="tenant-new")
    await start_operator()
    await new.apply({**OPERATOR_SPEC, "account": {"name": "tenant-new-etcd"}})

    # The old one stays plain text, visibly, and says how to opt in.
    await old.wait_condition("TLS", "True", "Disabled")
    plain = await old.wait_condition("PlainText", "True", "NotOptedIn")
    assert "spec.shim.tls.mode: Managed" in plain["message"] and "tenant-old-etcd-client" in plain["message"]
    await kube_api.wait_for(lambda: warnings(kube_api, "tenant-old"), what="the PlainText warning")
    assert warnings(kube_api, "tenant-old") == [("PlainText", plain["message"])]
    assert old.body["status"]["tls"] == {"mode": "Disabled"}
    assert old.body["status"]["endpoint"] == "http://tenant-old.control-planes.svc:2379"
    args = shim_args(kube_api, "tenant-old")
    assert "http://0.0.0.0:2379" in args and "--cert-file" not in args
    assert kube_api.get(SECRETS, NAMESPACE, "tenant-old-etcd-ca") is None

    # The new one gets managed mutual TLS.
    await new.wait_condition("TLS", "True", "Managed")
    assert new.body["status"]["endpoint"] == "https://tenant-new.control-planes.svc:2379"
    assert new.body["status"]["tls"]["mode"] == "Managed" and new.condition("PlainText") is None
    assert "--client-cert-auth" in shim_args(kube_api, "tenant-new")
    assert warnings(kube_api, "tenant-new") == []

    # Opting in switches the old one; choosing Disabled on the new one is shown as such.
    await old.patch_spec({"shim": {"tls": {"mode": "Managed"}}})
    await old.wait_condition("TLS", "True", "Managed")
    await kube_api.wait_for(lambda: old.condition("PlainText") is None, what="PlainText gone")
    assert "https://0.0.0.0:2379" in shim_args(kube_api, "tenant-old")
    await new.patch_spec({"shim": {"tls": {"mode": "Disabled"}}})
    await new.wait_condition("PlainText", "True", "Disabled")
    await kube_api.wait_for(lambda: warnings(kube_api, "tenant-new"), what="the PlainText warning")
    assert "--cert-file" not in shim_args(kube_api, "tenant-new")
    # Removing the mode again keeps the mode in force (recorded), never the default.
    await new.patch_spec({"shim": {"tls": None}})
    await kube_api.wait_for(lambda: new.body["metadata"]["generation"] == new.body["status"]["observedGeneration"],
                            what="the removal handled")
    assert new.condition("PlainText")["status"] == "True" and new.body["status"]["tls"]["mode"] == "Disabled"
