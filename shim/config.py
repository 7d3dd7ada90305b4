"""The serve command's configuration: etcd's flags where they mean the same, and their defaults."""
from __future__ import annotations

import dataclasses
import re
import urllib.parse

from cosmos_etcd_shim.storage.cosmos import layout

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's 1.5 MiB
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024**3  # etcd's default quota, 2 GiB
DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL = 600.0  # etcd's 10m
BACKENDS = ("embedded", "cosmos")
# The environment variable that carries a Cosmos DB account key (never a flag: flags show in ps).
COSMOS_KEY_VARIABLE = "COSMOS_ETCD_COSMOS_KEY"


class ConfigError(ValueError):
    """A flag value that cannot work; reported in one line."""


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    name: str = "default"
    data_dir: str = ""  # etcd's default is "<name>.etcd" in the working directory
    listen_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    advertise_client_urls: tuple[str, ...] = ("http://localhost:2379",)
    initial_advertise_peer_urls: tuple[str, ...] = ("http://localhost:2380",)
    listen_metrics_urls: tuple[str, ...] = ()
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    quota_backend_bytes: int = DEFAULT_QUOTA_BACKEND_BYTES
    watch_progress_notify_interval: float = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL
    log_level: str = "info"
    backend: str = "embedded"
    cosmos_endpoint: str = ""
    cosmos_database: str = layout.DEFAULT_DATABASE
    cosmos_container: str = layout.DEFAULT_CONTAINER
    cosmos_key_file: str = ""
    cosmos_insecure_skip_tls_verify: bool = False
    cosmos_no_create: bool = False
    cosmos_poll_interval: float = 0.1

    def __post_init__(self) -> None:
        if not self.data_dir:
            object.__setattr__(self, "data_dir", f"{self.name}.etcd")
        if self.quota_backend_bytes <= 0:
            object.__setattr__(self, "quota_backend_bytes", DEFAULT_QUOTA_BACKEND_BYTES)
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.max_request_bytes <= 0:
            raise ConfigError("--max-request-bytes must be positive")
        if self.max_txn_ops <= 0:
            raise ConfigError("--max-txn-ops must be positive")
        if self.watch_progress_notify_interval <= 0:
            raise ConfigError("--watch-progress-notify-interval must be positive")
        for url in (*self.listen_client_urls, *self.advertise_client_urls, *self.listen_metrics_urls):
            host_port(url)
        if self.backend == "cosmos":
            scheme = urllib.parse.urlsplit(self.cosmos_endpoint).scheme
            if scheme not in ("http", "https"):
                raise ConfigError("--backend cosmos needs --cosmos-endpoint https://<account>.documents.azure.com:443/")
            if self.cosmos_poll_interval <= 0:
                raise ConfigError("--cosmos-poll-interval must be positive")

    @property
    def listen_addresses(self) -> list[str]:
        return [host_port(url) for url in self.listen_client_urls]

    @property
    def metrics_addresses(self) -> list[str]:
        return [host_port(url) for url in self.listen_metrics_urls]


def host_port(url: str) -> str:
    """``http://host:port`` -> ``host:port``, refusing what the server cannot serve."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https":
        raise ConfigError(f"{url}: TLS client URLs are not supported yet; use http://")
    if parsed.scheme != "http" or not parsed.hostname:
        raise ConfigError(f"{url}: expected a URL like http://127.0.0.1:2379")
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"{url}: invalid port") from None
    if port is None:
        raise ConfigError(f"{url}: the port is missing")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{host}:{port}"


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """A Go duration as etcd's flags take them ("10m", "1m30s", "500ms"), in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ConfigError(f"invalid duration {value!r}: expected e.g. 10m, 30s or 500ms")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def split_urls(value: str) -> tuple[str, ...]:
    return tuple(u.strip() for u in value.split(",") if u.strip())
