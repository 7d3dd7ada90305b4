"""kube-controller-manager and kube-scheduler (v1.36, ``tests/harness/kube_controllers.py``) through
a kube-apiserver on the shim, compared with the same steps on a real etcd (issue 14, item 2).

The control planes are this package's shared stacks (``conftest.py``, ``tests/harness/kube_stacks.py``)
with the controllers added: kube-controller-manager running the deployment, replicaset,
garbage-collector, namespace and serviceaccount controllers, and kube-scheduler, both electing
their leader through Leases stored in the datastore.

There is no kubelet here, so the test plays the two parts of one that the controllers wait for:

* a **Node** object (:func:`ensure_node`), created through the API with a Ready condition and
  capacity, for the scheduler to bind Pods to. No node-lifecycle controller runs, so nothing marks
  it unreachable for its missing heartbeats; the not-ready taint the API server puts on a new Node,
  which that controller would lift once the Node is Ready, is lifted by the test.
* the **status report** of a Pod once it runs (:func:`report_pods_ready`): phase Running and a
  Ready condition for every Pod bound to the Node, so that Deployments become available and a
  rollout moves on from the old ReplicaSet to the new one.

Pod deletion: a bound Pod is deleted gracefully (a deletion timestamp, then the kubelet's final
delete once its containers stopped). The pod templates here set ``terminationGracePeriodSeconds:
0``, so the API server deletes a Pod at once, as it deletes a Pod that was never scheduled. The
alternative, confirming each terminating Pod as a kubelet would, would make the namespace
controller come back only after its estimate of the Pods' remaining grace period (30 s by
default), a slower test for no more coverage: the garbage collector's and the
namespace controller's own work (dependents found through owner references, foreground deletion
finalizers, every resource of the namespace listed and deleted) is the same either way.

The kill -9 test has a Cosmos stack of its own (two replicas behind one kube-apiserver, the
controllers on it) and kills one replica in the middle: the API server, the controllers' leader
Leases and their work go on through the other replica.

The answers compared are shapes: ReplicaSets by revision with their replicas, Pod counts, the Node
they are bound to, owner kinds, conditions and deletion outcomes, never names chosen by a
controller (hashes) or resourceVersions. Synchronisation is by polling with deadlines.
"""
from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from typing import Any

import pytest
from cosmos_etcd_shim.proto import rpc_pb2 as pb

from tests.harness.cosmos_shims import Shim
from tests.harness.kube_apiserver import Kube
from tests.harness.kube_stacks import Stack, new_namespace, on_both, start_stack
from tests.harness.waiting import poll
from tests.kube_control_plane.test_apiserver_on_the_shim import (
    configmap_lifecycle,
    leases_and_events,
)

pytestmark = pytest.mark.timeout(300)

NODE = "node-1"
CONVERGENCE_DEADLINE = 90.0  # a rollout is a few controller passes; more on a loaded machine
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


@pytest.fixture
def etcd_plane(etcd_stack) -> Stack:
    etcd_stack.start_controllers()
    return etcd_stack


@pytest.fixture
def shim_plane(shim_stack) -> Stack:
    shim_stack.start_controllers()
    return shim_stack


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_node(kube: Kube) -> None:
    """The Node the scheduler binds to: Ready, with room for a hundred Pods (once per API server)."""
    resources = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}}}
    created = kube.post("/api/v1/nodes", node)
    if created.status == 409:
        return
    created.expect(201)
    # The API server taints a new Node not-ready (admission plugin TaintNodesByCondition); the
    # node-lifecycle controller lifts the taint once the Node reports Ready. It does not run here
    # (it would also mark the Node unreachable for want of kubelet heartbeats): lifted by hand.
    kube.request("PATCH", f"/api/v1/nodes/{NODE}", {"spec": {"taints": None}}, MERGE_PATCH).expect(200)
    # status is the kubelet's to write: through the status subresource, as the kubelet does
    kube.request("PATCH", f"/api/v1/nodes/{NODE}/status", {"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "a Node object without a kubelet, played by the test",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
    }}, STRATEGIC_MERGE_PATCH).expect(200)


def deployment(name: str, replicas: int, image: str = "registry.invalid/app:1") -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "app", "image": image}]}}}}


