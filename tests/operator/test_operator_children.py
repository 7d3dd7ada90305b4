"""The shim's Kubernetes objects as operator/children.py renders them: valid for a current
Kubernetes (kubernetes-validate --strict), and with the fields the operator promises."""
from __future__ import annotations

import base64

import kubernetes_validate
import pytest

from cosmos_etcd_operator import children
from cosmos_etcd_operator.spec import parse
from cosmos_etcd_shim.health import READ_TIMEOUT_SECONDS

KUBERNETES_VERSION = "1.33.0"
OWNER = {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster",
         "metadata": {"name": "tenant-a", "namespace": "control-planes", "uid": "0b4c9d1e-uid"}}
AZURE = {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "location": "westeurope"}
ACCOUNT_ENDPOINT = "https://tenant-a.documents.azure.com:443/"


# The pod's name; the account keys come from the mounted keys Secret (never a flag: flags show in
# process lists; not the environment: a mounted Secret is updated in place when keys rotate).
SHIM_ENV = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
SHIM_MOUNTS = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": "/var/lib/cosmos-etcd"},
               {"name": "cosmos-keys", "mountPath": "/etc/cosmos-etcd/cosmos", "readOnly": True}]
SHIM_VOLUMES = [{"name": "tmp", "emptyDir": {}}, {"name": "data", "emptyDir": {}},
                {"name": "cosmos-keys", "secret": {"secretName": "tenant-a-cosmos-keys", "defaultMode": 0o440,
                                                   "items": [{"key": "keys", "path": "keys"}]}}]


# What mutual TLS adds: the flags (after the others) and the mounted kubernetes.io/tls Secret.
MTLS_ARGS = ["--cert-file", "/etc/cosmos-etcd/tls/tls.crt", "--key-file", "/etc/cosmos-etcd/tls/tls.key",
             "--trusted-ca-file", "/etc/cosmos-etcd/tls/ca.crt", "--client-cert-auth"]
TLS_MOUNT = {"name": "tls", "mountPath": "/etc/cosmos-etcd/tls", "readOnly": True}


def tls_volume(secret: str) -> dict:
    return {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o440}}


def serve_args(account_endpoint: str, scheme: str = "http") -> list[str]:
    """The shim's command line for cluster tenant-a in control-planes, without the TLS flags."""
    return ["serve", "--backend", "cosmos", "--name", "$(POD_NAME)", "--data-dir", "/var/lib/cosmos-etcd",
            "--cosmos-endpoint", account_endpoint, "--cosmos-database", "EtcdDB", "--cosmos-container", "EtcdData",
            "--cosmos-no-create", "--listen-client-urls", f"{scheme}://0.0.0.0:2379",
            "--advertise-client-urls", f"{scheme}://tenant-a.control-planes.svc:2379",
            "--listen-metrics-urls", "http://0.0.0.0:2381",
            "--listen-peer-urls", f"{scheme}://0.0.0.0:2380", "--initial-advertise-peer-urls", f"{scheme}://$(POD_IP):2380",
            "--cosmos-key-file", "/etc/cosmos-etcd/cosmos/keys"]


def _render(shim: dict | None = None, cosmos: dict | None = None, tls: children.ServingTLS | None = None) -> dict:
    spec = parse({"azure": AZURE, "shim": shim or {}, "cosmos": cosmos or {}}, name="tenant-a")
    return children.deployment(OWNER, spec, image="registry.example/cosmos-etcd:1", account_endpoint=ACCOUNT_ENDPOINT,
                               keys_digest="0123456789abcdef", tls=tls)


def _container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def assert_probed_over_http(container: dict) -> None:
    """The probes ask the shim's /livez and /readyz on the named metrics port, which is where
    --listen-metrics-urls serves (plain http, TLS or not): no gRPC or TCP fallback."""
    args = container["args"]
    assert args[args.index("--listen-metrics-urls") + 1] == "http://0.0.0.0:2381"
    assert {"name": "metrics", "containerPort": 2381, "protocol": "TCP"} in container["ports"]
    paths = {"startupProbe": "/livez", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in paths.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
        assert not {"grpc", "tcpSocket", "exec"} & container[probe].keys(), probe
        # The shim's health read gives up first: the kubelet gets the shim's answer, not its own timeout.
        assert container[probe]["timeoutSeconds"] > READ_TIMEOUT_SECONDS, probe


@pytest.mark.parametrize("shim, tls", [
    ({}, None),  # Disabled
    ({}, children.ServingTLS("tenant-a-etcd-server")),  # Managed
    ({"tls": {"secretName": "tenant-a-tls"}}, children.ServingTLS("tenant-a-tls")),
    ({"tls": {"secretName": "tenant-a-tls", "clientCertAuth": False}, "replicas": 5,
      "resources": {"requests": {"cpu": 1, "memory": "1Gi"}}}, children.ServingTLS("tenant-a-tls", False))])
def test_every_child_is_valid_for_kubernetes(shim, tls):
    spec = parse({"azure": AZURE, "shim": shim}, name="tenant-a")
    objects = [
        children.deployment(OWNER, spec, image="img:1", account_endpoint=ACCOUNT_ENDPOINT, keys_digest="d", tls=tls),
        children.service(OWNER), children.pod_disruption_budget(OWNER),
        children.keys_secret(OWNER, account_endpoint=ACCOUNT_ENDPOINT, keys=["c2VjcmV0", "b3RoZXI="]),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_the_shim_on_cosmos_without_tls():
    deployment = _render()
    container = _container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "registry.example/cosmos-etcd:1"
    assert container["command"] == ["cosmos-etcd"]
    assert container["args"] == serve_args(ACCOUNT_ENDPOINT)
    assert container["env"] == SHIM_ENV
    assert_probed_over_http(container)
    assert container["resources"] == children.DEFAULT_RESOURCES
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "cosmosetcd.io/keys-checksum": "0123456789abcdef"}


def test_deployment_is_restricted():
    """What Pod Security's "restricted" level requires, and a read-only root with writable scratch."""
    deployment = _render()
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert pod["automountServiceAccountToken"] is False
    assert container["volumeMounts"] == SHIM_MOUNTS
    assert pod["volumes"] == SHIM_VOLUMES


def test_replicas_prefer_different_nodes():
    deployment = _render({"replicas": 3})
    assert deployment["spec"]["replicas"] == 3
    [term] = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname",
                                       "labelSelector": {"matchLabels": children.selector("tenant-a")}}
    assert deployment["spec"]["selector"] == {"matchLabels": children.selector("tenant-a")}
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert children.selector("tenant-a").items() <= template_labels.items()


