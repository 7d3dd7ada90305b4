"""A real kube-apiserver for the tests, on a real etcd or on the shim, and a small HTTPS client.

* :func:`kubernetes_bin` finds the Kubernetes binaries built by ``tests/peers/build-kubernetes.sh``
  (once per session; the script is idempotent, and blocks on its lock while another run builds).
  ``.ci/run`` starts that build in the background before the Python and npm installs and sets
  ``COSMOS_ETCD_KUBERNETES_BUILD_STATUS`` (a file the build's exit code is written to) and
  ``COSMOS_ETCD_KUBERNETES_BUILD_LOG``: the harness then waits for that exit code (with a deadline)
  and, if the build failed, fails with the log's tail instead of starting a second build.
  Without ``go`` on PATH (and no built binaries) the calling test is skipped, or failed under CI.
* :func:`start_apiserver` starts kube-apiserver on given etcd endpoints with its own serving
  certificate (a throwaway CA by ``trustme``), service-account key and bearer token, on a free port
  of 127.0.0.1, and waits for ``/readyz`` by polling; :meth:`ApiServer.stop` stops it by its pid.
* :class:`Kube` is the test's client: plain HTTPS with the token (``http.client``), JSON in and
  out, every answer a :class:`Reply` (status and body) so that refusals are asserted as easily as
  successes; :meth:`Kube.watch` reads a watch stream's events until a condition holds or a
  deadline passes.
"""
from __future__ import annotations

import dataclasses
import functools
import http.client
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from tests.harness.processes import free_port, stop_process

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "peers" / "build-kubernetes.sh"
TOKEN = "test-token"

# A cold build takes about 7 minutes on 2 cores; under CI it shares them with the test suite.
BUILD_DEADLINE = float(os.environ.get("COSMOS_ETCD_KUBERNETES_BUILD_DEADLINE", "2400"))


class KubernetesUnavailable(RuntimeError):
    """The binaries are not built and cannot be built here."""


def _tail(path: pathlib.Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def _wait_for_background_build(status_file: pathlib.Path, log_file: pathlib.Path | None) -> None:
    """Wait for the exit code .ci/run's background build writes; raise with the log tail if it failed."""
    deadline = time.monotonic() + BUILD_DEADLINE
    while not status_file.exists() or not status_file.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the background Kubernetes build has not finished after {BUILD_DEADLINE:.0f} s; "
                               f"its log ends with:\n{_tail(log_file) if log_file else '(no log)'}")
        time.sleep(1)
    code = status_file.read_text().strip()
    if code != "0":
        raise RuntimeError(f"the background Kubernetes build failed (exit code {code}); "
                           f"its log ends with:\n{_tail(log_file) if log_file else '(no log)'}")


_build_failure: Exception | None = None


def kubernetes_bin() -> pathlib.Path:
    """The folder of kube-apiserver (and the other binaries), built if need be; once per session
    (a failure too is remembered, so that the next test does not start a second build)."""
    global _build_failure
    if _build_failure is not None:
        raise _build_failure
    try:
        return _find_or_build()
    except (KubernetesUnavailable, RuntimeError, subprocess.TimeoutExpired) as e:
        _build_failure = e if not isinstance(e, subprocess.TimeoutExpired) else RuntimeError(
            f"{BUILD_SCRIPT} kubernetes did not finish within {BUILD_DEADLINE:.0f} s")
        raise _build_failure from None


