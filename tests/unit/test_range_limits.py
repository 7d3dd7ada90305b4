"""mvcc/reads.py's RangeLimits: what one Range answer may hold, refused before the answer is built.

Limits count what is returned (after limit, filters and keys_only), never what is only counted.
Through gRPC (the status clients see, Txn included) they are tested in tests/fuzz/test_limits.py.
"""
from __future__ import annotations

import pytest

from cosmos_etcd_shim.mvcc.errors import RangeTooLargeError
from cosmos_etcd_shim.mvcc.index import KeyIndex
from cosmos_etcd_shim.mvcc.reads import RangeLimits, execute_range
from cosmos_etcd_shim.proto.kv_pb2 import KeyValue
from cosmos_etcd_shim.proto.rpc_pb2 import RangeRequest

VALUE = b"v" * 100


@pytest.fixture
def index():
    keys = KeyIndex()
    for revision, name in enumerate((b"a", b"b", b"c", b"d", b"e"), start=2):
        keys.append(KeyValue(key=name, value=VALUE, create_revision=revision, mod_revision=revision, version=1))
    return keys


def read(index, limits, **fields):
    return execute_range(index, RangeRequest(key=b"a", range_end=b"\x00", **fields), 6, 0, limits)


def test_key_limit(index):
    assert len(read(index, RangeLimits(max_keys=5)).kvs) == 5
    with pytest.raises(RangeTooLargeError) as refused:
        read(index, RangeLimits(max_keys=4))
    assert (refused.value.limit, refused.value.unit) == (4, "keys")
    # what is paged, filtered away or only counted does not count
    assert read(index, RangeLimits(max_keys=2), limit=2).more
    assert len(read(index, RangeLimits(max_keys=2), min_mod_revision=5).kvs) == 2
    assert read(index, RangeLimits(max_keys=1), count_only=True).count == 5


def test_byte_limit(index):
    size = sum(kv.ByteSize() for kv in read(index, RangeLimits()).kvs)
    assert len(read(index, RangeLimits(max_bytes=size)).kvs) == 5
    with pytest.raises(RangeTooLargeError) as refused:
        read(index, RangeLimits(max_bytes=size - 1))
    assert (refused.value.limit, refused.value.unit) == (size - 1, "bytes")
    # keys_only answers are measured without the values they leave out
    assert len(read(index, RangeLimits(max_bytes=size - 5 * len(VALUE)), keys_only=True).kvs) == 5
