"""The public layout of a cosmos-etcd container: names, partition key, indexing, documents.

The operator imports this module to create the database and container exactly as the shim
expects them; it has no Azure import, so that is cheap. Everything the shim stores for one
etcd cluster lives in one container (default database ``EtcdDB``, container ``EtcdData``),
partitioned by ``/pk`` into a few logical partitions:

``pk = "log"``  the revision log (one logical partition: ordering exists only inside one)
    * ``log-<first revision, 19 digits>`` (kind ``log``): one or more consecutive revisions
      ``r``..``e`` (group commit). Creating the document whose first revision is head+1 is the
      compare-and-swap on the log head. ``w`` is the writer's nonce (resolves a create whose
      outcome is unknown), the payload is in ``d`` or in chunks.
    * ``log-<r>.<w>.<i>`` (kind ``chunk``): part ``i`` of a payload over the inline limit,
      written before the document that names it.
    * ``log-<head + 1>`` (kind ``fence``) at most one: a new leader's claim on the next revision
      (``r``, its term ``t``, its nonce ``w``), which another server's create of that id then
      fails on; the leader's first append replaces it, and a leader of a later term replaces it
      with its own.
    * ``meta`` (kind ``meta``): the compaction state: the durable compact revision ``compact``,
      first revision of the log document holding it ``cdoc``, the chain of checkpoint page sets
      that make up the base, the scheduled compact revision ``sched`` (etcd's scheduled
      compaction: what every replica refuses reads below) and its generation ``g``, bumped by
      every change so that tailing replicas notice it.
    * ``auth-stamp`` (kind ``stamp``): ``g`` = the newest version of the auth state, so that
      tailing replicas read the auth document only when it changed.
    * ``alarms`` (kind ``alarms``): etcd's raised alarms, ``a`` = ``[[member id as decimal text,
      alarm type number], ...]``, and a generation ``g`` that every change bumps (replaced only if
      unchanged since read: its etag). Kept in this partition so that the tail query returns the
      document itself when ``g`` changed: replicas follow alarms without a request of their own.
``pk = "base"`` the checkpoint (the live key-values at the compact revision)
    * ``ckpt-<set>-<page, 6 digits>`` (kind ``page``): events of one checkpoint page set; ``lo``
      and ``hi`` are the page's first and last key in hex (bytewise order = string order).
    * ``ckpt-<set>-<page>.<w>.<i>`` (kind ``chunk``): parts of an oversized page.
``pk = "hist"`` index checkpoints (every version kept at a revision, only the newest values: see the
    shim's ``mvcc/history.py``): ``hist-<revision, 19 digits>-<writer nonce>-<page, 6 digits>``
    (kind ``hpage``, ``s`` the set, ``g`` its revision), chunks as for log documents. ``meta``'s
    ``hist`` names the newest complete set (``s``, ``g``, ``pages``; ``cd`` the ``cdoc`` when it
    was written and ``lb`` the payload bytes of the log documents from there to the one holding
    ``g``, so that a start that skips them still reports dbSize).
``pk = "lease"`` ``lease-<id, 16 hex digits>`` (kind ``lease``): one granted lease each.
``pk = "member"`` ``member-<id, 16 hex digits>`` (kind ``member``): shim replicas' heartbeats.
    ``leader`` (kind ``leader``): the leader election's lease (see the shim's ``replication``
    package): the holder's member id ``h`` (decimal text), its peer URL ``a``, the term ``t``, the
    term's peer token ``k``, a renewal count ``n`` and the members the holder recorded ``ms`` (JSON
    text, so that 64-bit ids survive); replaced only if unchanged since read (etag).
``pk = "auth"`` ``auth`` (kind ``auth``): etcd's auth state (users, roles, enabled), one document
    whose version ``v`` every save increments (replaced only if unchanged since read: its etag).

Ids use only ``[0-9a-z.-]`` (Cosmos forbids ``/ \\ ? #`` and allows 255 characters).
Payloads are protobuf bytes, zlib-compressed when that helps (``z``), base64 in JSON.
"""
from __future__ import annotations

