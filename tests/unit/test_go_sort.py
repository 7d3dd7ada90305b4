"""mvcc/go_sort.py on its own: every answer is a correct sort of its input, on any input.

That it orders equal elements as etcd does is shown against a real etcd in
tests/conformance/test_kv_range.py (test_sort_ties_in_etcds_order); these properties also cover the
heapsort fallback and sizes that test does not reach.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cosmos_etcd_shim.mvcc.go_sort import _Sorter, go_sort


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.integers(0, 6), max_size=400), descending=st.booleans())
def test_a_permutation_in_order(keys, descending):
    positions = go_sort(list(range(len(keys))), key=keys.__getitem__, descending=descending)
    assert sorted(positions) == list(range(len(keys)))
    assert [keys[p] for p in positions] == sorted(keys, reverse=descending)


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.integers(0, 6), min_size=13, max_size=200), descending=st.booleans(),
       depth=st.integers(0, 2))
def test_the_heapsort_past_the_depth_bound_sorts(keys, descending, depth):
    """Go's quicksort hands a slice to heapsort once it has recursed too deep; random input rarely
    gets there, so the bound is set low here."""
    sorter = _Sorter(list(keys), list(range(len(keys))), descending)
    sorter.quick_sort(0, len(keys), depth)
    assert sorted(sorter.items) == list(range(len(keys)))
    assert [keys[p] for p in sorter.items] == sorted(keys, reverse=descending)


@given(keys=st.lists(st.binary(max_size=3), unique=True, max_size=60), descending=st.booleans())
def test_distinct_keys_as_pythons_sort(keys, descending):
    assert go_sort(keys, key=bytes, descending=descending) == sorted(keys, reverse=descending)
