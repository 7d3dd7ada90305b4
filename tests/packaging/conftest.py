"""Fixtures of the packaging tests: the chart loaded once, and rendering it with values.

Rendering is offline (helm-python-sdk, Helm's own engine): `render(values)` gives the objects a
`helm install` would create, CRDs apart (Helm installs those from crds/, see `chart.crds`).

This folder has no __init__.py on purpose: as a package it would be named `packaging` and shadow
the PyPI library of that name (which kubernetes-validate and build import).
"""
from __future__ import annotations


import helm_python
import pytest

from tests.harness.manifests import load_documents
from tests.harness.project import CHART_DIR

RELEASE = "ce"
NAMESPACE = "cosmos-etcd"


@pytest.fixture(scope="session")
def chart():
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    """render(values) -> the rendered objects, in template order."""

    def rendered_objects(values: dict) -> list[dict]:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        return [obj for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt")
                for obj in load_documents(text)]

    return rendered_objects