import re

DEFAULT_DATABASE = "EtcdDB"
DEFAULT_CONTAINER = "EtcdData"

PARTITION_KEY_PATH = "/pk"
# As the REST API and azure-mgmt-cosmosdb take it (`ContainerPartitionKey(paths=..., kind=...)`).
PARTITION_KEY = {"paths": [PARTITION_KEY_PATH], "kind": "Hash", "version": 2}

LOG_PARTITION = "log"
BASE_PARTITION = "base"
HISTORY_PARTITION = "hist"
LEASE_PARTITION = "lease"
MEMBER_PARTITION = "member"
AUTH_PARTITION = "auth"

KIND_LOG = "log"
KIND_CHUNK = "chunk"
KIND_FENCE = "fence"
KIND_META = "meta"
KIND_PAGE = "page"
KIND_HISTORY_PAGE = "hpage"
KIND_LEASE = "lease"
KIND_MEMBER = "member"
KIND_AUTH = "auth"
KIND_STAMP = "stamp"
KIND_ALARMS = "alarms"
KIND_MIGRATION = "migration"
KIND_LEADER = "leader"

META_ID = "meta"
AUTH_ID = "auth"
AUTH_STAMP_ID = "auth-stamp"
ALARMS_ID = "alarms"
MIGRATION_ID = "migration"
LEADER_ID = "leader"

# Only the fields that queries filter or sort on are indexed; the payloads (large base64
# strings) are not, which keeps the RU charge of a write close to its size alone.
INDEXED_FIELDS = ("kind", "r", "e", "s", "g", "o", "w")
INDEXING_POLICY = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": f"/{name}/?"} for name in INDEXED_FIELDS],
    "excludedPaths": [{"path": "/*"}, {"path": '/"_etag"/?'}],
}

# Cosmos's item limit is 2 MB of JSON: a payload string longer than this is split into chunks.
INLINE_LIMIT = 1_800_000
CHUNK_SIZE = 1_800_000
MAX_ID_LENGTH = 255
_ID_FORBIDDEN = re.compile(r"[/\\?#]")


def log_id(first_revision: int) -> str:
    """The id of the log document starting at ``first_revision`` (fixed width: ids sort as numbers)."""
    if first_revision < 0:
        raise ValueError(f"revision {first_revision} is negative")
    return f"log-{first_revision:019d}"


def chunk_id(owner_id: str, nonce: str, index: int) -> str:
    return check_id(f"{owner_id}.{nonce}.{index}")


def page_set(compact_revision: int, full: bool, since: int) -> str:
    """A checkpoint page set: a full base at ``compact_revision``, or the delta from ``since``."""
    # ``since`` may be -1 (nothing compacted yet): shifted by one, ids stay within [0-9a-z].
    return f"{compact_revision:019d}f" if full else f"{compact_revision:019d}d{since + 1:019d}"


def history_page_id(revision: int, nonce: str, page: int) -> str:
    return check_id(f"hist-{revision:019d}-{nonce}-{page:06d}")


def page_id(page_set_id: str, page: int) -> str:
    return check_id(f"ckpt-{page_set_id}-{page:06d}")


def lease_id(lease: int) -> str:
    return f"lease-{lease & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def member_id(member: int | str) -> str:
    if isinstance(member, int):
        return f"member-{member & 0xFFFF_FFFF_FFFF_FFFF:016x}"
    return check_id("member-" + re.sub(r"[^0-9A-Za-z._-]", "_", member))


def key_hex(key: bytes) -> str:
    """A key as Cosmos compares it: lower-case hex keeps bytewise order as string order."""
    return key.hex()


def check_id(document_id: str) -> str:
    if not document_id or len(document_id) > MAX_ID_LENGTH or _ID_FORBIDDEN.search(document_id):
        raise ValueError(f"not a valid Cosmos id: {document_id!r}")
    return document_id
