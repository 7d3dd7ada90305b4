"""Reading the shim's Prometheus endpoint (--listen-metrics-urls) in tests."""
from __future__ import annotations

import urllib.request


def scrape(port: int) -> dict[str, float]:
    """Every sample on http://127.0.0.1:PORT/metrics, keyed by name with its labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
