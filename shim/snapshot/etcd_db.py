"""etcd's database layout (the v3.5 schema), written from a store image of the shim and read back
into one.

Both backends snapshot themselves as a SQLite database in the embedded backend's format (the
*store image*: a compact revision, the base of live key-values before it, the log of revisions
from it on, leases, the auth state, alarms). This module turns such an image into the bbolt file
etcd keeps as its backend, which ``etcdctl snapshot save`` receives and ``etcdutl snapshot
status|restore`` read:

* ``key``: one entry per change, keyed by the change's revision: the main revision (8 bytes, big
  endian), ``_``, the sub-revision (the change's position within its revision, 8 bytes), and
  ``t`` for a deletion. A put's value is the new ``mvccpb.KeyValue``; a deletion's is a KeyValue
  holding only the key. After a compaction at R, etcd keeps of the changes at or below R only
  each live key's last put, and drops deletions: so does this. The base does not record the
  sub-revisions of changes before R, so keys changed in one revision get theirs in key order;
  only their relative order can differ from the original etcd's, and nothing reads it once
  compacted.
* ``meta``: ``finishedCompactRev`` and ``scheduledCompactRev`` (the compact revision, as 17
  revision bytes with sub-revision 0), ``consistent_index`` (here the store revision; etcdutl's
  restore overwrites it, and the raft ``term``), and ``confState`` naming this member, as etcd 3.5
  writes them; no ``storageVersion``, so the file has etcd 3.5's schema, which both etcd 3.5 and
  3.6 (after its schema migration) restore.
* ``lease``: lease id (8 bytes, big endian) -> ``leasepb.Lease`` (id, granted TTL).
* ``auth`` (``authEnabled``, ``authRevision``), ``authUsers``, ``authRoles``: etcd's auth state,
  the same protobuf records the shim keeps (bcrypt hashes included, so passwords keep working).
* ``alarm``: one ``AlarmMember`` per active alarm, as keys with empty values.
* ``members``, ``members_removed`` and ``cluster`` exist but stay empty: restore replaces the
  membership, and a cluster version written here would make an older etcd refuse to start on the
  restored data (etcd refuses to downgrade a cluster).

Read back (:func:`read_etcd_database`, for the shim's own database or a real etcd's), the changes
after the compact revision become the log, revisions unchanged; those before it fold into the
base. What etcd's compaction dropped is gone in both directions: deletions at or before the
compact revision, so a watch from the compact revision on the restored store misses them, as on
an etcd restored from the same file.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import pathlib
import sqlite3
import struct
from collections.abc import Iterator

from google.protobuf.message import DecodeError

from cosmos_etcd_shim.proto import lease_pb2, rpc_pb2
from cosmos_etcd_shim.proto.auth_pb2 import Role, User
from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import AuthState, Lease, Revision
from cosmos_etcd_shim.snapshot import bbolt
from cosmos_etcd_shim.storage.base import INITIAL_REVISION, AuthRecord, StoreImage, StoredAlarm
from cosmos_etcd_shim.storage.embedded import NOT_COMPACTED, unsigned_member_id

_U64 = struct.Struct(">Q")
TOMBSTONE = b"t"

Items = Iterator[tuple[bytes, bytes]]


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """etcd's key-bucket key of a change: main and sub revision, big endian, ``t`` if a deletion."""
    return _U64.pack(main) + b"_" + _U64.pack(sub) + (TOMBSTONE if tombstone else b"")


