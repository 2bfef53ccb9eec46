"""The engine's one bounded cache: least recently used first, every bound, items too
large returned but not kept, and safe from many threads at once."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from napari_maskalign.engine.backends._cache import BoundedCache


def kept(cache):
    return [k for k in "abcdefgh" if cache.get(k) is not None]


def test_the_least_recently_used_goes_first():
    cache = BoundedCache(max_entries=3)
    for k in "abc":
        assert cache.put(k, k.upper())
    assert cache.get("a") == "A"  # now b is the oldest
    cache.put("d", "D")
    assert cache.get("b") is None and len(cache) == 3
    cache.put("c", "C2")  # replacing refreshes: a goes next
    cache.put("e", "E")
    assert kept(cache) == ["c", "d", "e"] and cache.get("c") == "C2"


def test_the_entry_bound():
    cache = BoundedCache(max_entries=2)
    for k in "abcde":
        cache.put(k, k)
        assert len(cache) == min(2, "abcde".index(k) + 1)
    assert kept(cache) == ["d", "e"]


def test_the_byte_bound_keeps_the_newest_even_alone_over_it():
    cache = BoundedCache(max_bytes=100)
    for k, size in zip("abc", (40, 30, 20)):
        cache.put(k, k, size)
    assert cache.nbytes == 90 and len(cache) == 3
    cache.get("a")  # a is recent: b (30) and c (20) are older
    cache.put("d", "d", 50)  # 140 held: b goes (110), then c (90)
    assert kept(cache) == ["a", "d"] and cache.nbytes == 90
    cache.put("e", "e", 500)  # alone over the budget: it stays, the others go
    assert kept(cache) == ["e"] and cache.nbytes == 500
    cache.put("e", "e", 10)  # replacing counts the new size only
    assert cache.nbytes == 10
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_an_item_over_the_item_bound_is_not_kept():
    cache = BoundedCache(max_item_bytes=64)
    assert cache.put("a", "small", 64)
    assert not cache.put("b", "big", 65)
    assert not cache.put("a", "big", 65)  # nor does it replace what is kept
    assert cache.get("b") is None and cache.get("a") == "small" and len(cache) == 1
    assert cache.nbytes == 64


def test_get_counts_and_accept_confirms():
    cache = BoundedCache()
    cache.put("k", np.arange(3))
    assert cache.get("k", accept=lambda v: v[2] == 2) is not None
    assert cache.get("k", "none", accept=lambda v: v[2] == 3) == "none"
    assert cache.get("x", "none") == "none"
    assert (cache.hits, cache.misses) == (1, 2)


@pytest.mark.parametrize("bounds", [dict(max_entries=5), dict(max_bytes=300, max_item_bytes=120)])
def test_many_threads_end_within_bounds_and_never_see_a_wrong_value(bounds):
    cache = BoundedCache(**bounds)
    threads, rounds, keys = 8, 1500, 40
    start = threading.Barrier(threads)

    def size(key):
        return 10 * (key % 15)  # keys 12..14 (120..140 bytes) straddle the item bound

    def work(seed):
        rng = np.random.default_rng(seed)
        wrong = 0
        start.wait()
        for key in rng.integers(0, keys, rounds):
            key = int(key)
            value = cache.get(key)
            if value is None:
                cache.put(key, (key, np.full(4, key)), size(key))
            elif value[0] != key or not (value[1] == key).all():
                wrong += 1
        return wrong

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races, if any, show
    try:
        with ThreadPoolExecutor(threads) as pool:
            wrong = sum(pool.map(work, range(threads)))
    finally:
        sys.setswitchinterval(interval)
    assert wrong == 0
    assert cache.hits + cache.misses == threads * rounds and cache.hits > 0
    held = dict(cache._entries)
    assert len(held) == len(cache) > 0
    assert cache.nbytes == sum(n for _, n in held.values())
    for key, (value, n) in held.items():
        assert value[0] == key and (value[1] == key).all() and n == size(key)
    if "max_entries" in bounds:
        assert len(cache) <= bounds["max_entries"]
    else:
        assert cache.nbytes <= bounds["max_bytes"]
        assert all(n <= bounds["max_item_bytes"] for _, n in held.values())
