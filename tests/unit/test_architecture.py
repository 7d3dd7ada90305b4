"""The codebase's boundaries and generated code, checked rather than trusted."""
import pathlib
import subprocess
import sys
import tomllib


ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_layer_contracts_hold():
    """import-linter: api -> mvcc -> storage, no gRPC below api, the operator only on public pieces."""
    result = subprocess.run(["lint-imports", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_generated_protobuf_code_is_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "shim/proto/generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_package_folder_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["cosmos_etcd_shim"] == "shim"
    found = {".".join(("cosmos_etcd_shim", *init.parent.relative_to(ROOT / "shim").parts))
             for init in (ROOT / "shim").rglob("__init__.py")}
    assert found == set(config["packages"])


def test_operator_folder_cannot_shadow_the_standard_library():
    """With the repository root first on sys.path, `operator` still resolves to the stdlib module."""
    assert not (ROOT / "operator" / "__init__.py").exists()
    code = ("import importlib.util, sys; sys.modules.pop('operator', None); "
            "print(importlib.util.find_spec('operator').origin)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert pathlib.Path(result.stdout.strip()).parent == pathlib.Path(pathlib.__file__).parent
