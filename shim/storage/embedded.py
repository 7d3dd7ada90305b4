"""The embedded backend: the revision log in a SQLite database inside the data directory.

SQLite runs in WAL mode with ``synchronous=FULL``, so a committed append has reached the disk
(fsync) before :meth:`EmbeddedLog.append` returns: an acknowledged write survives ``kill -9`` and
power loss. One SQLite transaction per append makes a batch of revisions all-or-nothing. Every
call runs on one dedicated thread, so the event loop never blocks on the disk and the connection
is never shared between threads.

Index checkpoints (see :mod:`cosmos_etcd_shim.mvcc.history`) are rows of ``checkpoint_pages
(revision, page, data)``, one transaction per page so that appends go on meanwhile; ``meta``'s
``checkpoint_revision`` names the complete one, set in the transaction that stores the last page
(pages of a checkpoint never named, after a crash, are removed by the next one). A start reads the
named checkpoint and the log after it; a compaction that removes records the checkpoint's tail
needs drops it in the same transaction.

One process owns a data directory at a time (an exclusive ``flock`` on ``LOCK``), as etcd does.

Raised alarms are rows of ``alarms (member_id, alarm)``: the member id as SQLite's signed 64-bit
integer (a uint64 id of 2**63 or more is stored as its two's complement, see
:func:`signed_member_id`), the alarm as etcd's AlarmType number. Snapshots carry the same table.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Sequence

from cosmos_etcd_shim.proto.kv_pb2 import KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Lease, Revision
from cosmos_etcd_shim.storage.base import (
    INITIAL_REVISION,
    AuthConflictError,
    AuthRecord,
    IndexCheckpoint,
    LogCompactedError,
    LogConflictError,
    RecoveredState,
    RevisionLog,
    StorageError,
    StoreImage,
    StoredAlarm,
    fold,
)

DATABASE_FILE = "cosmos-etcd.db"
LOCK_FILE = "LOCK"

# Nothing has been compacted yet: etcd's compactMainRev starts at -1, so Compact(0) is accepted once.
NOT_COMPACTED = -1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (revision INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS base (key BLOB PRIMARY KEY, kv BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS auth (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alarms (member_id INTEGER NOT NULL, alarm INTEGER NOT NULL, PRIMARY KEY (member_id, alarm));
CREATE TABLE IF NOT EXISTS migration (id INTEGER PRIMARY KEY CHECK (id = 0), source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint_pages (revision INTEGER NOT NULL, page INTEGER NOT NULL, data BLOB NOT NULL,
                                             PRIMARY KEY (revision, page));
"""

UINT64 = 1 << 64
# Bound parameters in one statement (SQLite's limit is 32766 since 3.32; older builds 999).
SQL_PARAMETERS = 500


def signed_member_id(member_id: int) -> int:
    """A uint64 member id as SQLite stores integers (signed 64-bit)."""
    return member_id - UINT64 if member_id >= UINT64 // 2 else member_id


def unsigned_member_id(stored: int) -> int:
    return stored % UINT64


def write_image(destination: pathlib.Path, image: StoreImage) -> None:
    """``image`` as this backend's database at ``destination`` (which appears only when complete):
    a data directory holding it as :data:`DATABASE_FILE` is a complete store."""
    temporary = destination.with_name(destination.name + ".part")
    temporary.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(temporary)) as db:
        db.executescript(SCHEMA)
        with db:
            _insert_image(db, image)
    os.replace(temporary, destination)


