"""IdMap: external ids <-> dense rows."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from recall.index.ids import IdMap


def test_int_map_round_trip_unsorted() -> None:
    rng = np.random.default_rng(0)
    ids = rng.choice(10**12, size=5000, replace=False).astype(np.int64)
    m = IdMap(ids)
    assert len(m) == 5000 and m.is_int
    np.testing.assert_array_equal(m.rows(ids), np.arange(5000))
    np.testing.assert_array_equal(m.ids[m.rows(ids[::-1])], ids[::-1])
    assert m.row(int(ids[17])) == 17
    assert m.row(str(ids[17])) == 17
    missing = np.setdiff1d(np.arange(10**12 - 100, 10**12 + 100), ids)
    assert np.all(m.rows(missing) == -1)


def test_sorted_ids_are_not_copied_and_read_only() -> None:
    ids = np.array([-5, 0, 3, 42], dtype=np.int64)
    m = IdMap(ids)
    assert np.shares_memory(m.ids, ids)
    assert not m.ids.flags.writeable
    assert m.rows([42, -5, 7]).tolist() == [3, 0, -1]
    assert m.rows([42, -5, 7]).dtype == np.int64


@pytest.mark.parametrize(
    ("value", "row"),
    [
        (42, 1),
        ("42", 1),
        (np.int32(42), 1),
        (np.uint64(42), 1),
        (-7, 0),
        ("-7", 0),
        ("042", None),
        ("+42", None),
        (" 42", None),
        ("42\n", None),
        ("4_2", None),
        ("0x2a", None),
        ("abc", None),
        ("", None),
        (True, None),
        (False, None),
        (np.True_, None),
        (42.0, None),
        (1.5, None),
        (None, None),
        ([42], None),
        (2**63, None),
        ("9223372036854775808", None),
        ("1" * 40, None),
    ],
)
def test_int_map_query_kinds(value: Any, row: int | None) -> None:
    m = IdMap(np.array([-7, 42, 0, 1], dtype=np.int64))
    assert m.row(value) == row
    assert m.rows([value]).tolist() == [-1 if row is None else row]


def test_int_map_minus_zero_is_not_canonical() -> None:
    m = IdMap(np.array([0, 1], dtype=np.int64))
    assert m.row("0") == 0 and m.row("-0") is None


def test_int_map_array_queries() -> None:
    m = IdMap(np.array([10, 20, 30], dtype=np.int64))
    assert m.rows(np.array([30, 10, 5], dtype=np.int32)).tolist() == [2, 0, -1]
    assert m.rows(np.array([30, 2**64 - 1], dtype=np.uint64)).tolist() == [2, -1]
    assert m.rows(np.array(["20", "020", "x"])).tolist() == [1, -1, -1]
    assert m.rows(np.array([10.0, 20.5])).tolist() == [-1, -1]
    assert m.rows(np.array([True, False])).tolist() == [-1, -1]
    assert m.rows(np.array([20, "30", None], dtype=object)).tolist() == [1, 2, -1]
    assert m.rows(np.array([[10, 20]])).tolist() == [0, 1]  # flattened
    assert m.rows([]).tolist() == [] and m.rows([]).dtype == np.int64
    assert m.rows(x for x in (30, 20)).tolist() == [2, 1]


def test_str_map_queries() -> None:
    ids = np.array(["b", "007", "a", "42", "é", "日本"])
    m = IdMap(ids)
    assert not m.is_int
    np.testing.assert_array_equal(m.rows(ids), np.arange(6))
    np.testing.assert_array_equal(m.rows(list(ids)), np.arange(6))
    assert m.row("007") == 1 and m.row("7") is None and m.row(7) is None
    assert m.row(42) == 3 and m.row("42") == 3
    assert m.row(np.int64(42)) == 3  # type: ignore[arg-type]
    assert m.row("日本") == 5 and m.row("日") is None
    assert m.rows(np.array([42, 7])).tolist() == [3, -1]
    for bad in (True, 42.0, 1.5, None, b"a", ["a"]):
        assert m.row(bad) is None  # type: ignore[arg-type]
    assert m.rows(["zzz", "", "a"]).tolist() == [-1, -1, 2]
    assert "a" in m and "c" not in m


def _peak_bytes(fn: Any) -> int:
    """Peak bytes traced (numpy reports its buffers to tracemalloc) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_long_query_never_widens_the_map() -> None:
    """Issue 15 §1: one 10,000-character id used to copy all 1,000 sorted ids to its width
    (40 MB); keyed at the map's own width, the lookup needs about the queries' size."""
    m = IdMap(np.array([f"m{i:04d}" for i in range(1000)]))
    long_id = "x" * 10_000
    assert m.rows([long_id, "m0001"]).tolist() == [-1, 1]
    assert m.rows(np.array([long_id, "m0002"])).tolist() == [-1, 2]
    assert m.rows([long_id] + ["m0003"] * 999).tolist() == [-1] + [3] * 999  # sorted path
    assert long_id not in m and m.row("m0001" + "x" * 5000) is None
    for queries in ([long_id, "m0001"], np.array([long_id, "m0001"])):
        assert _peak_bytes(lambda q=queries: m.rows(q)) < 1_000_000


