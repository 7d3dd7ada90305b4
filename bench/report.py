"""The side-by-side table every benchmark prints: each figure for etcd, the shim, and their ratio."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from collections.abc import Iterable


def lookup(results: dict, kind: str, *path):
    """results[kind][path...], or None where any step is missing."""
    value = results.get(kind)
    for step in path:
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


def percentile(sorted_values: list[float], p: float) -> float:
    """The nearest-rank percentile of an already sorted list (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}"


def ratio_table(rows: Iterable[tuple[str, float | None, float | None]]) -> list[str]:
    """Markdown lines: | metric | etcd | shim | shim/etcd |."""
    lines = ["| metric | etcd | shim | shim/etcd |", "|---|---:|---:|---:|"]
    for label, etcd, shim in rows:
        ratio = f"{shim / etcd:.2f}" if etcd and shim is not None else "-"
        lines.append(f"| {label} | {fmt(etcd)} | {fmt(shim)} | {ratio} |")
    return lines


def ratio_columns(columns: list[str], rows: Iterable[tuple[str, list]]) -> list[str]:
    """Markdown lines with a column a server, the first the base: | metric | base | other (other/base) | ...|."""
    lines = ["| metric | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, values in rows:
        base = values[0]
        cells = [fmt(base)] + [fmt(v) + (f" ({v / base:.2f}×)" if base and v is not None else "") for v in values[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def ratios(rows: Iterable[tuple]) -> dict[str, float | None]:
    """shim/etcd of each (label, etcd, shim, ...) row, for the JSON results."""
    return {label: (round(shim / etcd, 3) if etcd and shim is not None else None) for label, etcd, shim, *_ in rows}


def new_results(settings: dict, out: pathlib.Path | None) -> dict:
    """The results of a run before any figure: the machine (and its load at the start) and the
    settings; `out`'s folder made now, so that a long run does not fail at its end."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "load_average": os.getloadavg()},
            "settings": settings}


def publish(results: dict, text: str, started: float, note: str, out: pathlib.Path | None) -> None:
    """Print the tables and a line on the run (its time, the CPUs, `note`); write the results as JSON to `out`."""
    results["total_seconds"] = round(time.monotonic() - started, 1)
    print(text)
    print(f"\n({results['total_seconds']} s; {os.cpu_count()} CPUs; {note})")
    if out:
        out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"JSON written to {out}")


def stop_flushed(server) -> int:
    """Stop a benchmarked server and flush its writes to disk now: left in the page cache, they
    would be written during the next server's run and slow its fsyncs (seen: 25-30 %)."""
    exit_code = server.stop()
    os.sync()
    return exit_code
