"""``cosmos-etcd operator``: the kopf operator that turns CosmosEtcdClusters into Cosmos DB accounts
and running shims.

It logs in to Kubernetes as kopf and the ``kubernetes`` client do by default (the pod's service
account, else ``KUBECONFIG``) and to Azure per cluster (see :mod:`cosmos_etcd_operator.credentials`),
in the cloud that ``--cloud`` names. kopf runs standalone (one operator replica) unless ``--peering``
names a KopfPeering; it watches every namespace unless ``--namespace`` names some. Liveness is
answered at ``http://<--liveness-address>/healthz``; Prometheus metrics at
``http://<--metrics-address>/metrics``. Logs are JSON lines on stderr; each CosmosEtcdCluster also
gets Kubernetes events when it becomes ready, when a part starts an operation or fails, when a
child is restored, and when it is deleted (``kubectl describe``).

:func:`run` is the operator itself; tests run it in-process with the same flags.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import sys
import threading
from collections.abc import Callable

import kopf

from cosmos_etcd_operator import cloud as clouds
from cosmos_etcd_operator import handlers, pki
from cosmos_etcd_operator.credentials import Credentials
from cosmos_etcd_operator.kubeapi import Kube, load_configuration
from cosmos_etcd_operator.metrics import CLUSTERS, serve_metrics
from cosmos_etcd_operator.reconciliation import OperatorContext, utc_now
from cosmos_etcd_shim import __version__

DEFAULT_SHIM_IMAGE = f"ghcr.io/cosmos-etcd/cosmos-etcd:{__version__}"
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
# Their info level logs every HTTP request: only with --log-level debug.
CHATTY_LOGGERS = ("azure", "urllib3", "kubernetes")


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    cloud: clouds.AzureCloud
    namespaces: tuple[str, ...] = ()  # none: every namespace
    liveness_address: str = "0.0.0.0:8080"
    metrics_address: str = "0.0.0.0:9090"
    peering: str | None = None  # None: standalone
    shim_image: str = DEFAULT_SHIM_IMAGE
    log_level: str = "info"
    drift_interval: float = 60.0
    retry_delay: float = 30.0
    tls_policy: pki.Policy = pki.Policy()


@dataclasses.dataclass(frozen=True)
class _Defaults(OperatorConfig):
    """The defaults of the flags: an OperatorConfig before a cloud is chosen."""
    cloud: clouds.AzureCloud | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    defaults = _Defaults()
    p = _Parser(prog="cosmos-etcd operator", description=(
        "Run the Kubernetes operator: every CosmosEtcdCluster becomes an Azure Cosmos DB account, database, "
        "container and throughput, and a shim Deployment serving etcd in front of them."))
    p.add_argument("--namespace", action="append", default=[], dest="namespaces", metavar="NAMESPACE",
                   help="watch this namespace (repeatable; default: every namespace)")
    p.add_argument("--liveness-address", default=defaults.liveness_address, metavar="HOST:PORT",
                   help="serve the liveness probe at http://HOST:PORT/healthz (default: %(default)s)")
    p.add_argument("--metrics-address", default=defaults.metrics_address, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: %(default)s)")
    p.add_argument("--peering", default=None, metavar="NAME",
                   help="coordinate with other operator replicas through this KopfPeering (default: standalone)")
    p.add_argument("--cloud", choices=clouds.CLOUD_NAMES, default=clouds.PUBLIC,
                   help="the Azure cloud (default: %(default)s)")
    p.add_argument("--arm-endpoint", default=None, metavar="URL",
                   help="the Resource Manager endpoint of --cloud custom")
    p.add_argument("--arm-audience", default=None, metavar="URI",
                   help="the token audience of --cloud custom's Resource Manager (default: read from its "
                        "/metadata/endpoints, else the --arm-endpoint URL)")
    p.add_argument("--authority-host", default=None, metavar="URL",
                   help=f"the Entra ID authority (default: ${clouds.AUTHORITY_HOST_VARIABLE}, else the cloud's)")
    p.add_argument("--azure-ca-file", default=None, metavar="FILE",
                   help="PEM CA certificates to trust for Azure endpoints, for clouds with a private CA "
                        "(default: the system's)")
    p.add_argument("--shim-image", default=defaults.shim_image, metavar="IMAGE",
                   help="the shim's image when a CosmosEtcdCluster names none (default: %(default)s)")
    p.add_argument("--drift-interval", type=_seconds, default=defaults.drift_interval, metavar="SECONDS",
                   help="how often each ready cluster is compared with Azure and its objects (default: %(default)s)")
    p.add_argument("--retry-delay", type=_seconds, default=defaults.retry_delay, metavar="SECONDS",
                   help="wait before retrying after an error that says nothing of when (default: %(default)s)")
    p.add_argument("--log-level", choices=sorted(LOG_LEVELS), default=defaults.log_level,
                   help="log level (default: %(default)s)")
    tls = defaults.tls_policy
    p.add_argument("--tls-ca-lifetime", type=_days, default=tls.ca_lifetime, metavar="DAYS",
                   help=f"lifetime of the CA that managed TLS issues per cluster (default: {tls.ca_lifetime.days})")
    p.add_argument("--tls-certificate-lifetime", type=_days, default=tls.leaf_lifetime, metavar="DAYS",
                   help=f"lifetime of its server and client certificates (default: {tls.leaf_lifetime.days})")
    p.add_argument("--tls-renew-fraction", type=_fraction, default=tls.renew_fraction, metavar="FRACTION",
                   help="renew a certificate when this fraction of its lifetime has passed (default: 2/3)")
    p.add_argument("--tls-rotation-overlap", type=_days, default=tls.overlap, metavar="DAYS",
                   help="time between the steps of a CA rotation, for clients to take the new bundle and "
                        f"certificates (default: {tls.overlap.days})")
    return p


def _days(text: str) -> datetime.timedelta:
    return datetime.timedelta(seconds=_seconds(text) * 86400)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.5 <= value <= 0.9:
        raise argparse.ArgumentTypeError(f"must be between 0.5 and 0.9, not {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def parse_args(argv: list[str]) -> OperatorConfig:
    """The operator's configuration from its flags; a contradiction exits with status 2."""
    p = parser()
    args = p.parse_args(argv)
    try:
        cloud = clouds.resolve(args.cloud, arm_endpoint=args.arm_endpoint, authority_host=args.authority_host,
                               arm_audience=args.arm_audience, ca_file=args.azure_ca_file)
    except clouds.InvalidCloud as e:
        p.error(str(e))
    if args.tls_certificate_lifetime >= args.tls_ca_lifetime:
        p.error("--tls-certificate-lifetime must be shorter than --tls-ca-lifetime (a certificate never outlives "
                "its CA)")
    for option in ("liveness_address", "metrics_address"):
        if not _is_address(getattr(args, option)):
            p.error(f"--{option.replace('_', '-')} must be HOST:PORT, not {getattr(args, option)!r}")
    return OperatorConfig(cloud=cloud, namespaces=tuple(args.namespaces), liveness_address=args.liveness_address,
                          metrics_address=args.metrics_address, peering=args.peering, shim_image=args.shim_image,
                          log_level=args.log_level, drift_interval=args.drift_interval, retry_delay=args.retry_delay,
                          tls_policy=pki.Policy(ca_lifetime=args.tls_ca_lifetime,
                                                leaf_lifetime=args.tls_certificate_lifetime,
                                                renew_fraction=args.tls_renew_fraction,
                                                overlap=args.tls_rotation_overlap))


