"""Revision records to append to a log in storage tests: PUT and DELETE events, and simple batches."""
from __future__ import annotations

from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Revision


def put(revision: int, key: bytes, value: bytes, *, version: int = 1, create: int | None = None, lease: int = 0):
    return Event(type=Event.PUT, kv=KeyValue(key=key, value=value, create_revision=create or revision,
                                             mod_revision=revision, version=version, lease=lease))


def delete(revision: int, key: bytes):
    return Event(type=Event.DELETE, kv=KeyValue(key=key, mod_revision=revision))


def simple_batch(first: int, count: int, prefix: bytes = b"k") -> list[Revision]:
    return [Revision(revision=r, events=[put(r, prefix + str(r).encode(), b"v%d" % r)])
            for r in range(first, first + count)]