def write_etcd_database(image: pathlib.Path, destination: pathlib.Path, member_id: int, raft_term: int) -> None:
    """Write the store image at ``image`` (SQLite) as etcd's database at ``destination`` (bbolt)."""
    with contextlib.closing(sqlite3.connect(f"file:{image}?mode=ro", uri=True)) as db:
        compact = _compact_revision(db)
        revision, = db.execute("SELECT MAX(revision) FROM log").fetchone()
        revision = max(INITIAL_REVISION, compact, revision or 0)
        meta = {
            b"confState": json.dumps({"voters": [member_id], "auto_leave": False}, separators=(",", ":")).encode(),
            b"consistent_index": _U64.pack(revision),
            b"term": _U64.pack(raft_term),
        }
        if compact != NOT_COMPACTED:
            meta[b"finishedCompactRev"] = meta[b"scheduledCompactRev"] = revision_key(compact, 0)
        auth = _auth_state(db)
        buckets = {
            b"alarm": _alarms(db),
            b"auth": _sorted(_auth_flags(auth)),
            b"authRoles": _sorted((role.name, role.SerializeToString()) for role in auth.roles),
            b"authUsers": _sorted((user.name, user.SerializeToString()) for user in auth.users),
            b"cluster": iter(()),
            b"key": _changes(db, compact),
            b"lease": _leases(db),
            b"members": iter(()),
            b"members_removed": iter(()),
            b"meta": _sorted(meta.items()),
        }
        bbolt.write(destination, sorted(buckets.items()))


def _sorted(items) -> Items:
    return iter(sorted(items))


