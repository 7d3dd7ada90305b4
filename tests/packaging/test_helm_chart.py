"""The Helm chart helm/cosmos-etcd, rendered offline for several sets of values.

* Every rendered object is valid for Kubernetes 1.33 (kubernetes-validate, strict), every pod is
  "restricted" (Pod Security Standards) with a read-only root filesystem, and `helm lint --strict`
  is clean, for each set of values.
* The operator: one replica, Recreate, liveness on /healthz, the chart's own image for the shims it
  creates; RBAC cluster-wide (ClusterRole) or per watched namespace (Role), never a wildcard.
* The standalone shim: replicas, probes, TLS from a Secret, the account key from a Secret or
  workload identity, Service and PodDisruptionBudget selecting its pods.
* values.schema.json rejects bad values with a message naming the key.
* The chart's version and appVersion are the package version; the image tag defaults to it.
* NOTES.txt and the README name the objects the chart renders.
"""
from __future__ import annotations

import helm_python
import pytest
import yaml

from cosmos_etcd_operator import main as operator_main
from cosmos_etcd_shim.health import READ_TIMEOUT_SECONDS
from tests.harness.manifests import kubernetes_errors, load_documents, pod_spec_of, restricted_violations
from tests.harness.project import CHART_DIR, PACKAGE_VERSION, REPO

NAMESPACE = "cosmos-etcd"

OPERATOR_CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SHIM_CLIENT_ID = "66666666-7777-8888-9999-000000000000"
ENDPOINT = "https://etcd-account.documents.azure.com:443/"
DIGEST = "sha256:" + "0123456789abcdef" * 4
STANDALONE_SHIM = {"enabled": True, "cosmos": {"endpoint": ENDPOINT, "existingKeySecret": "cosmos-account-key"}}

VALUES = {
    "defaults": {},
    "namespace-mode": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "standalone-shim-tls": {
        "operator": {"enabled": False},
        "shim": {**STANDALONE_SHIM, "replicas": 3,
                 "tls": {"enabled": True, "secretName": "etcd-server-tls", "clientCertAuth": True}},
    },
    "workload-identity": {
        "operator": {"workloadIdentity": {"enabled": True, "clientId": OPERATOR_CLIENT_ID},
                     "serviceAccount": {"annotations": {"example.com/owner": "platform"}}},
        "shim": {"enabled": True, "cosmos": {"endpoint": ENDPOINT},
                 "workloadIdentity": {"enabled": True, "clientId": SHIM_CLIENT_ID}},
    },
    "custom-image-and-cloud": {
        "image": {"repository": "registry.example.com:5000/platform/cosmos-etcd", "digest": DIGEST,
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "operator": {"cloud": "custom", "armEndpoint": "https://management.azure.example/",
                     "armAudience": "https://management.core.azure.example/",
                     "authorityHost": "https://login.azure.example/",
                     "managedTLS": {"caLifetimeDays": 1825, "certificateLifetimeDays": 90, "renewFraction": 0.75,
                                    "rotationOverlapDays": 0.5}},
        "shim": {**STANDALONE_SHIM, "cosmos": {**STANDALONE_SHIM["cosmos"], "noCreate": True},
                 "extraArgs": ["--max-txn-ops=256"]},
    },
}

STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
                   "helm.sh/chart")
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}


def only(objects: list[dict], kind: str, component: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind
               and (component is None or o["metadata"]["labels"]["app.kubernetes.io/component"] == component)]
    assert len(matches) == 1, f"want one {kind} {component or ''}, got {[o['metadata']['name'] for o in matches]}"
    return matches[0]


def container(deployment: dict) -> dict:
    (single,) = deployment["spec"]["template"]["spec"]["containers"]
    return single


def flags(deployment: dict) -> dict[str, str]:
    """The container's --flag=value arguments (a bare --flag maps to "")."""
    return dict(arg.partition("=")[::2] for arg in container(deployment)["args"] if arg.startswith("--"))


