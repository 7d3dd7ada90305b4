"""``cosmos-etcd restore``: an embedded data directory built from a snapshot.

The snapshot is what ``etcdctl snapshot save`` wrote, from the shim or from a real etcd: etcd's
database (bbolt) or the shim's store image (``--snapshot-format sqlite``), with the SHA-256 that
the server appends. As ``etcdutl snapshot restore``, the hash is checked (a file without one is
refused unless told to skip the check), and the target must be new or empty; unlike it, revisions
are kept, so the restored store answers at the same revisions (and Kubernetes' resourceVersions
stay valid). A Cosmos container is not restored this way (see the README's point-in-time
restore).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
import sqlite3

from cosmos_etcd_shim.snapshot.etcd_db import EtcdDatabaseError, read_etcd_database
from cosmos_etcd_shim.storage.embedded import DATABASE_FILE, NOT_COMPACTED, write_image

SQLITE_MAGIC = b"SQLite format 3\x00"
HASH_SIZE = hashlib.sha256().digest_size


class RestoreError(Exception):
    """The snapshot cannot be restored there; nothing was written."""


@dataclasses.dataclass(frozen=True)
class Restored:
    format: str  # "etcd" or "sqlite"
    revision: int
    compact_revision: int


def restore_data_dir(snapshot: pathlib.Path, data_dir: pathlib.Path, skip_hash_check: bool = False) -> Restored:
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RestoreError(f"data dir {data_dir} is not empty")
    try:
        data = snapshot.read_bytes()
    except OSError as e:
        raise RestoreError(f"cannot read {snapshot}: {e.strerror}") from None
    data = _without_hash(data, skip_hash_check)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = data_dir / DATABASE_FILE
    try:
        if data.startswith(SQLITE_MAGIC):
            kind = "sqlite"
            temporary = target.with_name(target.name + ".part")
            temporary.write_bytes(data)
            _check_store_image(temporary)
            os.replace(temporary, target)
        else:
            kind = "etcd"
            write_image(target, read_etcd_database(data))
    except (EtcdDatabaseError, sqlite3.DatabaseError) as e:
        for leftover in data_dir.iterdir():
            leftover.unlink()
        raise RestoreError(f"{snapshot}: {e}") from None
    revision, compact = _revisions(target)
    return Restored(kind, revision, compact)


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


def _check_store_image(path: pathlib.Path) -> None:
    """A SQLite file is restored as it is only if it has the store's tables."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        found = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "log", "base"} <= found:
            raise sqlite3.DatabaseError(f"not a cosmos-etcd store image (its tables: {', '.join(sorted(found))})")


def _revisions(path: pathlib.Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        last, = db.execute("SELECT MAX(revision) FROM log").fetchone()
        row = db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()
    compact = NOT_COMPACTED if row is None else row[0]
    return max(last or 1, compact), compact
