"""Prometheus metrics of the shim, served on ``--listen-metrics-urls`` at ``/metrics``.

A leaf module: every layer may record into it, none depends on anything else through it. The
listener runs on the event loop, and also serves the routes it is given (the health endpoints).
"""
from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

GRPC_REQUESTS = Counter("cosmos_etcd_grpc_requests", "etcd gRPC calls answered, by method and status code",
                        ["method", "code"])
GRPC_SECONDS = Histogram("cosmos_etcd_grpc_request_seconds", "time to answer an etcd gRPC call", ["method"],
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
REVISION = Gauge("cosmos_etcd_revision", "the store's current revision")
COMPACT_REVISION = Gauge("cosmos_etcd_compact_revision", "the store's compact revision")
COMMIT_BATCH_REQUESTS = Histogram("cosmos_etcd_commit_batch_requests", "write requests made durable together",
                                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
STORAGE_APPEND_SECONDS = Histogram("cosmos_etcd_storage_append_seconds", "time to make one batch durable",
                                   buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
WATCH_STREAMS = Gauge("cosmos_etcd_watch_streams", "open watch streams")
# Measured when a response leaves for the client, so a slow reader and a watcher catching up from
# the log both show; revisions rather than seconds because events carry no commit time.
WATCH_DELIVERY_LAG = Histogram("cosmos_etcd_watch_delivery_lag_revisions",
                               "revisions the store is ahead of the last event of a watch response when it is sent",
                               buckets=(0, 1, 10, 100, 1000, 10000, 100000))
LEASES = Gauge("cosmos_etcd_leases", "leases granted and not yet revoked or expired")
INDEX_VERSIONS = Gauge("cosmos_etcd_index_versions", "key versions (tombstones included) held in memory; "
                       "compaction frees those below the compact revision")
HISTORY_CACHE_BYTES = Gauge("cosmos_etcd_history_cache_bytes", "bytes held by the cache of superseded versions' "
                            "values (--history-cache-bytes bounds it)")
HISTORY_CACHE_LOOKUPS = Counter("cosmos_etcd_history_cache_lookups", "lookups of a superseded version's value in "
                                "the history cache, by result (hit, miss)", ["result"])
HISTORY_FETCHED_REVISIONS = Counter("cosmos_etcd_history_fetched_revisions", "revision records read from the log "
                                    "for values that were not in the history cache")
ALARMS = Gauge("cosmos_etcd_alarms", "raised alarms (etcd's Alarm API), by type", ["alarm"])
TLS_CERTIFICATE_EXPIRY = Gauge("cosmos_etcd_tls_certificate_expiration_timestamp_seconds",
                               "notAfter of the certificate served on https:// client URLs (Unix time), "
                               "as last (re)loaded", ["cert_file"])
# etcd's own names (etcd_server_is_leader, etcd_server_leader_changes_seen_total), so that
# dashboards made for etcd show the replicas' leadership.
IS_LEADER = Gauge("etcd_server_is_leader", "1 while this server leads the servers of its shared log")
LEADER_CHANGES = Counter("etcd_server_leader_changes_seen", "times this server became the leader")
FORWARDED_REQUESTS = Counter("cosmos_etcd_forwarded_requests", "requests forwarded to the leader (writes, and "
                             "ReadIndex), by method and the leader's status code", ["method", "code"])
LINEARIZABLE_READS = Counter("cosmos_etcd_linearizable_reads", "linearizable reads, by how this server made its store "
                             "current: as the leader holding its term (lease), the leader's read index, or its own "
                             "read of the log", ["through"])
PUSHED_REVISIONS = Counter("cosmos_etcd_pushed_revisions", "revisions a follower received from the leader's push "
                           "(rather than by reading the log)")
TASK_FAILURES = Counter("cosmos_etcd_background_task_failures", "background tasks that failed and were restarted",
                        ["task"])


async def serve_metrics(addresses: Iterable[str], routes: Iterable[web.RouteDef] = ()) -> web.AppRunner:
    """Serve ``/metrics`` and ``routes`` on every ``host:port``; ``await runner.cleanup()`` stops it."""
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler())
    app.router.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)  # probes every few seconds: no line each
    await runner.setup()
    try:
        for address in addresses:
            host, _, port = address.rpartition(":")
            await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
