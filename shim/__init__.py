"""cosmos-etcd's shim: an etcd v3 gRPC server on an embedded store or Azure Cosmos DB.

Layers, each importing only those below it (enforced by import-linter, see pyproject.toml):
``cli`` -> ``server`` -> ``api`` (thin gRPC servicers) -> ``mvcc`` (revisions, Txn, watches,
leases) -> ``storage`` (the durable log of revisions, one module per backend).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("cosmos-etcd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# The etcd release whose API and behaviour the shim implements, as Maintenance.Status reports it.
# kube-apiserver reads it to decide whether watch progress requests may be relied on.
ETCD_VERSION = "3.6.0"
ETCD_CLUSTER_VERSION = "3.6.0"