def _compact_revision(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()
    return NOT_COMPACTED if row is None else row[0]


def _changes(db: sqlite3.Connection, compact: int) -> Items:
    """The key bucket in revision order: what a compaction at ``compact`` keeps, then the log."""
    after = INITIAL_REVISION
    if compact != NOT_COMPACTED:
        yield from _kept_at_compaction(db, compact)
        after = compact
    for (blob,) in db.execute("SELECT record FROM log WHERE revision > ? ORDER BY revision", (after,)):
        record = Revision.FromString(blob)
        for sub, event in enumerate(record.events):
            if event.type == Event.PUT:
                yield revision_key(record.revision, sub), event.kv.SerializeToString()
            else:
                yield revision_key(record.revision, sub, tombstone=True), KeyValue(key=event.kv.key).SerializeToString()


def _kept_at_compaction(db: sqlite3.Connection, compact: int) -> Items:
    """Each key live at ``compact``: its last put, from the base (before ``compact``) or from the
    record of ``compact`` itself."""
    row = db.execute("SELECT record FROM log WHERE revision = ?", (compact,)).fetchone()
    at_compact = Revision.FromString(row[0]) if row else Revision(revision=compact)
    changed_at_compact = {event.kv.key for event in at_compact.events}
    live = sorted((KeyValue.FromString(blob).mod_revision, key)
                  for key, blob in db.execute("SELECT key, kv FROM base") if key not in changed_at_compact)
    for mod_revision, group in itertools.groupby(live, key=lambda entry: entry[0]):
        for sub, (_, key) in enumerate(group):
            blob, = db.execute("SELECT kv FROM base WHERE key = ?", (key,)).fetchone()
            yield revision_key(mod_revision, sub), blob
    for sub, event in enumerate(at_compact.events):
        if event.type == Event.PUT:
            yield revision_key(compact, sub), event.kv.SerializeToString()


def _leases(db: sqlite3.Connection) -> Items:
    leases = (Lease.FromString(blob) for (blob,) in db.execute("SELECT record FROM leases"))
    return _sorted((_U64.pack(lease.id), lease_pb2.Lease(ID=lease.id, TTL=lease.ttl).SerializeToString())
                   for lease in leases)


def _auth_state(db: sqlite3.Connection) -> AuthState:
    row = db.execute("SELECT record FROM auth WHERE id = 0").fetchone()
    return AuthState.FromString(row[0]) if row else AuthState()


def _auth_flags(auth: AuthState) -> Iterator[tuple[bytes, bytes]]:
    # etcd counts auth revisions from 1; a missing authEnabled reads as disabled.
    if auth.enabled:
        yield b"authEnabled", b"\x01"
    yield b"authRevision", _U64.pack(max(1, auth.revision))


def _alarms(db: sqlite3.Connection) -> Items:
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alarms'").fetchone() is None:
        return iter(())
    rows = db.execute("SELECT member_id, alarm FROM alarms")
    return _sorted((rpc_pb2.AlarmMember(memberID=unsigned_member_id(member_id), alarm=alarm).SerializeToString(), b"")
                   for member_id, alarm in rows)


class EtcdDatabaseError(Exception):
    """The bbolt file is not an etcd database the shim can take (a bucket or key it cannot read)."""


def read_etcd_database(data: bytes) -> StoreImage:
    """An etcd database (a bbolt file's bytes, etcd 3.4 to 3.6 schema) as a store image, revisions
    unchanged."""
    try:
        return _store_image({name: list(items) for name, items in bbolt.Database(data).buckets()})
    except (bbolt.BboltFormatError, struct.error, DecodeError) as e:
        raise EtcdDatabaseError(f"not an etcd database: {e}") from None


def _store_image(buckets: dict[bytes, list[tuple[bytes, bytes]]]) -> StoreImage:
    if b"key" not in buckets or b"meta" not in buckets:
        raise EtcdDatabaseError("not an etcd database: no 'key' and 'meta' buckets")
    meta = dict(buckets[b"meta"])
    # A compaction etcd had scheduled but not finished is finished here, as etcd would on start.
    marks = [_main_revision(meta[name]) for name in (b"scheduledCompactRev", b"finishedCompactRev") if name in meta]
    compact = max(marks, default=NOT_COMPACTED)
    base: dict[bytes, KeyValue] = {}
    revisions: list[Revision] = []
    for key, value in buckets[b"key"]:
        main, event = _event(key, value)
        if main < compact:
            if event.type == Event.PUT:
                base[event.kv.key] = event.kv
            else:
                base.pop(event.kv.key, None)
            continue
        if not revisions or revisions[-1].revision != main:
            revisions.append(Revision(revision=main))
        revisions[-1].events.append(event)
    _check_contiguous(revisions, compact)
    leases = [Lease(id=record.ID, ttl=record.TTL)
              for record in (lease_pb2.Lease.FromString(value) for _, value in buckets.get(b"lease", []))]
    alarms = [StoredAlarm(member.memberID, member.alarm)
              for member in (rpc_pb2.AlarmMember.FromString(key) for key, _ in buckets.get(b"alarm", []))]
    return StoreImage(compact_revision=compact, base=base.values(), revisions=revisions, leases=leases,
                      auth=_auth_record(buckets), alarms=alarms)


def _main_revision(revision_bytes: bytes) -> int:
    return _U64.unpack_from(revision_bytes)[0]


def _event(key: bytes, value: bytes) -> tuple[int, Event]:
    if len(key) not in (17, 18) or key[8:9] != b"_" or key[17:] not in (b"", TOMBSTONE):
        raise EtcdDatabaseError(f"not an etcd revision key in bucket 'key': {key!r}")
    main = _main_revision(key)
    kv = KeyValue.FromString(value)
    if key.endswith(TOMBSTONE):
        # A deletion as the shim's log records one: the key and the deleting revision.
        return main, Event(type=Event.DELETE, kv=KeyValue(key=kv.key, mod_revision=main))
    return main, Event(type=Event.PUT, kv=kv)


def _check_contiguous(revisions: list[Revision], compact: int) -> None:
    """Every revision after the compact revision has a change in etcd's database (the one at the
    compact revision may have lost its deletions and overwritten puts to the compaction)."""
    expected = INITIAL_REVISION + 1 if compact == NOT_COMPACTED else compact + 1
    for record in revisions:
        if record.revision == compact:
            continue
        if record.revision != expected:
            raise EtcdDatabaseError(f"etcd's database has no change at revision {expected} "
                                    f"(the next is at {record.revision}): not a complete history")
        expected += 1


def _auth_record(buckets: dict[bytes, list[tuple[bytes, bytes]]]) -> AuthRecord | None:
    flags = dict(buckets.get(b"auth", []))
    users = sorted((User.FromString(v) for _, v in buckets.get(b"authUsers", [])), key=lambda user: user.name)
    roles = sorted((Role.FromString(v) for _, v in buckets.get(b"authRoles", [])), key=lambda role: role.name)
    enabled = flags.get(b"authEnabled") == b"\x01"
    revision = _U64.unpack(flags[b"authRevision"])[0] if b"authRevision" in flags else 0
    if not (enabled or users or roles or revision > 1):
        return None  # never changed: as a store where auth was never touched
    state = AuthState(enabled=enabled, revision=revision, users=users, roles=roles)
    return AuthRecord(version=1, data=state.SerializeToString())