def pods_of(kube: Kube, ns: str, app: str) -> list[dict]:
    return kube.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{app}").expect(200)["items"]


def replicasets_of(kube: Kube, ns: str, app: str) -> list[dict]:
    return kube.get(f"/apis/apps/v1/namespaces/{ns}/replicasets?labelSelector=app%3D{app}").expect(200)["items"]


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def report_pods_ready(kube: Kube, ns: str, app: str) -> None:
    """The kubelet's report for every Pod bound to the Node: Running and Ready."""
    for pod in pods_of(kube, ns, app):
        if pod["spec"].get("nodeName") != NODE or is_ready(pod) or pod["metadata"].get("deletionTimestamp"):
            continue
        ready = {"status": "True", "lastTransitionTime": now()}
        reply = kube.request("PATCH", f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}/status", {
            "status": {"phase": "Running", "conditions": [
                {"type": t, **ready} for t in ("Initialized", "ContainersReady", "Ready")]}},
            STRATEGIC_MERGE_PATCH)
        assert reply.ok or reply.status == 404, f"pod status: HTTP {reply.status} {reply.body}"


def shape(kube: Kube, ns: str, app: str) -> dict:
    """What the controllers made of Deployment ``app``: ReplicaSets by revision, Pods, bindings."""
    replicasets = replicasets_of(kube, ns, app)
    pods = pods_of(kube, ns, app)
    by_uid = {rs["metadata"]["uid"]: rs for rs in replicasets}
    return {
        "replicasets": {rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: rs["spec"]["replicas"]
                        for rs in replicasets},
        "replicaset owners": sorted({(o["kind"], o["name"], o.get("controller"))
                                     for rs in replicasets for o in rs["metadata"].get("ownerReferences", [])}),
        "pods": len(pods),
        "pod owners (revision)": sorted(by_uid[o["uid"]]["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                                        if o["uid"] in by_uid else o["kind"]
                                        for p in pods for o in p["metadata"].get("ownerReferences", [])),
        "nodes": sorted({p["spec"].get("nodeName", "") for p in pods}),
        "images": sorted({c["image"] for p in pods for c in p["spec"]["containers"]}),
    }


def rollout_complete(kube: Kube, ns: str, name: str, replicas: int) -> dict | None:
    """Deployment ``name`` rolled out (as ``kubectl rollout status`` judges) with ``replicas`` Pods
    bound to the Node: its shape then, else None. Reports the bound Pods Ready on the way."""
    report_pods_ready(kube, ns, name)
    current = kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}").expect(200)
    status = current.get("status", {})
    done = (status.get("observedGeneration", 0) >= current["metadata"]["generation"]
            and status.get("updatedReplicas") == replicas and status.get("availableReplicas") == replicas
            and status.get("replicas") == replicas)
    if not done:
        return None
    got = shape(kube, ns, name)
    return got if got["pods"] == replicas and got["nodes"] == [NODE] else None


def converge(kube: Kube, ns: str, name: str, replicas: int) -> dict:
    try:
        return poll(lambda: rollout_complete(kube, ns, name, replicas), CONVERGENCE_DEADLINE,
                    f"deployment {ns}/{name} rolled out with {replicas} pods on {NODE}", pace=0.3)
    except AssertionError as e:
        events = [(x["reason"], x["message"]) for x in kube.get(f"/api/v1/namespaces/{ns}/events").expect(200)["items"]]
        raise AssertionError(f"{e}; at the deadline: {shape(kube, ns, name)}; events: {events[-10:]}") from None


def conditions(obj: dict) -> list[tuple[str, str, str]]:
    return sorted((c["type"], c["status"], c.get("reason", "")) for c in obj.get("status", {}).get("conditions", []))


# --- steps ----------------------------------------------------------------------------------


def deployment_scaled_and_rolled_out(stack: Stack, ns: str) -> dict:
    kube = stack.kube
    ensure_node(kube)
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web", 2)).expect(201)
    answers: dict[str, Any] = {"created": converge(kube, ns, "web", 2)}
    pod = pods_of(kube, ns, "web")[0]
    answers["pod scheduled"] = [c for c in conditions(pod) if c[0] == "PodScheduled"]
    for replicas in (4, 1):
        kube.request("PATCH", f"{path}/scale", {"spec": {"replicas": replicas}}, MERGE_PATCH).expect(200)
        answers[f"scaled to {replicas}"] = converge(kube, ns, "web", replicas)
    kube.request("PATCH", path, {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "registry.invalid/app:2"}]}}}}, STRATEGIC_MERGE_PATCH).expect(200)
    answers["rolled out"] = converge(kube, ns, "web", 1)
    answers["deployment conditions"] = conditions(kube.get(path).expect(200))
    return answers


