"""The chart's monitoring queries and the tools that check them: promtool, the metric names a
PromQL expression reads, the prometheus-operator CRDs.

* :func:`chart_queries`: every PromQL expression of the rendered PrometheusRule and of the Grafana
  dashboard (panels and template variables), by where it comes from.
* :func:`metric_names`: the metrics one expression reads (not its functions, label names or values).
* :func:`require_promtool`: promtool's path (Debian's ``prometheus`` package; .ci/run installs it),
  or skip, and fail under CI as :func:`tests.harness.cosmos.require` does.
* ``PROMETHEUS_OPERATOR_CRDS``: the ServiceMonitor and PrometheusRule CRDs of prometheus-operator
  v0.93.0, kept unmodified in tests/peers/prometheus-operator/ (no package ships them offline).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from typing import Any

from tests.harness.manifests import load_documents
from tests.harness.project import CHART_DIR

PEERS = pathlib.Path(__file__).resolve().parents[1] / "peers"
PROMETHEUS_OPERATOR_CRDS = {
    "ServiceMonitor": PEERS / "prometheus-operator" / "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": PEERS / "prometheus-operator" / "monitoring.coreos.com_prometheusrules.yaml",
}
DASHBOARD_FILE = CHART_DIR / "dashboards" / "cosmos-etcd.json"
# Every monitoring piece on, for the standalone shim and the operator.
MONITORING_VALUES = {
    "shim": {"enabled": True, "cosmos": {"endpoint": "https://etcd-account.documents.azure.com:443/",
                                          "existingKeySecret": "cosmos-account-key"}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "dashboard": {"enabled": True}},
}
# What PromQL (and Grafana's label_values) spells with identifiers that are not metrics.
PROMQL_WORDS = frozenset({
    "sum", "min", "max", "avg", "count", "rate", "increase", "histogram_quantile", "time", "vector", "and",
    "or", "unless", "bool", "offset", "label_values",
})
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = frozenset({"up"})


def render_monitoring(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    import helm_python  # only the tests that render need the Helm engine

    with helm_python.Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values or MONITORING_VALUES, name="ce", namespace="cosmos-etcd", is_install=True)
    return [obj for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for obj in load_documents(text)]


def rule_groups(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = [obj for obj in objects if obj["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def chart_queries() -> dict[str, list[str]]:
    objects = render_monitoring()
    (configmap,) = [obj for obj in objects if obj["kind"] == "ConfigMap"]
    (dashboard_json,) = configmap["data"].values()
    return {"rules": [rule["expr"] for group in rule_groups(objects) for rule in group["rules"]],
            "dashboard": dashboard_queries(json.loads(dashboard_json))}


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: label values, matchers, ranges and grouping clauses taken
    out, what remains that is no PromQL word is a metric."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"\1", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    return {word for word in re.findall(r"(?<![\w.])[A-Za-z_:][\w:]*", text) if word not in PROMQL_WORDS}


def sample_names(samples: dict[str, float]) -> set[str]:
    """The metric names of a scrape (:func:`tests.harness.metrics.scrape`)."""
    return {key.partition("{")[0] for key in samples}


def require_promtool() -> str:
    import pytest

    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found
