"""The kubelet's part for a Deployment, on a machine that has no kubelet and no container runtime:
its pod template's container run as local processes, from the template's own command, args, env
and volumes, until its readiness probe passes.

What a kubelet would do, and how it is played here:

* **env**: ``value``; ``valueFrom.fieldRef`` (``metadata.name`` and ``metadata.namespace`` of the
  pod, ``status.podIP`` is 127.0.0.1); ``valueFrom.secretKeyRef`` read from the Secret through the
  API. ``$(VAR)`` in command and args is expanded from the env, as the kubelet expands it
  (``$$`` escapes). Anything else is refused with a clear error rather than ignored.
* **volumes**: ``secret`` (its ``items``, or every key; ``defaultMode``) written from the Secret as
  read through the API, ``emptyDir`` an empty folder. There are no mount namespaces: every argument
  that names a mount path (or a path under it) names the volume's folder instead.
* **network**: a pod has its own network namespace; here every ``containerPort`` gets a free port of
  127.0.0.1, and an argument that names ``0.0.0.0:<containerPort>`` or the pod's IP
  (``127.0.0.1:<containerPort>``) names that port instead.
* **readiness**: the ``readinessProbe``'s ``httpGet`` (port by name or number), asked until it
  answers 200 as the kubelet asks every ``periodSeconds`` (here faster; a deadline ends the wait).

:meth:`Pod.stop` stops the process by its pid. Reporting the Deployment's status (there is no
Deployment controller either) is :meth:`tests.harness.operator.ClusterDriver.make_pods_available`.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from typing import Any

from tests.harness.health import ask
from tests.harness.kube_live import LiveKubeAPI, Refused
from tests.harness.processes import free_port, stop_process

PROBE_PACE = 0.2  # seconds between two asks of a readiness probe
_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Unsupported(AssertionError):
    """The pod template uses something this kubelet does not play."""


@dataclasses.dataclass
class Pod:
    """One pod of the Deployment: its process and where its container ports are."""

    name: str
    process: subprocess.Popen
    argv: list[str]
    ports: dict[str, int]  # the containerPort's name (or number) -> its local port
    workdir: pathlib.Path
    log_path: pathlib.Path

    def endpoint(self, port: str) -> str:
        """``127.0.0.1:<port>`` of a containerPort named ``port``."""
        return f"127.0.0.1:{self.ports[port]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.process, timeout=20)

    def assert_alive(self) -> None:
        assert self.process.poll() is None, \
            f"pod {self.name} exited with {self.process.returncode}:\n{self.log()[-5000:]}"


class Kubelet:
    """Runs pods of Deployments read from ``api``; their files under ``workdir``."""

    def __init__(self, api: LiveKubeAPI, workdir: pathlib.Path):
        self.api, self.workdir = api, workdir
        self.pods: list[Pod] = []

    async def run(self, deployment: Mapping[str, Any], *, ready_timeout: float = 60) -> list[Pod]:
        """Start ``spec.replicas`` pods of the Deployment and wait until each is ready."""
        started = [await self._start(deployment) for _ in range(deployment["spec"].get("replicas", 1))]
        for pod in started:
            await self._wait_ready(pod, deployment, ready_timeout)
        return started

    def stop(self) -> None:
        """Stop every pod started (by pid)."""
        while self.pods:
            self.pods.pop().stop()

    async def _start(self, deployment: Mapping[str, Any]) -> Pod:
        template = deployment["spec"]["template"]
        pod_spec = template["spec"]
        [container] = pod_spec["containers"]  # the shim's pods have one container
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{deployment['metadata']['name']}-{template_hash}-{uuid.uuid4().hex[:5]}"
        workdir = self.workdir / name
        workdir.mkdir(parents=True)
        env = await self._env(container, name)
        volumes = {volume["name"]: await self._volume(volume, workdir / "volumes" / volume["name"])
                   for volume in pod_spec.get("volumes", ())}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container.get("volumeMounts", ())}
        ports = {str(port.get("name") or port["containerPort"]): free_port() for port in container.get("ports", ())}
        local_ports = {port["containerPort"]: ports[str(port.get("name") or port["containerPort"])]
                       for port in container.get("ports", ())}
        argv = [_localise(_expand(arg, env), mounts, local_ports)
                for arg in [*container.get("command", ()), *container.get("args", ())]]
        if not container.get("command"):
            raise Unsupported("a container without a command (the image's entrypoint) cannot be run here")
        executable = shutil.which(argv[0])
        if executable is None:
            raise Unsupported(f"the container's command {argv[0]!r} is not on PATH")
        log_path = workdir / "container.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([executable, *argv[1:]], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=workdir, env={**os.environ, **env})
        pod = Pod(name, process, argv, ports, workdir, log_path)
        self.pods.append(pod)
        return pod

    async def _env(self, container: Mapping[str, Any], pod_name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        if container.get("envFrom"):
            raise Unsupported("envFrom is not played")
        for item in container.get("env", ()):
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
                continue
            source = item.get("valueFrom") or {}
            if "fieldRef" in source:
                field = source["fieldRef"]["fieldPath"]
                values = {"metadata.name": pod_name, "metadata.namespace": self.api.namespace,
                          "status.podIP": "127.0.0.1"}
                if field not in values:
                    raise Unsupported(f"env {item['name']}: fieldRef {field} is not played")
                env[item["name"]] = values[field]
            elif "secretKeyRef" in source:
                reference = source["secretKeyRef"]
                env[item["name"]] = (await self._secret(reference["name"]))[reference["key"]].decode()
            else:
                raise Unsupported(f"env {item['name']}: {sorted(source)} is not played")
        return env

    async def _volume(self, volume: Mapping[str, Any], folder: pathlib.Path) -> pathlib.Path:
        folder.mkdir(parents=True)
        if "emptyDir" in volume:
            return folder
        if "secret" not in volume:
            raise Unsupported(f"volume {volume['name']}: only secret and emptyDir volumes are played")
        source = volume["secret"]
        data = await self._secret(source["secretName"])
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            path = folder / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)) | 0o400)  # the owner reads it
        return folder

    async def _secret(self, name: str) -> dict[str, bytes]:
        reply = await self.api.request("GET", f"/api/v1/namespaces/{self.api.namespace}/secrets/{name}")
        if not reply.ok:
            raise Refused(reply)
        return {key: base64.b64decode(value) for key, value in (reply.body.get("data") or {}).items()}

    async def _wait_ready(self, pod: Pod, deployment: Mapping[str, Any], timeout: float) -> None:
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if probe is None:
            raise Unsupported("only an httpGet readinessProbe is played")
        port = pod.ports[str(probe["port"])]
        deadline = time.monotonic() + timeout
        while True:
            pod.assert_alive()
            try:
                if (await asyncio.to_thread(ask, port, probe.get("path", "/"))).status == 200:
                    return
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise AssertionError(f"pod {pod.name}: {probe} not ready after {timeout} s:\n{pod.log()[-5000:]}")
            await asyncio.sleep(PROBE_PACE)


def _expand(text: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` replaced by its value when defined (left as is when not), ``$$`` by ``$``."""
    def value(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VARIABLE.sub(value, text)


def _localise(arg: str, mounts: Mapping[str, pathlib.Path], ports: Mapping[int, int]) -> str:
    """A mount path named by ``arg`` becomes its volume's folder; ``0.0.0.0:<containerPort>`` and the pod's
    IP with a container port (127.0.0.1 here), the local port."""
    if mounts:
        paths = sorted(mounts, key=len, reverse=True)
        pattern = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(path.rstrip("/")) for path in paths) + r")(?=/|$)")
        arg = pattern.sub(lambda match: str(mounts[next(p for p in paths if p.rstrip("/") == match.group(1))]), arg)
    return re.sub(r"(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)", lambda match: f"127.0.0.1:{ports.get(int(match.group(1)), match.group(1))}",
                  arg)
