"""The bbolt file format (etcd's backend database), written and read without Go.

etcd keeps its store in a bbolt file, and ``etcdctl snapshot save`` / ``etcdutl snapshot
status|restore`` work on such files. This module writes one from buckets of sorted key-values and
reads one back into them. It covers what etcd's database uses: top-level buckets of plain
key-values, no nested buckets.

The layout is bbolt's (v1.3, the version etcd 3.5 uses; little-endian as on every platform etcd
ships for):

* every page starts with a 16-byte header: page id (u64), flags (u16), element count (u16) and
  overflow (u32, the number of further contiguous pages the page spans);
* pages 0 and 1 are meta pages (bbolt alternates between them per transaction id, takes the valid
  one with the higher id, and checks an FNV-1a checksum); page 2 is the freelist;
* a bucket is a B+tree: leaf pages hold 16-byte elements (flags, position, key size, value size;
  the position is relative to the element itself) followed by the keys and values; branch pages
  hold (position, key size, child page id) and each child's first key; the root bucket's leaf
  maps bucket names to a 16-byte header (root page id, sequence).

A written file is compact: pages are filled in key order, nothing is free, and every page below
the high-water mark is reachable, so bbolt's consistency check (run by ``etcdutl snapshot
status``) passes. bbolt would store small buckets inline in their parent; giving each its own page
is equally valid and keeps the writer to one kind of page.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import struct
from collections.abc import Iterable, Iterator

PAGE_SIZE = 4096  # etcd's: the operating system's page size on the platforms it ships for
MAGIC = 0xED0CDAED
VERSION = 2

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF = 0x01  # a leaf element whose value is a bucket header

_PAGE_HEADER = struct.Struct("<QHHI")
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
_META = struct.Struct("<IIIIQQQQQ")  # magic, version, page size, flags, root, sequence, freelist, pgid, txid
_CHECKSUM = struct.Struct("<Q")
# A page holds at most 0xFFFF elements (the count is 16 bits); a page of etcd's size never nears it.
_MAX_ELEMENTS = 0xFFFF

FIRST_DATA_PAGE = 3  # after the two meta pages and the freelist


class BboltFormatError(Exception):
    """The file is not a bbolt database this module can read."""


def write(path: pathlib.Path, buckets: Iterable[tuple[bytes, Iterable[tuple[bytes, bytes]]]]) -> None:
    """Write a bbolt database holding ``buckets``: (name, key-values in ascending key order) in
    ascending name order. The file appears at ``path`` only when complete."""
    temporary = path.with_name(path.name + ".part")
    try:
        _write(temporary, buckets)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def _write(path: pathlib.Path, buckets: Iterable[tuple[bytes, Iterable[tuple[bytes, bytes]]]]) -> None:
    with open(path, "wb") as out:
        writer = _PageWriter(out)
        out.truncate(FIRST_DATA_PAGE * PAGE_SIZE)
        out.seek(FIRST_DATA_PAGE * PAGE_SIZE)
        headers: list[tuple[bytes, bytes]] = []
        for name, items in _ascending(buckets, "bucket names"):
            root = writer.tree(_ascending(items, f"keys of bucket {name!r}"))
            headers.append((name, _BUCKET_HEADER.pack(root, 0)))
        root = writer.tree(iter(headers), flags=BUCKET_LEAF)
        high_water = writer.next_page
        out.seek(0)
        for txid in (0, 1):  # bbolt keeps transaction id t's meta on page t % 2
            out.write(_meta_page(txid, root=root, freelist=2, high_water=high_water))
        out.write(_page(2, FREELIST_PAGE, 0, b""))
        out.flush()
        os.fsync(out.fileno())


def read(path: pathlib.Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every top-level bucket of a bbolt file as name -> key-values in key order."""
    data = pathlib.Path(path).read_bytes()
    return {name: list(items) for name, items in Database(data).buckets()}


def _ascending(items: Iterable[tuple[bytes, bytes]], what: str) -> Iterator[tuple[bytes, bytes]]:
    previous = None
    for key, value in items:
        if not key:
            raise ValueError(f"bbolt refuses empty keys ({what})")
        if previous is not None and key <= previous:
            raise ValueError(f"{what} are not strictly ascending: {previous!r} then {key!r}")
        previous = key
        yield key, value


