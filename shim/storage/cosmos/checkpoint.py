"""Checkpoints: the base (live key-values at the compact revision) as pages in the ``base`` partition.

A compaction to R writes one *page set*: either the delta since the previous compact revision
(the final state of every key changed in between: a PUT event, or a DELETE event for a key that
is gone) or, now and then, the full base. The ``meta`` document lists the chain of page sets
that make up the current base, oldest first (a full set, then deltas); reading the base folds
them in order. Page sets are immutable and their ids are derived from what they hold (the
compact revision, full or delta-since), so writing one twice writes the same documents, and a
stale compactor can only add garbage that no chain names (the garbage collector removes it).

A full set is written instead of a delta when the chain's deltas together outgrow the full
set they apply to, or the chain reaches :data:`MAX_CHAIN` sets: the amortised cost of a
compaction stays proportional to what changed, and reading the base stays proportional to
what is live.
"""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Iterable

from cosmos_etcd_shim.proto.kv_pb2 import Event, KeyValue
from cosmos_etcd_shim.proto.storage_pb2 import Revision
from cosmos_etcd_shim.storage.base import StorageError, fold
from cosmos_etcd_shim.storage.cosmos import codec, layout
from cosmos_etcd_shim.storage.cosmos.client import CosmosConnection

PAGE_BYTES = 1024 * 1024  # serialized events per page, before compression
MAX_CHAIN = 16
WRITE_CONCURRENCY = 8


@dataclasses.dataclass(frozen=True)
class PageSet:
    """One entry of the meta document's chain."""

    id: str
    revision: int
    pages: int
    bytes: int
    full: bool

    def to_json(self) -> dict:
        return {"s": self.id, "g": self.revision, "pages": self.pages, "bytes": self.bytes, "full": self.full}

    @classmethod
    def from_json(cls, data: dict) -> PageSet:
        return cls(id=data["s"], revision=data["g"], pages=data["pages"], bytes=data["bytes"], full=data["full"])


def delta_events(records: Iterable[Revision]) -> list[Event]:
    """The final state of every key the records touch: PUT with the live value, or DELETE."""
    live: dict[bytes, KeyValue] = {}
    touched: set[bytes] = set()
    for record in records:
        fold(live, record)
        touched.update(e.kv.key for e in record.events)
    events = []
    for key in sorted(touched):
        if key in live:
            events.append(Event(type=Event.PUT, kv=live[key]))
        else:
            events.append(Event(type=Event.DELETE, kv=KeyValue(key=key)))
    return events


def full_events(base: dict[bytes, KeyValue]) -> list[Event]:
    return [Event(type=Event.PUT, kv=base[key]) for key in sorted(base)]


def paginate(events: list[Event]) -> list[list[Event]]:
    pages: list[list[Event]] = []
    current: list[Event] = []
    size = 0
    for event in events:
        event_size = event.ByteSize()
        if current and size + event_size > PAGE_BYTES:
            pages.append(current)
            current, size = [], 0
        current.append(event)
        size += event_size
    if current or not pages:
        pages.append(current)
    return pages


async def write_page(conn: CosmosConnection, op: str, document: dict, payload: bytes) -> int:
    """Upsert one page document (``id``, ``pk``, ``s``, ``g`` and the kind's own fields given) with
    ``payload``, its chunks first; the payload's size. The chunk nonce is derived from the payload,
    so that rewriting the same page reuses the same ids."""
    packed = codec.pack(payload)
    nonce = f"{packed.crc:08x}"
    for index, text in enumerate(packed.chunks):
        await conn.upsert(op, {
            "id": layout.chunk_id(document["id"], nonce, index), "pk": document["pk"], "kind": layout.KIND_CHUNK,
            "s": document["s"], "g": document["g"], "o": document["id"], "w": nonce, "i": index, "d": text})
    await conn.upsert(op, {**document, **packed.fields(nonce)})
    return packed.raw_size


async def write_page_set(conn: CosmosConnection, set_id: str, revision: int, events: list[Event],
                         full: bool) -> PageSet:
    """Write every page (chunks first) of a page set; idempotent (upserts of derived content)."""
    pages = paginate(events)
    semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def write(number: int, page: list[Event]) -> int:
        payload = Revision(revision=revision, events=page).SerializeToString()
        document = {"id": layout.page_id(set_id, number), "pk": layout.BASE_PARTITION, "kind": layout.KIND_PAGE,
                    "s": set_id, "g": revision, "p": number, "full": full}
        if page:
            document["lo"] = layout.key_hex(page[0].kv.key)
            document["hi"] = layout.key_hex(page[-1].kv.key)
        async with semaphore:
            return await write_page(conn, "compact", document, payload)

    sizes = await asyncio.gather(*(write(number, page) for number, page in enumerate(pages)))
    total = sum(sizes)
    return PageSet(id=set_id, revision=revision, pages=len(pages), bytes=total, full=full)