def read_image(path: pathlib.Path) -> StoreImage:
    """This backend's database at ``path`` (a store image, or a data directory's database) as an
    image, read at once."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"meta", "log", "base", "leases", "auth"} <= tables:
            raise StorageError(f"not a cosmos-etcd store image (its tables: {', '.join(sorted(tables)) or 'none'})")
        row = db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()
        auth = db.execute("SELECT version, record FROM auth WHERE id = 0").fetchone()
        alarms = db.execute("SELECT member_id, alarm FROM alarms").fetchall() if "alarms" in tables else []
        return StoreImage(
            compact_revision=NOT_COMPACTED if row is None else row[0],
            base=[KeyValue.FromString(blob) for (blob,) in db.execute("SELECT kv FROM base ORDER BY key")],
            revisions=[Revision.FromString(blob) for (blob,) in db.execute("SELECT record FROM log ORDER BY revision")],
            leases=[Lease.FromString(blob) for (blob,) in db.execute("SELECT record FROM leases ORDER BY id")],
            auth=None if auth is None else AuthRecord(version=auth[0], data=auth[1]),
            alarms=[StoredAlarm(unsigned_member_id(member_id), alarm) for member_id, alarm in alarms])


def _insert_image(db: sqlite3.Connection, image: StoreImage) -> None:
    if image.compact_revision != NOT_COMPACTED:
        db.execute("INSERT INTO meta (name, value) VALUES ('compact_revision', ?)", (image.compact_revision,))
    db.executemany("INSERT INTO base (key, kv) VALUES (?, ?)", ((kv.key, kv.SerializeToString()) for kv in image.base))
    db.executemany("INSERT INTO log (revision, record) VALUES (?, ?)",
                   ((r.revision, r.SerializeToString()) for r in image.revisions))
    db.executemany("INSERT INTO leases (id, record) VALUES (?, ?)",
                   ((lease.id, lease.SerializeToString()) for lease in image.leases))
    if image.auth is not None:
        db.execute("INSERT INTO auth (id, version, record) VALUES (0, ?, ?)", (image.auth.version, image.auth.data))
    db.executemany("INSERT INTO alarms (member_id, alarm) VALUES (?, ?)",
                   ((signed_member_id(a.member_id), a.alarm) for a in sorted(image.alarms)))


class DataDirError(StorageError):
    """The data directory cannot be used (not writable, or locked by another process)."""


class EmbeddedLog(RevisionLog):
    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = pathlib.Path(data_dir)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._head = INITIAL_REVISION
        self._compacted_at = NOT_COMPACTED
        self._free_bytes = 0
        self._alarms: frozenset[StoredAlarm] = frozenset()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def compact_revision(self) -> int:
        return self._compacted_at

    async def open(self) -> RecoveredState:
        return await self._run(self._open)

    def _open(self) -> RecoveredState:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise DataDirError(f"cannot use data dir {self.data_dir}: {e.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirError(f"data dir {self.data_dir} is in use by another process") from None
        try:
            db = sqlite3.connect(self.data_dir / DATABASE_FILE, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise DataDirError(f"cannot open the database in {self.data_dir}: {e}") from None
        self._db = db
        compact_revision = self._compacted_at = self._compact_revision()
        checkpoint = self._load_checkpoint()
        if checkpoint is None:
            base = [KeyValue.FromString(blob) for (blob,) in db.execute("SELECT kv FROM base ORDER BY key")]
            after = NOT_COMPACTED
        else:
            base, after = [], checkpoint.revision
        revisions = [Revision.FromString(blob) for (blob,) in
                     db.execute("SELECT record FROM log WHERE revision > ? ORDER BY revision", (after,))]
        leases = self._load_leases()
        self._alarms = self._load_alarms()
        self._head = max(INITIAL_REVISION, compact_revision, after, revisions[-1].revision if revisions else 0)
        self._measure_free_pages()
        return RecoveredState(compact_revision=compact_revision, base=base, revisions=revisions, leases=leases,
                              checkpoint=checkpoint)

    def _checkpoint_revision(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'checkpoint_revision'").fetchone()
        return None if row is None else row[0]

    def _load_checkpoint(self) -> IndexCheckpoint | None:
        revision = self._checkpoint_revision()
        if revision is None:
            return None
        events = []
        for (blob,) in self._db.execute("SELECT data FROM checkpoint_pages WHERE revision = ? ORDER BY page",
                                        (revision,)):
            events.extend(Revision.FromString(blob).events)
        return IndexCheckpoint(revision=revision, events=events)

    async def save_checkpoint(self, revision: int, pages: AsyncIterator[bytes]) -> bool:
        named = await self._run(self._checkpoint_revision)
        if named is not None and named >= revision or revision < self._compacted_at - 1:
            return False
        await self._run(self._write, "DELETE FROM checkpoint_pages WHERE revision = ?", (revision,))
        number = 0
        async for page in pages:
            await self._run(self._write, "INSERT INTO checkpoint_pages (revision, page, data) VALUES (?, ?, ?)",
                            (revision, number, page))
            number += 1
        return await self._run(self._name_checkpoint, revision)

    def _name_checkpoint(self, revision: int) -> bool:
        with self._transaction():
            named = self._checkpoint_revision()
            if named is not None and named >= revision or revision < self._compacted_at - 1:
                self._db.execute("DELETE FROM checkpoint_pages WHERE revision = ?", (revision,))
                return False
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('checkpoint_revision', ?)",
                             (revision,))
            self._db.execute("DELETE FROM checkpoint_pages WHERE revision != ?", (revision,))
        return True

    def _compact_revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()
        return NOT_COMPACTED if row is None else row[0]

    async def append(self, revisions: Sequence[Revision]) -> None:
        await self._run(self._append, revisions)

    def _append(self, revisions: Sequence[Revision]) -> None:
        if revisions[0].revision != self._head + 1:
            raise LogConflictError(f"revision {revisions[0].revision} is not the head {self._head} + 1")
        rows = [(r.revision, r.SerializeToString()) for r in revisions]
        try:
            with self._transaction():
                self._db.executemany("INSERT INTO log (revision, record) VALUES (?, ?)", rows)
        except sqlite3.IntegrityError:
            raise LogConflictError(f"revision {revisions[0].revision} exists already") from None
        self._head = revisions[-1].revision

    async def read_after(self, revision: int, limit: int | None = None) -> Sequence[Revision]:
        return await self._run(self._read_after, revision, limit)

    def _read_after(self, revision: int, limit: int | None) -> list[Revision]:
        rows = self._db.execute("SELECT record FROM log WHERE revision > ? ORDER BY revision LIMIT ?",
                                (revision, -1 if limit is None else limit))
        return [Revision.FromString(blob) for (blob,) in rows]

    async def read_revisions(self, revisions: Sequence[int]) -> dict[int, Revision]:
        return await self._run(self._read_revisions, list(revisions))

    def _read_revisions(self, revisions: list[int]) -> dict[int, Revision]:
        marks = ",".join("?" * len(revisions))
        rows = self._db.execute(f"SELECT revision, record FROM log WHERE revision IN ({marks})", revisions)
        return {revision: Revision.FromString(blob) for revision, blob in rows}

    async def read_base(self, keys: Sequence[bytes]) -> dict[bytes, KeyValue]:
        return await self._run(self._read_base, list(keys))

    def _read_base(self, keys: list[bytes]) -> dict[bytes, KeyValue]:
        found = {}
        for start in range(0, len(keys), SQL_PARAMETERS):
            batch = keys[start:start + SQL_PARAMETERS]
            rows = self._db.execute(f"SELECT key, kv FROM base WHERE key IN ({','.join('?' * len(batch))})", batch)
            found.update((key, KeyValue.FromString(blob)) for key, blob in rows)
        return found

    async def compact(self, revision: int) -> None:
        if revision <= self._compacted_at:
            raise LogCompactedError(f"revision {revision} is compacted already (at {self._compacted_at})")
        await self._run(self._compact, revision)

    def _compact(self, revision: int) -> None:
        with self._transaction():
            rows = self._db.execute("SELECT record FROM log WHERE revision < ? ORDER BY revision", (revision,))
            changed: dict[bytes, KeyValue] = {}
            deleted: set[bytes] = set()
            for (blob,) in rows.fetchall():
                record = Revision.FromString(blob)
                fold(changed, record)
                deleted.update(e.kv.key for e in record.events)
            deleted.difference_update(changed)
            self._db.executemany("DELETE FROM base WHERE key = ?", ((k,) for k in deleted))
            self._db.executemany("INSERT OR REPLACE INTO base (key, kv) VALUES (?, ?)",
                                 ((k, kv.SerializeToString()) for k, kv in changed.items()))
            self._db.execute("DELETE FROM log WHERE revision < ?", (revision,))
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('compact_revision', ?)", (revision,))
            checkpoint = self._checkpoint_revision()
            if checkpoint is not None and checkpoint < revision - 1:  # its tail is gone now
                self._db.execute("DELETE FROM meta WHERE name = 'checkpoint_revision'")
                self._db.execute("DELETE FROM checkpoint_pages")
        self._compacted_at = revision
        self._measure_free_pages()

    async def save_lease(self, lease: Lease) -> None:
        await self._run(self._write, "INSERT OR REPLACE INTO leases (id, record) VALUES (?, ?)",
                        (lease.id, lease.SerializeToString()))

    async def delete_lease(self, lease_id: int) -> None:
        await self._run(self._write, "DELETE FROM leases WHERE id = ?", (lease_id,))

    async def load_leases(self) -> Sequence[Lease]:
        return await self._run(self._load_leases)

    def _load_leases(self) -> list[Lease]:
        return [Lease.FromString(blob) for (blob,) in self._db.execute("SELECT record FROM leases")]

    async def load_auth(self) -> AuthRecord | None:
        return await self._run(self._load_auth)

    def _load_auth(self) -> AuthRecord | None:
        row = self._db.execute("SELECT version, record FROM auth WHERE id = 0").fetchone()
        return None if row is None else AuthRecord(version=row[0], data=row[1])

    async def save_auth(self, record: AuthRecord) -> None:
        await self._run(self._save_auth, record)

    def _save_auth(self, record: AuthRecord) -> None:
        with self._transaction():
            stored = self._load_auth()
            if (stored.version if stored else 0) != record.version - 1:
                raise AuthConflictError(f"auth version {record.version - 1} is not the stored one")
            self._db.execute("INSERT OR REPLACE INTO auth (id, version, record) VALUES (0, ?, ?)",
                             (record.version, record.data))

    def _write(self, statement: str, parameters: tuple) -> int:
        """Run one statement in a transaction; the number of rows it changed."""
        with self._transaction():
            return self._db.execute(statement, parameters).rowcount

    @property
    def alarms(self) -> frozenset[StoredAlarm]:
        return self._alarms

    async def activate_alarm(self, alarm: StoredAlarm) -> None:
        await self._run(self._write, "INSERT OR IGNORE INTO alarms (member_id, alarm) VALUES (?, ?)",
                        (signed_member_id(alarm.member_id), alarm.alarm))
        self._alarms |= {alarm}

    async def deactivate_alarm(self, alarm: StoredAlarm) -> bool:
        removed = await self._run(self._write, "DELETE FROM alarms WHERE member_id = ? AND alarm = ?",
                                  (signed_member_id(alarm.member_id), alarm.alarm))
        self._alarms -= {alarm}
        return removed > 0

    async def import_image(self, image: StoreImage) -> None:
        await self._run(self._import_image, image)

    def _import_image(self, image: StoreImage) -> None:
        with self._transaction():
            if any(self._db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                   for table in ("log", "base", "meta", "leases", "auth", "alarms")):
                raise StorageError(f"the store in {self.data_dir} is not empty")
            _insert_image(self._db, image)
        self._compacted_at = self._compact_revision()
        last, = self._db.execute("SELECT MAX(revision) FROM log").fetchone()
        self._head = max(INITIAL_REVISION, self._compacted_at, last or 0)
        self._alarms = self._load_alarms()

    def _load_alarms(self) -> frozenset[StoredAlarm]:
        return frozenset(StoredAlarm(unsigned_member_id(member_id), alarm)
                         for member_id, alarm in self._db.execute("SELECT member_id, alarm FROM alarms"))

    async def load_migration(self) -> str | None:
        return await self._run(self._load_migration)

    def _load_migration(self) -> str | None:
        row = self._db.execute("SELECT source FROM migration WHERE id = 0").fetchone()
        return None if row is None else row[0]

    async def save_migration(self, source: str | None) -> None:
        if source is None:
            await self._run(self._write, "DELETE FROM migration WHERE id = 0", ())
        else:
            await self._run(self._write, "INSERT OR REPLACE INTO migration (id, source) VALUES (0, ?)", (source,))

    async def defragment(self) -> None:
        await self._run(self._defragment)

    def _defragment(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.execute("VACUUM")
        # In WAL mode VACUUM writes the compacted database into the write-ahead log: the database
        # file shrinks only when that is checkpointed, and the log only when truncated.
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._measure_free_pages()

    async def snapshot(self, destination: pathlib.Path) -> None:
        """A SQLite online backup: a data directory holding only this file is a complete store."""
        await self._run(self._snapshot, destination)

    def _snapshot(self, destination: pathlib.Path) -> None:
        with contextlib.closing(sqlite3.connect(destination)) as target:
            self._db.backup(target)

    def size(self) -> tuple[int, int]:
        total = sum(p.stat().st_size for p in self.data_dir.glob(DATABASE_FILE + "*"))
        return total, max(0, total - self._free_bytes)

    def _measure_free_pages(self) -> None:
        # Only on the SQLite thread, after open and compaction: the pages that later appends reuse.
        page_size, = self._db.execute("PRAGMA page_size").fetchone()
        free_pages, = self._db.execute("PRAGMA freelist_count").fetchone()
        self._free_bytes = page_size * free_pages

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._db.execute("ROLLBACK")
                raise StorageError(f"commit failed: {e}") from None
        else:
            self._db.execute("ROLLBACK")
        return False
