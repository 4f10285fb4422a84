"""service.filter_cache: the LRU of compiled filters, on real masks of real attributes."""

from __future__ import annotations

import numpy as np
import pytest

from index.allowed import AllowedItems
from index.attributes import ItemAttributes
from index.filters import FilterError, compile_filter
from service.filter_cache import BYTES_PER_ITEM, FilterCache, filter_key

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
    cache = FilterCache(N)
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
    cache = FilterCache(N, max_bytes=3 * BYTES_PER_ITEM * N)  # three filters
    assert cache.capacity == 3

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
    assert FilterCache(10**9).capacity == 1 and FilterCache(1).capacity == 256


def test_errors_are_not_cached(attributes: ItemAttributes) -> None:
    cache = FilterCache(N)
    spec = {"colour": {"any": ["red"]}}
    for _ in range(2):
        with pytest.raises(FilterError, match="colour"):
            cache.get(spec, lambda s: AllowedItems(compile_filter(s, attributes)))
    assert len(cache) == 0 and cache.misses == 2
