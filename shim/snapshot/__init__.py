"""Snapshot formats: etcd's database (bbolt, with etcd's buckets and key encoding), written from
the store image every backend snapshots itself to, so that etcd's own tools read the shim's
snapshots."""