class _PageWriter:
    """Appends pages to the file, numbering them in order."""

    def __init__(self, out) -> None:
        self.out = out
        self.next_page = FIRST_DATA_PAGE

    def tree(self, items: Iterator[tuple[bytes, bytes]], flags: int = 0) -> int:
        """Write one bucket's B+tree (leaves first, then each branch level); its root page id."""
        level = self._level(LEAF_PAGE, ((key, value, flags) for key, value in items))
        if not level:  # an empty bucket is one empty leaf
            return self._page(LEAF_PAGE, [])
        while len(level) > 1:
            level = self._level(BRANCH_PAGE, ((first_key, b"", child) for first_key, child in level))
        return level[0][1]

    def _level(self, kind: int, items: Iterable[tuple[bytes, bytes, int]]) -> list[tuple[bytes, int]]:
        """Pack ``items`` into pages of one level; (first key, page id) of each page."""
        pages: list[tuple[bytes, int]] = []
        batch: list[tuple[bytes, bytes, int]] = []
        used = _PAGE_HEADER.size
        for item in items:
            size = _LEAF_ELEMENT.size + len(item[0]) + len(item[1])
            if batch and (used + size > PAGE_SIZE or len(batch) == _MAX_ELEMENTS):
                pages.append((batch[0][0], self._page(kind, batch)))
                batch, used = [], _PAGE_HEADER.size
            batch.append(item)
            used += size
        if batch:
            pages.append((batch[0][0], self._page(kind, batch)))
        return pages

    def _page(self, kind: int, batch: list[tuple[bytes, bytes, int]]) -> int:
        """One leaf or branch page (with overflow pages when a single element exceeds a page)."""
        element = _LEAF_ELEMENT if kind == LEAF_PAGE else _BRANCH_ELEMENT
        elements = bytearray()
        payload = bytearray()
        data_start = element.size * len(batch)
        for index, (key, value, extra) in enumerate(batch):
            position = data_start + len(payload) - element.size * index
            if kind == LEAF_PAGE:
                elements += element.pack(extra, position, len(key), len(value))
            else:
                elements += element.pack(position, len(key), extra)
            payload += key + value
        body = bytes(elements + payload)
        span = -(-(_PAGE_HEADER.size + len(body)) // PAGE_SIZE)
        page_id = self.next_page
        self.out.write(_page(page_id, kind, len(batch), body, overflow=span - 1))
        self.next_page += span
        return page_id


def _page(page_id: int, flags: int, count: int, body: bytes, overflow: int = 0) -> bytes:
    raw = _PAGE_HEADER.pack(page_id, flags, count, overflow) + body
    return raw + b"\x00" * ((overflow + 1) * PAGE_SIZE - len(raw))


def _meta_page(txid: int, root: int, freelist: int, high_water: int) -> bytes:
    fields = _META.pack(MAGIC, VERSION, PAGE_SIZE, 0, root, 0, freelist, high_water, txid)
    return _page(txid % 2, META_PAGE, 0, fields + _CHECKSUM.pack(_fnv1a64(fields)))


def _fnv1a64(data: bytes) -> int:
    digest = 0xCBF29CE484222325
    for byte in data:
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return digest


@dataclasses.dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    high_water: int
    txid: int


class Database:
    """A bbolt file in memory, read as bbolt reads it: the valid meta page with the highest
    transaction id, then the trees it points to."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.meta = self._current_meta()

    def _current_meta(self) -> Meta:
        candidates = []
        page_size = PAGE_SIZE
        for page_id in (0, 1):
            meta = self._meta_at(page_id * page_size)
            if meta is not None:
                candidates.append(meta)
                page_size = meta.page_size
        if not candidates:
            raise BboltFormatError("no valid meta page: not a bbolt database")
        return max(candidates, key=lambda meta: meta.txid)

    def _meta_at(self, offset: int) -> Meta | None:
        raw = self.data[offset + _PAGE_HEADER.size: offset + _PAGE_HEADER.size + _META.size + _CHECKSUM.size]
        if len(raw) < _META.size + _CHECKSUM.size:
            return None
        magic, version, page_size, _, root, _, freelist, high_water, txid = _META.unpack_from(raw)
        checksum, = _CHECKSUM.unpack_from(raw, _META.size)
        if magic != MAGIC or version != VERSION or (checksum and checksum != _fnv1a64(raw[:_META.size])):
            return None
        return Meta(page_size, root, freelist, high_water, txid)

    def buckets(self) -> Iterator[tuple[bytes, Iterator[tuple[bytes, bytes]]]]:
        for name, header, flags in self._entries(self.meta.root):
            if not flags & BUCKET_LEAF:
                raise BboltFormatError(f"top-level key {name!r} is not a bucket")
            yield name, self._bucket_items(name, header)

    def _bucket_items(self, name: bytes, header: bytes) -> Iterator[tuple[bytes, bytes]]:
        root, _ = _BUCKET_HEADER.unpack_from(header)
        if root == 0:  # an inline bucket: its single leaf page follows the header
            entries = self._leaf_entries(memoryview(header)[_BUCKET_HEADER.size:])
        else:
            entries = self._entries(root)
        for key, value, flags in entries:
            if flags & BUCKET_LEAF:
                raise BboltFormatError(f"bucket {name!r} holds a nested bucket {key!r}")
            yield key, value

    def _entries(self, page_id: int) -> Iterator[tuple[bytes, bytes, int]]:
        page = self._page(page_id)
        _, flags, count, _ = _PAGE_HEADER.unpack_from(page)
        if flags & LEAF_PAGE:
            yield from self._leaf_entries(page)
        elif flags & BRANCH_PAGE:
            for index in range(count):
                offset = _PAGE_HEADER.size + index * _BRANCH_ELEMENT.size
                _, _, child = _BRANCH_ELEMENT.unpack_from(page, offset)
                yield from self._entries(child)
        else:
            raise BboltFormatError(f"page {page_id} is neither a branch nor a leaf (flags {flags:#x})")

    @staticmethod
    def _leaf_entries(page) -> Iterator[tuple[bytes, bytes, int]]:
        _, _, count, _ = _PAGE_HEADER.unpack_from(page)
        for index in range(count):
            offset = _PAGE_HEADER.size + index * _LEAF_ELEMENT.size
            flags, position, key_size, value_size = _LEAF_ELEMENT.unpack_from(page, offset)
            start = offset + position
            yield (bytes(page[start:start + key_size]),
                   bytes(page[start + key_size:start + key_size + value_size]), flags)

    def _page(self, page_id: int) -> memoryview:
        if page_id >= self.meta.high_water:
            raise BboltFormatError(f"page {page_id} is beyond the high-water mark {self.meta.high_water}")
        size = self.meta.page_size
        start = page_id * size
        _, _, _, overflow = _PAGE_HEADER.unpack_from(self.data, start)
        return memoryview(self.data)[start:start + (overflow + 1) * size]
