"""Item attributes (index/attributes.py): kind detection, filter masks, display, the checks
of ``item_attributes.npz``, and the round trip items.csv -> trainer -> bundle -> service."""

from __future__ import annotations

import csv
import json
import shutil
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recall.index import bundle as b
from recall.index.attributes import AttributeFilterError, ItemAttributes
from recall.index.current import CURRENT
from recall.index.publish import publish
from recall.service.recaller import ServingBundle
from recall.trainer.data import load_dataset
from recall.trainer.export import item_attributes

#: 6 items: every kind, with missing values (blank strings) in each column
RAW = {
    "title": np.array(["Alpha", "Beta", "", "Gamma", "Alpha", " Delta "]),
    "genres": np.array(["Comedy|Drama", "Drama", "", "Horror| Comedy |Comedy", "Action", "|"]),
    "year": np.array(["1994", " 2001", "", "1987.5", "2001", "1e3"]),
    "language": np.array(["en", "fr", "en", "", "de", "en"]),
}


@pytest.fixture
def attrs() -> ItemAttributes:
    return ItemAttributes.from_raw(RAW, 6)


def rows(mask: np.ndarray) -> list[int]:
    assert mask.dtype == np.bool_ and mask.shape == (6,)
    return np.flatnonzero(mask).tolist()


# ------------------------------------------------------------------------ kind detection


def test_kinds_are_detected(attrs: ItemAttributes) -> None:
    assert attrs.names == ("title", "genres", "year", "language")
    assert [attrs.kind(n) for n in attrs.names] == [
        "categorical",
        "multi",
        "numeric",
        "categorical",
    ]
    assert attrs.describe() == (
        "title (categorical), genres (multi), year (numeric), language (categorical)"
    )
    assert attrs.schema() == [{"name": n, "kind": attrs.kind(n)} for n in attrs.names]


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["1", "2.5", "", " -3e2 "], "numeric"),  # blanks are missing values
        (["1", "nan", "2"], "categorical"),  # not a finite number
        (["1", "inf"], "categorical"),
        (["1", "x"], "categorical"),
        (["a", "b|c"], "multi"),  # one value with | makes the column multi
        (["1|2", "3"], "multi"),
        (["", " "], "categorical"),  # nothing at all: an empty vocabulary
    ],
)
def test_kind_detection_rules(values: list[str], kind: str) -> None:
    column = ItemAttributes.from_raw({"c": np.array(values)}, len(values))
    assert column.kind("c") == kind


def test_typed_numbers_and_empty_columns() -> None:
    attrs = ItemAttributes.from_raw(
        {"score": np.array([1.5, np.nan, np.inf]), "blank": np.array(["", "", ""])}, 3
    )
    assert attrs.kind("score") == "numeric"
    assert attrs.rows_as_dicts([0, 1, 2]) == [{"score": 1.5}, {}, {}]  # inf: not a number
    assert not attrs.mask("blank", "any", ["x"]).any() and attrs.mask("blank", "none", ["x"]).all()


def test_invalid_raw_names_and_shapes() -> None:
    with pytest.raises(ValueError, match="invalid attribute name 'a/b'"):
        ItemAttributes.from_raw({"a/b": np.array(["x"])}, 1)
    with pytest.raises(ValueError, match=r"shape \(2,\), expected \(3,\)"):
        ItemAttributes.from_raw({"a": np.array(["x", "y"])}, 3)


# ----------------------------------------------------------------------------- masks


def test_categorical_masks(attrs: ItemAttributes) -> None:
    assert rows(attrs.mask("title", "any", ["Alpha", "Delta"])) == [0, 4, 5]  # trimmed
    assert rows(attrs.mask("title", "any", ["Nope"])) == []  # an unknown value: no match
    assert rows(attrs.mask("title", "none", ["Alpha"])) == [1, 2, 3, 5]  # missing matches
    assert rows(attrs.mask("language", "any", ["en", "fr"])) == [0, 1, 2, 5]
    assert rows(attrs.mask("language", "none", ["en", "fr"])) == [3, 4]