def _is_address(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and int(port) < 65536


async def run(config: OperatorConfig, *, stop_flag: asyncio.Event | threading.Event | None = None,
              ready_flag: asyncio.Event | threading.Event | None = None,
              clock: Callable[[], datetime.datetime] = utc_now) -> None:
    """Run the operator until ``stop_flag`` is set (or SIGTERM/SIGINT); ``clock`` is the time the managed
    PKI renews by. Raises InvalidCloud when a custom cloud's authority is neither given nor discovered."""
    cloud = await clouds.discover(config.cloud)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, drift_interval=config.drift_interval)
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    settings.posting.level = logging.INFO
    kube = Kube(load_configuration())
    CLUSTERS.clear()  # the gauges tell what this run has seen (tests run the operator again in one process)
    metrics = serve_metrics(config.metrics_address)
    try:
        async with Credentials(cloud) as credentials:
            context = OperatorContext(kube=kube, credentials=credentials, cloud=cloud,
                                      shim_image=config.shim_image, retry_delay=config.retry_delay,
                                      tls_policy=config.tls_policy, clock=clock)
            await kopf.operator(
                registry=registry, settings=settings, memo=kopf.Memo(context=context),
                clusterwide=not config.namespaces, namespaces=config.namespaces,
                standalone=config.peering is None, peering_name=config.peering,
                liveness_endpoint=f"http://{config.liveness_address}/healthz",
                stop_flag=stop_flag, ready_flag=ready_flag)
    finally:
        metrics.shutdown()
        metrics.server_close()
        kube.close()


def configure_logging(level: str) -> None:
    kopf.configure(debug=level == "debug", log_format=kopf.LogFormat.JSON)
    logging.getLogger().setLevel(LOG_LEVELS[level])
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def main(argv: list[str]) -> int:
    config = parse_args(argv)
    configure_logging(config.log_level)
    try:
        load_configuration()
    except Exception as e:  # the kubernetes client raises several kinds for a missing or bad kubeconfig
        print(f"cosmos-etcd operator: error: no Kubernetes login: {e}", file=sys.stderr)
        return 1
    try:
        asyncio.run(run(config))
    except (OSError, clouds.InvalidCloud) as e:  # a metrics or liveness port in use; no authority found
        print(f"cosmos-etcd operator: error: {e}", file=sys.stderr)
        return 1
    return 0