async def read_page_set(conn: CosmosConnection, page_set: PageSet, op: str) -> list[Event]:
    """The events of a page set, in page order. StorageError if a page is missing (collected)."""
    documents = await conn.query(op, "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind AND c.s = @s",
                                 {"@pk": layout.BASE_PARTITION, "@kind": layout.KIND_PAGE, "@s": page_set.id},
                                 layout.BASE_PARTITION, max_item_count=4)
    if len(documents) != page_set.pages:
        raise PageSetMissing(f"page set {page_set.id}: {len(documents)} of {page_set.pages} pages found")
    documents.sort(key=lambda d: d["p"])
    events: list[Event] = []
    for document in documents:
        data = codec.unpack(document, await read_chunks(conn, document, layout.BASE_PARTITION, op))
        events.extend(Revision.FromString(data).events)
    return events


async def read_chunks(conn: CosmosConnection, document: dict, partition: str, op: str) -> list[str]:
    if "d" in document:
        return []
    count = document["c"]
    chunks = await conn.query(op, "SELECT * FROM c WHERE c.pk = @pk AND c.kind = @kind AND c.o = @o AND c.w = @w",
                              {"@pk": partition, "@kind": layout.KIND_CHUNK, "@o": document["id"],
                               "@w": document["w"]}, partition, max_item_count=2)
    chunks.sort(key=lambda c: c["i"])
    if [c["i"] for c in chunks] != list(range(count)):
        raise PageSetMissing(f"{document['id']}: {len(chunks)} of {count} chunks found")
    return [c["d"] for c in chunks]


async def read_base(conn: CosmosConnection, chain: list[PageSet], op: str) -> dict[bytes, KeyValue]:
    base: dict[bytes, KeyValue] = {}
    for page_set in chain:
        for event in await read_page_set(conn, page_set, op):
            if event.type == Event.PUT:
                base[event.kv.key] = event.kv
            else:
                base.pop(event.kv.key, None)
    return base


async def read_keys(conn: CosmosConnection, chain: list[PageSet], wanted: dict[str, bytes],
                    op: str) -> dict[bytes, KeyValue]:
    """The base's key-values of the keys ``wanted`` (hex -> key): per page set, the pages' key
    spans (``lo``/``hi``, one query without payloads), then only the pages that may hold one."""
    base: dict[bytes, KeyValue] = {}
    for page_set in chain:
        spans = await conn.query(op, "SELECT c.id, c.lo, c.hi FROM c WHERE c.pk = @pk AND c.kind = @kind AND c.s = @s",
                                 {"@pk": layout.BASE_PARTITION, "@kind": layout.KIND_PAGE, "@s": page_set.id},
                                 layout.BASE_PARTITION)
        if len(spans) != page_set.pages:
            raise PageSetMissing(f"page set {page_set.id}: {len(spans)} of {page_set.pages} pages found")
        for span in spans:
            if "lo" not in span or not any(span["lo"] <= hex_key <= span["hi"] for hex_key in wanted):
                continue
            document = await conn.read_by_id(op, span["id"], layout.BASE_PARTITION)
            if document is None:
                raise PageSetMissing(f"page {span['id']} is gone")
            data = codec.unpack(document, await read_chunks(conn, document, layout.BASE_PARTITION, op))
            for event in Revision.FromString(data).events:
                if layout.key_hex(event.kv.key) not in wanted:
                    continue
                if event.type == Event.PUT:
                    base[event.kv.key] = event.kv
                else:
                    base.pop(event.kv.key, None)
    return base


async def read_pages_by_id(conn: CosmosConnection, partition: str, ids: list[str], op: str) -> list[Event]:
    """The events of the pages ``ids``, in that order: point reads, a few at a time (the cheapest
    read Cosmos has, and one that does not grow with the partition)."""
    semaphore = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def read(document_id: str) -> list[Event]:
        async with semaphore:
            document = await conn.read_item(op, document_id, partition)
            data = codec.unpack(document, await read_chunks(conn, document, partition, op))
        return list(Revision.FromString(data).events)

    pages = await asyncio.gather(*(read(document_id) for document_id in ids))
    return [event for page in pages for event in page]


class PageSetMissing(StorageError):
    """A page or chunk named by the chain is gone: the chain changed while it was being read."""


def new_nonce() -> str:
    return secrets.token_hex(6)