def test_a_long_filter_value_never_widens_the_vocabulary() -> None:
    """Issue 15 §1 for filter values: one 100,000-character value used to copy the whole
    vocabulary (here 2,000 titles) to its width, 800 MB; now it matches nothing, in place."""
    n = 2_000
    titles = np.array([f"title {i:05d}" for i in range(n)])
    genres = np.array([f"g{i % 7}|g{i % 5}" for i in range(n)])
    attrs = ItemAttributes.from_raw({"title": titles, "genres": genres}, n)
    long_value = "t" * 100_000
    tracemalloc.start()
    try:
        assert np.flatnonzero(attrs.mask("title", "any", [long_value, "title 00007"])).tolist() == [
            7
        ]
        assert not attrs.mask("title", "any", ["title 00007\x00"]).any()
        assert attrs.mask("genres", "none", [long_value]).all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_multi_masks(attrs: ItemAttributes) -> None:
    assert rows(attrs.mask("genres", "any", ["Comedy"])) == [0, 3]
    assert rows(attrs.mask("genres", "any", ["Action", "Horror"])) == [3, 4]
    assert rows(attrs.mask("genres", "none", ["Comedy", "Drama"])) == [2, 4, 5]
    assert rows(attrs.mask("genres", "none", ["zzz"])) == [0, 1, 2, 3, 4, 5]


def test_numeric_masks(attrs: ItemAttributes) -> None:
    # years: 1994, 2001, missing, 1987.5, 2001, 1000
    assert rows(attrs.mask("year", "gte", 2001)) == [1, 4]
    assert rows(attrs.mask("year", "gt", 1994)) == [1, 4]
    assert rows(attrs.mask("year", "lte", 1994)) == [0, 3, 5]
    assert rows(attrs.mask("year", "lt", 1994.0)) == [3, 5]
    assert rows(attrs.mask("year", "any", [2001, 1987.5])) == [1, 3, 4]
    assert rows(attrs.mask("year", "none", [2001])) == [0, 2, 3, 5]  # missing matches none
    between = attrs.mask("year", "gte", 1990) & attrs.mask("year", "lt", 2000)
    assert rows(between) == [0]


@pytest.mark.parametrize(
    ("name", "op", "operand", "message"),
    [
        ("nope", "any", ["x"], r"unknown attribute 'nope'; known: title \(categorical\), genres"),
        ("year", "between", [1, 2], "unknown operator 'between'"),
        ("title", "gte", 3, r"'gte' applies to numeric attributes only, title is categorical"),
        ("genres", "lt", 3, "numeric attributes only"),
        ("year", "gte", "1990", "'gte' takes numbers, got '1990'"),
        ("year", "gte", True, "takes numbers, got True"),
        ("year", "gte", float("nan"), "takes finite numbers"),
        ("year", "any", ["1990"], "'any' takes numbers"),
        ("year", "any", [], "'any' needs at least one value"),
        ("title", "any", [], "needs at least one value"),
        ("title", "any", "Alpha", "'any' takes a list of values"),
        ("title", "none", [1], r"title is categorical: 'none' takes strings, got 1"),
        ("genres", "any", [None], "genres is multi: 'any' takes strings, got None"),
    ],
)
def test_conditions_that_cannot_apply(
    attrs: ItemAttributes, name: str, op: str, operand: object, message: str
) -> None:
    with pytest.raises(AttributeFilterError, match=message):
        attrs.mask(name, op, operand)
    assert issubclass(AttributeFilterError, ValueError)


def test_rows_as_dicts(attrs: ItemAttributes) -> None:
    assert attrs.rows_as_dicts([0, 2, 3, 5]) == [
        {"title": "Alpha", "genres": ["Comedy", "Drama"], "year": 1994.0, "language": "en"},
        {"language": "en"},  # everything else missing: left out
        {"title": "Gamma", "genres": ["Comedy", "Horror"], "year": 1987.5},
        {"title": "Delta", "year": 1000.0, "language": "en"},  # "|": no genre at all
    ]
    assert attrs.rows_as_dicts(np.array([], dtype=np.int64)) == []
    values = attrs.rows_as_dicts([1])[0]
    assert type(values["year"]) is float and type(values["title"]) is str


# ------------------------------------------------------------------- from_arrays checks


