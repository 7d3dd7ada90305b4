"""A scenario run with the independent asyncio client `aetcd` against one etcd endpoint.

Usage: python aetcd_scenario.py HOST:PORT  ->  prints one JSON document: a list of [step, result].

It runs in its own process because aetcd registers etcd's protos in the default protobuf
descriptor pool under the same names as the shim's generated code. Results are normalised here
so that two servers can be compared: revisions relative to the revision at the start, no cluster
or member ids, lease ids replaced by their order of creation, TTLs checked against bounds.
"""
from __future__ import annotations

import asyncio
import json
import re
import sys

import aetcd
import aetcd.exceptions

PREFIX = b"aetcd/"


class Recorder:
    def __init__(self, base: int):
        self.base = base
        self.steps: list = []
        self.leases: list[int] = []

    def rel(self, rev: int):
        return rev - self.base if rev else 0

    def kv(self, kv):
        if kv is None:
            return None
        lease = kv.lease
        return {
            "key": kv.key.decode("latin-1"), "value": kv.value.decode("latin-1"),
            "create": self.rel(kv.create_revision), "mod": self.rel(kv.mod_revision),
            "version": kv.version,
            "lease": (f"lease{self.leases.index(lease)}" if lease in self.leases else lease),
        }

    def header(self, header):
        return {"revision": self.rel(header.revision)}

    def add(self, name, result):
        names = {n for n, _ in self.steps}
        unique, i = name, 1
        while unique in names:
            i += 1
            unique = f"{name} #{i}"
        self.steps.append([unique, result])


def error(e: BaseException):
    detail = str(e)
    if isinstance(e, aetcd.exceptions.RevisionCompactedError):
        return {"error": type(e).__name__, "compacted_revision": e.compacted_revision}
    return {"error": type(e).__name__, "detail": detail}


async def step(rec: Recorder, name: str, coro, convert=lambda r: r):
    try:
        result = convert(await coro)
    except asyncio.TimeoutError:
        result = {"error": "timeout"}
    except Exception as e:  # recorded and compared with the other server's outcome
        if isinstance(e, aetcd.exceptions.RevisionCompactedError):
            e.compacted_revision = rec.rel(e.compacted_revision)
        result = error(e)
    rec.add(name, result)
    return result


async def collect_events(rec: Recorder, watch, n: int, timeout: float = 10):
    events = []

    async def run():
        async for event in watch:
            events.append({"kind": event.kind, "kv": rec.kv(event.kv), "prev": rec.kv(event.prev_kv)})
            if len(events) >= n:
                break

    try:
        await asyncio.wait_for(run(), timeout)
    finally:
        await watch.cancel()
    return events


