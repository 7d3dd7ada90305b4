"""``cosmos-etcd operator``: its flags, its errors, and the command itself run as a process against
the Kubernetes API emulator and the ARM stand-in, stopped by SIGTERM."""
from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys

import pytest

from cosmos_etcd_operator import main, pki
from tests.harness.operator import ClusterDriver, operator_flags
from tests.harness.processes import stop_process
from tests.operator.test_operator_lifecycle import SPEC

OPERATOR = [sys.executable, "-m", "cosmos_etcd_shim", "operator"]


def _run(args: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run([*OPERATOR, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          **options)


def test_help_lists_the_flags():
    result = _run(["--help"])
    assert result.returncode == 0
    for flag in ("--namespace", "--liveness-address", "--metrics-address", "--peering", "--cloud", "--arm-endpoint",
                 "--authority-host", "--azure-ca-file", "--shim-image", "--drift-interval", "--log-level",
                 "--tls-ca-lifetime", "--tls-certificate-lifetime", "--tls-renew-fraction", "--tls-rotation-overlap"):
        assert flag in result.stdout


@pytest.mark.parametrize("args, mentions", [
    (["--cloud", "custom"], "the custom cloud needs --arm-endpoint"),
    (["--cloud", "custom", "--arm-endpoint", "http://127.0.0.1:1", "--authority-host", "https://127.0.0.1:1"],
     "--arm-endpoint must be an https URL"),
    (["--arm-endpoint", "https://management.example"], "--arm-endpoint is only for --cloud custom"),
    (["--cloud", "moon"], "invalid choice: 'moon'"),
    (["--drift-interval", "0"], "must be a positive number of seconds"),
    (["--metrics-address", "9090"], "--metrics-address must be HOST:PORT"),
    (["--tls-certificate-lifetime", "400", "--tls-ca-lifetime", "365"], "must be shorter than --tls-ca-lifetime"),
    (["--tls-renew-fraction", "0.95"], "must be between 0.5 and 0.9"),
    (["--tls-rotation-overlap", "-1"], "must be a positive number of seconds"),
])
def test_bad_flags_are_one_line_and_exit_2(args, mentions):
    result = _run(args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("cosmos-etcd operator: error:") and mentions in line, result.stderr


def test_tls_flags_become_the_policy():
    config = main.parse_args(["--tls-ca-lifetime", "30", "--tls-certificate-lifetime", "0.5",
                              "--tls-renew-fraction", "0.75", "--tls-rotation-overlap", "0.25"])
    assert config.tls_policy == pki.Policy(ca_lifetime=datetime.timedelta(days=30),
                                           leaf_lifetime=datetime.timedelta(hours=12), renew_fraction=0.75,
                                           overlap=datetime.timedelta(hours=6))
    assert main.parse_args([]).tls_policy == pki.Policy()


def test_no_kubernetes_login_is_a_clear_error(tmp_path):
    result = _run([], env={"KUBECONFIG": str(tmp_path / "missing"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "cosmos-etcd operator: error: no Kubernetes login" in result.stderr


async def test_the_command_runs_the_operator_until_sigterm(kube_api, arm_stand_in, arm_service_principal, tmp_path):
    flags = [flag for flag in operator_flags(arm_stand_in) if flag != "debug"]
    flags[flags.index("--log-level") + 1:flags.index("--log-level") + 1] = ["info"]
    log = (tmp_path / "operator.log").open("w")
    process = subprocess.Popen([*OPERATOR, *flags], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        cluster = ClusterDriver(kube_api)
        await cluster.add_secret("azure-sp", arm_service_principal)
        await cluster.apply(SPEC)
        await cluster.wait_ready(timeout=60)
    finally:
        code = await asyncio.to_thread(stop_process, process)
        log.close()
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "operator.log").read_text().splitlines()]  # JSON only
    assert {"message": "Creation is processed: 1 succeeded; 0 failed.", "severity": "info",
            "object": {"apiVersion": "cosmosetcd.io/v1alpha1", "kind": "CosmosEtcdCluster", "name": "tenant-a",
                       "uid": cluster.body["metadata"]["uid"], "namespace": "control-planes"}}.items() <= \
        {**next(record for record in records if record["message"].startswith("Creation is processed"))}.items()
    assert any(record["message"] == "Signal SIGTERM is received. Operator is stopping." for record in records)
    assert not any(record["severity"] == "debug" for record in records)
