"""The NetworkPolicy of one CosmosEtcdCluster: who may open a connection to the shim's pods.

One part of the reconciliation with the shape of the others: :func:`reconcile` renders the policy
from the spec, reads the stored one, and creates it or sets it back only where it differs (drift:
an edited or deleted policy is restored by the next pass), then returns the part's condition, which
:func:`reconcile_part` gives the pass.

The policy selects the shim's pods and admits ingress on three ports only (Ingress policy type: any
other connection to the pods is dropped; egress, to Cosmos DB and Entra ID, is left alone):

* the client port (2379) from ``spec.shim.allowedClients``: by default ``[{podSelector: {}}]``, every
  pod of the cluster's own namespace, where kube-apiserver usually runs next to its datastore;
* the peer port (2380) from the cluster's own shim pods: followers forward writes to the leader
  there (the shim's leader election), and nobody else has any business on it;
* the metrics port (2381, also /livez and /readyz) from ``spec.shim.metrics.allowedFrom``: by
  default the pods of namespaces labelled ``cosmosetcd.io/scrape-metrics: "true"`` — nothing until a
  platform team labels its monitoring namespace (``kubectl label namespace monitoring
  cosmosetcd.io/scrape-metrics=true``). The kubelet's probes come from the node, which Kubernetes'
  NetworkPolicy semantics always admit.

Each entry is a NetworkPolicy peer: a podSelector alone means pods of the cluster's namespace, a
namespaceSelector alone every pod of the matching namespaces, both together the matching pods of
the matching namespaces. An empty list admits nobody: the port's rule is left out of the policy,
because a rule with no peers would admit everyone.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cosmos_etcd_operator import children
from cosmos_etcd_operator.conditions import FALSE, NETWORK_POLICY, TRUE, Condition
from cosmos_etcd_operator.kubeapi import Kube, KubeError
from cosmos_etcd_operator.reconciliation import Reconciliation
from cosmos_etcd_operator.spec import ClusterSpec

METRICS_SCRAPER_LABEL = "cosmosetcd.io/scrape-metrics"
DEFAULT_CLIENTS: tuple[Mapping[str, Any], ...] = ({"podSelector": {}},)
DEFAULT_METRICS_SCRAPERS: tuple[Mapping[str, Any], ...] = (
    {"namespaceSelector": {"matchLabels": {METRICS_SCRAPER_LABEL: "true"}}},)


def allowed_clients(spec: ClusterSpec) -> Sequence[Mapping[str, Any]]:
    return DEFAULT_CLIENTS if spec.shim.allowed_clients is None else spec.shim.allowed_clients


def metrics_scrapers(spec: ClusterSpec) -> Sequence[Mapping[str, Any]]:
    return DEFAULT_METRICS_SCRAPERS if spec.shim.metrics_allowed_from is None else spec.shim.metrics_allowed_from


def network_policy(owner: Mapping[str, Any], spec: ClusterSpec) -> dict[str, Any]:
    """The policy as the operator renders it (a pure function of the owner and the spec)."""
    replicas = ({"podSelector": {"matchLabels": children.selector(owner["metadata"]["name"])}},)
    rules = [{"from": [dict(peer) for peer in peers], "ports": [{"protocol": "TCP", "port": port}]}
             for peers, port in ((allowed_clients(spec), children.CLIENT_PORT), (replicas, children.PEER_PORT),
                                 (metrics_scrapers(spec), children.METRICS_PORT)) if peers]
    return children.child(owner, "networking.k8s.io/v1", "NetworkPolicy", spec={
        "podSelector": {"matchLabels": children.selector(owner["metadata"]["name"])},
        "policyTypes": ["Ingress"],
        "ingress": rules,
    })


async def reconcile(kube: Kube, owner: Mapping[str, Any], spec: ClusterSpec) -> tuple[Condition, str | None]:
    """(the NetworkPolicy condition, "created", "updated" or None for what was changed)."""
    desired = network_policy(owner, spec)
    try:
        _, change = await kube.ensure(desired)
    except KubeError as e:
        return Condition(NETWORK_POLICY, FALSE, e.reason, f"NetworkPolicy {desired['metadata']['name']}: {e}"), None
    return Condition(NETWORK_POLICY, TRUE, "Enforced", _describe(spec)), change


async def reconcile_part(step: Reconciliation, spec: ClusterSpec) -> None:
    """The ``NetworkPolicy`` part of a pass: ready, or the pass stops here."""
    condition, change = await reconcile(step.kube, step.body, spec)
    if condition.status != TRUE:
        step.fail(NETWORK_POLICY, condition.reason, condition.message, retryable=True)
    step.restored(NETWORK_POLICY, "NetworkPolicy", step.name, change)
    step.conditions.set(condition)


def _describe(spec: ClusterSpec) -> str:
    def who(peers: Sequence[Mapping[str, Any]], default: Sequence[Mapping[str, Any]], default_words: str) -> str:
        if not peers:
            return "nobody"
        if peers == default:
            return default_words
        return f"{len(peers)} selector{'s' if len(peers) > 1 else ''} of the spec"
    clients = who(allowed_clients(spec), DEFAULT_CLIENTS, "the pods of its own namespace")
    scrapers = who(metrics_scrapers(spec), DEFAULT_METRICS_SCRAPERS,
                   f"namespaces labelled {METRICS_SCRAPER_LABEL}=true")
    return f"client port {children.CLIENT_PORT} open to {clients}; peer port {children.PEER_PORT} open to its own " \
           f"replicas; metrics port {children.METRICS_PORT} open to {scrapers}"