def assert_probed_over_http(deployment: dict, metrics_port: int) -> None:
    """The shim's probes ask /livez and /readyz on the named metrics port, which is where
    --listen-metrics-urls serves (plain http, TLS or not): no gRPC or TCP fallback."""
    shim = container(deployment)
    assert flags(deployment)["--listen-metrics-urls"] == f"http://0.0.0.0:{metrics_port}"
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in shim["ports"]
    for probe, path in {"startupProbe": "/livez", "readinessProbe": "/readyz", "livenessProbe": "/livez"}.items():
        assert shim[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
        assert not {"grpc", "tcpSocket", "exec"} & shim[probe].keys(), probe
        # The shim's health read gives up first: the kubelet gets the shim's answer, not its own timeout.
        assert shim[probe]["timeoutSeconds"] > READ_TIMEOUT_SECONDS, probe


def selects(selector: dict[str, str], deployment: dict) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


# ------------------------------------------------------------------------------------------------
# every set of values
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VALUES)
def test_every_object_is_valid_for_kubernetes(render, name):
    objects = render(VALUES[name])
    assert objects
    assert kubernetes_errors(objects) == []


@pytest.mark.parametrize("name", VALUES)
def test_every_pod_is_restricted(render, name):
    workloads = [o for o in render(VALUES[name]) if pod_spec_of(o) is not None]
    assert workloads
    for workload in workloads:
        assert restricted_violations(pod_spec_of(workload)) == [], workload["metadata"]["name"]


@pytest.mark.parametrize("name", VALUES)
def test_every_object_is_labelled_and_placed(render, name):
    for obj in render(VALUES[name]):
        labels = obj["metadata"]["labels"]
        assert [label for label in STANDARD_LABELS if label not in labels] == [], obj["metadata"]["name"]
        assert labels["app.kubernetes.io/version"] == PACKAGE_VERSION
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace"), f"{obj['kind']} {obj['metadata']['name']} has no namespace"


