"""Copy the CRDs of the top-level crds/ folder into the chart's crds/ folder, or check the copy.

crds/ is the one source of truth; the chart carries a byte-for-byte copy because a chart must be
self-contained when packaged, and Flux's source-controller drops symlinks from the Git artifacts
it builds charts from (fluxcd/source-controller#191), so a symlink would lose the CRDs there.

    python helm/sync_crds.py           # copy (and remove chart CRDs that crds/ no longer has)
    python helm/sync_crds.py --check   # exit 1, naming the files, when the copy differs

tests/packaging/test_crds.py runs the check.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = REPO / "crds"
CHART_CRDS = REPO / "helm" / "cosmos-etcd" / "crds"


def crd_files(folder: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.yaml"))}


def differences() -> list[str]:
    """What differs between crds/ and the chart's copy, one line each; empty when in sync."""
    source, copy = crd_files(SOURCE), crd_files(CHART_CRDS)
    lines = [f"{name}: missing from {CHART_CRDS.relative_to(REPO)}/" for name in source.keys() - copy.keys()]
    lines += [f"{name}: not in crds/ (stale copy)" for name in copy.keys() - source.keys()]
    lines += [f"{name}: content differs" for name in source.keys() & copy.keys() if source[name] != copy[name]]
    return sorted(lines)


def sync() -> None:
    CHART_CRDS.mkdir(parents=True, exist_ok=True)
    source = crd_files(SOURCE)
    for stale in crd_files(CHART_CRDS).keys() - source.keys():
        (CHART_CRDS / stale).unlink()
    for name in source:
        shutil.copyfile(SOURCE / name, CHART_CRDS / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        found = differences()
        for line in found:
            print(line, file=sys.stderr)
        if found:
            print("run: python helm/sync_crds.py", file=sys.stderr)
        return 1 if found else 0
    sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
