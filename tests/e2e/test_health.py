"""The HTTP health endpoints on ``--listen-metrics-urls``: ``/health`` as etcd 3.5, ``/livez`` and
``/readyz`` as etcd 3.6 (what the kubelet's probes ask, with TLS on or off).

* Differential, once per backend: a real etcd 3.5.1 and the shim, each with
  ``--listen-metrics-urls``, get the same ``/health`` requests (the parameters ``serializable``
  and ``exclude``, and methods other than GET); status, headers that matter and body must match.
* ``/livez`` and ``/readyz`` (etcd 3.5.1 has neither): their documented etcd 3.6 answers.
* Unhealthy, on the Cosmos backend behind the fault proxy (``tests/harness/faultproxy.py``): with
  Cosmos unreachable (connections refused, or every request held), ``/health`` and ``/readyz``
  turn 503 while ``/livez`` and ``/health?serializable=true`` stay 200 (memory still serves);
  the 503 of ``/health`` has the shape of a real etcd's (one with a NOSPACE alarm raised by
  filling a tiny ``--quota-backend-bytes``); once Cosmos is back, everything is 200 again
  without a restart. Changes are awaited by polling with a deadline.
"""
from __future__ import annotations

import dataclasses
import time
import uuid

import grpc
import pytest

from cosmos_etcd_shim.proto import rpc_pb2, rpc_pb2_grpc
from tests.harness import cosmos as cosmos_harness
from tests.harness import processes
from tests.harness.backends import BACKENDS, LOCAL_COSMOS_KEY, start_shim_on
from tests.harness.faultproxy import FaultProxy, Rule, ThreadedFaultProxy
from tests.harness.faultrules import on_proxy
from tests.harness.health import Answer, ask

pytestmark = pytest.mark.timeout(180)

OUTAGE_SECONDS = 30.0  # to see an outage, and to see recovery from it
# What a linearizable read fails with during an outage: the store's refusal, or the health read's timeout.
OUTAGE_REASONS = ("cosmos-etcd: storage unavailable: ", "etcdserver: request timed out")


def await_status(port: int, path: str, status: int) -> Answer:
    """Ask until ``path`` answers ``status``; fail after OUTAGE_SECONDS."""
    deadline = time.monotonic() + OUTAGE_SECONDS
    while (answer := ask(port, path)).status != status:
        assert time.monotonic() < deadline, f"{path} still {answer} after {OUTAGE_SECONDS:g}s"
        time.sleep(0.1)  # pacing of the polls
    return answer


def metrics_flag(port: int) -> list[str]:
    return ["--listen-metrics-urls", f"http://127.0.0.1:{port}"]


# -- servers ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def etcd_health_port(tmp_path_factory):
    port = processes.free_port()
    server = processes.start_etcd(tmp_path_factory.mktemp("etcd"), extra_args=metrics_flag(port))
    yield port
    server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def shim_health_port(request, tmp_path_factory):
    if request.param == "cosmos":
        cosmos_harness.require()
    port = processes.free_port()
    server = start_shim_on(request.param, tmp_path_factory.mktemp(f"shim-{request.param}"), metrics_flag(port))
    yield port
    server.stop_with_companions()


@pytest.fixture
def etcd_out_of_space(tmp_path):
    """A real etcd whose NOSPACE alarm is raised: puts until the tiny quota is exceeded."""
    port = processes.free_port()
    server = processes.start_etcd(tmp_path, extra_args=[*metrics_flag(port), "--quota-backend-bytes", "65536"])
    try:
        with grpc.insecure_channel(server.endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                for i in range(1000):
                    kv.Put(rpc_pb2.PutRequest(key=b"fill/%d" % i, value=b"x" * 4096), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
        yield port
    finally:
        server.stop()


@dataclasses.dataclass
class ProxiedShim:
    health_port: int
    threaded: ThreadedFaultProxy

    def on_proxy(self, change) -> None:
        on_proxy(self.threaded, change)


@pytest.fixture
def proxied_shim(tmp_path):
    """The shim on a local Cosmos server reached through the fault proxy."""
    cosmos_harness.require()
    cosmos = cosmos_harness.start_cosmos(tmp_path / "cosmos")
    threaded = ThreadedFaultProxy("127.0.0.1", cosmos.port)
    proxy = threaded.__enter__()
    shim = None
    try:
        port = processes.free_port()
        shim = processes.start_shim(
            tmp_path, backend="cosmos", env=LOCAL_COSMOS_KEY,
            extra_args=["--cosmos-endpoint", proxy.endpoint, "--cosmos-container", f"health-{uuid.uuid4().hex[:8]}",
                        *metrics_flag(port)])
        yield ProxiedShim(port, threaded)
        assert shim.process.poll() is None, f"the shim exited:\n{shim.log()[-3000:]}"
    finally:
        if shim is not None:
            shim.stop()
        threaded.__exit__(None, None, None)
        cosmos.stop()


# -- /health against etcd 3.5.1 -----------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/health"),
    ("GET", "/health?serializable=true"),
    ("GET", "/health?serializable=false"),
    ("GET", "/health?serializable=yes"),
    ("GET", "/health?exclude=NOSPACE"),
    ("GET", "/health?exclude=NOSPACE&exclude=CORRUPT&serializable=true"),
    ("GET", "/health?exclude="),
    ("POST", "/health"),
    ("HEAD", "/health"),
    ("PUT", "/health?serializable=true"),
])
def test_health_answers_as_etcd(etcd_health_port, shim_health_port, method, path):
    expected = ask(etcd_health_port, path, method)
    assert expected.status in (200, 405), expected  # the oracle is healthy
    assert ask(shim_health_port, path, method) == expected


