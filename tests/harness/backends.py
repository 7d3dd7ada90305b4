"""The storage backends the shim is tested on: every differential test runs once per backend.

A backend named here is passed to `python -m cosmos_etcd_shim serve --backend NAME`.
"""
from __future__ import annotations

BACKENDS: list[str] = ["embedded"]
