"""recall.service.filter_cache: the LRU of compiled filters, on real masks of real attributes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from recall.index.allowed import AllowedItems
from recall.index.attributes import ItemAttributes
from recall.index.filters import FilterError, compile_filter
from recall.service.filter_cache import MAX_ENTRIES, FilterCache, filter_key

N = 1000


@pytest.fixture(scope="module")
def attributes() -> ItemAttributes:
    rows = np.arange(N)
    return ItemAttributes.from_raw(
        {
            "year": (1950 + rows % 70).astype(np.float64),
            "language": np.array([("en", "fr", "de")[r % 3] for r in rows.tolist()]),
        },
        N,
    )


def test_key_ignores_key_order_only() -> None:
    a = {"year": {"gte": 1990, "lt": 2000}, "language": {"any": ["en"]}}
    b = {"language": {"any": ["en"]}, "year": {"lt": 2000, "gte": 1990}}
    assert filter_key(a) == filter_key(b)
    assert filter_key({"year": {"gte": 1990}}) != filter_key({"year": {"gte": 1991}})


def test_hits_return_the_compiled_mask_read_only(attributes: ItemAttributes) -> None:
    cache = FilterCache()
    calls: list[object] = []

    def compile_(spec: object) -> AllowedItems:
        calls.append(spec)
        return AllowedItems(compile_filter(spec, attributes))  # type: ignore[arg-type]

    spec = {"year": {"gte": 1990}, "language": {"none": ["fr"]}}
    first = cache.get(spec, compile_)
    again = cache.get(dict(reversed(list(spec.items()))), compile_)
    assert again is first and len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first.mask, compile_filter(spec, attributes))
    assert not first.mask.flags.writeable
    with pytest.raises(ValueError):
        first.mask[0] = not first.mask[0]


def test_least_recently_used_goes_first_within_the_byte_budget(
    attributes: ItemAttributes,
) -> None:
    cache = FilterCache(max_bytes=3 * (N + 100))  # three bare masks of N items and keys

    def compile_(spec: object) -> AllowedItems:
        return AllowedItems(compile_filter(spec, attributes))  # type: ignore[arg-type]

    specs = [{"year": {"gte": 1950 + i}} for i in range(4)]
    for spec in specs[:3]:
        cache.get(spec, compile_)
    cache.get(specs[0], compile_)  # now the most recent
    cache.get(specs[3], compile_)  # evicts specs[1]
    assert len(cache) == 3
    misses = cache.misses
    cache.get(specs[0], compile_)
    cache.get(specs[2], compile_)
    assert cache.misses == misses
    cache.get(specs[1], compile_)
    assert cache.misses == misses + 1


def test_the_budget_counts_the_views_an_entry_grew(attributes: ItemAttributes) -> None:
    """Entries are weighed by what they hold when the next filter comes: one whose bitmap,
    rows and AND with the disabled items were computed weighs more and pushes older
    entries out; never more than MAX_ENTRIES."""

    def compile_(spec: object) -> AllowedItems:
        return AllowedItems(compile_filter(spec, attributes))  # type: ignore[arg-type]

    cache = FilterCache(max_bytes=3 * (N + 100))
    specs = [{"year": {"gte": 1950 + i}} for i in range(3)]
    for spec in specs:
        cache.get(spec, compile_)
    assert len(cache) == 3
    grown = cache.get(specs[2], compile_)
    grown.bitmap, grown.rows  # noqa: B018 - computed and kept on first access
    grown.intersect(AllowedItems(np.ones(N, dtype=bool)))
    assert grown.nbytes() > 2 * N + grown.rows.nbytes
    cache.get({"year": {"gte": 2000}}, compile_)
    assert len(cache) == 1  # the grown entry alone is over the budget with the new one
    many = FilterCache(max_bytes=10**12)
    for i in range(MAX_ENTRIES + 5):
        many.get({"year": {"gte": 1000 + i}}, compile_)
    assert len(many) == MAX_ENTRIES


def test_the_budget_counts_the_keys(attributes: ItemAttributes) -> None:
    """Filters whose canonical keys are far larger than their masks (a long ``any`` list:
    ~200 kB of JSON for a 1 kB mask): the memory the cache holds (traced allocations)
    stays within the byte budget, keys included, at every addition; a filter over the
    budget on its own is answered and not kept (nor does it push the others out)."""
    budget = 1 << 20
    titles = [f"a title that matches no item {i:06d}" for i in range(5000)]

    def compile_(spec: object) -> AllowedItems:
        return AllowedItems(compile_filter(spec, attributes))  # type: ignore[arg-type]

    english = np.arange(N) % 3 == 0
    tracemalloc.start()
    try:
        cache = FilterCache(max_bytes=budget)
        base, _ = tracemalloc.get_traced_memory()
        for i in range(40):
            spec = {"language": {"any": ["en", *titles[i:]]}}
            assert len(filter_key(spec)) > 150 * N
            np.testing.assert_array_equal(cache.get(spec, compile_).mask, english)
            del spec
            held = tracemalloc.get_traced_memory()[0] - base
            assert held <= budget, f"{i + 1} filters: {held} bytes held"
        kept = len(cache)
        assert 1 <= kept <= budget // (150 * N)
        huge = {"language": {"any": ["fr", *(t * 8 for t in titles)]}}  # ~1.5 MB of key
        assert len(filter_key(huge)) > budget
        np.testing.assert_array_equal(cache.get(huge, compile_).mask, np.arange(N) % 3 == 1)
        assert len(cache) == kept
        cache.get(huge, compile_)
        assert cache.misses == 42  # compiled again: it was not kept
    finally:
        tracemalloc.stop()


def test_errors_are_not_cached(attributes: ItemAttributes) -> None:
    cache = FilterCache()
    spec = {"colour": {"any": ["red"]}}
    for _ in range(2):
        with pytest.raises(FilterError, match="colour"):
            cache.get(spec, lambda s: AllowedItems(compile_filter(s, attributes)))
    assert len(cache) == 0 and cache.misses == 2