def test_tls_serves_https_from_the_secret():
    deployment = _render({"tls": {"secretName": "tenant-a-tls"}, "image": "mine:2"},
                         tls=children.ServingTLS("tenant-a-tls"))
    container = _container(deployment)
    args = container["args"]
    assert container["image"] == "mine:2"
    assert args[args.index("--listen-client-urls") + 1] == "https://0.0.0.0:2379"
    assert args[args.index("--advertise-client-urls") + 1] == "https://tenant-a.control-planes.svc:2379"
    assert args == serve_args(ACCOUNT_ENDPOINT, "https") + MTLS_ARGS
    assert container["volumeMounts"] == [*SHIM_MOUNTS, TLS_MOUNT]
    assert deployment["spec"]["template"]["spec"]["volumes"] == [*SHIM_VOLUMES, tls_volume("tenant-a-tls")]
    # The health endpoints stay plain http: the same probes as without TLS.
    assert_probed_over_http(container)


def test_tls_without_client_certificates():
    args = _container(_render({"tls": {"secretName": "tenant-a-tls", "clientCertAuth": False}},
                              tls=children.ServingTLS("tenant-a-tls", client_cert_auth=False)))["args"]
    assert "--cert-file" in args and "--client-cert-auth" not in args and "--trusted-ca-file" not in args


def test_other_database_and_container():
    args = _container(_render(cosmos={"database": "Db2", "container": "C2"}))["args"]
    assert args[args.index("--cosmos-database") + 1] == "Db2"
    assert args[args.index("--cosmos-container") + 1] == "C2"


def test_service_pdb_and_secret():
    service = children.service(OWNER)
    assert service["metadata"]["name"] == "tenant-a"
    assert service["spec"]["ports"] == [{"name": "client", "port": 2379, "targetPort": "client", "protocol": "TCP",
                                         "appProtocol": "grpc"},
                                        {"name": "metrics", "port": 2381, "targetPort": "metrics", "protocol": "TCP",
                                         "appProtocol": "http"}]
    assert service["spec"]["selector"] == children.selector("tenant-a")
    pdb = children.pod_disruption_budget(OWNER)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": children.selector("tenant-a")}}
    secret = children.keys_secret(OWNER, account_endpoint=ACCOUNT_ENDPOINT, keys=["the-key", "the-other"])
    assert secret["metadata"]["name"] == "tenant-a-cosmos-keys"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "endpoint": ACCOUNT_ENDPOINT, "key": "the-key", "keys": "the-key\nthe-other\n"}


def test_children_are_owned_and_labelled_but_carry_no_gitops_tracking_label():
    spec = parse({"azure": AZURE}, name="tenant-a")
    for obj in (children.deployment(OWNER, spec, image="i", account_endpoint=ACCOUNT_ENDPOINT, keys_digest="d",
                                    tls=None),
                children.service(OWNER), children.pod_disruption_budget(OWNER),
                children.keys_secret(OWNER, account_endpoint=ACCOUNT_ENDPOINT, keys=["k", "l"])):
        metadata = obj["metadata"]
        assert metadata["namespace"] == "control-planes"
        assert metadata["ownerReferences"] == [{
            "apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster", "name": "tenant-a",
            "uid": "0b4c9d1e-uid", "controller": True, "blockOwnerDeletion": True}]
        assert metadata["labels"] == {
            "app.kubernetes.io/name": "cosmos-etcd", "cosmosetcd.io/cluster": "tenant-a",
            "app.kubernetes.io/component": "etcd", "app.kubernetes.io/part-of": "cosmos-etcd",
            "app.kubernetes.io/managed-by": "cosmos-etcd-operator"}


def test_endpoint_follows_tls():
    assert children.endpoint("abc", "ns", None) == "http://abc.ns.svc:2379"
    assert children.endpoint("abc", "ns", children.ServingTLS("t")) == "https://abc.ns.svc:2379"


def test_keys_checksum_changes_with_either_key_and_hides_them():
    digest = children.keys_checksum(["k1", "k2"])
    assert digest != children.keys_checksum(["k1", "k3"]) and digest != children.keys_checksum(["k0", "k2"])
    assert "k1" not in digest and "k2" not in digest and len(digest) == 16


@pytest.mark.parametrize("deployment, expected", [
    (None, (0, 0)),
    ({"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": {"observedGeneration": 2,
                                                                         "availableReplicas": 1}}, (1, 2)),
    # The controller has not seen the latest spec: what it reported is about an older one.
    ({"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": {"observedGeneration": 2,
                                                                         "availableReplicas": 2}}, (0, 2)),
    ({"metadata": {"generation": 1}, "spec": {"replicas": 3}}, (0, 3)),
])
def test_available_replicas(deployment, expected):
    assert children.available_replicas(deployment) == expected