@pytest.mark.parametrize("name", VALUES)
def test_lint_strict_is_clean(name):
    report = helm_python.lint(CHART_DIR, VALUES[name], strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    assert report["errors"] == []
    # The one info-level remark: no icon URL (the project has none).
    assert [m for m in report["messages"] if m["error"] != "icon is recommended"] == []


def test_lint_reports_bad_values():
    report = helm_python.lint(CHART_DIR, {"operator": {"cloud": "mars"}}, strict=True, namespace=NAMESPACE)
    assert any("/operator/cloud" in m["error"] for m in report["messages"]), report


# ------------------------------------------------------------------------------------------------
# the operator
# ------------------------------------------------------------------------------------------------

def test_default_install_is_the_operator(render):
    objects = render({})
    deployment = only(objects, "Deployment", "operator")
    spec = deployment["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    image = f"ghcr.io/cosmos-etcd/cosmos-etcd:{PACKAGE_VERSION}"
    assert container(deployment)["image"] == image
    args = flags(deployment)
    assert container(deployment)["args"][0] == "operator"
    # The shims it creates run the chart's own image: one image for both roles.
    assert args["--shim-image"] == image
    assert args["--cloud"] == "public" and "--namespace" not in args
    assert not [flag for flag in args if flag.startswith("--tls-")]  # the operator's own TLS lifetimes
    # Liveness: kopf's /healthz on the port of --liveness-address.
    probe = container(deployment)["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert probe["path"] == "/healthz"
    assert args["--liveness-address"] == f"0.0.0.0:{ports[probe['port']]}"
    # The metrics Service reaches the port of --metrics-address on the operator's pod.
    service = only(objects, "Service", "operator")
    (port,) = service["spec"]["ports"]
    assert args["--metrics-address"] == f"0.0.0.0:{ports[port['targetPort']]}"
    assert selects(service["spec"]["selector"], deployment)
    # Its ServiceAccount is the one bound to its role.
    account = only(objects, "ServiceAccount", "operator")["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account
    assert not [o for o in objects if o["metadata"]["labels"]["app.kubernetes.io/component"] == "shim"]


def rules_of(role: dict) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a Role or ClusterRole grants."""
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def bound_accounts(binding: dict) -> set[tuple[str, str]]:
    return {(s["namespace"], s["name"]) for s in binding["subjects"] if s["kind"] == "ServiceAccount"}


def test_cluster_wide_rbac(render):
    objects = render({})
    role = only(objects, "ClusterRole")
    binding = only(objects, "ClusterRoleBinding")
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    account = only(objects, "ServiceAccount", "operator")["metadata"]
    assert bound_accounts(binding) == {(account["namespace"], account["name"])}
    granted = rules_of(role)
    assert not [rule for rule in granted if "*" in rule]
    # What the operator works on, and how much of it (reads only where it only reads).
    assert ("cosmosetcd.io", "cosmosetcdclusters/status", "patch") in granted
    assert {verb for group, resource, verb in granted if resource == "events"} == {"create"}
    # Secrets are named in the CR: read one by one, never listed (which would read them all).
    assert {verb for group, resource, verb in granted if resource == "secrets"}.isdisjoint({"list", "watch"})
    assert {verb for group, resource, verb in granted}.isdisjoint({"escalate", "bind", "impersonate", "deletecollection"})


def test_namespace_mode_rbac(render):
    namespaces = VALUES["namespace-mode"]["operator"]["watchNamespaces"]
    objects = render(VALUES["namespace-mode"])
    cluster_wide = rules_of(only(render({}), "ClusterRole"))
    deployment = only(objects, "Deployment", "operator")
    assert [a for a in container(deployment)["args"] if a.startswith("--namespace")] == \
        [f"--namespace={ns}" for ns in namespaces]
    account = only(objects, "ServiceAccount", "operator")["metadata"]
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert sorted(roles) == sorted(bindings) == sorted(namespaces)
    for namespace in namespaces:
        assert rules_of(roles[namespace]) == cluster_wide
        assert bindings[namespace]["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert bound_accounts(bindings[namespace]) == {(account["namespace"], account["name"])}
    # Nothing cluster-wide is granted in namespace mode.
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_workload_identity(render):
    objects = render(VALUES["workload-identity"])
    for component, client_id in (("operator", OPERATOR_CLIENT_ID), ("shim", SHIM_CLIENT_ID)):
        account = only(objects, "ServiceAccount", component)
        assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == client_id
        deployment = only(objects, "Deployment", component)
        assert deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert only(objects, "ServiceAccount", "operator")["metadata"]["annotations"]["example.com/owner"] == "platform"
    # With workload identity the shim has no key: the Azure SDK takes the projected token.
    env = {e["name"] for e in container(only(objects, "Deployment", "shim"))["env"]}
    assert "COSMOS_ETCD_COSMOS_KEY" not in env
    assert flags(only(objects, "Deployment", "shim"))["--cosmos-auth"] == "entra-id"
    # Without it, nothing is labelled for the webhook.
    default_pod = only(render({}), "Deployment", "operator")["spec"]["template"]["metadata"]
    assert "azure.workload.identity/use" not in default_pod["labels"]


def test_custom_image_and_cloud(render):
    values = VALUES["custom-image-and-cloud"]
    objects = render(values)
    image = f"{values['image']['repository']}@{DIGEST}"
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        assert container(deployment)["image"] == image
        assert container(deployment)["imagePullPolicy"] == "Always"
        assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    args = flags(only(objects, "Deployment", "operator"))
    assert args["--shim-image"] == image
    assert (args["--cloud"], args["--arm-endpoint"], args["--arm-audience"], args["--authority-host"]) == \
        ("custom", "https://management.azure.example/", "https://management.core.azure.example/",
         "https://login.azure.example/")
    assert (args["--tls-ca-lifetime"], args["--tls-certificate-lifetime"], args["--tls-renew-fraction"],
            args["--tls-rotation-overlap"]) == ("1825", "90", "0.75", "0.5")
    # What the operator makes of them.
    policy = operator_main.parse_args([f"{flag}={value}" for flag, value in args.items()
                                       if flag.startswith("--tls-")]).tls_policy
    assert (policy.ca_lifetime.days, policy.leaf_lifetime.days, policy.overlap.total_seconds()) == (1825, 90, 43200)
    shim_args = container(only(objects, "Deployment", "shim"))["args"]
    assert "--cosmos-no-create" in shim_args and shim_args[-1] == "--max-txn-ops=256"


# ------------------------------------------------------------------------------------------------
# the standalone shim
# ------------------------------------------------------------------------------------------------

def test_standalone_shim_with_tls(render):
    values = VALUES["standalone-shim-tls"]
    objects = render(values)
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects} == {"shim"}
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    deployment = only(objects, "Deployment", "shim")
    pod = deployment["spec"]["template"]["spec"]
    shim = container(deployment)
    assert deployment["spec"]["replicas"] == 3
    assert shim["args"][0] == "serve"
    args = flags(deployment)
    service = only(objects, "Service", "shim")
    assert args["--backend"] == "cosmos"
    assert args["--cosmos-endpoint"] == ENDPOINT
    assert args["--listen-client-urls"] == "https://0.0.0.0:2379"
    assert args["--advertise-client-urls"] == f"https://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:2379"
    assert args["--name"] == "$(POD_NAME)"
    env = {e["name"]: e["valueFrom"] for e in shim["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["COSMOS_ETCD_COSMOS_KEY"] == {"secretKeyRef": {"name": "cosmos-account-key", "key": "key"}}
    # TLS: the Secret's files, as etcd's flags name them.
    (tls_volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert tls_volume["secret"]["secretName"] == "etcd-server-tls"
    (mount,) = [m for m in shim["volumeMounts"] if m["name"] == tls_volume["name"]]
    assert mount["readOnly"] is True
    directory = mount["mountPath"]
    assert (args["--cert-file"], args["--key-file"], args["--trusted-ca-file"]) == \
        (f"{directory}/tls.crt", f"{directory}/tls.key", f"{directory}/ca.crt")
    assert "--client-cert-auth" in args
    # The health endpoints stay plain http: the same probes as without TLS.
    assert_probed_over_http(deployment, 2381)
    # The shim never calls the Kubernetes API.
    assert pod["automountServiceAccountToken"] is False
    assert only(objects, "ServiceAccount", "shim")["automountServiceAccountToken"] is False
    # Replicas prefer different nodes.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], deployment)
    # The Service on 2379 and the disruption budget select the shim's pods.
    client_port = {p["name"]: p for p in service["spec"]["ports"]}["client"]
    assert client_port["port"] == 2379
    assert {p["name"]: p["containerPort"] for p in shim["ports"]}[client_port["targetPort"]] == 2379
    assert selects(service["spec"]["selector"], deployment)
    budget = only(objects, "PodDisruptionBudget", "shim")
    assert budget["spec"]["maxUnavailable"] == 1
    assert selects(budget["spec"]["selector"]["matchLabels"], deployment)


def test_shim_without_tls_is_probed_on_its_metrics_port(render):
    deployment = only(render({"shim": {**STANDALONE_SHIM, "metricsPort": 9381}}), "Deployment", "shim")
    assert_probed_over_http(deployment, 9381)
    args = flags(deployment)
    assert args["--listen-client-urls"] == "http://0.0.0.0:2379"
    assert not {"--cert-file", "--key-file", "--client-cert-auth"} & args.keys()


def test_operator_and_shim_side_by_side(render):
    objects = render({"shim": STANDALONE_SHIM})
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names))
    assert {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects} == {"operator", "shim"}
    operator, shim = only(objects, "Deployment", "operator"), only(objects, "Deployment", "shim")
    assert not selects(operator["spec"]["selector"]["matchLabels"], shim)
    assert not selects(shim["spec"]["selector"]["matchLabels"], operator)


def test_neither_part_renders_nothing(render):
    assert render({"operator": {"enabled": False}}) == []


# ------------------------------------------------------------------------------------------------
# values.schema.json
# ------------------------------------------------------------------------------------------------

BAD_VALUES = {
    "unknown key": ({"replicaCount": 3}, ["additional properties 'replicaCount' not allowed"]),
    "misspelled nested key": ({"shim": {"replica": 3}}, ["/shim", "'replica' not allowed"]),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"]),
    "namespace name": ({"operator": {"watchNamespaces": ["Team_A"]}}, ["/operator/watchNamespaces/0", "'Team_A'"]),
    "cloud": ({"operator": {"cloud": "mars"}}, ["/operator/cloud", "'public', 'china', 'usgovernment', 'custom'"]),
    # The authority may come from the endpoint's /metadata/endpoints; the endpoint itself may not.
    "custom cloud without endpoint": ({"operator": {"cloud": "custom"}}, ["/operator/armEndpoint"]),
    "workload identity without client id": ({"operator": {"workloadIdentity": {"enabled": True}}},
                                            ["/operator/workloadIdentity/clientId"]),
    "shim without endpoint": ({"shim": {"enabled": True, "cosmos": {"existingKeySecret": "k"}}},
                              ["/shim/cosmos/endpoint"]),
    "shim without credentials": ({"shim": {"enabled": True, "cosmos": {"endpoint": ENDPOINT}}},
                                 ["/shim/cosmos/existingKeySecret"]),
    "TLS without Secret": ({"shim": {**STANDALONE_SHIM, "tls": {"enabled": True}}}, ["/shim/tls/secretName"]),
    "client certificates without TLS": ({"shim": {**STANDALONE_SHIM, "tls": {"clientCertAuth": True}}},
                                        ["/shim/tls/clientCertAuth"]),
    "zero replicas": ({"shim": {"replicas": 0}}, ["/shim/replicas", "minimum"]),
    "replicas as text": ({"shim": {"replicas": "two"}}, ["/shim/replicas", "string"]),
    "digest": ({"image": {"digest": "latest"}}, ["/image/digest"]),
    "port": ({"operator": {"livenessPort": 70000}}, ["/operator/livenessPort", "maximum"]),
    "extra arg that is not a flag": ({"shim": {"extraArgs": ["serve"]}}, ["/shim/extraArgs/0"]),
    "zero CA lifetime": ({"operator": {"managedTLS": {"caLifetimeDays": 0}}}, ["/operator/managedTLS/caLifetimeDays"]),
    "renewal too late": ({"operator": {"managedTLS": {"renewFraction": 0.99}}},
                         ["/operator/managedTLS/renewFraction", "maximum"]),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values_naming_the_key(chart, case):
    values, mentions = BAD_VALUES[case]
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.render(values, name="ce", namespace=NAMESPACE, is_install=True)
    message = str(caught.value)
    assert [m for m in mentions if m not in message] == [], message


def test_schema_accepts_the_defaults_and_every_example_set(chart):
    for values in VALUES.values():
        chart.validate_schema(values)
    chart.validate_schema(chart.values)


def test_schema_closes_every_object(chart):
    """additionalProperties: false everywhere a value is a fixed set of keys, so a typo is an error."""

    def open_objects(schema: dict, path: str) -> list[str]:
        found = []
        if schema.get("type") == "object" and "properties" in schema and schema.get("additionalProperties") is not False:
            found.append(path)
        for key, child in (schema.get("properties") or {}).items():
            found += open_objects(child, f"{path}.{key}")
        return found

    schema = chart.schema
    found = open_objects(schema, "")
    for name, definition in schema["definitions"].items():
        found += open_objects(definition, f"#/definitions/{name}")
    assert found == []


# ------------------------------------------------------------------------------------------------
# versions
# ------------------------------------------------------------------------------------------------

def test_chart_version_is_the_package_version(chart):
    metadata = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert metadata["apiVersion"] == "v2"
    assert (metadata["version"], metadata["appVersion"]) == (PACKAGE_VERSION, PACKAGE_VERSION)
    assert chart.values["image"]["tag"] == ""  # so that the image follows appVersion


def test_notes_name_the_endpoint_and_the_operator(chart, render):
    values = VALUES["standalone-shim-tls"]
    notes = chart.render(values, name="ce", namespace=NAMESPACE, is_install=True)["cosmos-etcd/templates/NOTES.txt"]
    service = only(render(values), "Service", "shim")["metadata"]
    assert f"--etcd-servers=https://{service['name']}.{service['namespace']}.svc:2379" in notes
    assert "operator" not in notes.lower().replace("cosmos-etcd", "")
    default_notes = chart.render({}, name="ce", namespace=NAMESPACE, is_install=True)["cosmos-etcd/templates/NOTES.txt"]
    operator = only(render({}), "Deployment", "operator")["metadata"]["name"]
    assert f"deployment/{operator}" in default_notes and "every namespace" in default_notes


def test_the_readme_names_what_the_chart_renders(chart):
    """The README's install commands (release cosmos-etcd; release etcd in namespace etcd for the shim)."""
    readme = (REPO / "README.md").read_text()
    operator = chart.render({}, name="cosmos-etcd", namespace="cosmos-etcd", is_install=True)
    (deployment,) = load_documents(operator["cosmos-etcd/templates/operator-deployment.yaml"])
    assert f"deployment/{deployment['metadata']['name']}" in readme
    shim_values = {"operator": {"enabled": False}, "shim": {
        **STANDALONE_SHIM, "tls": {"enabled": True, "secretName": "etcd-server-tls", "clientCertAuth": True}}}
    shim = chart.render(shim_values, name="etcd", namespace="etcd", is_install=True)
    (service,) = load_documents(shim["cosmos-etcd/templates/shim-service.yaml"])
    assert f"--etcd-servers=https://{service['metadata']['name']}.etcd.svc:2379" in readme
    assert f"--etcd-servers=https://{service['metadata']['name']}.etcd.svc:2379" in shim["cosmos-etcd/templates/NOTES.txt"]