# -- /livez and /readyz: etcd 3.6's format ------------------------------------------------------------

@pytest.mark.parametrize("path, listing", [
    ("/livez", ""),
    ("/livez?verbose", "[+]serializable_read ok\n[+]background_tasks ok\n"),
    ("/livez/serializable_read?verbose", "[+]serializable_read ok\n"),
    ("/readyz", ""),
    ("/readyz?verbose", "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n"
                        "[+]background_tasks ok\n"),
    ("/readyz?verbose&exclude=linearizable_read",
     "[+]data_corruption ok\n[+]serializable_read ok\n[+]background_tasks ok\n"),
    ("/readyz?verbose&exclude=data_corruption",
     "[+]serializable_read ok\n[+]linearizable_read ok\n[+]background_tasks ok\n"),
    # Excluding a check that does not exist is ignored (etcd only logs it).
    ("/readyz?verbose&exclude=no_such_check",
     "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]background_tasks ok\n"),
    ("/readyz/linearizable_read?verbose", "[+]linearizable_read ok\n"),
    ("/readyz/linearizable_read?verbose&exclude=linearizable_read", "[+]linearizable_read ok\n"),
])
def test_livez_and_readyz_answer_ok_as_etcd_3_6(shim_health_port, path, listing):
    assert ask(shim_health_port, path) == Answer(
        200, {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
        f"{listing}ok\n".encode())


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/readyz/linearizable_read"])
def test_livez_and_readyz_serve_only_get(shim_health_port, path):
    assert ask(shim_health_port, path, "POST") == Answer(
        405, {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff", "Allow": "GET"},
        b"Method Not Allowed\n")


# -- an outage of Cosmos DB ---------------------------------------------------------------------------

def _outage(mode: str):
    def begin(proxy: FaultProxy) -> None:
        if mode == "refuse":
            proxy.refuse = True
        else:  # every request held: the shim's own deadlines and the health read's timeout decide
            proxy.add(Rule("delay", seconds=3600, times=-1))
        proxy.reset_connections()
    return begin


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_cosmos_outage_makes_health_and_readyz_503_until_it_ends(proxied_shim, etcd_out_of_space, mode):
    port = proxied_shim.health_port
    assert ask(port, "/health").json() == {"health": "true", "reason": ""}
    assert ask(port, "/readyz").status == 200

    proxied_shim.on_proxy(_outage(mode))
    unhealthy = await_status(port, "/health", 503)
    # The shape of etcd's 503 (here a real etcd 3.5.1 with its NOSPACE alarm); the reason is the shim's.
    etcds = ask(etcd_out_of_space, "/health")
    assert etcds.json() == {"health": "false", "reason": "ALARM NOSPACE"}, etcds
    assert (unhealthy.status, unhealthy.headers) == (etcds.status, etcds.headers)
    assert unhealthy.body.endswith(b"}\n") and etcds.body.endswith(b"}\n")
    assert unhealthy.json()["health"] == "false"
    reason = unhealthy.json()["reason"]
    assert reason.startswith(tuple(f"RANGE ERROR:{r}" for r in OUTAGE_REASONS)), reason

    readyz = await_status(port, "/readyz?verbose", 503)
    lines = readyz.body.decode().split("\n")
    assert lines[:2] == ["[+]data_corruption ok", "[+]serializable_read ok"], readyz
    assert lines[2].startswith(tuple(f"[-]linearizable_read failed: {r}" for r in OUTAGE_REASONS)), readyz
    assert lines[3] == "[+]background_tasks ok", readyz
    assert lines[4:] == ["", ""], readyz  # the listing, then the newline of Go's http.Error
    assert readyz.headers == etcds.headers
    assert ask(port, "/readyz/linearizable_read").status == 503
    # What needs only this process still answers: a liveness probe does not restart the shim.
    assert ask(port, "/livez").body == b"ok\n"
    assert ask(port, "/readyz?exclude=linearizable_read").body == b"ok\n"
    assert ask(port, "/health?serializable=true").json() == {"health": "true", "reason": ""}

    proxied_shim.on_proxy(lambda proxy: proxy.clear())
    assert await_status(port, "/health", 200).json() == {"health": "true", "reason": ""}
    assert await_status(port, "/readyz?verbose", 200).body == \
        b"[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]background_tasks ok\nok\n"
