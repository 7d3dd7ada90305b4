"""The bbolt writer and reader (``shim/snapshot/bbolt.py``): what is written reads back the same,
at every tree shape, and the layout invariants bbolt's own check relies on hold (every page below
the high-water mark used exactly once, keys ascending, meta checksums valid). etcdutl, which runs
bbolt's check on real files, is exercised in ``tests/e2e/test_snapshot.py``."""
from __future__ import annotations

import struct

import pytest

from cosmos_etcd_shim.snapshot import bbolt


def write_and_read(tmp_path, buckets):
    path = tmp_path / "db"
    bbolt.write(path, [(name, iter(items)) for name, items in buckets])
    return path, bbolt.read(path)


def pages_used(path) -> dict[int, str]:
    """Page id -> what uses it, walking the file as bbolt's consistency check does."""
    database = bbolt.Database(path.read_bytes())
    used: dict[int, str] = {0: "meta", 1: "meta", database.meta.freelist: "freelist"}

    def walk(page_id: int, owner: str) -> None:
        page = database._page(page_id)
        _, flags, count, overflow = struct.unpack_from("<QHHI", page)
        for offset in range(overflow + 1):
            assert page_id + offset not in used, f"page {page_id + offset} used twice"
            used[page_id + offset] = owner
        if flags & bbolt.BRANCH_PAGE:
            for index in range(count):
                _, _, child = struct.unpack_from("<IIQ", page, 16 + 16 * index)
                walk(child, owner)

    walk(database.meta.root, "root")
    for name, header, _ in database._entries(database.meta.root):
        root, _ = struct.unpack_from("<QQ", header)
        walk(root, name.decode())
    return used


@pytest.mark.parametrize("count, value_size", [(0, 0), (1, 10), (300, 100), (20_000, 40), (5, 10_000)])
def test_round_trip(tmp_path, count, value_size):
    """Empty buckets, one leaf, several leaves under a branch, two branch levels, overflow pages."""
    items = [(f"key/{i:08d}".encode(), bytes([i % 251]) * value_size) for i in range(count)]
    buckets = [(b"alpha", items), (b"beta", [(b"x", b"")]), (b"empty", [])]
    path, read = write_and_read(tmp_path, buckets)
    assert read == {name: items for name, items in buckets}
    used = pages_used(path)
    database = bbolt.Database(path.read_bytes())
    assert sorted(used) == list(range(database.meta.high_water)), "a page is unreachable or out of range"
    assert path.stat().st_size == database.meta.high_water * bbolt.PAGE_SIZE


def test_tree_depth(tmp_path):
    """20,000 keys need a root branch over branches over leaves: the reader follows all levels."""
    items = [(f"key/{i:08d}".encode(), b"v" * 40) for i in range(20_000)]
    path, _ = write_and_read(tmp_path, [(b"b", items)])
    database = bbolt.Database(path.read_bytes())
    (_, header, _), = database._entries(database.meta.root)
    root, _ = struct.unpack_from("<QQ", header)
    depth, page_id = 1, root
    while True:
        page = database._page(page_id)
        _, flags, _, _ = struct.unpack_from("<QHHI", page)
        if flags & bbolt.LEAF_PAGE:
            break
        depth += 1
        _, _, page_id = struct.unpack_from("<IIQ", page, 16)
    assert depth == 3


def test_meta_pages(tmp_path):
    """Both meta pages validate (magic, version, FNV-1a checksum), on pages txid % 2; a damaged
    checksum makes bbolt fall back to the other meta page, and the reader likewise."""
    path, _ = write_and_read(tmp_path, [(b"b", [(b"k", b"v")])])
    data = bytearray(path.read_bytes())
    database = bbolt.Database(bytes(data))
    assert database.meta.txid == 1
    assert database._meta_at(0).txid == 0 and database._meta_at(bbolt.PAGE_SIZE).txid == 1
    data[bbolt.PAGE_SIZE + 16 + 20] ^= 0xFF  # page 1's root page id: its checksum no longer matches
    assert bbolt.Database(bytes(data)).meta.txid == 0
    data[16 + 20] ^= 0xFF
    with pytest.raises(bbolt.BboltFormatError):
        bbolt.Database(bytes(data))


@pytest.mark.parametrize("items, message", [
    ([(b"b", b""), (b"a", b"")], "not strictly ascending"),
    ([(b"a", b""), (b"a", b"")], "not strictly ascending"),
    ([(b"", b"")], "empty keys"),
])
def test_refuses_unsorted_or_empty_keys(tmp_path, items, message):
    with pytest.raises(ValueError, match=message):
        bbolt.write(tmp_path / "db", [(b"b", iter(items))])
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial copy


def test_refuses_unsorted_buckets(tmp_path):
    with pytest.raises(ValueError, match="bucket names"):
        bbolt.write(tmp_path / "db", [(b"z", iter(())), (b"a", iter(()))])
