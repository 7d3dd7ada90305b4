"""The shim's command line: `cosmos-etcd serve|version` (run as `python -m cosmos_etcd_shim`).

* A port in use, an unusable data dir or a bad flag: exactly one line on stderr, no traceback,
  a non-zero exit, promptly (nothing left running).
* SIGTERM and SIGINT: exit code 0 and a clean log, even with a client holding a watch stream open;
  the port is free afterwards.
* `version` prints the version; `serve --help` lists etcd's flags; the flags act as etcd's do
  (compared with a real etcd started with the same flags); the defaults (localhost:2379, data
  dir `default.etcd` in the working directory).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from tests.harness import processes

from .conftest import shim_only, start_etcd_at

pytestmark = shim_only

SHIM = [sys.executable, "-m", "cosmos_etcd_shim"]
ETCD_FLAGS = ["--name", "--data-dir", "--listen-client-urls", "--advertise-client-urls", "--max-request-bytes",
              "--max-txn-ops", "--quota-backend-bytes", "--log-level", "--max-concurrent-streams", "--cert-file",
              "--key-file", "--trusted-ca-file", "--client-cert-auth", "--auto-tls", "--self-signed-cert-validity",
              "--cipher-suites", "--tls-min-version", "--tls-max-version"]


def run_shim(args: list[str], cwd=None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*SHIM, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def serve_args(data_dir, port: int, *extra: str) -> list[str]:
    return ["serve", "--data-dir", str(data_dir), "--listen-client-urls", f"http://127.0.0.1:{port}",
            "--advertise-client-urls", f"http://127.0.0.1:{port}", *extra]


def assert_one_line_error(r: subprocess.CompletedProcess, *mentions: str) -> str:
    """Non-zero exit, exactly one non-empty line on stderr, no traceback anywhere; returns the line."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    report = f"rc={r.returncode}\nstderr:\n{r.stderr}\nstdout:\n{r.stdout}"
    assert r.returncode != 0, report
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, report
    assert len(lines) == 1, f"want exactly one line on stderr, got {len(lines)}:\n{report}"
    if mentions:
        assert any(m.lower() in lines[0].lower() for m in mentions), \
            f"the error line should mention one of {mentions}: {lines[0]!r}"
    return lines[0]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# ------------------------------------------------------------------------------------------------
# startup errors
# ------------------------------------------------------------------------------------------------

def test_port_in_use(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        r = run_shim(serve_args(tmp_path / "data", port))
    assert_one_line_error(r, str(port), "in use")


def test_port_in_use_by_another_shim(tmp_path):
    first = processes.start_shim(tmp_path / "first")
    try:
        port = int(first.endpoint.rsplit(":", 1)[1])
        r = run_shim(serve_args(tmp_path / "second-data", port))
        assert_one_line_error(r, str(port), "in use")
        # the running one is unaffected
        with grpc.insecure_channel(first.endpoint) as channel:
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
    finally:
        first.stop()


def test_data_dir_under_a_regular_file(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data"
    r = run_shim(serve_args(data_dir, processes.free_port()))
    assert_one_line_error(r, str(data_dir), "data")


def test_data_dir_is_a_regular_file(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.write_text("not a directory\n")
    r = run_shim(serve_args(data_dir, processes.free_port()))
    assert_one_line_error(r, str(data_dir), "data")


@pytest.mark.parametrize("args", [
    ["serve", "--no-such-flag"],
    ["serve", "--max-txn-ops", "many"],
    ["serve", "--max-request-bytes"],
    ["serve", "--backend", "nosuch"],
    ["serve", "--log-level", "loud"],
    ["serve", "--listen-client-urls", "not a url"],
    ["serve", "--listen-client-urls", "http://127.0.0.1:notaport"],
    ["no-such-command"],
], ids=lambda a: " ".join(a))
def test_bad_flag(tmp_path, args):
    # run in a temp dir so a mistakenly accepted flag does not leave data behind in the repo
    r = run_shim(args, cwd=tmp_path)
    assert_one_line_error(r)


# ------------------------------------------------------------------------------------------------
# signals
# ------------------------------------------------------------------------------------------------

def clean_log(text: str) -> list[str]:
    """Problems in a log: tracebacks, error/fatal/panic entries."""
    problems = []
    if "Traceback" in text:
        problems.append("a traceback")
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and str(entry.get("level", "")).lower() in ("error", "fatal", "panic", "critical"):
            problems.append(f"an {entry['level']} entry: {line}")
    return problems


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(tmp_path, sig):
    server = processes.start_shim(tmp_path)
    port = int(server.endpoint.rsplit(":", 1)[1])
    with grpc.insecure_channel(server.endpoint) as channel:
        rpc_pb2_grpc.KVStub(channel).Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10)
    started = time.monotonic()
    rc = server.stop(sig, timeout=20)
    elapsed = time.monotonic() - started
    log = server.log()
    assert rc == 0, f"exit code {rc} after {signal.Signals(sig).name}:\n{log[-3000:]}"
    assert elapsed < 10, f"took {elapsed:.1f}s to stop"
    assert not clean_log(log), f"unclean log: {clean_log(log)}\n{log[-3000:]}"
    assert port_is_free(port), "the port is still bound after exit"
    # what was written is there after a restart
    server = processes.start_shim(tmp_path, data_dir=server.data_dir, port=port)
    try:
        with grpc.insecure_channel(server.endpoint) as channel:
            r = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
        assert [kv.value for kv in r.kvs] == [b"v"]
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_open_watch_stream(tmp_path, sig):
    """kube-apiserver keeps watch streams open: shutdown must not wait for them forever."""
    server = processes.start_shim(tmp_path)
    channel = grpc.insecure_channel(server.endpoint)
    created = threading.Event()
    ended = threading.Event()
    outcome = {}

    def requests():
        yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"w", range_end=b"x"))
        ended.wait(60)  # keep the request side open

    def watch():
        try:
            for response in rpc_pb2_grpc.WatchStub(channel).Watch(requests()):
                if response.created:
                    created.set()
        except grpc.RpcError as e:
            outcome["code"] = e.code()
        finally:
            ended.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        assert created.wait(15), "watch not created"
        started = time.monotonic()
        rc = server.stop(sig, timeout=20)
        elapsed = time.monotonic() - started
        assert rc == 0, f"exit code {rc}:\n{server.log()[-3000:]}"
        assert elapsed < 10, f"took {elapsed:.1f}s to stop with an open watch"
        assert ended.wait(15), "the client's watch stream was not ended by the shutdown"
        assert not clean_log(server.log()), clean_log(server.log())
    finally:
        ended.set()
        channel.close()
        server.kill()