def namespace_emptied_when_deleted(stack: Stack, ns: str) -> dict:
    kube = stack.kube
    ensure_node(kube)
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("app", 2)).expect(201)
    for i in range(3):
        kube.post(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}}).expect(201)
    kube.post(f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}).expect(201)
    before = converge(kube, ns, "app", 2)
    deleted = kube.delete(f"/api/v1/namespaces/{ns}").expect(200)
    poll(lambda: kube.get(f"/api/v1/namespaces/{ns}").status == 404, CONVERGENCE_DEADLINE,
         f"namespace {ns} removed by the namespace controller")
    left = {resource: [i["metadata"]["name"] for i in kube.get(f"{api}/namespaces/{ns}/{resource}").expect(200)["items"]]
            for api, resource in (("/apis/apps/v1", "deployments"), ("/apis/apps/v1", "replicasets"),
                                  ("/api/v1", "pods"), ("/api/v1", "configmaps"), ("/api/v1", "secrets"),
                                  ("/api/v1", "serviceaccounts"))}
    return {"before": before, "phase after delete": deleted["status"]["phase"],
            "finalizers after delete": deleted["spec"].get("finalizers"), "left": left}


def deleted_with_policy(kube: Kube, ns: str, policy: str) -> dict:
    """A Deployment of two Pods deleted with ``policy``: the DELETE's answer, then its dependents
    once the garbage collector is done with them."""
    name = policy.lower()
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(name, 2)).expect(201)
    converge(kube, ns, name, 2)
    deleted = kube.request("DELETE", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                           {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy}).expect(200)
    poll(lambda: kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}").status == 404,
         CONVERGENCE_DEADLINE, f"deployment {name} deleted ({policy})")

    def dependents_settled() -> dict | None:
        got = shape(kube, ns, name)
        if policy == "Orphan":
            return got if got["pods"] == 2 and not got["replicaset owners"] else None
        return got if not got["replicasets"] and not got["pods"] else None

    return {
        "delete answer": (deleted["kind"], bool(deleted["metadata"].get("deletionTimestamp")),
                          deleted["metadata"].get("finalizers")),
        "dependents after": poll(dependents_settled, CONVERGENCE_DEADLINE, f"the dependents of deployment {name} ({policy})"),
    }


def deployment_deleted_with_each_propagation_policy(stack: Stack, ns: str) -> dict:
    ensure_node(stack.kube)
    return {policy: deleted_with_policy(stack.kube, ns, policy) for policy in ("Foreground", "Background", "Orphan")}


# --- tests ----------------------------------------------------------------------------------


def test_a_deployment_scheduled_scaled_and_rolled_out(etcd_plane, shim_plane):
    got = on_both(deployment_scaled_and_rolled_out, etcd_plane, shim_plane)
    assert got["created"]["replicasets"] == {"1": 2} and got["created"]["nodes"] == [NODE]
    assert got["created"]["replicaset owners"] == [("Deployment", "web", True)]
    assert got["pod scheduled"] == [("PodScheduled", "True", "")]
    assert got["scaled to 4"]["pods"] == 4 and got["scaled to 1"]["pods"] == 1
    # the template change made a second ReplicaSet, which took over from the first
    assert got["rolled out"]["replicasets"] == {"1": 0, "2": 1}
    assert got["rolled out"]["pod owners (revision)"] == ["2"]
    assert got["rolled out"]["images"] == ["registry.invalid/app:2"]
    assert ("Progressing", "True", "NewReplicaSetAvailable") in got["deployment conditions"]


def test_a_deleted_namespace_is_emptied_and_removed(etcd_plane, shim_plane):
    got = on_both(namespace_emptied_when_deleted, etcd_plane, shim_plane)
    assert got["phase after delete"] == "Terminating" and got["finalizers after delete"] == ["kubernetes"]
    assert got["left"] == {r: [] for r in ("deployments", "replicasets", "pods", "configmaps", "secrets",
                                           "serviceaccounts")}


