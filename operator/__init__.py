"""The cosmos-etcd Kubernetes operator (import name ``cosmos_etcd_operator``).

It turns a ``CosmosEtcdCluster`` into a Cosmos DB account, database, container and throughput
plus a running shim deployment. Its handlers arrive with the operator issue; this package exists
now so that the layout, the packaging and the import boundaries are fixed from the start.
"""
