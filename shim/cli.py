"""The ``cosmos-etcd`` command: ``serve`` (the etcd server), ``operator`` (the Kubernetes operator,
in package ``cosmos_etcd_operator``), ``repair`` (truncates a Cosmos log left with a gap by a region
failover), ``restore`` (a store from a snapshot), ``migrate`` (a running etcd into the store),
``version``.

Flags are spelled as etcd's where they mean the same. Errors a user can fix (a bad flag, a port
in use, an unusable data directory) are one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys

from cosmos_etcd_shim import ETCD_VERSION, __version__
from cosmos_etcd_shim import config as cfg
from cosmos_etcd_shim import logs, tls


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
                       help="backend size at which writes raise the NOSPACE alarm and are refused; "
                            "0 is etcd's default of 2 GiB, a negative value disables the quota")
    serve.add_argument("--snapshot-format", choices=cfg.SNAPSHOT_FORMATS, default=defaults.snapshot_format,
                       help="what `etcdctl snapshot save` receives: etcd's database (bbolt, for etcdutl snapshot "
                            "status/restore) or sqlite (the embedded store's database: a data dir holding it as "
                            "cosmos-etcd.db is a complete store) (default: %(default)s)")
    serve.add_argument("--watch-progress-notify-interval", default="10m",
                       help="how often idle watchers that asked for progress get a notification (default: %(default)s)")
    serve.add_argument("--max-concurrent-streams", type=int, default=defaults.max_concurrent_streams,
                       help="maximum concurrent gRPC streams per client connection (default: %(default)s, no limit)")
    serve.add_argument("--max-watchers-per-stream", type=int, default=defaults.max_watchers_per_stream,
                       help="maximum watchers on one Watch stream; not an etcd flag (default: %(default)s)")
    serve.add_argument("--history-cache-bytes", type=int, default=defaults.history_cache_bytes,
                       help="bytes of superseded values kept in memory for reads at old revisions and watches "
                            "from the past; the rest is read from the store; not an etcd flag (default: %(default)s)")
    serve.add_argument("--checkpoint-interval", type=int, default=defaults.checkpoint_interval,
                       help="revisions between two checkpoints of the index, so that a start reads the newest "
                            "checkpoint and at most about this many log records; 0: never; not an etcd flag "
                            "(default: %(default)s)")
    serve.add_argument("--max-range-keys", type=int, default=defaults.max_range_keys,
                       help="maximum keys in one Range answer, use limit to page; not an etcd flag "
                            "(default: %(default)s)")
    serve.add_argument("--log-level", choices=sorted(logs.LEVELS), default=defaults.log_level,
                       help="log level (default: %(default)s)")
    serve.add_argument("--backend", choices=cfg.BACKENDS, default=defaults.backend,
                       help="where the data lives (default: %(default)s)")

    security = serve.add_argument_group(
        "client TLS (https:// client URLs)",
        "As etcd's flags. Certificate files are re-read when they change. /metrics stays plain http.")
    security.add_argument("--cert-file", default="", help="the server's TLS certificate (PEM, chain allowed)")
    security.add_argument("--key-file", default="", help="the key of --cert-file (PEM, unencrypted)")
    security.add_argument("--trusted-ca-file", default="",
                          help="CA certificates client certificates must chain to; requires client certificates")
    security.add_argument("--client-cert-auth", action="store_true",
                          help="require a client certificate signed by --trusted-ca-file")
    security.add_argument("--auto-tls", action="store_true",
                          help="without --cert-file, a generated self-signed certificate (development only)")
    security.add_argument("--self-signed-cert-validity", type=int, default=defaults.self_signed_cert_validity,
                          help="years of validity of the --auto-tls certificate (default: %(default)s)")
    security.add_argument("--cipher-suites", default="",
                          help="comma-separated TLS 1.2 cipher suites, IANA names as etcd's (default: gRPC's)")
    security.add_argument("--tls-min-version", default=defaults.tls_min_version,
                          help="minimum TLS version (default: %(default)s; only TLS1.2 is supported)")
    security.add_argument("--tls-max-version", default=defaults.tls_max_version,
                          help="maximum TLS version (default: TLS1.3; only TLS1.3 is supported)")

    auth = serve.add_argument_group("the etcd Auth API", "As etcd's flags.")
    auth.add_argument("--auth-token", default=defaults.auth_token,
                      help="token type: only 'simple' (etcd's default) is supported (default: %(default)s)")
    auth.add_argument("--auth-token-ttl", type=int, default=defaults.auth_token_ttl,
                      help="seconds a simple token lives after its last use (default: %(default)s)")
    auth.add_argument("--bcrypt-cost", type=int, default=defaults.bcrypt_cost,
                      help="bcrypt cost of password hashes, 4 to 31 (default: %(default)s)")

    cosmos = _cosmos_connection_flags(serve, "Cosmos DB backend (--backend cosmos)")
    cosmos.add_argument("--cosmos-no-create", action="store_true",
                        help="fail instead of creating the database and container when absent")
    cosmos.add_argument("--cosmos-poll-interval", type=float, default=defaults.cosmos_poll_interval,
                        help="seconds between reads of the log for other replicas' writes right after activity, "
                             "doubling while idle up to 1 s (default: %(default)s)")
    peers = serve.add_argument_group("replicas of one Cosmos container")
    peers.add_argument("--listen-peer-urls", default="",
                       help="comma-separated URLs on which this replica takes writes forwarded by the others; "
                            "with it the replicas elect a leader that makes every write, and "
                            "--initial-advertise-peer-urls must say how the others reach this one "
                            "(https:// serves the client TLS settings) (default: none: every replica writes)")
    peers.add_argument("--leader-lease-seconds", type=float, default=defaults.leader_lease_seconds,
                       help="seconds a leader's lease lasts without renewal: a new leader takes over at most this "
                            "plus a third of it after the old one stops (default: %(default)s)")

    repair = commands.add_parser(
        "repair", help="truncate a Cosmos log left with a gap by a region failover",
        description="After a forced region failover the new write region may lack the last revisions, and "
                    "a replica may have written past the gap: every start of the shim then fails. Without "
                    "--truncate-after this reads the log, reports the gap, the documents after it and the "
                    "revisions a truncation loses, and changes nothing. Stop every shim replica before truncating.",
        epilog="Exit codes: 0 the log is contiguous (or was repaired), 1 refused or failed, 2 bad flags, "
               "3 a gap was found and nothing was changed.")
    _cosmos_connection_flags(repair, "Cosmos DB connection (as serve's)", endpoint_required=True)
    repair.add_argument("--truncate-after", type=int, metavar="REVISION",
                        help="acknowledge the loss: delete every log document after REVISION, which must be the "
                             "last contiguous revision the report names")
    repair.add_argument("--save-removed", metavar="FILE",
                        help="a new local file to which the removed documents (full JSON) are written before "
                             "anything is deleted; required with --truncate-after")
    repair.add_argument("--log-level", choices=sorted(logs.LEVELS), default="warn",
                        help="log level of the JSON logs on stderr (default: %(default)s)")

    restore = commands.add_parser(
        "restore", help="build a store from a snapshot, revisions kept",
        description="Fill an empty store (an embedded data dir, or a Cosmos container) from a snapshot that "
                    "`etcdctl snapshot save` wrote, from cosmos-etcd or from a real etcd: etcd's database or the "
                    "shim's store image (--snapshot-format sqlite). Every key keeps its revisions, so clients (and "
                    "Kubernetes' resourceVersions) see the same store. Then: cosmos-etcd serve with the same flags.")
    restore.add_argument("--from", dest="snapshot", required=True, metavar="SNAPSHOT",
                         help="the file etcdctl snapshot save wrote")
    restore.add_argument("--skip-hash-check", action="store_true",
                         help="accept a file without the SHA-256 etcdctl snapshot save appends (e.g. a copied "
                              "member/snap/db), as etcdutl's flag")
    _target_flags(restore)

    migrate = commands.add_parser(
        "migrate", help="move a running etcd into the store, revisions kept",
        description="Copy a running etcd into an empty store (embedded or Cosmos, flags as serve's) from its snapshot, "
                    "then follow its changes revision by revision; with --cutover (or SIGUSR1) wait until the store "
                    "has every revision of a source that no longer takes writes, verify both sides, copy the leases "
                    "and stop. SIGTERM or SIGINT stop it; a rerun resumes. See the README's runbook.",
        epilog="Exit codes: 0 cut over, 1 failed or refused (a rerun resumes where it can), 2 bad flags, "
               "3 stopped by a signal before the cutover (a rerun resumes).")
    migrate.add_argument("--from-endpoints", required=True, metavar="HOST:PORT",
                         help="the source etcd's client endpoint (one member)")
    migrate.add_argument("--from-cacert", default="", help="CA bundle to verify the source's TLS certificate")
    migrate.add_argument("--from-cert", default="", help="client certificate for the source (PEM)")
    migrate.add_argument("--from-key", default="", help="the key of --from-cert (PEM)")
    migrate.add_argument("--from-insecure-transport", action="store_true",
                         help="plain text to the source (implied when no --from-cacert/--from-cert is given)")
    migrate.add_argument("--from-user", default="", metavar="NAME:PASSWORD",
                         help="with auth enabled on the source: a user with the root role (Snapshot needs it)")
    migrate.add_argument("--cutover", action="store_true",
                         help="cut over once caught up (instead of following until SIGUSR1)")
    _target_flags(migrate)

    # Listed for --help only: main() hands everything after "operator" to the operator's own parser.
    commands.add_parser("operator", help="run the Kubernetes operator (see cosmos-etcd operator --help)")
    commands.add_parser("version", help="print the version")
    return parser


def _cosmos_connection_flags(parser: argparse.ArgumentParser, title: str,
                             endpoint_required: bool = False) -> argparse._ArgumentGroup:
    """The flags that say how to reach the Cosmos container (serve and repair take the same)."""
    defaults = cfg.ServeConfig()
    cosmos = parser.add_argument_group(
        title,
        f"The account key comes from ${cfg.COSMOS_KEY_VARIABLE} or --cosmos-key-file; without one, Entra ID "
        "through DefaultAzureCredential (workload identity, managed identity, environment, Azure CLI).")
    cosmos.add_argument("--cosmos-endpoint", default="", required=endpoint_required,
                        help="the account endpoint, https://<account>.documents.azure.com:443/")
    cosmos.add_argument("--cosmos-database", default=defaults.cosmos_database, help="database (default: %(default)s)")
    cosmos.add_argument("--cosmos-container", default=defaults.cosmos_container, help="container (default: %(default)s)")
    cosmos.add_argument("--cosmos-key-file", default="",
                        help="file holding the account key, or both keys one a line: the first is used, the "
                             "file is read again on a 401 and the next key not refused is tried")
    cosmos.add_argument("--cosmos-auth", choices=cfg.COSMOS_AUTH_MODES, default=None,
                        help="key: an account key is required; entra-id: keyless, an Entra ID token from "
                             "DefaultAzureCredential (workload identity: AZURE_CLIENT_ID, AZURE_TENANT_ID, "
                             "AZURE_FEDERATED_TOKEN_FILE), and a key given anyway is refused (default: the key "
                             "when one is given, else Entra ID)")
    cosmos.add_argument("--cosmos-insecure-skip-tls-verify", action="store_true",
                        help="accept a self-signed certificate (local test servers only)")
    return cosmos


def _target_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that say which store to fill (restore and migrate): as serve's."""
    defaults = cfg.ServeConfig()
    parser.add_argument("--backend", choices=cfg.BACKENDS, default=defaults.backend,
                        help="the store to fill (default: %(default)s)")
    parser.add_argument("--data-dir", default="", help="the embedded store's data directory (absent or empty)")
    parser.add_argument("--log-level", choices=sorted(logs.LEVELS), default="info",
                        help="log level of the JSON logs on stderr (default: %(default)s)")
    _cosmos_connection_flags(parser, "Cosmos DB target (--backend cosmos; an empty container)")


