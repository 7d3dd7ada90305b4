"""Payload encoding of the Cosmos documents: protobuf records -> bytes -> (zlib) -> base64 text.

A payload text longer than :data:`layout.INLINE_LIMIT` is split into chunks of
:data:`layout.CHUNK_SIZE` characters, stored as documents of their own; a CRC-32 of the
uncompressed bytes (``x``) detects a payload put together from the wrong parts.
"""
from __future__ import annotations

import base64
import dataclasses
import struct
import zlib
from collections.abc import Iterable, Sequence

from cosmos_etcd_shim.proto.storage_pb2 import Revision
from cosmos_etcd_shim.storage.cosmos import layout

_LENGTH = struct.Struct(">I")
COMPRESSION_LEVEL = 1  # fast; etcd values (JSON, protobuf) still shrink a lot


class CorruptPayload(ValueError):
    """A stored payload does not decode (wrong chunks, truncated, not ours)."""


def encode_records(records: Iterable[Revision]) -> bytes:
    """Length-prefixed serialized records."""
    parts = []
    for record in records:
        blob = record.SerializeToString()
        parts.append(_LENGTH.pack(len(blob)))
        parts.append(blob)
    return b"".join(parts)


def decode_records(data: bytes) -> list[Revision]:
    records, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise CorruptPayload("truncated record length")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise CorruptPayload("truncated record")
        records.append(Revision.FromString(data[offset:offset + length]))
        offset += length
    return records


@dataclasses.dataclass
class Packed:
    """A payload as stored: its text (inline or to be chunked) and how to undo it."""

    text: str
    compressed: bool
    crc: int
    raw_size: int

    @property
    def chunks(self) -> list[str]:
        """The chunk texts; empty when the payload fits inline."""
        if len(self.text) <= layout.INLINE_LIMIT:
            return []
        return [self.text[i:i + layout.CHUNK_SIZE] for i in range(0, len(self.text), layout.CHUNK_SIZE)]

    def fields(self, nonce: str) -> dict:
        """The document fields that describe this payload (``d`` inline, or ``c`` chunks)."""
        fields = {"z": int(self.compressed), "x": self.crc, "b": self.raw_size}
        chunks = self.chunks
        if chunks:
            fields.update(c=len(chunks), w=nonce)
        else:
            fields["d"] = self.text
        return fields


def pack(data: bytes) -> Packed:
    compressed = zlib.compress(data, COMPRESSION_LEVEL)
    use = len(compressed) < len(data)
    text = base64.b64encode(compressed if use else data).decode("ascii")
    return Packed(text=text, compressed=use, crc=zlib.crc32(data), raw_size=len(data))


def unpack(document: dict, chunk_texts: Sequence[str] = ()) -> bytes:
    """The payload bytes of ``document`` (whose chunks' texts, in order, are given)."""
    text = document["d"] if "d" in document else "".join(chunk_texts)
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
        if document.get("z"):
            data = zlib.decompress(data)
    except (ValueError, zlib.error) as e:
        raise CorruptPayload(f"{document.get('id')}: {e}") from None
    if zlib.crc32(data) != document.get("x", zlib.crc32(data)):
        raise CorruptPayload(f"{document.get('id')}: checksum mismatch")
    return data
