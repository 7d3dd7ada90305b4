"""An independent Python etcd client (aetcd 1.0, asyncio) against the shim, compared with real etcd.

aetcd registers etcd's protos in the default protobuf descriptor pool under the same message names
as the shim's generated code, so it cannot be imported in this process: the scenario
(`clients/aetcd_scenario.py`: put, get, ranges and sorting, txn incl. nested, delete, errors,
leases, locks, watch, compaction) runs in a subprocess against each server and prints normalised
JSON results, which must be equal step by step.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

SCENARIO = pathlib.Path(__file__).parent / "clients" / "aetcd_scenario.py"


def run_scenario(endpoint: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCENARIO), endpoint], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def aetcd_results(e2e_etcd, e2e_shim):
    return {"etcd": run_scenario(e2e_etcd.endpoint), "shim": run_scenario(e2e_shim.endpoint)}


def test_aetcd_scenario_runs_on_etcd(aetcd_results):
    r = aetcd_results["etcd"]
    assert r.returncode == 0, f"the scenario itself fails on real etcd:\n{r.stderr}"


def test_aetcd_scenario_runs_on_shim(aetcd_results):
    r = aetcd_results["shim"]
    assert r.returncode == 0, f"aetcd scenario crashed against the shim:\n{r.stderr[-5000:]}"


def test_aetcd_results_match_etcd(aetcd_results):
    e, s = aetcd_results["etcd"], aetcd_results["shim"]
    if e.returncode != 0 or s.returncode != 0:
        pytest.skip("a scenario did not complete (see the other tests)")
    etcd_steps, shim_steps = json.loads(e.stdout), dict(json.loads(s.stdout))
    diffs = []
    for name, expected in etcd_steps:
        got = shim_steps.pop(name, "<step missing>")
        if expected != got:
            diffs.append(f"step {name!r}:\n  etcd: {json.dumps(expected, sort_keys=True)}\n"
                         f"  shim: {json.dumps(got, sort_keys=True)}")
    for name, got in shim_steps.items():
        diffs.append(f"step {name!r} only on the shim: {json.dumps(got, sort_keys=True)}")
    assert not diffs, f"{len(diffs)} aetcd step(s) differ between etcd and the shim:\n\n" + "\n\n".join(diffs)