def _target_config(args: argparse.Namespace) -> cfg.ServeConfig:
    if args.backend == "embedded" and not args.data_dir:
        raise cfg.ConfigError("--data-dir is required with --backend embedded")
    return cfg.ServeConfig(backend=args.backend, data_dir=args.data_dir, log_level=args.log_level,
                           **_cosmos_connection(args))


def _cosmos_connection(args: argparse.Namespace) -> dict:
    """The ServeConfig fields of the flags of :func:`_cosmos_connection_flags`."""
    return dict(cosmos_endpoint=args.cosmos_endpoint, cosmos_database=args.cosmos_database,
                cosmos_container=args.cosmos_container, cosmos_key_file=args.cosmos_key_file,
                cosmos_auth=args.cosmos_auth or "",
                cosmos_insecure_skip_tls_verify=args.cosmos_insecure_skip_tls_verify)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["operator"]:
        # Imported only here: kopf, the Kubernetes client and the Azure SDKs are the operator's.
        from cosmos_etcd_operator.main import main as operator_main
        return operator_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"cosmos-etcd {__version__} (etcd API {ETCD_VERSION})")
        return 0
    if args.command == "repair":
        return _repair(args)
    if args.command == "restore":
        return _restore(args)
    if args.command == "migrate":
        return _migrate(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    # Heavy imports only when serving. uvloop: the gRPC server spends most of its time in the loop.
    import uvloop

    try:
        config = cfg.ServeConfig(
            name=args.name,
            data_dir=args.data_dir,
            listen_client_urls=cfg.split_list(args.listen_client_urls),
            advertise_client_urls=cfg.split_list(args.advertise_client_urls),
            initial_advertise_peer_urls=cfg.split_list(args.initial_advertise_peer_urls),
            listen_metrics_urls=cfg.split_list(args.listen_metrics_urls),
            max_request_bytes=args.max_request_bytes,
            max_txn_ops=args.max_txn_ops,
            quota_backend_bytes=args.quota_backend_bytes,
            snapshot_format=args.snapshot_format,
            watch_progress_notify_interval=cfg.parse_duration(args.watch_progress_notify_interval),
            max_concurrent_streams=args.max_concurrent_streams,
            max_watchers_per_stream=args.max_watchers_per_stream,
            max_range_keys=args.max_range_keys,
            history_cache_bytes=args.history_cache_bytes,
            checkpoint_interval=args.checkpoint_interval,
            cert_file=args.cert_file,
            key_file=args.key_file,
            trusted_ca_file=args.trusted_ca_file,
            client_cert_auth=args.client_cert_auth,
            auto_tls=args.auto_tls,
            self_signed_cert_validity=args.self_signed_cert_validity,
            cipher_suites=cfg.split_list(args.cipher_suites),
            tls_min_version=args.tls_min_version,
            tls_max_version=args.tls_max_version,
            auth_token=args.auth_token,
            auth_token_ttl=args.auth_token_ttl,
            bcrypt_cost=args.bcrypt_cost,
            log_level=args.log_level,
            backend=args.backend,
            **_cosmos_connection(args),
            cosmos_no_create=args.cosmos_no_create,
            cosmos_poll_interval=args.cosmos_poll_interval,
            listen_peer_urls=cfg.split_list(args.listen_peer_urls),
            leader_lease_seconds=args.leader_lease_seconds,
        )
        tls.use_cipher_suites(config)  # before the server module imports gRPC, which reads them once
    except cfg.ConfigError as e:
        print(f"cosmos-etcd serve: error: {e}", file=sys.stderr)
        return 2
    from cosmos_etcd_shim.server import StartupError, serve  # imports gRPC: after use_cipher_suites

    logs.configure(config.log_level)
    try:
        uvloop.run(serve(config))
    except StartupError as e:
        print(f"cosmos-etcd serve: error: {e}", file=sys.stderr)
        return 1
    return 0


def _restore(args: argparse.Namespace) -> int:
    from cosmos_etcd_shim.snapshot.restore import RestoreError, image_of, restore_into
    from cosmos_etcd_shim.storage import StorageError

    try:
        config = _target_config(args)
        image = image_of(pathlib.Path(args.snapshot), args.skip_hash_check)
        if config.backend == "embedded":
            data_dir = pathlib.Path(config.data_dir)
            if data_dir.exists() and any(data_dir.iterdir()):
                raise RestoreError(f"data dir {data_dir} is not empty")
        from cosmos_etcd_shim.server import StartupError, open_backend

        logs.configure(config.log_level)
        restored = asyncio.run(restore_into(open_backend(config), image))
    except cfg.ConfigError as e:
        print(f"cosmos-etcd restore: error: {e}", file=sys.stderr)
        return 2
    except (RestoreError, StorageError, StartupError) as e:
        print(f"cosmos-etcd restore: error: {e}", file=sys.stderr)
        return 1
    compacted = f", compacted at {restored.compact_revision}" if restored.compact_revision > 0 else ""
    target = config.data_dir if config.backend == "embedded" else f"{config.cosmos_database}/{config.cosmos_container}"
    print(f"restored {target} from {restored.format} snapshot {args.snapshot}: revision {restored.revision}{compacted}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """``cosmos-etcd migrate``: the work is in ``migrate/``; the target is opened as serve opens it."""
    def fail(message: str, code: int = 1) -> int:
        print(f"cosmos-etcd migrate: error: {message}", file=sys.stderr)
        return code

    try:
        config = _target_config(args)
    except cfg.ConfigError as e:
        return fail(str(e), 2)
    from cosmos_etcd_shim.migrate.runner import MigrationError
    from cosmos_etcd_shim.migrate.source import SourceEtcd, SourceError, SourceTLS
    from cosmos_etcd_shim.server import StartupError
    from cosmos_etcd_shim.snapshot.etcd_db import EtcdDatabaseError
    from cosmos_etcd_shim.storage import StorageError

    tls = SourceTLS(args.from_cacert, args.from_cert, args.from_key) \
        if (args.from_cacert or args.from_cert) and not args.from_insecure_transport else None
    logs.configure(config.log_level)
    try:
        # The source's gRPC channel belongs to the loop that asyncio.run starts: made inside it.
        progress = asyncio.run(_run_migration(config, lambda: SourceEtcd(args.from_endpoints, tls, args.from_user),
                                              args.cutover))
    except (MigrationError, SourceError, EtcdDatabaseError, StorageError, StartupError) as e:
        return fail(str(e))
    if progress is None:
        print("cosmos-etcd migrate: stopped before the cutover; run it again to resume", file=sys.stderr)
        return 3
    print(f"migrated {progress.keys} keys at revision {progress.revision}: cut over")
    return 0


async def _run_migration(config: cfg.ServeConfig, make_source, cutover_now: bool):
    """The migration until it cuts over (its final progress) or a signal stops it (None)."""
    import signal

    from cosmos_etcd_shim.migrate.progress import ProgressDisplay
    from cosmos_etcd_shim.migrate.runner import Migration
    from cosmos_etcd_shim.server import open_backend

    loop = asyncio.get_running_loop()
    cutover, stop = asyncio.Event(), asyncio.Event()
    if cutover_now:
        cutover.set()
    loop.add_signal_handler(signal.SIGUSR1, cutover.set)
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    source, target = make_source(), open_backend(config)
    display = ProgressDisplay()
    try:
        migration = Migration(source, target, cutover, display.update)
        run = asyncio.create_task(migration.run(await target.open()))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([run, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if run.done():
            return run.result()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        return None
    finally:
        display.close()
        await source.close()
        await target.close()


def _repair(args: argparse.Namespace) -> int:
    """``cosmos-etcd repair``: the work is in ``storage/cosmos/repair.py``; the backend is opened as
    ``serve --backend cosmos`` opens it, except that nothing is ever created."""
    def fail(message: str, code: int = 1) -> int:
        print(f"cosmos-etcd repair: error: {' '.join(message.split())}", file=sys.stderr)
        return code

    if (args.truncate_after is None) != (args.save_removed is None):
        return fail("--truncate-after and --save-removed FILE go together (see --help)", 2)
    try:
        config = cfg.ServeConfig(backend="cosmos", log_level=args.log_level, cosmos_no_create=True,
                                 **_cosmos_connection(args))
    except cfg.ConfigError as e:
        return fail(str(e), 2)
    from azure.core.exceptions import AzureError

    from cosmos_etcd_shim.server import HEARTBEAT_SECONDS, StartupError, open_backend
    from cosmos_etcd_shim.storage import StorageError
    from cosmos_etcd_shim.storage.cosmos import repair

    logs.configure(config.log_level)
    save_removed = pathlib.Path(args.save_removed) if args.save_removed else None
    try:
        outcome = asyncio.run(repair.run(
            open_backend(config), truncate_after=args.truncate_after, save_removed=save_removed,
            # Two heartbeat periods: a running replica's heartbeat document changes at least once, and so
            # does the leader record of elected replicas (renewed every third of a lease of up to 30 s).
            liveness_window=2 * HEARTBEAT_SECONDS, say=lambda line: print(line, flush=True)))
    except (StartupError, StorageError, AzureError) as e:
        return fail(str(e))
    return 3 if outcome is repair.Outcome.GAP_FOUND else 0
