"""A real kube-apiserver on a shim serving the operator's managed mutual TLS, with the client
Secret's three files as its ``--etcd-cafile``, ``--etcd-certfile`` and ``--etcd-keyfile``, as they
are: the promise of ``spec.shim.tls.mode: Managed`` to kube-apiserver itself.

The TLS part (operator/pki.py) issues the Secrets through kmock, as in tests/operator/test_operator_pki.py;
the shim runs the Deployment's TLS flags on the server Secret's files; kube-apiserver writes through
it, and etcdctl with the same client files reads what it wrote.
"""
from __future__ import annotations

import datetime

from cosmos_etcd_operator import pki
from tests.harness import kube_apiserver, processes
from tests.harness.kube import CLUSTERS, kube_api  # noqa: F401 (fixture)
from tests.harness.operator import NAMESPACE, ClusterDriver
from tests.operator.test_operator_pki import NAME, SPEC, ManagedCluster, client_flags, utc_now


async def test_kube_apiserver_takes_the_client_secret_as_it_is(kube_api, tmp_path):
    owner = await kube_api.put_object(CLUSTERS, ClusterDriver.manifest(NAME, NAMESPACE, SPEC))
    cluster = ManagedCluster(kube_api, owner, pki.Policy(), tmp_path)
    try:
        await cluster.reconcile(utc_now())
    finally:
        cluster.kube.close()
    cluster.publish_server()
    cluster.publish_client()
    files = tuple(cluster.client.path(name) for name in ("ca.crt", "tls.crt", "tls.key"))
    shim = cluster.start_shim(tmp_path / "shim")
    try:
        apiserver = kube_apiserver.start_apiserver(tmp_path / "apiserver", [shim.endpoint], etcd_tls=files)
        try:
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tls-check"}}
            apiserver.client.post("/api/v1/namespaces", namespace).expect(201)
            config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "written-over-mtls"},
                          "data": {"when": datetime.datetime.now().isoformat()}}
            apiserver.client.post("/api/v1/namespaces/tls-check/configmaps", config_map).expect(201)
            read = apiserver.client.get("/api/v1/namespaces/tls-check/configmaps/written-over-mtls").expect(200)
            assert read["data"] == config_map["data"]
        finally:
            apiserver.stop()
        # What kube-apiserver stored, read back with the same three files by etcdctl.
        result = processes.etcdctl(shim.url, [*client_flags(cluster.client), "get", "--keys-only",
                                              "/registry/configmaps/tls-check/written-over-mtls"])
        assert (result.returncode, result.stdout.strip()) == (0, "/registry/configmaps/tls-check/written-over-mtls")
    finally:
        shim.stop()
