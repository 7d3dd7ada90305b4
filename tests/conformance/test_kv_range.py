"""KV.Range, compared field by field with a real etcd."""
from __future__ import annotations

import itertools
import random

import pytest

from cosmos_etcd_shim.proto import rpc_pb2 as pb
from tests.harness.differential import op_put, op_range, prefix_end

KEYS = [b"a", b"ab", b"abc", b"b", b"b\x00", b"c", b"d"]


def fill(pair, keys=KEYS):
    """Put each key once (revisions 1..n), then rewrite a few so that versions and mod revisions
    differ from key order and creation order."""
    for i, key in enumerate(keys):
        pair.put(pair.k(key), b"v%d" % (len(keys) - i))
    for key in keys[::3]:
        pair.put(pair.k(key), b"z-" + key)
    pair.put(pair.k(keys[1]), b"again")


def test_single_key(pair):
    fill(pair)
    for key in KEYS:
        r = pair.range(pair.k(key))
        assert r.count == 1 and len(r.kvs) == 1 and r.kvs[0].key == pair.k(key)
    r = pair.range(pair.k(b"ab"))
    assert r.kvs[0].value == b"again" and r.kvs[0].version == 2


def test_key_absent(pair):
    fill(pair)
    for key in (b"aa", b"e", b"", b"b\x00\x00"):
        r = pair.range(pair.k(key))
        assert r.count == 0 and not r.kvs and not r.more
    # A namespace without any key.
    pair.range(pair.k(b"nothing"), range_end=pair.k(b"nothinh"))


def test_range_end(pair):
    fill(pair)
    for start, end in itertools.product(KEYS + [b"", b"zz"], KEYS + [b"zz"]):
        pair.range(pair.k(start), range_end=pair.k(end))


def test_range_end_before_key_is_empty(pair):
    fill(pair)
    r = pair.range(pair.k(b"c"), range_end=pair.k(b"a"))
    assert r.count == 0 and not r.kvs
    r = pair.range(pair.k(b"b"), range_end=pair.k(b"b"))
    assert r.count == 0 and not r.kvs


def test_prefix(pair):
    fill(pair)
    for p in (b"", b"a", b"ab", b"abc", b"b", b"b\x00", b"x"):
        pair.range(pair.k(p), range_end=prefix_end(pair.k(p)))
    r = pair.range(pair.k(b"a"), range_end=prefix_end(pair.k(b"a")))
    assert [kv.key for kv in r.kvs] == [pair.k(b"a"), pair.k(b"ab"), pair.k(b"abc")]


def test_from_key(pair):
    fill(pair)
    for key in KEYS + [b"", b"0", b"zz"]:
        pair.range(pair.k(key), range_end=b"\x00")
    r = pair.range(pair.k(b"c"), range_end=b"\x00")
    assert [kv.key for kv in r.kvs] == [pair.k(b"c"), pair.k(b"d")]


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 6, 7, 8, 100, -1])
def test_limit(pair, limit):
    fill(pair)
    r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), limit=limit)
    assert r.count == len(KEYS)
    pair.range(pair.k(b"a"), range_end=prefix_end(pair.k(b"a")), limit=limit)
    pair.range(pair.k(b"b"), range_end=b"\x00", limit=limit)
    pair.range(pair.k(b"a"), limit=limit)


def test_limit_more_and_count(pair):
    fill(pair)
    r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), limit=2)
    assert r.more and r.count == len(KEYS) and len(r.kvs) == 2
    r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), limit=len(KEYS))
    assert not r.more and len(r.kvs) == len(KEYS)


def test_historic_revisions(pair):
    fill(pair)
    pair.delete(pair.k(b"b"))
    pair.delete(pair.k(b"abc"))
    pair.put(pair.k(b"b"), b"reborn")
    current = pair.revision()
    for n in range(0, current + 1):
        r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), revision=pair.rev(n))
        assert r.header.revision == current  # the header is the current revision, not the one read
        pair.range(pair.k(b"b"), revision=pair.rev(n))
        pair.range(pair.k(b"ab"), range_end=b"\x00", revision=pair.rev(n), limit=2)
        pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), revision=pair.rev(n), count_only=True)


@pytest.mark.parametrize("order", ["NONE", "ASCEND", "DESCEND"])
@pytest.mark.parametrize("target", ["KEY", "VERSION", "CREATE", "MOD", "VALUE"])
def test_sort(pair, order, target):
    fill(pair)
    for limit in (0, 1, 3):
        pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), limit=limit,
                   sort_order=pb.RangeRequest.SortOrder.Value(order),
                   sort_target=pb.RangeRequest.SortTarget.Value(target))
        pair.range(pair.k(b"ab"), range_end=b"\x00", limit=limit, revision=pair.rev(6),
                   sort_order=pb.RangeRequest.SortOrder.Value(order),
                   sort_target=pb.RangeRequest.SortTarget.Value(target))


