"""kube-controller-manager and kube-scheduler for the tests, against an :class:`ApiServer` of
``tests/harness/kube_apiserver.py``.

* :func:`write_kubeconfig` writes a kubeconfig with the API server's URL, its CA and the harness's
  bearer token (a ``system:masters`` user), as both components' client credentials.
* :func:`start_controller_manager` starts kube-controller-manager with the controllers a Deployment
  and a namespace deletion need (:data:`CONTROLLERS`) and no others: no node-lifecycle controller,
  so a Node made through the API (there is no kubelet here) is never marked unreachable and tainted.
* :func:`start_scheduler` starts kube-scheduler from a ``KubeSchedulerConfiguration`` file (its
  ``--kubeconfig`` flag is deprecated).

Both run with leader election through Leases in ``kube-system`` (``leader_elect=False`` turns it
off), each serves HTTPS on a free port of 127.0.0.1 with its own certificate (a throwaway CA by
``trustme``) and no delegated authentication (only the always-allowed ``/healthz`` is used), and each start returns once ``/healthz`` answers ok and, with leader election, the
process has logged that it acquired its Lease. :meth:`Component.stop` stops it by its pid.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from tests.harness.kube_apiserver import TOKEN, ApiServer, require
from tests.harness.processes import free_port, stop_process

# Deployments to ReplicaSets to Pods, owner references and cascading deletion, namespace deletion,
# and each namespace's "default" ServiceAccount (the ServiceAccount admission plugin refuses pods
# in a namespace that has none).
CONTROLLERS = ("deployment-controller", "replicaset-controller", "garbage-collector-controller",
               "namespace-controller", "serviceaccount-controller")


@dataclasses.dataclass
class Component:
    """A running control-plane component: its process, port, files, and how to stop it."""

    name: str
    process: subprocess.Popen
    port: int
    workdir: pathlib.Path
    log_path: pathlib.Path
    argv: list[str]
    leader_elect: bool
    context: ssl.SSLContext

    def stop(self) -> int:
        return stop_process(self.process, timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_alive(self) -> None:
        assert self.process.poll() is None, \
            f"{self.name} exited with {self.process.returncode}:\n{self.log()[-5000:]}"

    def healthz(self) -> tuple[int, str]:
        """The status and body of ``/healthz`` (``(0, error)`` when it does not answer)."""
        request = urllib.request.Request(f"https://127.0.0.1:{self.port}/healthz?verbose")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError as e:
            return 0, repr(e)

    def leads(self) -> bool:
        """True once the process has logged that it acquired its leader Lease."""
        return "successfully acquired lease" in self.log().lower()


def write_kubeconfig(path: pathlib.Path, server: ApiServer) -> pathlib.Path:
    """A kubeconfig for ``server`` with the harness's token (JSON, which is YAML)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server.url,
                                                  "certificate-authority": str(server.ca_file)}}],
        "users": [{"name": "admin", "user": {"token": TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }))
    return path


def _serving_credentials(workdir: pathlib.Path) -> tuple[list[str], ssl.SSLContext]:
    """A serving certificate for 127.0.0.1: the flags that use it and a context that trusts it."""
    import trustme

    ca = trustme.CA()
    serving = ca.issue_cert("127.0.0.1")
    serving.cert_chain_pems[0].write_to_path(str(workdir / "serving.crt"))
    serving.private_key_pem.write_to_path(str(workdir / "serving.key"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return [f"--tls-cert-file={workdir / 'serving.crt'}", f"--tls-private-key-file={workdir / 'serving.key'}"], context


def _start(name: str, workdir: pathlib.Path, argv: list[str], port: int, leader_elect: bool,
           context: ssl.SSLContext, timeout: float) -> Component:
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    component = Component(name, process, port, workdir, log_path, argv, leader_elect, context)
    try:
        wait_ready(component, timeout)
    except BaseException:
        component.stop()
        raise
    return component


def wait_ready(component: Component, timeout: float = 60) -> None:
    """Poll ``/healthz`` (and, with leader election, the log) until the component serves and leads."""
    deadline = time.monotonic() + timeout
    while True:
        if component.process.poll() is not None:
            raise RuntimeError(f"{component.name} exited with {component.process.returncode}:\n"
                               f"{component.log()[-5000:]}")
        status, body = component.healthz()
        if status == 200 and (not component.leader_elect or component.leads()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{component.name} not ready after {timeout}s (/healthz: {status} {body[-2000:]}; "
                               f"leader: {component.leads()}):\n{component.log()[-5000:]}")
        time.sleep(0.2)


def start_controller_manager(workdir: pathlib.Path, server: ApiServer, leader_elect: bool = True,
                             controllers: tuple[str, ...] = CONTROLLERS, extra_args: list[str] = (),
                             timeout: float = 60) -> Component:
    """kube-controller-manager on ``server`` running ``controllers``, serving and (by default)
    leading through the Lease ``kube-system/kube-controller-manager``."""
    bin_dir = require()
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", server)
    tls_args, context = _serving_credentials(workdir)
    port = free_port()
    argv = [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={port}", *tls_args,
        "--controllers=" + ",".join(controllers),
        "--use-service-account-credentials=false",
        f"--leader-elect={'true' if leader_elect else 'false'}",
        *extra_args,
    ]
    return _start("kube-controller-manager", workdir, argv, port, leader_elect, context, timeout)


def start_scheduler(workdir: pathlib.Path, server: ApiServer, leader_elect: bool = True,
                    extra_args: list[str] = (), timeout: float = 60) -> Component:
    """kube-scheduler on ``server``, serving and (by default) leading through the Lease
    ``kube-system/kube-scheduler``."""
    bin_dir = require()
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", server)
    config = workdir / "scheduler-config.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": leader_elect},
    }))
    tls_args, context = _serving_credentials(workdir)
    port = free_port()
    argv = [
        str(bin_dir / "kube-scheduler"),
        f"--config={config}",
        "--bind-address=127.0.0.1", f"--secure-port={port}", *tls_args,
        *extra_args,
    ]
    return _start("kube-scheduler", workdir, argv, port, leader_elect, context, timeout)
