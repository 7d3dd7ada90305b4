"""The storage backends the shim is tested on: every differential test runs once per backend.

`start_shim_on(backend, workdir)` starts the shim on that backend with whatever the backend needs
(for `cosmos`, a fresh local Cosmos DB server, stopped with the shim by `stop_with_companions`).
"""
from __future__ import annotations

import pathlib

from tests.harness import processes
from tests.harness.cosmos import start_cosmos

BACKENDS: list[str] = ["embedded", "cosmos"]

# Any base64 key is accepted by the local server; the variable is the shim's documented one.
LOCAL_COSMOS_KEY = {"COSMOS_ETCD_COSMOS_KEY": "bG9jYWwtY29zbW9zLXRlc3Qta2V5"}


def start_shim_on(backend: str, workdir: pathlib.Path, extra_args: list[str] = ()) -> processes.Server:
    if backend == "embedded":
        return processes.start_shim(workdir, extra_args=list(extra_args))
    if backend == "cosmos":
        cosmos = start_cosmos(workdir / "cosmos")
        try:
            server = processes.start_shim(workdir, backend="cosmos", env=LOCAL_COSMOS_KEY,
                                          extra_args=["--cosmos-endpoint", cosmos.endpoint, *extra_args])
        except BaseException:
            cosmos.stop()
            raise
        server.companions.append(cosmos)
        return server
    raise ValueError(f"unknown backend {backend!r}")