def fill_with_ties(pair, count: int) -> list[bytes]:
    """``count`` keys whose versions, create and mod revisions and values repeat: Txns put one to
    five keys at one revision, then rewrite two random thirds of them the same way, and values
    come from four words. Returns the keys in key order."""
    rng = random.Random(count)
    keys = [pair.k(b"t/%03d" % i) for i in range(count)]
    for chosen in (rng.sample(keys, count), rng.sample(keys, count // 3), rng.sample(keys, count // 3)):
        while chosen:
            size = rng.randint(1, 5)
            batch, chosen = chosen[:size], chosen[size:]
            pair.txn(success=[op_put(key, rng.choice([b"ant", b"bee", b"cat", b"dog"])) for key in batch])
    return keys


@pytest.mark.parametrize("target", ["VERSION", "CREATE", "MOD", "VALUE"])
def test_sort_ties_in_etcds_order(pair, target):
    """etcd's sort is not stable: equal elements come out in the order its algorithm leaves them
    (for slices of 7 to 12 elements too, through a shell pass), and the shim's answers list them
    the same way. Sizes cover each of its paths: small slices, median-of-three and ninther pivots,
    and the partition that gathers many elements equal to the pivot."""
    keys = fill_with_ties(pair, 120)
    sizes = (7, 9, 12, 13, 30, 41, 60, 120)
    for size, order, limit in itertools.product(sizes, ("NONE", "ASCEND", "DESCEND"), (0, 5)):
        range_end = keys[size] if size < len(keys) else prefix_end(pair.k(b"t/"))
        request = dict(key=keys[0], range_end=range_end, limit=limit,
                       sort_order=pb.RangeRequest.SortOrder.Value(order),
                       sort_target=pb.RangeRequest.SortTarget.Value(target))
        pair.range(**request)
        pair.txn(success=[op_range(**request)])


def test_serializable(pair):
    fill(pair)
    pair.range(pair.k(b"a"), serializable=True)
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), serializable=True, limit=3)
    pair.range(pair.k(b""), range_end=b"\x00", serializable=True, revision=pair.rev(3))


def test_keys_only(pair):
    fill(pair)
    r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), keys_only=True)
    assert all(kv.value == b"" for kv in r.kvs) and r.kvs[0].mod_revision > 0
    pair.range(pair.k(b"ab"), keys_only=True)
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), keys_only=True, limit=2,
               sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.VALUE)


def test_count_only(pair):
    fill(pair)
    r = pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), count_only=True)
    assert r.count == len(KEYS) and not r.kvs
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), count_only=True, limit=2)
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), count_only=True, keys_only=True)
    pair.range(pair.k(b"zz"), count_only=True)
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), count_only=True, revision=pair.rev(2))
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), count_only=True, min_mod_revision=pair.rev(5))


FILTERS = ["min_mod_revision", "max_mod_revision", "min_create_revision", "max_create_revision"]


@pytest.mark.parametrize("field", FILTERS)
def test_revision_filters(pair, field):
    fill(pair)
    current = pair.revision()
    for n in range(0, current + 2):
        for limit in (0, 1, 2, 4):
            pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")), limit=limit, **{field: pair.rev(n)})


def test_revision_filters_combined(pair):
    fill(pair)
    all_keys = dict(key=pair.k(b""), range_end=prefix_end(pair.k(b"")))
    r = pair.range(**all_keys, min_mod_revision=pair.rev(3), max_mod_revision=pair.rev(8),
                   min_create_revision=pair.rev(2), max_create_revision=pair.rev(6), limit=2)
    # count is taken before the filters and the limit
    assert r.count == len(KEYS)
    for limit in (0, 1, 3):
        pair.range(**all_keys, min_mod_revision=pair.rev(8), limit=limit,
                   sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.CREATE)
        pair.range(**all_keys, max_create_revision=pair.rev(4), limit=limit, revision=pair.rev(7))
        pair.range(**all_keys, min_create_revision=pair.rev(4), max_mod_revision=pair.rev(9), limit=limit,
                   keys_only=True)


def test_empty_value_and_binary_keys(pair):
    pair.put(pair.k(b"\x00"), b"")
    pair.put(pair.k(b"\xff\xfe"), b"\x00\xff")
    pair.put(pair.k(b"\xff"), b"x")
    pair.range(pair.k(b""), range_end=prefix_end(pair.k(b"")))
    pair.range(pair.k(b"\xff"), range_end=prefix_end(pair.k(b"\xff")))
    pair.range(pair.k(b"\x00"))


def test_odd_revision_values(pair):
    """Negative revisions read the current revision, like 0; negative filters filter nothing."""
    fill(pair)
    everything = dict(key=pair.k(b""), range_end=prefix_end(pair.k(b"")))
    for value in (-1, -(2**63)):
        pair.range(**everything, revision=value)
        pair.range(**everything, min_mod_revision=value, limit=2)
        pair.range(**everything, max_mod_revision=value)
        pair.range(**everything, min_create_revision=value)
        pair.range(**everything, max_create_revision=value, count_only=True)


@pytest.mark.parametrize("limit", [-5, -(2**63), 2**62, 2**63 - 1])
def test_extreme_limits(pair, limit):
    fill(pair)
    everything = dict(key=pair.k(b""), range_end=prefix_end(pair.k(b"")))
    r = pair.range(**everything, limit=limit)
    assert len(r.kvs) == len(KEYS) and not r.more
    pair.range(**everything, limit=limit, sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.MOD)
    pair.range(**everything, limit=limit, min_mod_revision=pair.rev(3))