@functools.cache
def _find_or_build() -> pathlib.Path:
    status = os.environ.get("COSMOS_ETCD_KUBERNETES_BUILD_STATUS")
    if status:
        log = os.environ.get("COSMOS_ETCD_KUBERNETES_BUILD_LOG")
        _wait_for_background_build(pathlib.Path(status), pathlib.Path(log) if log else None)
    if shutil.which("go") is None:
        raise KubernetesUnavailable("go is not on PATH: tests/peers/build-kubernetes.sh cannot run")
    # Idempotent: milliseconds once built; blocks on the build's lock while another run builds.
    result = subprocess.run([str(BUILD_SCRIPT), "kubernetes"], capture_output=True, text=True,
                            timeout=BUILD_DEADLINE, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-40:])
        raise RuntimeError(f"{BUILD_SCRIPT} kubernetes failed (exit code {result.returncode}):\n{tail}")
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    bin_dir = pathlib.Path(found["KUBERNETES_BIN"])
    if not (bin_dir / "kube-apiserver").exists():
        raise RuntimeError(f"{BUILD_SCRIPT} said KUBERNETES_BIN={bin_dir}, which has no kube-apiserver")
    return bin_dir


def require() -> pathlib.Path:
    """The binaries' folder; skips the calling test when they cannot be built here (no go), fails
    it under CI (CI must run everything: .ci/run builds them) or when the build itself fails."""
    import pytest

    try:
        return kubernetes_bin()
    except KubernetesUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@dataclasses.dataclass
