"""The MVCC core: etcd's revisions, key history, Txn evaluation and compaction, kept in memory
and made durable through a :class:`cosmos_etcd_shim.storage.RevisionLog`.

It speaks etcd's own request and response messages (``etcdserverpb``/``mvccpb``) but knows
nothing of gRPC: the servicers in ``api`` translate transport concerns and errors.
"""