# ------------------------------------------------------------------------------------------------
# version, help, flags, defaults
# ------------------------------------------------------------------------------------------------

def test_version():
    r = run_shim(["version"])
    assert r.returncode == 0, r.stderr
    assert re.search(r"\d+\.\d+\.\d+", r.stdout), r.stdout
    assert len(r.stdout.strip().splitlines()) == 1, r.stdout
    assert "Traceback" not in r.stderr


def test_console_script_version():
    exe = shutil.which("cosmos-etcd") or os.path.join(os.path.dirname(sys.executable), "cosmos-etcd")
    assert os.path.exists(exe), "the cosmos-etcd console script is not installed (pip install -e .)"
    r = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == run_shim(["version"]).stdout


def test_serve_help_lists_etcd_flags():
    r = run_shim(["serve", "--help"])
    assert r.returncode == 0, r.stderr
    missing = [flag for flag in ETCD_FLAGS + ["--backend"] if flag not in r.stdout]
    assert not missing, f"serve --help does not list {missing}:\n{r.stdout}"


def test_top_level_help():
    r = run_shim(["--help"])
    assert r.returncode == 0, r.stderr
    assert "serve" in r.stdout and "version" in r.stdout


def _request_outcomes(endpoint: str) -> dict:
    """Requests near the configured limits, and what MemberList says."""
    out = {}
    with grpc.insecure_channel(endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)

        def call(name, fn, request):
            try:
                fn(request, timeout=10)
                out[name] = "ok"
            except grpc.RpcError as e:
                out[name] = f"{e.code().name}: {e.details()}"

        put = lambda i: rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"t%d" % i, value=b"v"))
        call("txn at max-txn-ops", kv.Txn, rpc_pb2.TxnRequest(success=[put(i) for i in range(4)]))
        call("txn over max-txn-ops", kv.Txn, rpc_pb2.TxnRequest(success=[put(i) for i in range(5)]))
        call("txn over max-txn-ops in failure", kv.Txn, rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(key=b"t0", target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL, version=99)],
            failure=[put(i) for i in range(5)]))
        call("put under max-request-bytes", kv.Put, rpc_pb2.PutRequest(key=b"small", value=b"x" * 1000))
        call("put over max-request-bytes", kv.Put, rpc_pb2.PutRequest(key=b"big", value=b"x" * 5000))
        members = rpc_pb2_grpc.ClusterStub(channel).MemberList(rpc_pb2.MemberListRequest(), timeout=10).members
        out["members"] = [(m.name, list(m.clientURLs)) for m in members]
        out["dbSizeQuota"] = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=10).dbSizeQuota
    return out


def test_flags_act_as_etcds(tmp_path):
    limits = ["--max-txn-ops", "4", "--max-request-bytes", "4096", "--quota-backend-bytes", str(64 * 1024 * 1024)]
    flags = ["--name", "flagged", *limits]
    etcd = start_etcd_at(tmp_path / "etcd", tmp_path / "etcd" / "data", processes.free_port(), processes.free_port(),
                         name="flagged", extra_args=limits)
    try:
        expected = _request_outcomes(etcd.endpoint)
    finally:
        etcd.stop()
    expected["members"] = [("flagged", ["<url>"])]
    # etcd 3.5.1 predates Status.dbSizeQuota (3.6 reports the quota there): the shim reports 3.6
    expected["dbSizeQuota"] = 64 * 1024 * 1024
    shim = processes.start_shim(tmp_path / "shim", extra_args=flags)
    try:
        got = _request_outcomes(shim.endpoint)
    finally:
        shim.stop()
    got["members"] = [(name, ["<url>" if urls == [shim.url] else urls]) for name, urls in got["members"]]
    assert got == expected


def test_defaults(tmp_path):
    """No flags but the backend: localhost:2379 and ./default.etcd, as etcd."""
    if not port_is_free(2379):
        pytest.skip("port 2379 is in use on this machine")
    log_path = tmp_path / "shim.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*SHIM, "serve"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = processes.Server("shim", "127.0.0.1:2379", tmp_path / "default.etcd", process, log_path, [])
    try:
        processes.wait_serving("127.0.0.1:2379", process, log_path)
        assert (tmp_path / "default.etcd").is_dir(), sorted(p.name for p in tmp_path.iterdir())
        with grpc.insecure_channel("127.0.0.1:2379") as channel:
            members = rpc_pb2_grpc.ClusterStub(channel).MemberList(rpc_pb2.MemberListRequest(), timeout=10).members
        assert [(m.name, list(m.clientURLs)) for m in members] == [("default", ["http://localhost:2379"])]
    finally:
        assert server.stop() == 0