def test_a_trailing_nul_is_not_the_same_id() -> None:
    """numpy's '<U' drops trailing NULs: "m0001\\0" must still not find "m0001"."""
    m = IdMap(np.array(["m0000", "m0001", "日本"]))
    queries = ["m0001\x00", "m0001", "\x00", "日本\x00", "m00\x0001"]
    assert m.rows(queries).tolist() == [-1, 1, -1, -1, -1]
    assert "m0001\x00" not in m


def test_empty_map() -> None:
    for ids in (np.zeros(0, dtype=np.int64), np.zeros(0, dtype="<U1")):
        m = IdMap(ids)
        assert len(m) == 0
        assert m.rows([1, "a"]).tolist() == [-1, -1]
        assert m.row(1) is None


def test_rows_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError, match="row"):
        IdMap(np.array(["ab"])).rows("ab")


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.array([1, 2, 1], dtype=np.int64), "unique"),
        (np.array(["x", "y", "x"]), "unique"),
        (np.array([1, 2], dtype=object), "dtype"),
        (np.array([1.0, 2.0]), "dtype"),
        (np.array([True, False]), "dtype"),
        (np.array([b"a", b"b"]), "dtype"),
        (np.array([[1, 2], [3, 4]], dtype=np.int64), "1-D"),
        (np.array([2**64 - 1], dtype=np.uint64), "int64"),
        ([1, 2, 3], "numpy array"),
    ],
)
def test_invalid_ids_raise(ids: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IdMap(ids)


def test_other_int_dtypes_become_int64() -> None:
    m = IdMap(np.array([3, 1, 2], dtype=np.int32))
    assert m.ids.dtype == np.int64
    assert m.rows([1, 2, 3]).tolist() == [1, 2, 0]


def test_matches_a_dict_oracle() -> None:
    rng = np.random.default_rng(1)
    ids = np.unique(rng.integers(-1000, 1000, size=800))
    rng.shuffle(ids)
    m = IdMap(ids)
    oracle = {int(v): i for i, v in enumerate(ids)}
    queries = rng.integers(-1100, 1100, size=3000)
    expected = [oracle.get(int(q), -1) for q in queries]
    assert m.rows(queries).tolist() == expected
    strs = IdMap(ids.astype(str))
    assert strs.rows(queries.astype(str)).tolist() == expected
    assert strs.rows(queries).tolist() == expected


@pytest.mark.parametrize("sort", [True, False])
def test_row_answers_as_rows_does_for_one_id(sort: bool) -> None:
    """``row`` (one binary search, also ``rows`` of a one-id list) answers as the arrays
    of ``rows`` do for the same id among others, for every kind of query."""
    rng = np.random.default_rng(5)
    ints = rng.choice(10**12, size=500, replace=False).astype(np.int64)
    ints = np.sort(ints) if sort else ints
    ints[:3] = [0, -7, 2**63 - 1]
    words = np.array([f"u{v}" for v in ints[:200]] + ["", "日本", "a\x01b"])
    words = np.sort(words) if sort else words
    int_queries: list[Any] = [*ints[:50].tolist(), *map(str, ints[:20].tolist())]
    int_queries += [1, -1, 2**63, -(2**63), 2**70, "0", "-0", "007", " 7", True, 1.0, None]
    int_queries += [np.int64(ints[3]), np.uint64(5), "9" * 25, "x", b"1"]
    str_queries: list[Any] = [*words[:50].tolist(), "", "日本", "日", "a\x01b", "u", "uu" * 300]
    str_queries += ["u1\x00", 7, -1, True, 1.5, None, np.int64(3)]
    for ids, queries in ((ints, int_queries), (words, str_queries)):
        m = IdMap(ids)
        for q in queries:
            expected = int(m.rows([q, q])[0])
            assert m.row(q) == (None if expected < 0 else expected), (ids.dtype, q)
            assert m.rows([q]).tolist() == [expected], (ids.dtype, q)