def test_a_deployment_deleted_in_the_foreground_background_and_orphaning(etcd_plane, shim_plane):
    got = on_both(deployment_deleted_with_each_propagation_policy, etcd_plane, shim_plane)
    # foreground: the Deployment stays, marked, until the garbage collector has removed its dependents
    assert got["Foreground"]["delete answer"] == ("Deployment", True, ["foregroundDeletion"])
    assert got["Foreground"]["dependents after"]["pods"] == 0
    assert got["Background"]["dependents after"]["replicasets"] == {}
    # orphan: the ReplicaSet and its Pods stay, without their owner
    assert got["Orphan"]["delete answer"] == ("Deployment", True, ["orphan"])
    assert got["Orphan"]["dependents after"]["replicasets"] == {"1": 2}


class LeaseRenewer(threading.Thread):
    """A leader renewing its Lease every 100 ms (finer than kube-controller-manager's 2 s, to
    measure the blip), recording each renewal's outcome (monotonic time, HTTP status or the error)
    until stopped."""

    def __init__(self, kube: Kube, ns: str):
        super().__init__(daemon=True)
        self.kube, self.path = kube, f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/leader"
        self.outcomes: list[tuple[float, int | str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        lease = None
        while not self.halt.wait(0.1):
            try:
                if lease is None:
                    lease = self.kube.get(self.path).expect(200)
                lease["spec"]["renewTime"] = datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%S.%fZ")
                reply = self.kube.put(self.path, lease)
                self.outcomes.append((time.monotonic(), reply.status))
                lease = reply.body if reply.status == 200 else None
            except (OSError, AssertionError) as e:
                self.outcomes.append((time.monotonic(), repr(e)))
                lease = None


def leads(replica: Shim) -> bool:
    """Whether the shim replica is its container's elected leader (etcdctl's IS LEADER)."""
    status = replica.maintenance.Status(pb.StatusRequest(), timeout=10)
    return status.leader == status.header.member_id


def leader_leases(kube: Kube) -> dict[str, dict]:
    """The specs of the controllers' leader Leases."""
    return {name: kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}").expect(200)["spec"]
            for name in ("kube-controller-manager", "kube-scheduler")}


def same_leaders_renewed_since(kube: Kube, before: dict[str, dict]) -> bool:
    """Every leader Lease held by the same holder as ``before``, with no transition, renewed since."""
    now = leader_leases(kube)
    return all((now[n]["holderIdentity"], now[n].get("leaseTransitions")) ==
               (before[n]["holderIdentity"], before[n].get("leaseTransitions"))
               and now[n]["renewTime"] > before[n]["renewTime"] for n in before)


def test_the_control_plane_goes_on_through_the_other_cosmos_replica_after_kill_9(etcd_plane, tmp_path):
    """Two shim replicas behind one kube-apiserver, with kube-controller-manager and kube-scheduler
    on it; one replica is killed with SIGKILL while a leader renews its Lease: renewals resume
    through the other replica; the controllers keep their leadership (same holders, no transition)
    and carry a Deployment made before the kill through a scale-up and a rollout after it; every
    step still answers as on etcd; and watches resumed from before the kill (the watch cache's
    feed, re-opened on the other replica, and a watch straight to the datastore) see the writes
    made after it. (The API server's compactor runs every 20 s here, not 5 s: the watches resumed
    from before the kill must come before it compacts that far, whatever the machine's load.)"""
    stack = start_stack("cosmos", tmp_path, compaction_interval="20s")
    try:
        kube = stack.kube
        stack.start_controllers()
        ns = new_namespace(kube)
        ensure_node(kube)
        kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web", 2)).expect(201)
        converge(kube, ns, "web", 2)
        leaders_before = leader_leases(kube)
        kube.post(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", {"metadata": {"name": "leader"}, "spec": {
            "holderIdentity": "leader-1", "leaseDurationSeconds": 15}}).expect(201)
        before = {resource: kube.post(f"/api/v1/namespaces/{ns}/{resource}",
                                      {"metadata": {"name": "before"}, "data": {"v": "MQ=="}}).expect(201)
                  for resource in ("configmaps", "secrets")}
        renewer = LeaseRenewer(kube, ns)
        renewer.start()
        try:
            poll(lambda: sum(1 for _, o in renewer.outcomes if o == 200) >= 5, 30, "five renewals before the kill")
            # kill the replicas' elected leader if it holds kube-apiserver's watch streams (the watch
            # cache's feed), else the replica holding more of them, after checking that it served
            # kube-apiserver's writes too
            victim, survivor = sorted(stack.datastore.replicas, reverse=True,
                                      key=lambda r: (watch_streams(r) > 0 and leads(r), watch_streams(r)))
            print(f"\nkilled {victim.name}, {'the leader' if leads(victim) else 'a follower'}")
            assert watch_streams(victim) > 0 and grpc_calls(victim, "Txn") > 0, victim.metrics()
            killed_at = time.monotonic()
            victim.server.kill()
            # renewals go on: ten in a row succeed after the kill
            poll(lambda: [o for t, o in renewer.outcomes if t > killed_at][-10:] == [200] * 10, 60,
                 f"ten successive Lease renewals after the kill; outcomes: {renewer.outcomes[-20:]}")
        finally:
            renewer.halt.set()
            renewer.join(10)
        failed_renewals = [o for t, o in renewer.outcomes if t > killed_at and o != 200]
        survivor_stack = stack_with_survivor(stack, survivor)
        survivor_stack.assert_alive()
        poll(lambda: kube.get("/readyz").status == 200, 30, "kube-apiserver ready through the other replica")
        # watches resumed from before the kill
        for resource, payload in (("configmaps", {"v": "2"}), ("secrets", {"v": "Mg=="})):
            kube.post(f"/api/v1/namespaces/{ns}/{resource}", {"metadata": {"name": "after"}, "data": payload}).expect(201)
            events = kube.watch(f"/api/v1/namespaces/{ns}/{resource}", before[resource]["metadata"]["resourceVersion"],
                                lambda e: any(x["object"].get("metadata", {}).get("name") == "after" for x in e), timeout=30)
            assert [(e["type"], e["object"].get("metadata", {}).get("name")) for e in events] == [("ADDED", "after")], \
                f"{resource}: {events}"
            assert kube.get(f"/api/v1/namespaces/{ns}/{resource}/before").expect(200)["data"] == before[resource]["data"]

        # the Deployment made before the kill: scaled up and rolled out by the same controllers
        kube.request("PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/web", {"spec": {
            "replicas": 3, "template": {"spec": {"containers": [{"name": "app", "image": "registry.invalid/app:2"}]}}}},
            STRATEGIC_MERGE_PATCH).expect(200)
        rolled = converge(kube, ns, "web", 3)
        assert rolled["replicasets"] == {"1": 0, "2": 3} and rolled["nodes"] == [NODE], rolled
        # both leaders renewed their Leases through the other replica (they renew every 2 s)
        poll(lambda: same_leaders_renewed_since(kube, leaders_before), 30,
             f"the controllers' leader Leases renewed by the same holders; before: {leaders_before}")
        # the same steps as on etcd, now through the surviving replica
        on_both(configmap_lifecycle, etcd_plane, survivor_stack)
        on_both(leases_and_events, etcd_plane, survivor_stack)
        on_both(deployment_scaled_and_rolled_out, etcd_plane, survivor_stack)
        # a short blip at most: kube-apiserver's etcd client moves to the other endpoint
        assert len(failed_renewals) <= 20, failed_renewals
        assert same_leaders_renewed_since(kube, leaders_before), (leader_leases(kube), leaders_before)
    finally:
        stack.stop()


def watch_streams(replica: Shim) -> float:
    return replica.metrics().get("cosmos_etcd_watch_streams", 0)


def grpc_calls(replica: Shim, method: str) -> float:
    return sum(v for k, v in replica.metrics().items()
               if k.startswith("cosmos_etcd_grpc_requests_total{") and f'method="{method}"' in k)


def stack_with_survivor(stack: Stack, survivor: Shim) -> Stack:
    """The stack as on_both sees it: the killed replica is not expected to be alive."""
    return Stack(dataclasses.replace(stack.datastore, replicas=[survivor]), stack.apiserver, stack.controllers)