def test_arrays_round_trip(attrs: ItemAttributes) -> None:
    arrays = attrs.arrays()
    assert arrays["genres.indptr"].dtype == np.int64 and arrays["genres.codes"].dtype == np.int32
    assert arrays["title.codes"].dtype == np.int32 and arrays["year.values"].dtype == np.float64
    assert all(not a.dtype.hasobject for a in arrays.values())
    again = ItemAttributes.from_arrays(arrays, attrs.schema(), 6)
    assert again.rows_as_dicts(range(6)) == attrs.rows_as_dicts(range(6))


def _damaged(attrs: ItemAttributes, key: str, value: np.ndarray) -> dict[str, np.ndarray]:
    return {**attrs.arrays(), key: value}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("title.codes", np.array([0, 1, -2, 0, 0, 0], np.int32), r"title\.codes out of range \[-1"),
        ("title.codes", np.zeros(5, np.int32), r"title\.codes must be int32 of shape \(6,\)"),
        ("year.values", np.full(6, np.inf), r"year\.values holds an infinite value"),
        ("year.values", np.zeros(6, np.float32), r"year\.values must be float64"),
        ("language.vocabulary", np.array(["en", "en", "fr"]), "not sorted and unique"),
        ("language.vocabulary", np.array([b"de", b"en", b"fr"]), "must be 1-D unicode"),
    ],
)
def test_from_arrays_refuses(
    attrs: ItemAttributes, key: str, value: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ItemAttributes.from_arrays(_damaged(attrs, key, value), attrs.schema(), 6)


def test_from_arrays_checks_the_schema(attrs: ItemAttributes) -> None:
    arrays, schema = attrs.arrays(), attrs.schema()
    with pytest.raises(ValueError, match=r"arrays not in the schema: year\.values"):
        ItemAttributes.from_arrays(arrays, [s for s in schema if s["name"] != "year"], 6)
    with pytest.raises(ValueError, match="unknown kind 'text'"):
        ItemAttributes.from_arrays(arrays, [*schema, {"name": "x", "kind": "text"}], 6)
    with pytest.raises(ValueError, match=r"missing title\.indptr"):
        retyped = [{**s, "kind": "multi"} if s["name"] == "title" else s for s in schema]
        ItemAttributes.from_arrays(arrays, retyped, 6)
    nan = {**arrays, "year.values": np.full(6, np.nan)}  # NaN: missing, allowed
    assert ItemAttributes.from_arrays(nan, schema, 6).rows_as_dicts([0])[0].get("year") is None


# ------------------------------------------------------------------ through the trainer


def _items_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return {row.pop("item_id"): row for row in csv.DictReader(f)}


def _expected(row: dict[str, str], kinds: Mapping[str, str]) -> dict[str, Any]:
    """What rows_as_dicts should give for one items.csv row."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        value = value.strip()
        if not value:
            continue
        if kinds[name] == "numeric":
            if value not in ("unkonwn", "V"):  # MovieLens' two years that are not numbers
                out[name] = float(value)
        elif kinds[name] == "multi":
            tokens = sorted({t.strip() for t in value.split("|")} - {""})
            if tokens:
                out[name] = tokens
        else:
            out[name] = value
    return out


def test_a_trained_bundle_serves_the_attributes_of_items_csv(
    trained_root: Path, synthetic_dir: Path
) -> None:
    bundle = ServingBundle.load(trained_root / (trained_root / CURRENT).read_text().strip())
    attrs = bundle.attributes
    assert attrs is not None and attrs.n_items == len(bundle.item_ids)
    assert bundle.manifest.item_attributes is not None
    kinds = {a.name: a.kind for a in bundle.manifest.item_attributes}
    assert kinds == {"genres": "multi", "title": "categorical", "year": "numeric",
                     "language": "categorical"}  # fmt: skip
    items = _items_csv(synthetic_dir / "items.csv")
    got = attrs.rows_as_dicts(range(len(bundle.item_ids)))
    for item_id, values in zip(bundle.item_ids.ids.tolist(), got, strict=True):
        assert values == _expected(items[str(item_id)], kinds), item_id
    years = np.array([float(items[str(i)]["year"] or "nan") for i in bundle.item_ids.ids])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(attrs.mask("year", "gte", 2000), years >= 2000)
    for array in attrs.arrays().values():  # shared pages of the file, like the vectors
        assert not array.flags.writeable


def test_a_v2_bundle_without_attributes_still_loads(published_root: Path, tmp_path: Path) -> None:
    """What the trainer writes for data without an items file: no file, no schema."""
    source = published_root / (published_root / CURRENT).read_text().strip()
    bundle = tmp_path / source.name
    shutil.copytree(source, bundle)
    (bundle / b.ITEM_ATTRIBUTES).unlink()
    path = bundle / b.MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["files"][b.ITEM_ATTRIBUTES]
    path.write_text(json.dumps({**manifest, "item_attributes": None}))
    loaded = ServingBundle.load(bundle)
    assert loaded.manifest.schema_version == 2 and loaded.attributes is None
    publish(bundle)


def test_no_items_file_means_no_attributes(synthetic_dir: Path, tmp_path: Path) -> None:
    shutil.copy(synthetic_dir / "interactions.csv", tmp_path / "interactions.csv")
    assert item_attributes(load_dataset(tmp_path)) is None


def test_parquet_items_keep_their_types(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n1,10,1\n1,11,2\n2,12,3\n"
    )
    table = pa.table(
        {
            "item_id": [10, 11, 12, 99],
            "year": pa.array([1990, None, 2005, 1], pa.int64()),
            "tags": pa.array([["a", "b"], [], None, ["z"]], pa.list_(pa.string())),
            "studio": pa.array(["X", None, "Y", "Z"]).dictionary_encode(),
        }
    )
    pq.write_table(table, tmp_path / "items.parquet")
    attrs = item_attributes(load_dataset(tmp_path))
    assert attrs is not None
    assert attrs.describe() == "year (numeric), tags (multi), studio (categorical)"
    assert attrs.rows_as_dicts([0, 1, 2]) == [
        {"year": 1990.0, "tags": ["a", "b"], "studio": "X"},
        {},
        {"year": 2005.0, "studio": "Y"},
    ]


def test_movielens_items_come_through_as_they_are(ml100k_dir: Path) -> None:
    dataset = load_dataset(ml100k_dir)
    attrs = item_attributes(dataset)
    assert attrs is not None
    # year is numeric: 1,680 of its 1,682 values are numbers (>= 99%); "unkonwn" and "V"
    # are made missing
    assert attrs.describe() == "title (categorical), year (numeric), genres (multi)"
    kinds = dict(zip(attrs.names, map(attrs.kind, attrs.names), strict=True))
    items = _items_csv(ml100k_dir / "items.csv")
    got = attrs.rows_as_dicts(range(dataset.n_items))
    for item_id, values in zip(dataset.item_ids.tolist(), got, strict=True):
        assert values == _expected(items[str(item_id)], kinds), item_id
    toy_story = got[int(np.searchsorted(dataset.item_ids, 1))]
    assert toy_story == {
        "title": "Toy Story",
        "year": 1995.0,
        "genres": ["Animation", "Children's", "Comedy"],
    }
    comedy = np.array(["Comedy" in items[str(i)]["genres"].split("|") for i in dataset.item_ids])
    np.testing.assert_array_equal(attrs.mask("genres", "any", ["Comedy"]), comedy)
    in_1995 = np.array([items[str(i)]["year"] == "1995" for i in dataset.item_ids])
    np.testing.assert_array_equal(attrs.mask("year", "any", [1995]), in_1995)
    given = [items[str(i)]["year"] for i in dataset.item_ids]
    since_1990 = np.array([y.isdigit() and int(y) >= 1990 for y in given])
    np.testing.assert_array_equal(attrs.mask("year", "gte", 1990), since_1990)
    with pytest.raises(AttributeFilterError, match="'any' takes numbers"):
        attrs.mask("year", "any", ["1995"])


def test_columns_that_cannot_be_stored_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\n1,10,1\n2,11,2\n")
    (tmp_path / "items.csv").write_text("item_id,a/b,colour\n10,x,red\n11,y,\n")
    with caplog.at_level("WARNING", logger="recall.trainer.export"):
        attrs = item_attributes(load_dataset(tmp_path))
    assert attrs is not None and attrs.names == ("colour",)
    assert attrs.rows_as_dicts([0, 1]) == [{"colour": "red"}, {}]
    assert "not exporting item attribute 'a/b'" in caplog.text
