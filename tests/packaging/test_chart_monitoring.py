"""The chart's monitoring (issue 15, item 4): ServiceMonitors, a PrometheusRule, a Grafana dashboard.

* Off by default. On, every built-in object is valid for Kubernetes 1.33 (kubernetes-validate,
  strict), every ServiceMonitor and PrometheusRule valid against prometheus-operator's own CRD
  schema (v0.93.0, tests/peers/prometheus-operator/), and `helm lint --strict` is clean.
* The ServiceMonitors select the metrics ports of what they mean to: the standalone shim's Service,
  the Services the operator creates (operator/children.py), the operator's metrics Service.
* The alert rules pass `promtool check rules`, and `promtool test rules` fires each alert on
  failing series, none on healthy ones, and none on the failing ones once the values raise the
  thresholds. Every alert has a summary, a description and a runbook that is a README section.
* The dashboard ConfigMap carries the sidecar's label (configurable); its JSON is the chart's file.
  (tests/e2e/test_monitoring_metrics.py and tests/operator/test_operator_metrics.py check that
  every metric it and the rules read is served by a running shim and operator.)
"""
from __future__ import annotations

import copy
import json
import re
import subprocess

import helm_python
import pytest
import yaml

from cosmos_etcd_operator import children
from tests.harness.manifests import custom_resource_errors, kubernetes_errors, load_documents
from tests.harness.monitoring import (DASHBOARD_FILE, MONITORING_VALUES, PROMETHEUS_OPERATOR_CRDS, render_monitoring,
                                      require_promtool, rule_groups)
from tests.harness.project import CHART_DIR, REPO

MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}
VALUES = {
    "operator and standalone shim": MONITORING_VALUES,
    "namespace mode": {**MONITORING_VALUES, "shim": {"enabled": False},
                       "operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "standalone shim only": {**MONITORING_VALUES, "operator": {"enabled": False}},
    "labels, annotations, another namespace": {**MONITORING_VALUES, "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "interval": "15s"},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"enabled": True, "labelKey": "example.com/dashboard", "labelValue": "etcd",
                      "namespace": "grafana", "annotations": {"grafana_folder": "etcd"}}}},
}
ALERTS = ("CosmosEtcdShimDown", "CosmosEtcdCosmosThrottling", "CosmosEtcdRequestUnitsNearProvisioned",
          "CosmosEtcdCommitLatencyHigh", "CosmosEtcdWatchDeliveryLag", "CosmosEtcdCertificateExpiresSoon",
          "CosmosEtcdOperatorReconcileErrors", "CosmosEtcdOperatorDown")


@pytest.fixture(scope="module")
def crds() -> dict[str, dict]:
    return {kind: load_documents(path.read_text())[0] for kind, path in PROMETHEUS_OPERATOR_CRDS.items()}


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def by_name(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in of_kind(objects, kind)}


def monitoring_errors(objects: list[dict], crds: dict[str, dict]) -> list[str]:
    return [*kubernetes_errors([obj for obj in objects if obj["kind"] not in MONITORING_KINDS]),
            *(error for obj in objects if obj["kind"] in MONITORING_KINDS
              for error in custom_resource_errors(obj, crds[obj["kind"]]))]


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------

def test_monitoring_is_off_by_default(render):
    for values in ({}, {"shim": MONITORING_VALUES["shim"]}):
        objects = render(values)
        assert not [obj for obj in objects if obj["kind"] in MONITORING_KINDS or obj["kind"] == "ConfigMap"]


@pytest.mark.parametrize("name", VALUES)
def test_every_object_is_valid(render, crds, name):
    objects = render(VALUES[name])
    assert {"ServiceMonitor", "ConfigMap"} <= {obj["kind"] for obj in objects}
    assert monitoring_errors(objects, crds) == []


