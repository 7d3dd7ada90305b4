"""The ``cosmos-etcd`` command: ``serve`` (the etcd server), ``version``.

Flags are spelled as etcd's where they mean the same. Errors a user can fix (a bad flag, a port
in use, an unusable data directory) are one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from cosmos_etcd_shim import ETCD_VERSION, __version__
from cosmos_etcd_shim import config as cfg
from cosmos_etcd_shim import logs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cosmos-etcd", description="An etcd v3 server on an embedded store or Azure Cosmos DB.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the etcd v3 gRPC server",
                                description="Run the etcd v3 gRPC server. Flags mean what etcd's flags of the same name mean.")
    defaults = cfg.ServeConfig()
    serve.add_argument("--name", default=defaults.name, help="human-readable name of this member (default: %(default)s)")
    serve.add_argument("--data-dir", default="", help="path to the data directory (default: <name>.etcd)")
    serve.add_argument("--listen-client-urls", default=",".join(defaults.listen_client_urls),
                       help="comma-separated URLs to serve clients on (default: %(default)s)")
    serve.add_argument("--advertise-client-urls", default=",".join(defaults.advertise_client_urls),
                       help="comma-separated client URLs that MemberList reports (default: %(default)s)")
    serve.add_argument("--initial-advertise-peer-urls", default=",".join(defaults.initial_advertise_peer_urls),
                       help="peer URLs that MemberList reports (default: %(default)s)")
    serve.add_argument("--listen-metrics-urls", default="",
                       help="comma-separated http://host:port to serve Prometheus /metrics on (default: none)")
    serve.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes,
                       help="maximum client request size in bytes (default: %(default)s)")
    serve.add_argument("--max-txn-ops", type=int, default=defaults.max_txn_ops,
                       help="maximum number of operations in a Txn (default: %(default)s)")
    serve.add_argument("--quota-backend-bytes", type=int, default=0,
                       help="backend size quota reported by Status; 0 is etcd's default of 2 GiB")
    serve.add_argument("--watch-progress-notify-interval", default="10m",
                       help="how often idle watchers that asked for progress get a notification (default: %(default)s)")
    serve.add_argument("--log-level", choices=sorted(logs.LEVELS), default=defaults.log_level,
                       help="log level (default: %(default)s)")
    serve.add_argument("--backend", choices=cfg.BACKENDS, default=defaults.backend,
                       help="where the data lives (default: %(default)s)")

    cosmos = serve.add_argument_group(
        "Cosmos DB backend (--backend cosmos)",
        f"The account key comes from ${cfg.COSMOS_KEY_VARIABLE} or --cosmos-key-file; without one, Entra ID "
        "through DefaultAzureCredential (workload identity, managed identity, environment, Azure CLI).")
    cosmos.add_argument("--cosmos-endpoint", default="", help="the account endpoint, https://<account>.documents.azure.com:443/")
    cosmos.add_argument("--cosmos-database", default=defaults.cosmos_database, help="database (default: %(default)s)")
    cosmos.add_argument("--cosmos-container", default=defaults.cosmos_container, help="container (default: %(default)s)")
    cosmos.add_argument("--cosmos-key-file", default="", help="file holding the account key")
    cosmos.add_argument("--cosmos-insecure-skip-tls-verify", action="store_true",
                        help="accept a self-signed certificate (local test servers only)")
    cosmos.add_argument("--cosmos-no-create", action="store_true",
                        help="fail instead of creating the database and container when absent")
    cosmos.add_argument("--cosmos-poll-interval", type=float, default=defaults.cosmos_poll_interval,
                        help="seconds between reads of the log for other replicas' writes when idle (default: %(default)s)")

    commands.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"cosmos-etcd {__version__} (etcd API {ETCD_VERSION})")
        return 0
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    # Heavy imports only when serving. uvloop: the gRPC server spends most of its time in the loop.
    import uvloop

    from cosmos_etcd_shim.server import StartupError, serve

    try:
        config = cfg.ServeConfig(
            name=args.name,
            data_dir=args.data_dir,
            listen_client_urls=cfg.split_urls(args.listen_client_urls),
            advertise_client_urls=cfg.split_urls(args.advertise_client_urls),
            initial_advertise_peer_urls=cfg.split_urls(args.initial_advertise_peer_urls),
            listen_metrics_urls=cfg.split_urls(args.listen_metrics_urls),
            max_request_bytes=args.max_request_bytes,
            max_txn_ops=args.max_txn_ops,
            quota_backend_bytes=args.quota_backend_bytes,
            watch_progress_notify_interval=cfg.parse_duration(args.watch_progress_notify_interval),
            log_level=args.log_level,
            backend=args.backend,
            cosmos_endpoint=args.cosmos_endpoint,
            cosmos_database=args.cosmos_database,
            cosmos_container=args.cosmos_container,
            cosmos_key_file=args.cosmos_key_file,
            cosmos_insecure_skip_tls_verify=args.cosmos_insecure_skip_tls_verify,
            cosmos_no_create=args.cosmos_no_create,
            cosmos_poll_interval=args.cosmos_poll_interval,
        )
    except cfg.ConfigError as e:
        print(f"cosmos-etcd serve: error: {e}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    try:
        uvloop.run(serve(config))
    except StartupError as e:
        print(f"cosmos-etcd serve: error: {e}", file=sys.stderr)
        return 1
    return 0
