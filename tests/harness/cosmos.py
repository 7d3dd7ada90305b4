"""Start and stop the in-memory Cosmos DB REST server (npm ``@vercel/cosmosdb-server``) for tests.

The package is installed by ``npm ci`` in ``tests/peers/`` (``.ci/run`` does it). The server is a
child process on 127.0.0.1 with a free port, plain HTTP by default (``--no-ssl``: the client then
needs ``enable_endpoint_discovery=False``, which the shim's Cosmos backend sets for ``http://``
endpoints), or HTTPS with the package's expired self-signed certificate (``ssl=True``: the
client needs ``connection_verify=False``). Every start is empty: the server keeps its data in
memory. It is stopped by its process id; readiness is awaited by polling its HTTP port.

Run by hand: ``python -m tests.harness.cosmos`` prints an endpoint and serves until Ctrl-C.
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import pathlib
import shutil
import ssl
import subprocess
import time

from tests.harness.processes import free_port, stop_process

PEERS = pathlib.Path(__file__).resolve().parents[1] / "peers"
SERVER_SCRIPT = PEERS / "cosmos-server.js"
PACKAGE = PEERS / "node_modules" / "@vercel" / "cosmosdb-server"

# The local server accepts any key; this is the well-known key of Microsoft's emulator, not a secret.
EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="


class CosmosServerUnavailable(RuntimeError):
    """node or the npm package is missing: run `npm ci` in tests/peers."""


def available() -> str | None:
    """None when the server can be started, else why not."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not PACKAGE.exists():
        return f"@vercel/cosmosdb-server is not installed: run `npm ci` in {PEERS}"
    return None


def require() -> None:
    """Skip the calling test when the server cannot be started here, or fail it under CI (CI must
    run everything: .ci/run installs the server)."""
    reason = available()
    if reason:
        import pytest

        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@dataclasses.dataclass
class CosmosServer:
    endpoint: str  # http(s)://127.0.0.1:PORT/
    port: int
    process: subprocess.Popen
    log_path: pathlib.Path
    ssl: bool
    key: str = EMULATOR_KEY

    @property
    def host_port(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def stop(self, timeout: float = 10) -> int:
        """Stop the server by its pid (SIGKILL if it does not exit in time)."""
        return stop_process(self.process, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _answers(port: int, use_ssl: bool) -> bool:
    if use_ssl:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start_cosmos(workdir: pathlib.Path, *, ssl: bool = False, keep_alive: bool = True,
                 port: int | None = None, timeout: float = 30) -> CosmosServer:
    """Start an empty in-memory Cosmos server; returns once it answers on its port."""
    reason = available()
    if reason:
        raise CosmosServerUnavailable(reason)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = ["node", str(SERVER_SCRIPT), "--port", str(port), "--host", "127.0.0.1"]
    if not ssl:
        argv.append("--no-ssl")
    if not keep_alive:
        argv.append("--no-keep-alive")
    log_path = workdir / f"cosmos-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=PEERS, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    scheme = "https" if ssl else "http"
    server = CosmosServer(endpoint=f"{scheme}://127.0.0.1:{port}/", port=port, process=process,
                          log_path=log_path, ssl=ssl)
    deadline = time.monotonic() + timeout
    try:
        while not _answers(port, ssl):
            if process.poll() is not None:
                raise RuntimeError(f"cosmos server exited with {process.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cosmos server not answering on {port} after {timeout}s:\n{server.log()}")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_cosmos(workdir: pathlib.Path, **kwargs):
    server = start_cosmos(workdir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def documents(server: CosmosServer, container: str, database: str | None = None):
    """A container of ``server`` straight through the Azure SDK (sync; no shim in between), to read
    what the shim stored. The container must exist (a shim creates it)."""
    from azure.cosmos import CosmosClient

    from cosmos_etcd_shim.storage.cosmos import layout

    client = CosmosClient(server.endpoint, credential=server.key, enable_endpoint_discovery=False,
                          connection_verify=not server.ssl)
    try:
        yield client.get_database_client(database or layout.DEFAULT_DATABASE).get_container_client(container)
    finally:
        client.close()


if __name__ == "__main__":  # pragma: no cover - a manual helper
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, running_cosmos(pathlib.Path(tmp)) as cosmos:
        print(f"cosmos server at {cosmos.endpoint} (key {cosmos.key}); Ctrl-C stops it", flush=True)
        try:
            cosmos.process.wait()
        except KeyboardInterrupt:
            pass
