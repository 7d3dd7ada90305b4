"""Go's ``sort.Sort``, reproduced so that a sorted Range lists equal elements in etcd's order.

etcd sorts a Range's results with Go's ``sort.Sort`` (``sort.Sort(sort.Reverse(...))`` for
DESCEND), which is not stable: keys with equal versions, create or mod revisions, or equal values,
come out in an order that follows from the algorithm's steps, not from the keys. Clients see that
order, so the shim takes the same steps.

The algorithm is the one of the Go release that built the reference etcd 3.5.1 (go1.16, unchanged
from go1.6 to go1.18): Bentley and McIlroy's quicksort with a median-of-three pivot (Tukey's ninther
above 40 elements), heapsort past a depth bound, and under 13 elements a shell pass with gap 6
before an insertion sort. Go 1.19 replaced it with pdqsort, so etcd releases built with newer Go
order ties differently among themselves; the shim answers as the etcd it is tested against.

When no two elements are equal every correct sort gives the same order, and Python's own (much
faster) sort is used.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

Item = TypeVar("Item")

_SMALL = 12  # slices this long or shorter get the shell pass and insertion sort
_NINTHER_ABOVE = 40  # slices longer than this choose their pivot by Tukey's ninther


def go_sort(items: list[Item], key: Callable[[Item], Hashable], descending: bool = False) -> list[Item]:
    """``items`` in the order Go's ``sort.Sort`` gives them (``sort.Reverse`` when ``descending``),
    comparing ``key(item)`` with ``<``."""
    keys = [key(item) for item in items]
    if len(set(keys)) == len(keys):
        return sorted(items, key=key, reverse=descending)
    sorter = _Sorter(keys, list(items), descending)
    sorter.quick_sort(0, len(keys), _max_depth(len(keys)))
    return sorter.items


def _max_depth(n: int) -> int:
    """2 * ceil(lg(n + 1)): the depth past which quicksort hands over to heapsort."""
    return 2 * n.bit_length()


class _Sorter:
    """Go's ``sort.Interface`` over parallel lists of keys and items, and the algorithm on it."""

    def __init__(self, keys: list, items: list, descending: bool):
        self.keys = keys
        self.items = items
        self.less = self._after if descending else self._before

    def _before(self, i: int, j: int) -> bool:
        return self.keys[i] < self.keys[j]

    def _after(self, i: int, j: int) -> bool:  # sort.Reverse: Less(i, j) is the wrapped Less(j, i)
        return self.keys[j] < self.keys[i]

    def swap(self, i: int, j: int) -> None:
        keys, items = self.keys, self.items
        keys[i], keys[j] = keys[j], keys[i]
        items[i], items[j] = items[j], items[i]

    def insertion_sort(self, a: int, b: int) -> None:
        for i in range(a + 1, b):
            j = i
            while j > a and self.less(j, j - 1):
                self.swap(j, j - 1)
                j -= 1

    def sift_down(self, lo: int, hi: int, first: int) -> None:
        root = lo
        while True:
            child = 2 * root + 1
            if child >= hi:
                return
            if child + 1 < hi and self.less(first + child, first + child + 1):
                child += 1
            if not self.less(first + root, first + child):
                return
            self.swap(first + root, first + child)
            root = child

    def heap_sort(self, a: int, b: int) -> None:
        first, hi = a, b - a
        for i in range((hi - 1) // 2, -1, -1):
            self.sift_down(i, hi, first)
        for i in range(hi - 1, -1, -1):
            self.swap(first, first + i)
            self.sift_down(0, i, first)

    def median_of_three(self, m1: int, m0: int, m2: int) -> None:
        """Moves the median of the elements at m0, m1 and m2 to m1."""
        if self.less(m1, m0):
            self.swap(m1, m0)
        if self.less(m2, m1):
            self.swap(m2, m1)
            if self.less(m1, m0):
                self.swap(m1, m0)

    def do_pivot(self, lo: int, hi: int) -> tuple[int, int]:
        """Partitions [lo, hi) around a pivot: below the first index returned are the smaller
        elements, from the second on the greater ones, and between them elements equal to it."""
        m = (lo + hi) // 2
        if hi - lo > _NINTHER_ABOVE:
            s = (hi - lo) // 8
            self.median_of_three(lo, lo + s, lo + 2 * s)
            self.median_of_three(m, m - s, m + s)
            self.median_of_three(hi - 1, hi - 1 - s, hi - 1 - 2 * s)
        self.median_of_three(lo, m, hi - 1)

        # [lo] is the pivot; (lo, a) smaller; [a, b) not greater; [b, c) unexamined; [c, hi-1) greater.
        less, pivot = self.less, lo
        a, c = lo + 1, hi - 1
        while a < c and less(a, pivot):
            a += 1
        b = a
        while True:
            while b < c and not less(pivot, b):
                b += 1
            while b < c and less(pivot, c - 1):
                c -= 1
            if b >= c:
                break
            self.swap(b, c - 1)
            b += 1
            c -= 1

        # Few elements above the pivot suggest many equal to it (by the property of the ninther).
        protect = hi - c < 5
        if not protect and hi - c < (hi - lo) // 4:
            duplicates = 0
            if not less(pivot, hi - 1):
                self.swap(c, hi - 1)
                c += 1
                duplicates += 1
            if not less(b - 1, pivot):
                b -= 1
                duplicates += 1
            if not less(m, pivot):
                self.swap(m, b - 1)
                b -= 1
                duplicates += 1
            protect = duplicates > 1
        if protect:
            # Gather the elements equal to the pivot into [b, c).
            while True:
                while a < b and not less(b - 1, pivot):
                    b -= 1
                while a < b and less(a, pivot):
                    a += 1
                if a >= b:
                    break
                self.swap(a, b - 1)
                a += 1
                b -= 1
        self.swap(pivot, b - 1)
        return b - 1, c

    def quick_sort(self, a: int, b: int, max_depth: int) -> None:
        while b - a > _SMALL:
            if max_depth == 0:
                self.heap_sort(a, b)
                return
            max_depth -= 1
            mlo, mhi = self.do_pivot(a, b)
            # Recursing into the smaller side bounds the stack at lg(b - a).
            if mlo - a < b - mhi:
                self.quick_sort(a, mlo, max_depth)
                a = mhi
            else:
                self.quick_sort(mhi, b, max_depth)
                b = mlo
        if b - a > 1:
            for i in range(a + 6, b):  # the shell pass with gap 6
                if self.less(i, i - 6):
                    self.swap(i, i - 6)
            self.insertion_sort(a, b)
