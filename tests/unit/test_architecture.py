"""The codebase's boundaries and generated code, checked rather than trusted."""
import ast
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
    assert config["package-dir"]["cosmos_etcd_operator"] == "operator"
    found = {".".join(("cosmos_etcd_shim", *init.parent.relative_to(ROOT / "shim").parts))
             for init in (ROOT / "shim").rglob("__init__.py")}
    # The operator is a namespace package (see the test below): its folders have no __init__.py.
    found |= {".".join(("cosmos_etcd_operator", *folder.relative_to(ROOT / "operator").parts))
              for folder in [ROOT / "operator", *(ROOT / "operator").rglob("*/")]
              if any(folder.glob("*.py")) and "__pycache__" not in folder.parts}
    assert found == set(config["packages"])


def _imported_modules(folder: pathlib.Path) -> dict[str, set[str]]:
    """Every module a folder's Python files import, by file (import-linter's grimp cannot take the
    operator's namespace package as a root, so these two boundaries are read from the syntax tree)."""
    imports = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
                names.add(node.module)
        imports[str(path.relative_to(ROOT))] = names
    return imports


def test_operator_uses_only_the_shims_public_pieces():
    layout = "cosmos_etcd_shim.storage.cosmos.layout"
    public = {"cosmos_etcd_shim", "cosmos_etcd_shim.__version__", "cosmos_etcd_shim.ETCD_VERSION", layout}
    for path, names in _imported_modules(ROOT / "operator").items():
        internal = {name for name in names if name.startswith("cosmos_etcd_shim")
                    and name not in public and not name.startswith(layout + ".")}
        assert not internal, f"{path} imports shim internals: {sorted(internal)}"


def test_shim_runs_without_the_operator():
    """Only the command line (its `operator` subcommand) reaches into the operator."""
    for path, names in _imported_modules(ROOT / "shim").items():
        if path != "shim/cli.py":
            assert not any(name.startswith("cosmos_etcd_operator") for name in names), path


def test_operator_parts_never_reach_back_into_the_handlers():
    """handlers.py keeps kopf's registrations and the order of the parts; the parts and the pass
    they run in never import it (only main.py, which registers the handlers, does)."""
    for path, names in _imported_modules(ROOT / "operator").items():
        if path != "operator/main.py":
            assert "cosmos_etcd_operator.handlers" not in names and \
                not any(name.startswith("cosmos_etcd_operator.handlers.") for name in names), path


def test_operator_folder_cannot_shadow_the_standard_library():
    """With the repository root first on sys.path, `operator` still resolves to the stdlib module."""
    assert not (ROOT / "operator" / "__init__.py").exists()
    code = ("import importlib.util, sys; sys.modules.pop('operator', None); "
            "print(importlib.util.find_spec('operator').origin)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert pathlib.Path(result.stdout.strip()).parent == pathlib.Path(pathlib.__file__).parent
