"""Regenerate the protobuf and gRPC code of this folder from its ``.proto`` files.

Run from anywhere: ``python shim/proto/generate.py`` (needs ``grpcio-tools``, the ``dev`` extra);
``--check`` only reports whether the committed modules are what the ``.proto`` files generate.
The ``.proto`` files import each other as ``cosmos_etcd_shim/proto/...``: protoc maps that virtual
path onto this folder, so the generated modules import each other by their installed package name.
"""
import argparse
import filecmp
import importlib.resources
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
VIRTUAL = "cosmos_etcd_shim/proto"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated module is out of date")
    check = parser.parse_args().check
    protos = sorted(p.name for p in HERE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as out:
        args = [
            "protoc",
            f"--proto_path={VIRTUAL}={HERE}",
            f"--proto_path={importlib.resources.files('grpc_tools') / '_proto'}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(f"{VIRTUAL}/{name}" for name in protos),
        ]
        if protoc.main(args) != 0:
            return 1
        for generated in (pathlib.Path(out) / VIRTUAL).iterdir():
            # protoc writes a stub module for every file; only those with services have content.
            source = HERE / generated.name.replace("_pb2_grpc.py", ".proto")
            if generated.name.endswith("_grpc.py") and "service " not in source.read_text():
                continue
            target = HERE / generated.name
            if check:
                if not target.exists() or not filecmp.cmp(generated, target, shallow=False):
                    print(f"{target.name} is out of date: run python {pathlib.Path(__file__).name}", file=sys.stderr)
                    return 1
            else:
                shutil.copyfile(generated, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
