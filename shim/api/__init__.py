"""The gRPC servicers, one module per etcd service: thin translations to and from the MVCC core.

They validate requests as etcd's ``v3rpc`` layer does (``validation``), call the core, fill the
response header (``header``), and turn every error into etcd's own gRPC status (``errors``).
"""