async def scenario(host: str, port: int) -> list:
    url = f"http://{host}:{port}"
    async with aetcd.Client(host=host, port=port, timeout=10) as client:
        probe = await client.get_prefix(b"aetcd-probe/")
        rec = Recorder(probe.header.revision)
        tx = client.transactions

        # ---- cluster -----------------------------------------------------------------------
        async def status():
            st = await client.status()
            return {"version_3x": bool(re.fullmatch(r"3\.\d+\.\d+", st.version)), "leader_found": st.leader is not None,
                    "db_size_positive": st.db_size > 0, "raft_index_positive": st.raft_index > 0,
                    "raft_term_positive": st.raft_term > 0}
        await step(rec, "status", status())

        async def members():
            ms = [m async for m in client.members()]
            return [{"named": bool(m.name), "client_urls_ok": list(m.client_urls) == [url]} for m in ms]
        await step(rec, "members", members())

        # ---- put / get ---------------------------------------------------------------------
        for key, value in ((b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"a", b"4"), (b"d", b"0"), (b"b", b"5")):
            await step(rec, f"put {key!r}", client.put(PREFIX + key, value), lambda r: rec.header(r.header))
        await step(rec, "put prev_kv", client.put(PREFIX + b"b", b"6", prev_kv=True),
                   lambda r: {"header": rec.header(r.header), "prev": rec.kv(r.prev_kv)})
        await step(rec, "put prev_kv new key", client.put(PREFIX + b"e", b"7", prev_kv=True),
                   lambda r: {"header": rec.header(r.header), "prev": rec.kv(r.prev_kv)})
        await step(rec, "put binary", client.put(PREFIX + b"bin\x00\xff", b"\x00\x01\xfe"), lambda r: rec.header(r.header))
        await step(rec, "get", client.get(PREFIX + b"a"), lambda r: {"header": rec.header(r.header), "kv": rec.kv(r)})
        await step(rec, "get binary", client.get(PREFIX + b"bin\x00\xff"), rec.kv)
        await step(rec, "get missing", client.get(PREFIX + b"missing"), lambda r: r)
        await step(rec, "get serializable", client.get(PREFIX + b"b", serializable=True), rec.kv)

        def get_range(r):
            return {"header": rec.header(r.header), "kvs": [rec.kv(kv) for kv in r], "more": r.more, "count": r.count}

        await step(rec, "get_prefix", client.get_prefix(PREFIX), get_range)
        await step(rec, "get_prefix keys_only", client.get_prefix(PREFIX, keys_only=True), get_range)
        for target in ("key", "version", "create", "mod", "value"):
            for order in ("ascend", "descend"):
                await step(rec, f"get_prefix sort {target} {order}",
                           client.get_prefix(PREFIX, sort_order=order, sort_target=target),
                           lambda r: [kv.key.decode("latin-1") for kv in r])
        await step(rec, "get_range [b, d)", client.get_range(PREFIX + b"b", PREFIX + b"d"), get_range)
        await step(rec, "get_range empty", client.get_range(PREFIX + b"d", PREFIX + b"b"), get_range)
        await step(rec, "get_all", client.get_all(keys_only=True),
                   lambda r: [kv.key.decode("latin-1") for kv in r if kv.key.startswith(PREFIX)])

        # ---- transactions ------------------------------------------------------------------
        def txn(r):
            ok, responses = r
            out = []
            for resp in responses:
                if isinstance(resp, list):
                    out.append({"range": [rec.kv(get) for _, get in resp]})
                else:
                    kind = resp.WhichOneof("response")
                    inner = getattr(resp, kind)
                    item = {"kind": kind, "revision": rec.rel(inner.header.revision)}
                    if kind == "response_delete_range":
                        item["deleted"] = inner.deleted
                        item["prev_kvs"] = [rec.kv(kv) for kv in inner.prev_kvs]
                    if kind == "response_put":
                        item["prev_kv"] = rec.kv(inner.prev_kv) if inner.HasField("prev_kv") else None
                    if kind == "response_txn":
                        item["succeeded"] = inner.succeeded
                        item["responses"] = [r.WhichOneof("response") for r in inner.responses]
                    out.append(item)
            return {"succeeded": ok, "responses": out}

        await step(rec, "txn value == (true)", client.transaction(
            compare=[tx.value(PREFIX + b"a") == b"4", tx.version(PREFIX + b"a") > 1],
            success=[tx.put(PREFIX + b"t1", b"s"), tx.get(PREFIX + b"a")],
            failure=[tx.put(PREFIX + b"t1", b"f")]), txn)
        await step(rec, "txn value != (false)", client.transaction(
            compare=[tx.value(PREFIX + b"a") != b"4"],
            success=[tx.put(PREFIX + b"t2", b"s")],
            failure=[tx.put(PREFIX + b"t2", b"f", prev_kv=True), tx.get(PREFIX + b"t1"), tx.delete(PREFIX + b"e", prev_kv=True)]), txn)
        await step(rec, "txn create/mod compares", client.transaction(
            compare=[tx.create(PREFIX + b"b") < rec.base + 3, tx.mod(PREFIX + b"b") > rec.base + 2,
                     tx.mod(PREFIX + b"missing") == 0, tx.version(PREFIX + b"missing") == 0],
            success=[tx.get(PREFIX + b"b"), tx.delete(PREFIX + b"t", PREFIX + b"u")],
            failure=[]), txn)
        await step(rec, "txn range compare", client.transaction(
            compare=[tx.version(PREFIX + b"a", PREFIX + b"c") > 0],
            success=[tx.get(PREFIX + b"a", PREFIX + b"c")], failure=[tx.get(PREFIX + b"d")]), txn)
        await step(rec, "txn nested", client.transaction(
            compare=[],
            success=[tx.txn(compare=[tx.value(PREFIX + b"a") == b"4"],
                            success=[tx.put(PREFIX + b"n1", b"1"), tx.get(PREFIX + b"n1")],
                            failure=[tx.put(PREFIX + b"n2", b"2")]),
                     tx.put(PREFIX + b"n3", b"3")],
            failure=[]), txn)
        await step(rec, "txn duplicate put", client.transaction(
            compare=[], success=[tx.put(PREFIX + b"x", b"1"), tx.put(PREFIX + b"x", b"2")], failure=[]), txn)
        await step(rec, "txn too many ops", client.transaction(
            compare=[], success=[tx.put(PREFIX + b"many/%d" % i, b"v") for i in range(129)], failure=[]), txn)
        await step(rec, "txn 128 ops", client.transaction(
            compare=[], success=[tx.put(PREFIX + b"many/%03d" % i, b"v") for i in range(128)], failure=[]),
            lambda r: {"succeeded": r[0], "n": len(r[1])})
        await step(rec, "replace ok", client.replace(PREFIX + b"c", b"3", b"33"))
        await step(rec, "replace stale", client.replace(PREFIX + b"c", b"3", b"333"))
        await step(rec, "get after replace", client.get(PREFIX + b"c"), rec.kv)

        # ---- delete ------------------------------------------------------------------------
        def deleted(r):
            if r is None:
                return None
            return {"header": rec.header(r.header), "deleted": r.deleted,
                    "prev": [rec.kv(kv) for kv in r] if hasattr(r, "prev_kvs") else rec.kv(r.prev_kv)}

        await step(rec, "delete", client.delete(PREFIX + b"d"), deleted)
        await step(rec, "delete missing", client.delete(PREFIX + b"d"), deleted)
        await step(rec, "delete prev_kv", client.delete(PREFIX + b"c", prev_kv=True), deleted)
        await step(rec, "delete_prefix", client.delete_prefix(PREFIX + b"many/"), deleted)
        await step(rec, "delete_range", client.delete_range(PREFIX + b"n", PREFIX + b"o"), deleted)
        await step(rec, "get_prefix after deletes", client.get_prefix(PREFIX), get_range)

        # ---- errors ------------------------------------------------------------------------
        await step(rec, "put empty key", client.put(b"", b"v"))
        await step(rec, "put 1.6 MiB value", client.put(PREFIX + b"big", b"x" * (1600 * 1024)), lambda r: rec.header(r.header))
        await step(rec, "put 1.4 MiB value", client.put(PREFIX + b"big", b"x" * (1400 * 1024)), lambda r: rec.header(r.header))
        await step(rec, "put with unknown lease", client.put(PREFIX + b"l", b"v", lease=424242))

        # ---- leases ------------------------------------------------------------------------
        async def grant():
            lease = await client.lease(600)
            rec.leases.append(lease.id)
            return {"ttl": lease.ttl}
        granted = await step(rec, "lease grant", grant())
        if "error" in granted:
            rec.add("lease steps", "skipped: the grant failed")
        else:
            lease_id = rec.leases[0]
            await step(rec, "put with lease", client.put(PREFIX + b"leased", b"v", lease=lease_id),
                       lambda r: rec.header(r.header))
            await step(rec, "get leased", client.get(PREFIX + b"leased"), rec.kv)

            def ttl(r):
                return {"ttl_ok": 590 <= r.TTL <= 600, "granted": r.grantedTTL, "keys": [k.decode() for k in r.keys],
                        "id": f"lease{rec.leases.index(r.ID)}" if r.ID in rec.leases else r.ID}

            await step(rec, "lease info", client.get_lease_info(lease_id), ttl)
            await step(rec, "lease refresh", client.refresh_lease(lease_id), lambda r: {"ttl": r.TTL})
            await step(rec, "lease duplicate id", client.lease(60, lease_id=lease_id))
            await step(rec, "lease revoke", client.revoke_lease(lease_id), lambda r: None)
            await step(rec, "get leased after revoke", client.get(PREFIX + b"leased"), rec.kv)
            await step(rec, "lease info after revoke", client.get_lease_info(lease_id),
                       lambda r: {"ttl": r.TTL, "granted": r.grantedTTL, "keys": list(r.keys)})
            await step(rec, "lease revoke again", client.revoke_lease(lease_id), lambda r: None)

        # ---- locks -------------------------------------------------------------------------
        async def locks():
            lock = client.lock(b"aetcd-lock", ttl=60)
            acquired = await lock.acquire(timeout=5)
            held = await lock.is_acquired()
            other = client.lock(b"aetcd-lock", ttl=60)
            other_acquired = await other.acquire(timeout=0.5)
            await lock.release()
            after = await lock.is_acquired()
            other_now = await other.acquire(timeout=5)
            await other.release()
            return {"acquired": acquired, "held": held, "other_while_held": other_acquired,
                    "after_release": after, "other_after_release": other_now}
        await step(rec, "locks", locks())

        # ---- watch -------------------------------------------------------------------------
        head = (await client.get_prefix(PREFIX)).header.revision
        async def watched(n, *args, **kwargs):
            return await collect_events(rec, await client.watch(*args, **kwargs), n)

        async def watched_prefix(n, *args, **kwargs):
            return await collect_events(rec, await client.watch_prefix(*args, **kwargs), n)

        await step(rec, "watch history", watched(2, PREFIX + b"a", start_revision=rec.base + 1, prev_kv=True))
        await step(rec, "watch prefix history", watched_prefix(2, PREFIX + b"n", start_revision=rec.base + 1))

        async def live():
            watch = await client.watch_prefix(PREFIX + b"live/")
            task = asyncio.ensure_future(collect_events(rec, watch, 3))
            await client.put(PREFIX + b"live/1", b"1")
            await client.put(PREFIX + b"live/1", b"2")
            await client.delete(PREFIX + b"live/1")
            return await task
        await step(rec, "watch live", live())
        await step(rec, "watch_once", client.watch_once(PREFIX + b"a", timeout=5, start_revision=rec.base + 4),
                   lambda e: {"kind": e.kind, "kv": rec.kv(e.kv)})

        # ---- compaction --------------------------------------------------------------------
        await step(rec, "compact", client.compact(rec.base + 4), lambda r: None)
        await step(rec, "compact again", client.compact(rec.base + 4), lambda r: None)
        await step(rec, "compact below", client.compact(rec.base + 2), lambda r: None)
        await step(rec, "compact future", client.compact(head + 1000), lambda r: None)

        await step(rec, "watch below compaction", watched(1, PREFIX + b"a", start_revision=rec.base + 2))
        await step(rec, "watch at compaction", watched(1, PREFIX + b"a", start_revision=rec.base + 4))
        await step(rec, "compact physical", client.compact(head, physical=True), lambda r: None)
        await step(rec, "get after compaction", client.get(PREFIX + b"a"), rec.kv)
        await step(rec, "put after compaction", client.put(PREFIX + b"post", b"1"), lambda r: rec.header(r.header))
        return rec.steps


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    steps = asyncio.run(scenario(host, int(port)))
    json.dump(steps, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