def test_the_crd_schemas_catch_a_bad_object(render, crds):
    objects = render(MONITORING_VALUES)
    monitor = copy.deepcopy(of_kind(objects, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "30s"  # the field is "interval"
    rule = copy.deepcopy(of_kind(objects, "PrometheusRule")[0])
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    errors = monitoring_errors([monitor, rule], crds)
    assert any("scrapeInterval" in error for error in errors), errors
    assert any("five minutes" in error for error in errors), errors


@pytest.mark.parametrize("name", VALUES)
def test_lint_strict_is_clean(name):
    report = helm_python.lint(CHART_DIR, VALUES[name], strict=True, namespace="cosmos-etcd", kube_version="v1.33.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["error"] != "icon is recommended"] == []


def test_service_monitors_select_the_metrics_ports(render):
    objects = render(MONITORING_VALUES)
    monitors = by_name(objects, "ServiceMonitor")
    assert set(monitors) == {"ce-cosmos-etcd-shim", "ce-cosmos-etcd-operator", "ce-cosmos-etcd-operator-clusters"}
    services = by_name(objects, "Service")

    def selected_ports(monitor: dict, service: dict) -> list[str]:
        """The ports of ``service`` that ``monitor`` scrapes (none if it does not select it)."""
        labels = service["metadata"]["labels"]
        if not monitor["spec"]["selector"]["matchLabels"].items() <= labels.items():
            return []
        names = {port["name"] for port in service["spec"]["ports"]}
        return [endpoint["port"] for endpoint in monitor["spec"]["endpoints"] if endpoint["port"] in names]

    shim_monitor, operator_monitor = monitors["ce-cosmos-etcd-shim"], monitors["ce-cosmos-etcd-operator"]
    clusters_monitor = monitors["ce-cosmos-etcd-operator-clusters"]
    assert selected_ports(shim_monitor, services["ce-cosmos-etcd-shim"]) == ["metrics"]
    assert selected_ports(operator_monitor, services["ce-cosmos-etcd-operator-metrics"]) == ["metrics"]
    assert selected_ports(shim_monitor, services["ce-cosmos-etcd-operator-metrics"]) == []
    assert selected_ports(operator_monitor, services["ce-cosmos-etcd-shim"]) == []
    # The operator's children, as it creates them, in any namespace.
    owner = {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster",
             "metadata": {"name": "tenant-a", "namespace": "team-a", "uid": "uid-1"}}
    child = children.service(owner)
    assert selected_ports(clusters_monitor, child) == ["metrics"]
    assert {port["name"]: port["port"] for port in child["spec"]["ports"]}["metrics"] == children.METRICS_PORT
    assert selected_ports(clusters_monitor, services["ce-cosmos-etcd-shim"]) == []
    assert clusters_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert shim_monitor["spec"]["namespaceSelector"] == {"matchNames": ["cosmos-etcd"]}
    # The labels the rules and the dashboard group by.
    relabelings = {monitor: {r["targetLabel"]: r for r in monitors[monitor]["spec"]["endpoints"][0]["relabelings"]}
                   for monitor in monitors}
    assert relabelings["ce-cosmos-etcd-shim"]["etcd_cluster"]["replacement"] == "ce-cosmos-etcd-shim"
    label = "__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", children.CLUSTER_LABEL)
    assert relabelings["ce-cosmos-etcd-operator-clusters"]["etcd_cluster"]["sourceLabels"] == [label]
    assert {name: r["job"]["replacement"] for name, r in relabelings.items()} == {
        "ce-cosmos-etcd-shim": "cosmos-etcd", "ce-cosmos-etcd-operator-clusters": "cosmos-etcd",
        "ce-cosmos-etcd-operator": "cosmos-etcd-operator"}
    assert operator_monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_namespace_mode_monitors_the_watched_namespaces(render):
    (monitor,) = [m for m in of_kind(render(VALUES["namespace mode"]), "ServiceMonitor")
                  if m["metadata"]["name"].endswith("-clusters")]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_values_reach_the_objects(render):
    objects = render(VALUES["labels, annotations, another namespace"])
    for obj in [*of_kind(objects, "ServiceMonitor"), *of_kind(objects, "PrometheusRule")]:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["metadata"]["name"]
    assert {m["spec"]["endpoints"][0]["interval"] for m in of_kind(objects, "ServiceMonitor")} == {"15s"}
    (dashboard,) = of_kind(objects, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["labels"]["example.com/dashboard"] == "etcd"
    assert "grafana_dashboard" not in dashboard["metadata"]["labels"]
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "etcd"}


def test_the_operator_metrics_service_off_leaves_no_operator_monitor(render):
    objects = render({**MONITORING_VALUES, "operator": {"metrics": {"service": {"enabled": False}}}})
    assert sorted(by_name(objects, "ServiceMonitor")) == ["ce-cosmos-etcd-operator-clusters", "ce-cosmos-etcd-shim"]


# ------------------------------------------------------------------------------------------------
# the dashboard
# ------------------------------------------------------------------------------------------------

def test_the_dashboard_is_the_charts_file_with_the_sidecar_label(render):
    (configmap,) = of_kind(render(MONITORING_VALUES), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "cosmos-etcd"
    (name, text), = configmap["data"].items()
    assert name == "cosmos-etcd.json"
    dashboard = json.loads(text)
    assert dashboard == json.loads(DASHBOARD_FILE.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    queried = [panel for panel in panels if panel["type"] != "row"]
    assert queried and all(panel["targets"] and panel["datasource"]["uid"] == "${datasource}" for panel in queried)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace", "cluster"}


# ------------------------------------------------------------------------------------------------
# the alert rules
# ------------------------------------------------------------------------------------------------

def test_every_alert_has_a_summary_a_description_and_a_readme_runbook():
    rules = [rule for group in rule_groups(render_monitoring()) for rule in group["rules"]]
    assert tuple(rule["alert"] for rule in rules) == ALERTS
    anchors = {_anchor(line.lstrip("#").strip()) for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("#")}
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base == "https://github.com/cosmos-etcd/cosmos-etcd/blob/main/README.md"
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a README heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_promtool_checks_the_rules(tmp_path):
    promtool = require_promtool()
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(render_monitoring())}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


# Synthetic series, one minute apart, for 30 minutes. Each alert has a failing cluster (or target)
# and a healthy one; alerts are evaluated at 20 minutes, past the longest default `for` (15m).
SHIM = 'job="cosmos-etcd",namespace="tenants",etcd_cluster="{cluster}",pod="{cluster}-0",instance="{address}:2381"'
OPERATOR = 'job="cosmos-etcd-operator",namespace="tenants",etcd_cluster="{cluster}"'


def series(health: str) -> list[dict[str, str]]:
    """The inputs of one scenario: ``failing`` breaks every alert's condition, ``healthy`` none."""
    failing = health == "failing"
    shim = SHIM.format(cluster=health, address="10.0.0.1" if failing else "10.0.0.2")
    operator = OPERATOR.format(cluster=health)

    def histogram(name: str, counts: dict[str, str]) -> list[dict[str, str]]:
        return [{"series": f'{name}_bucket{{{shim},le="{le}"}}', "values": values} for le, values in counts.items()]

    return [
        {"series": f"up{{{shim}}}", "values": "0x30" if failing else "1x30"},
        {"series": f'cosmos_etcd_cosmos_requests_total{{{shim},op="append",status="429"}}',
         "values": "0+30x30" if failing else "0+1x30"},
        {"series": f'cosmos_etcd_cosmos_requests_total{{{shim},op="append",status="200"}}',
         "values": "0+30x30" if failing else "0+99x30"},
        # RU per minute: 5400 is 90 RU/s of 100 provisioned; 1200 is 20 of 400.
        {"series": f'cosmos_etcd_cosmos_request_units_total{{{shim},op="append"}}',
         "values": "0+5400x30" if failing else "0+1200x30"},
        {"series": f'cosmos_etcd_operator_provisioned_request_units_per_second{{{operator},mode="Manual"}}',
         "values": "100x30" if failing else "400x30"},
        # Every commit between 0.5 and 1 s (p99 0.995 s), or under 10 ms.
        *histogram("cosmos_etcd_storage_append_seconds", {
            "0.01": "0x30" if failing else "0+10x30", "0.5": "0x30" if failing else "0+10x30",
            "1": "0+10x30", "+Inf": "0+10x30"}),
        # Every response between 1000 and 10000 revisions behind (p99 9910), or none behind.
        *histogram("cosmos_etcd_watch_delivery_lag_revisions", {
            "0": "0x30" if failing else "0+10x30", "1000": "0x30" if failing else "0+10x30",
            "10000": "0+10x30", "+Inf": "0+10x30"}),
        # notAfter: 7 days or 90 days after the start.
        {"series": f'cosmos_etcd_tls_certificate_expiration_timestamp_seconds{{{shim},cert_file="/tls/tls.crt"}}',
         "values": f"{7 * 86400}x30" if failing else f"{90 * 86400}x30"},
        # An error every minute, or a single one.
        {"series": f'cosmos_etcd_operator_reconcile_errors_total{{{operator},part="Throughput",'
                   f'code="RequestRateTooLarge"}}', "values": "0+1x30" if failing else "0x5 1x24"},
        {"series": f'up{{job="cosmos-etcd-operator",namespace="cosmos-etcd",instance="10.0.0.9:9090"}}',
         "values": "0x30" if failing else "1x30"},
    ]


def expected_alerts(rules: dict[str, dict]) -> dict[str, list[dict]]:
    """The alerts of the failing scenario, their annotations expanded as Prometheus will."""
    shim = {"job": "cosmos-etcd", "namespace": "tenants", "etcd_cluster": "failing", "pod": "failing-0",
            "instance": "10.0.0.1:2381"}
    cluster = {"namespace": "tenants", "etcd_cluster": "failing"}
    fired = {
        "CosmosEtcdShimDown": (shim, None),
        "CosmosEtcdCosmosThrottling": (cluster, "50%"),
        "CosmosEtcdRequestUnitsNearProvisioned": (cluster, "90%"),
        "CosmosEtcdCommitLatencyHigh": (cluster, "995ms"),
        "CosmosEtcdWatchDeliveryLag": (cluster, "9910"),
        "CosmosEtcdCertificateExpiresSoon": ({**cluster, "cert_file": "/tls/tls.crt"}, "6d 23h 40m 0s"),
        "CosmosEtcdOperatorReconcileErrors": ({**cluster, "part": "Throughput", "code": "RequestRateTooLarge"}, None),
        "CosmosEtcdOperatorDown": ({"job": "cosmos-etcd-operator", "namespace": "cosmos-etcd",
                                    "instance": "10.0.0.9:9090"}, None),
    }
    alerts = {}
    for name, (labels, value) in fired.items():
        rule = rules[name]
        annotations = {key: _expand(text, labels, value) for key, text in rule["annotations"].items()}
        alerts[name] = [{"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}]
    return alerts


def _expand(template: str, labels: dict[str, str], value: str | None) -> str:
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    text = re.sub(r"\{\{ \$value( \| \w+)? \}\}", lambda m: value, text)
    assert "{{" not in text, template
    return text


LAX_THRESHOLDS = {"shimDown": {"for": "30m"}, "cosmosThrottling": {"ratio": 0.6, "for": "10m"},
                  "requestUnits": {"ratio": 0.95, "for": "15m"}, "commitLatency": {"seconds": 1, "for": "10m"},
                  "watchDeliveryLag": {"revisions": 10000, "for": "10m"}, "certificateExpiry": {"days": 3},
                  "operatorReconcileErrors": {"count": 100}, "operatorDown": {"for": "30m"}}


@pytest.mark.parametrize("scenario", ["failing series fire every alert", "healthy series fire none",
                                      "failing series under thresholds raised by values fire none"])
def test_promtool_unit_tests_fire_the_alerts(tmp_path, scenario):
    promtool = require_promtool()
    values = copy.deepcopy(MONITORING_VALUES)
    if scenario.startswith("failing series under"):
        values["monitoring"]["prometheusRule"].update(LAX_THRESHOLDS)
    groups = rule_groups(render_monitoring(values))
    rules = {rule["alert"]: rule for rule in groups[0]["rules"]}
    fires = scenario == "failing series fire every alert"
    expected = expected_alerts(rules) if fires else {name: [] for name in ALERTS}
    health = "healthy" if scenario.startswith("healthy") else "failing"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series(health),
                   "alert_rule_test": [{"eval_time": "20m", "alertname": name, "exp_alerts": alerts}
                                       for name, alerts in expected.items()]}],
    }, width=1000))
    result = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
