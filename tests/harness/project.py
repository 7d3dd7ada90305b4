"""Where the project's shipped pieces are: the repository, the chart, the CRDs, the package version."""
from __future__ import annotations

import pathlib
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "cosmos-etcd"
CRDS_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"
DOCKERFILE = REPO / "Dockerfile"
PACKAGE_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
