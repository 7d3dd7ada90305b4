"""Checks of Kubernetes manifests without a cluster: the API's own schemas, Pod Security, CRDs.

* `kubernetes_errors`: every object against the OpenAPI schemas of a Kubernetes release
  (kubernetes-validate, strict: unknown fields are errors), offline.
* `restricted_violations`: what in a pod spec breaks the "restricted" Pod Security Standard (plus
  a read-only root filesystem, which this project asks of its containers too).
* `custom_resource_errors`: a custom resource against the openAPIV3Schema of its CRD (jsonschema;
  kubernetes-validate knows only built-in kinds).

Each returns a list of readable problems, empty when all is well, so that a test can assert
`== []` and see every problem at once. The chart tests and the operator's builder tests share them.
"""
from __future__ import annotations

from typing import Any, Iterable

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"

# Pod Security Standards, restricted profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
RESTRICTED_SECCOMP = {"RuntimeDefault", "Localhost"}
# Schema keywords whose values are data, not schemas.
LITERAL_KEYWORDS = {"default", "enum", "example", "const", "x-kubernetes-validations"}


def load_documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document YAML text (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def describe(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    where = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
    return f"{obj.get('kind')} {where}{metadata.get('name')}"


def kubernetes_errors(objects: Iterable[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Problems of built-in objects against Kubernetes' schemas; an unknown kind is a problem too."""
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(part) for part in e.path)
            problems.append(f"{describe(obj)}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{describe(obj)}: {e.message}")
    return problems


def pod_spec_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload object (Deployment, StatefulSet, Job, Pod...), or None."""
    if obj.get("kind") == "Pod":
        return obj["spec"]
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return ((obj.get("spec") or {}).get("template") or {}).get("spec")


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What breaks the restricted Pod Security Standard, or a read-only root filesystem."""
    problems = []
    pod_context = pod_spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            problems.append(f"pod: {field} is set")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    containers = [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]
    for container in containers:
        name = f"container {container['name']}"
        context = container.get("securityContext") or {}

        def effective(field: str):
            return context.get(field, pod_context.get(field))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp not in RESTRICTED_SECCOMP:
            problems.append(f"{name}: seccompProfile.type is {seccomp!r}")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities add {capabilities['add']}")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


def crd_version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def as_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as the API server applies it, in JSON Schema terms.

    Unknown fields are errors (kubectl asks for strict field validation by default), except where
    the schema preserves them; `nullable` admits null.
    """
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: value if key in LITERAL_KEYWORDS else as_json_schema(value)
                 for key, value in node.items() if key != "properties"}
    if "properties" in node:  # a map of field names to schemas, not a schema
        converted["properties"] = {name: as_json_schema(field) for name, field in node["properties"].items()}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        converted["additionalProperties"] = False
    if node.get("nullable") and "type" in node:
        converted["type"] = [node["type"], "null"]
    return converted


def custom_resource_errors(obj: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """Problems of a custom resource against its CRD: the kind, the group and version, the schema."""
    spec = crd["spec"]
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    if (group, obj.get("kind")) != (spec["group"], spec["names"]["kind"]):
        return [f"{describe(obj)}: apiVersion {obj.get('apiVersion')} kind {obj.get('kind')} is not "
                f"{spec['group']} {spec['names']['kind']}"]
    try:
        schema = crd_version_schema(crd, version)
    except KeyError as e:
        return [f"{describe(obj)}: {e.args[0]}"]
    # metadata is the API server's business, not the schema's (CRDs may not constrain it beyond name).
    body = {key: value for key, value in obj.items() if key != "metadata"}
    validator = jsonschema.Draft202012Validator(as_json_schema(schema))
    return [f"{describe(obj)}: {'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
            for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))]
