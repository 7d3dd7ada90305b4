"""The serve command's configuration: etcd's flags where they mean the same, and their defaults."""
from __future__ import annotations

import dataclasses
import re
import urllib.parse

from cosmos_etcd_shim.mvcc.history import DEFAULT_CACHE_BYTES, DEFAULT_CHECKPOINT_INTERVAL
from cosmos_etcd_shim.storage.cosmos import layout

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's 1.5 MiB
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024**3  # etcd's default quota, 2 GiB
DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL = 600.0  # etcd's 10m
DEFAULT_AUTH_TOKEN_TTL = 300  # seconds a simple token lives after its last use, etcd's default
DEFAULT_BCRYPT_COST = 10  # etcd's (Go bcrypt's DefaultCost)
BCRYPT_COSTS = range(4, 32)  # Go bcrypt's MinCost..MaxCost
DEFAULT_MAX_CONCURRENT_STREAMS = 2**32 - 1  # etcd's math.MaxUint32: no limit
# etcd has no limit of its own on these two; the defaults are far above what kube-apiserver uses
# (one watch per resource type with its watch cache, and lists in pages of at most 10,000 keys),
# and bound what one client can make the server hold (see the README's "Limits").
DEFAULT_MAX_WATCHERS_PER_STREAM = 100_000
DEFAULT_MAX_RANGE_KEYS = 1_000_000
TLS_VERSIONS = ("TLS1.2", "TLS1.3")
BACKENDS = ("embedded", "cosmos")
# What Maintenance.Snapshot sends: etcd's bbolt database, or the store image (a SQLite database in the
# embedded backend's format, which a data directory can hold as it is).
SNAPSHOT_FORMATS = ("etcd", "sqlite")
# The environment variable that carries a Cosmos DB account key (never a flag: flags show in ps).
COSMOS_KEY_VARIABLE = "COSMOS_ETCD_COSMOS_KEY"
# How the shim signs in to Cosmos DB: with the account key, or keyless with an Entra ID token
# (DefaultAzureCredential: workload identity, managed identity, environment, Azure CLI).
COSMOS_AUTH_MODES = ("key", "entra-id")


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
    snapshot_format: str = "etcd"
    watch_progress_notify_interval: float = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    max_watchers_per_stream: int = DEFAULT_MAX_WATCHERS_PER_STREAM
    max_range_keys: int = DEFAULT_MAX_RANGE_KEYS
    history_cache_bytes: int = DEFAULT_CACHE_BYTES
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    # Client TLS, as etcd's flags of the same names (shim/tls.py)
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    auto_tls: bool = False
    self_signed_cert_validity: int = 1  # years
    cipher_suites: tuple[str, ...] = ()
    tls_min_version: str = "TLS1.2"
    tls_max_version: str = ""  # the highest the TLS library has
    # The etcd Auth API (shim/mvcc/auth.py)
    auth_token: str = "simple"
    auth_token_ttl: int = DEFAULT_AUTH_TOKEN_TTL
    bcrypt_cost: int = DEFAULT_BCRYPT_COST
    log_level: str = "info"
    backend: str = "embedded"
    cosmos_endpoint: str = ""
    cosmos_database: str = layout.DEFAULT_DATABASE
    cosmos_container: str = layout.DEFAULT_CONTAINER
    cosmos_key_file: str = ""
    cosmos_auth: str = ""  # one of COSMOS_AUTH_MODES; "": the key when one is given, else Entra ID
    cosmos_insecure_skip_tls_verify: bool = False
    cosmos_no_create: bool = False
    cosmos_poll_interval: float = 0.1
    # Replication among the replicas of one Cosmos container (shim/replication/): the peer
    # listener takes forwarded writes; without it every replica writes the log itself.
    listen_peer_urls: tuple[str, ...] = ()
    leader_lease_seconds: float = 6.0

    def __post_init__(self) -> None:
        if not self.data_dir:
            object.__setattr__(self, "data_dir", f"{self.name}.etcd")
        if self.quota_backend_bytes == 0:  # a negative quota disables it, as in etcd
            object.__setattr__(self, "quota_backend_bytes", DEFAULT_QUOTA_BACKEND_BYTES)
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.snapshot_format not in SNAPSHOT_FORMATS:
            raise ConfigError(f"--snapshot-format must be one of {', '.join(SNAPSHOT_FORMATS)}, "
                              f"not {self.snapshot_format!r}")
        if self.max_request_bytes <= 0:
            raise ConfigError("--max-request-bytes must be positive")
        if self.max_txn_ops <= 0:
            raise ConfigError("--max-txn-ops must be positive")
        if self.watch_progress_notify_interval <= 0:
            raise ConfigError("--watch-progress-notify-interval must be positive")
        for flag in ("max_concurrent_streams", "max_watchers_per_stream", "max_range_keys"):
            if getattr(self, flag) <= 0:
                raise ConfigError(f"--{flag.replace('_', '-')} must be positive")
        if self.history_cache_bytes < 0:
            raise ConfigError("--history-cache-bytes must not be negative")
        if self.checkpoint_interval < 0:
            raise ConfigError("--checkpoint-interval must not be negative")
        for url in (*self.listen_client_urls, *self.advertise_client_urls):
            host_port(url)
        for url in self.listen_metrics_urls:
            host_port(url, schemes=("http",))
        self._check_tls()
        if self.tls_enabled and self.advertise_client_urls == ServeConfig.advertise_client_urls:
            # Not given: the default says how clients reach this server, https when it serves TLS.
            object.__setattr__(self, "advertise_client_urls", ("https://localhost:2379",))
        if self.backend == "cosmos":
            scheme = urllib.parse.urlsplit(self.cosmos_endpoint).scheme
            if scheme not in ("http", "https"):
                raise ConfigError("--backend cosmos needs --cosmos-endpoint https://<account>.documents.azure.com:443/")
            if self.cosmos_poll_interval <= 0:
                raise ConfigError("--cosmos-poll-interval must be positive")
        if self.cosmos_auth not in ("", *COSMOS_AUTH_MODES):
            raise ConfigError(f"--cosmos-auth must be one of {', '.join(COSMOS_AUTH_MODES)}, not {self.cosmos_auth!r}")
        if self.cosmos_auth == "entra-id" and self.cosmos_key_file:
            raise ConfigError("--cosmos-auth entra-id signs in without a key: it takes no --cosmos-key-file")
        if self.listen_peer_urls:
            if self.backend != "cosmos":
                raise ConfigError("--listen-peer-urls: replicas share a log only on the Cosmos backend")
            for url in (*self.listen_peer_urls, *self.initial_advertise_peer_urls):
                host_port(url)
            if any(url.startswith("https://") for url in self.listen_peer_urls) and not self.cert_file:
                raise ConfigError("--listen-peer-urls https:// serves the client TLS settings: give --cert-file and "
                                  "--key-file")
            if self.leader_lease_seconds <= 2:
                raise ConfigError("--leader-lease-seconds must be more than 2")
        if self.auth_token != "simple":
            raise ConfigError(f"--auth-token {self.auth_token!r}: only simple tokens are supported (JWT is not)")
        if self.auth_token_ttl <= 0:
            raise ConfigError("--auth-token-ttl must be positive")
        if self.bcrypt_cost not in BCRYPT_COSTS:
            raise ConfigError(f"--bcrypt-cost must be between {BCRYPT_COSTS.start} and {BCRYPT_COSTS.stop - 1}")

    def _check_tls(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("--cert-file and --key-file must be given together")
        for url in self.listen_client_urls:
            if url.startswith("https://") and not (self.cert_file or self.auto_tls):
                # etcd's message
                raise ConfigError(f"TLS key/cert (--cert-file, --key-file) must be provided for client url {url} "
                                  "with HTTPS scheme")
        secure = set(self.tls_addresses)
        if any(host_port(url) in secure for url in self.listen_client_urls if not url.startswith("https://")):
            raise ConfigError("--listen-client-urls: one address cannot serve both http and https")
        if self.requires_client_certificates and not self.trusted_ca_file:
            raise ConfigError("--client-cert-auth needs --trusted-ca-file, the CAs client certificates must chain to")
        if self.self_signed_cert_validity <= 0:
            raise ConfigError("--self-signed-cert-validity must be positive")
        for flag, version in (("--tls-min-version", self.tls_min_version), ("--tls-max-version", self.tls_max_version)):
            if version and version not in TLS_VERSIONS:
                raise ConfigError(f"{flag}: unexpected TLS version {version!r} "
                                  f"(must be one of: {', '.join(TLS_VERSIONS)})")
        if self.tls_max_version and self.tls_min_version > self.tls_max_version:
            raise ConfigError(f"min version ({self.tls_min_version}) is greater than "
                              f"max version ({self.tls_max_version})")
        if self.tls_min_version == "TLS1.3" and self.cipher_suites:
            raise ConfigError("cipher suites cannot be configured when only TLS1.3 is enabled")
        # gRPC for Python serves TLS 1.2 and 1.3 and has no way to narrow that: say so, never pretend.
        if self.tls_min_version != "TLS1.2" or self.tls_max_version not in ("", "TLS1.3"):
            raise ConfigError("--tls-min-version/--tls-max-version: only TLS1.2 to TLS1.3 can be served "
                              "(gRPC for Python cannot restrict a server's TLS versions)")

    @property
    def listen_addresses(self) -> list[str]:
        return [host_port(url) for url in self.listen_client_urls]

    @property
    def tls_addresses(self) -> list[str]:
        """The client addresses that serve TLS (``https://`` URLs, as in etcd)."""
        return [host_port(url) for url in self.listen_client_urls if url.startswith("https://")]

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_addresses)

    @property
    def requires_client_certificates(self) -> bool:
        """As etcd: --client-cert-auth, or a --trusted-ca-file, makes client certificates mandatory."""
        return self.client_cert_auth or bool(self.trusted_ca_file)

    @property
    def peer_addresses(self) -> list[tuple[str, bool]]:
        """(host:port, TLS) of each peer listener."""
        return [(host_port(url), url.startswith("https://")) for url in self.listen_peer_urls]

    @property
    def metrics_addresses(self) -> list[str]:
        return [host_port(url) for url in self.listen_metrics_urls]


def host_port(url: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """``http://host:port`` or ``https://host:port`` -> ``host:port``, refusing what cannot be served."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in schemes or not parsed.hostname:
        raise ConfigError(f"{url}: expected a URL like {schemes[-1]}://127.0.0.1:2379")
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


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated flag value (URLs, cipher suites) as etcd splits it."""
    return tuple(u.strip() for u in value.split(",") if u.strip())
