"""``cosmos-etcd restore``: a store (embedded or Cosmos) filled from a snapshot.

The snapshot is what ``etcdctl snapshot save`` wrote, from the shim or from a real etcd: etcd's
database (bbolt) or the shim's store image (``--snapshot-format sqlite``), with the SHA-256 that
the server appends. As ``etcdutl snapshot restore``, the hash is checked (a file without one is
refused unless told to skip the check) and the target must be empty; unlike it, revisions are
kept, so the restored store answers at the same revisions (and Kubernetes' resourceVersions stay
valid). The whole file is read and checked before the target is touched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import tempfile

from cosmos_etcd_shim.snapshot.etcd_db import EtcdDatabaseError, read_etcd_database
from cosmos_etcd_shim.storage.base import INITIAL_REVISION, RevisionLog, StorageError, StoreImage
from cosmos_etcd_shim.storage.embedded import read_image

SQLITE_MAGIC = b"SQLite format 3\x00"
HASH_SIZE = hashlib.sha256().digest_size


class RestoreError(Exception):
    """The snapshot cannot be restored; nothing was written."""


@dataclasses.dataclass
class LoadedSnapshot:
    format: str  # "etcd" or "sqlite"
    image: StoreImage


@dataclasses.dataclass(frozen=True)
class Restored:
    format: str
    revision: int
    compact_revision: int


def image_of(snapshot: pathlib.Path, skip_hash_check: bool = False) -> LoadedSnapshot:
    """The snapshot's content, read whole and checked."""
    try:
        data = snapshot.read_bytes()
    except OSError as e:
        raise RestoreError(f"cannot read {snapshot}: {e.strerror}") from None
    data = _without_hash(data, skip_hash_check)
    try:
        if data.startswith(SQLITE_MAGIC):
            with tempfile.TemporaryDirectory() as scratch:
                copy = pathlib.Path(scratch) / "image.db"
                copy.write_bytes(data)
                return LoadedSnapshot("sqlite", read_image(copy))
        image = read_etcd_database(data)
        image.base, image.revisions = list(image.base), list(image.revisions)
        return LoadedSnapshot("etcd", image)
    except (EtcdDatabaseError, StorageError) as e:
        raise RestoreError(f"{snapshot}: {e}") from None


async def restore_into(log: RevisionLog, snapshot: LoadedSnapshot) -> Restored:
    """Open ``log`` (an empty store) and fill it with the snapshot."""
    try:
        await log.open()
        # Marked while it fills (as a migration marks its target): a restore that fails half way
        # (Cosmos writes many documents) leaves a store that refuses to be served, not a partial one.
        await log.save_migration(json.dumps({"restore": snapshot.format, "phase": "importing"}))
        await log.import_image(snapshot.image)
        await log.save_migration(None)
    finally:
        await log.close()
    image = snapshot.image
    last = image.revisions[-1].revision if image.revisions else INITIAL_REVISION
    return Restored(snapshot.format, max(INITIAL_REVISION, image.compact_revision, last), image.compact_revision)


def _without_hash(data: bytes, skip_hash_check: bool) -> bytes:
    """The file without the SHA-256 a server appends. Both formats are whole pages of 512-byte
    multiples, so a remainder of 32 bytes is the hash, as etcdutl decides."""
    if len(data) % 512 == HASH_SIZE:
        content, digest = data[:-HASH_SIZE], data[-HASH_SIZE:]
        if not skip_hash_check and hashlib.sha256(content).digest() != digest:
            raise RestoreError("the snapshot's SHA-256 does not match its content: the file is damaged")
        return content
    if not skip_hash_check:
        raise RestoreError("the snapshot has no SHA-256 (not saved by etcdctl snapshot save?): "
                           "pass --skip-hash-check to restore it anyway")
    return data