class Reply:
    """An answer of the API server: HTTP status and decoded JSON body (the text when not JSON)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def reason(self) -> str:
        return self.body.get("reason", "") if isinstance(self.body, dict) else ""

    @property
    def message(self) -> str:
        return self.body.get("message", "") if isinstance(self.body, dict) else str(self.body)

    def expect(self, *statuses: int) -> Any:
        """The body, after checking the status is one of ``statuses`` (any 2xx if none given)."""
        good = self.status in statuses if statuses else self.ok
        assert good, f"HTTP {self.status}: {json.dumps(self.body)[:2000] if not isinstance(self.body, str) else self.body[:2000]}"
        return self.body


@dataclasses.dataclass
class Kube:
    """A minimal client of one kube-apiserver: the bearer token, the test CA, JSON bodies."""

    port: int
    context: ssl.SSLContext
    token: str = TOKEN
    timeout: float = 30

    def _connection(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=timeout or self.timeout)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Reply:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = body if isinstance(body, (str, bytes)) else json.dumps(body)
            headers["Content-Type"] = content_type
        connection = self._connection()
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read().decode("utf-8", "replace")
        finally:
            connection.close()
        try:
            return Reply(response.status, json.loads(raw))
        except json.JSONDecodeError:
            return Reply(response.status, raw)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Reply:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Reply:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Reply:
        return self.request("DELETE", path)

    def apply(self, path: str, body: dict, field_manager: str, force: bool = False) -> Reply:
        """Server-side apply (``PATCH`` with ``application/apply-patch+yaml``; JSON is YAML)."""
        query = f"fieldManager={field_manager}" + ("&force=true" if force else "")
        return self.request("PATCH", f"{path}?{query}", body, "application/apply-patch+yaml")

    def watch(self, path: str, resource_version: str, until: Callable[[list[dict]], bool],
              timeout: float = 30) -> list[dict]:
        """Watch events of ``path`` from ``resource_version`` until ``until(events)`` holds, an
        ERROR event arrives or the server ends the stream; the events so far (raises if the deadline
        passes first)."""
        deadline = time.monotonic() + timeout
        sep = "&" if "?" in path else "?"
        query = f"{sep}watch=1&resourceVersion={resource_version}&timeoutSeconds={int(timeout) + 1}"
        connection = self._connection(timeout)
        events: list[dict] = []
        try:
            connection.request("GET", path + query, headers={"Authorization": f"Bearer {self.token}",
                                                             "Accept": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise AssertionError(f"watch {path}: HTTP {response.status}: {response.read()[:2000]!r}")
            while not until(events):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"watch {path} from {resource_version}: condition not met after "
                                       f"{timeout}s; events: {events}")
                try:
                    line = response.readline()
                except TimeoutError:  # the socket's timeout: nothing more came in time
                    raise TimeoutError(f"watch {path} from {resource_version}: condition not met after "
                                       f"{timeout}s; events: {events}") from None
                if not line:
                    break  # the server closed the stream
                event = json.loads(line)
                events.append(event)
                if event["type"] == "ERROR":
                    break
        finally:
            connection.close()
        return events


@dataclasses.dataclass
class ApiServer:
    """A running kube-apiserver: its port, its files, its client, and how to stop it."""

    process: subprocess.Popen
    port: int
    workdir: pathlib.Path
    log_path: pathlib.Path
    argv: list[str]
    client: Kube

    def stop(self) -> int:
        return stop_process(self.process, timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> pathlib.Path:
        """The CA that signed the serving certificate (for kubeconfigs of other components)."""
        return self.workdir / "ca.crt"

    def assert_alive(self) -> None:
        assert self.process.poll() is None, \
            f"kube-apiserver exited with {self.process.returncode}:\n{self.log()[-5000:]}"


def _write_credentials(workdir: pathlib.Path) -> ssl.SSLContext:
    """Serving certificate and key and their CA, service-account key, token file; the client's SSL
    context."""
    import trustme
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(workdir / "ca.crt"))
    serving = ca.issue_cert("127.0.0.1", "localhost")
    serving.cert_chain_pems[0].write_to_path(str(workdir / "serving.crt"))
    serving.private_key_pem.write_to_path(str(workdir / "serving.key"))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (workdir / "sa.key").write_bytes(sa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (workdir / "tokens.csv").write_text(f"{TOKEN},admin,admin-uid,system:masters\n")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def start_apiserver(workdir: pathlib.Path, etcd_endpoints: Iterable[str], extra_args: list[str] = (),
                    timeout: float = 90, etcd_tls: tuple[str, str, str] | None = None) -> ApiServer:
    """kube-apiserver on ``etcd_endpoints`` (host:port; plain HTTP, or mutual TLS with ``etcd_tls``,
    the files of ``--etcd-cafile``, ``--etcd-certfile`` and ``--etcd-keyfile``), ready (``/readyz``
    answers ok)."""
    bin_dir = require()
    workdir.mkdir(parents=True, exist_ok=True)
    context = _write_credentials(workdir)
    port = free_port()
    scheme = "https" if etcd_tls else "http"
    tls_flags = [f"--etcd-{flag}={path}" for flag, path in zip(("cafile", "certfile", "keyfile"), etcd_tls or ())]
    argv = [
        str(bin_dir / "kube-apiserver"),
        "--etcd-servers=" + ",".join(f"{scheme}://{e}" for e in etcd_endpoints), *tls_flags,
        "--bind-address=127.0.0.1", f"--secure-port={port}",
        f"--cert-dir={workdir / 'certs'}",
        f"--tls-cert-file={workdir / 'serving.crt'}", f"--tls-private-key-file={workdir / 'serving.key'}",
        f"--service-account-key-file={workdir / 'sa.key'}",
        f"--service-account-signing-key-file={workdir / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--token-auth-file={workdir / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        "--service-cluster-ip-range=10.0.0.0/24",
        # no nodes and no kube-proxy here: the kubernetes Service's endpoints are not reconciled
        "--endpoint-reconciler-type=none",
        *extra_args,
    ]
    log_path = workdir / "kube-apiserver.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = ApiServer(process, port, workdir, log_path, argv, Kube(port, context))
    try:
        wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: ApiServer, timeout: float = 90) -> None:
    """Poll ``/readyz`` until it answers 200 (every post-start hook done, etcd reachable)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited with {server.process.returncode}:\n{server.log()[-5000:]}")
        try:
            reply = server.client.get("/readyz")
            if reply.status == 200:
                return
            last = f"HTTP {reply.status}: {reply.body}"
        except OSError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise TimeoutError(f"kube-apiserver not ready after {timeout}s ({last}):\n{server.log()[-5000:]}")
        time.sleep(0.2)
