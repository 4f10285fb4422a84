"""Column typing of items.csv / users.csv (index/columns.py): the 99% rule, values made
missing and reported, declared schemas (flags and TOML), and MovieLens 100K's ``year``
filtered by range through a real server."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from recall.cli import main
from recall.index import bundle as b
from recall.index.attributes import ItemAttributes
from recall.index.build import build_index
from recall.index.publish import publish
from recall.service.app import create_app
from recall.trainer.config import ConfigError, load_config
from recall.trainer.data import DataError, load_dataset
from recall.trainer.export import item_attributes
from tests.index_data import FAST_FLAT
from tests.live import live_server, settings

INTERACTIONS = "user_id,item_id,timestamp\n" + "".join(
    f"{u},{i},{u * 1000 + i}\n" for u in range(1, 4) for i in range(1, 201)
)


def write_data(directory: Path, items: str | None = None, users: str | None = None) -> Path:
    (directory / "interactions.csv").write_text(INTERACTIONS)
    if items is not None:
        (directory / "items.csv").write_text(items)
    if users is not None:
        (directory / "users.csv").write_text(users)
    return directory


def years(bad: dict[int, str]) -> str:
    """items.csv for items 1..200, year 1900 + id, except the ``bad`` values given."""
    lines = [f"{i},{bad.get(i, str(1900 + i))}\n" for i in range(1, 201)]
    return "item_id,year\n" + "".join(lines)


# ------------------------------------------------------------------------------ the rule


def test_a_column_of_numbers_with_one_percent_junk_is_numeric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_data(tmp_path, items=years({5: "unkonwn", 9: "V"}))  # 198 of 200 numbers: 99%
    with caplog.at_level(logging.WARNING, logger="recall.index.columns"):
        ds = load_dataset(tmp_path)
    attrs = item_attributes(ds)
    assert attrs is not None and attrs.describe() == "year (numeric)"
    values = ds.item_attributes["year"]
    assert np.isnan(values[[4, 8]]).all() and values[0] == 1901 and values[199] == 2100
    assert attrs.mask("year", "gte", 2090).sum() == 11  # 2090..2100; missing never matches
    assert [c.as_dict() for c in ds.item_columns] == [
        {
            "name": "year",
            "kind": "numeric",
            "declared": False,
            "made_missing": 2,
            "examples": ["unkonwn", "V"],
        }
    ]
    assert "column 'year' is numeric (99.00% are numbers): 2 of its 200 non-blank" in caplog.text
    assert "'unkonwn', 'V'" in caplog.text and "items.csv" in caplog.text

    write_data(tmp_path, items=years({5: "unkonwn", 9: "V", 50: "V"}))  # 197: 98.5% < 99%
    ds = load_dataset(tmp_path)
    assert ds.item_columns[0].kind == "categorical" and ds.item_attributes["year"][4] == "unkonwn"


def test_blanks_do_not_count_and_examples_are_distinct_and_at_most_five() -> None:
    text = [str(v) for v in range(1000)]
    text[:8] = ["a", "b", "a", "c", "d", "e", "f", "g"]  # 8 bad of 1000 non-blank: 99.2%
    text += [""] * 500  # blank: missing, neither number nor junk
    attrs = ItemAttributes.from_raw({"n": np.array(text)}, len(text))
    assert attrs.kind("n") == "numeric"
    values = attrs.column("n").values
    assert values is not None and int(np.isfinite(values).sum()) == 992
    from recall.index.columns import type_column  # here: the other tests also run without it

    _, typed = type_column("n", np.array(text))
    assert typed.made_missing == 8 and typed.examples == ("a", "b", "c", "d", "e")
    declared, typed = type_column("n", np.array(["a", "", "b"]), "numeric")
    assert np.isnan(declared).all() and (typed.kind, typed.made_missing) == ("numeric", 2)


def test_non_finite_values_are_junk_and_no_number_at_all_is_categorical() -> None:
    column = ["inf", "nan"] + [str(v) for v in range(300)]
    attrs = ItemAttributes.from_raw({"n": np.array(column)}, len(column))
    assert attrs.kind("n") == "numeric"
    assert attrs.rows_as_dicts([0, 1, 2]) == [{}, {}, {"n": 0.0}]
    blanks = ItemAttributes.from_raw({"n": np.array(["", " "])}, 2)
    assert blanks.kind("n") == "categorical"


def test_user_features_follow_the_same_rule(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n" + "".join(f"{u},1,{u}\n" for u in range(1, 201))
    )
    rows = [f"{u},{'n/a' if u == 1 else u},{'x' if u < 4 else u}\n" for u in range(1, 201)]
    (tmp_path / "users.csv").write_text("user_id,age,zip\n" + "".join(rows))
    ds = load_dataset(tmp_path)
    age = ds.user_features["age"]  # 199 of 200 numbers: numeric, "n/a" missing
    assert age.dtype == np.float64 and np.isnan(age[0]) and age[1] == 2.0
    assert ds.user_columns[0].as_dict()["examples"] == ["n/a"]
    zips = ds.user_features["zip"]  # 197 of 200: categorical, kept as given
    assert zips.dtype.kind == "U" and zips[:4].tolist() == ["x", "x", "x", "4"]


# ------------------------------------------------------------------------- declarations


def test_declared_kinds_override_inference(tmp_path: Path) -> None:
    items = "item_id,year,code,tags\n" + "".join(
        f"{i},{'x' if i % 2 else 1900 + i},{i:03d},t{i % 3}\n" for i in range(1, 201)
    )
    users = "user_id,zip\n1,01234\n2,99999\n3,AB1\n"
    write_data(tmp_path, items=items, users=users)
    ds = load_dataset(
        tmp_path,
        item_schema={"year": "numeric", "code": "categorical", "tags": "multi"},
        user_schema={"zip": "numeric"},
    )
    attrs = item_attributes(ds)
    assert attrs is not None
    assert attrs.describe() == "year (numeric), code (categorical), tags (multi)"
    assert attrs.rows_as_dicts([0, 1]) == [
        {"code": "001", "tags": ["t1"]},  # year "x": made missing
        {"year": 1902.0, "code": "002", "tags": ["t2"]},
    ]
    year = ds.item_columns[0]
    assert (year.declared, year.made_missing, year.examples) == (True, 100, ("x",))
    np.testing.assert_array_equal(ds.user_features["zip"], [1234.0, 99999.0, np.nan])


def test_declared_categorical_writes_parquet_numbers_out(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\n1,10,1\n1,11,2\n")
    pq.write_table(
        pa.table({"item_id": [10, 11], "year": pa.array([1995.0, None])}),
        tmp_path / "items.parquet",
    )
    attrs = item_attributes(load_dataset(tmp_path, item_schema={"year": "categorical"}))
    assert attrs is not None and attrs.kind("year") == "categorical"
    assert attrs.rows_as_dicts([0, 1]) == [{"year": "1995"}, {}]


def test_schema_errors_name_the_problem(tmp_path: Path) -> None:
    write_data(tmp_path, items=years({}))
    with pytest.raises(DataError, match=r"item_schema names column\(s\) 'yeer'.*'year'"):
        load_dataset(tmp_path, item_schema={"yeer": "numeric"})
    with pytest.raises(DataError, match=r"user_schema declares column.*no users\.csv"):
        load_dataset(tmp_path, user_schema={"age": "numeric"})
    for toml, message in [
        ('item_schema = "year=number"', "unknown kind 'number'; use one of categorical"),
        ('item_schema = "year"', "'year': expected column=kind"),
        ('user_schema = {zip = "multi"}', "unknown kind 'multi'; use one of categorical, numeric"),
        ('item_schema = "a=numeric,a=multi"', "column 'a' declared twice"),
        ("item_schema = 3", "expected 'column=kind,...'"),
    ]:
        path = tmp_path / "c.toml"
        path.write_text(f"[train]\n{toml}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, {})


def test_config_file_and_flags_declare_kinds(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[train]\nitem_schema = {year = "numeric", genres = "multi"}\n')
    config = load_config(path, {})
    assert config.item_schema == {"year": "numeric", "genres": "multi"}
    assert config.user_schema == {}
    flags = load_config(path, {"item_schema": "year=categorical", "user_schema": "zip=numeric"})
    assert flags.item_schema == {"year": "categorical"} and flags.user_schema == {"zip": "numeric"}


def test_train_flag_declares_kinds_into_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = "item_id,year\n" + "".join(f"{i},{1900 + i}\n" for i in range(1, 201))
    (tmp_path / "data").mkdir()
    data = write_data(tmp_path / "data", items=items)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "root"), "--epochs", "1"]
    assert main([*args, "--hidden", "8", "--no-progress", "--item-schema", "year=categorical"]) == 0
    manifest = b.read_manifest(Path(capsys.readouterr().out.strip()))
    assert [a.model_dump() for a in manifest.item_attributes or []] == [
        {"name": "year", "kind": "categorical"}
    ]
    assert manifest.trainer["columns"]["items"][0]["declared"] is True
    assert main([*args, "--item-schema", "year=numbr"]) == 2  # one error line, no bundle


# ----------------------------------------------------------------------------- MovieLens


def _movielens_years(ml100k_dir: Path) -> dict[int, str]:
    with (ml100k_dir / "items.csv").open(newline="", encoding="utf-8") as f:
        return {int(row["item_id"]): row["year"] for row in csv.DictReader(f)}


@pytest.mark.slow
def test_movielens_year_range_filter_over_http(
    ml100k_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MovieLens 100K's year (1,680 years, "unkonwn" and "V") is numeric: a range filter
    answers 200 through a real server, and /v1/model says what was made missing."""
    root = tmp_path / "root"
    args = ["train", "--data", str(ml100k_dir), "--out", str(root), "--epochs", "1"]
    assert main([*args, "--hidden", "8", "--max-examples-per-user", "5", "--no-progress"]) == 0
    bundle = Path(capsys.readouterr().out.strip())
    build_index(bundle, FAST_FLAT)
    publish(bundle)
    given = _movielens_years(ml100k_dir)
    junk = sorted(i for i, y in given.items() if not y.strip().isdigit())
    assert sorted(given[i] for i in junk) == ["V", "unkonwn"]
    with live_server(create_app(settings(root))) as url, httpx.Client(base_url=url) as client:
        body = {"user_id": 196, "k": 50, "filter": {"year": {"gte": 1990}}}
        r = client.post("/v1/recall", json={**body, "with_attributes": True})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len(items) == 50
        assert all(int(given[int(x["item_id"])]) >= 1990 for x in items)
        assert all(x["attributes"]["year"] >= 1990 for x in items)
        columns = client.get("/v1/model").json()["columns"]
        year = next(c for c in columns["items"] if c["name"] == "year")
        assert year == {
            "name": "year",
            "kind": "numeric",
            "declared": False,
            "made_missing": 2,
            "examples": [given[i] for i in junk],
        }
        assert {c["name"]: c["kind"] for c in columns["users"]} == {
            "age": "numeric",
            "gender": "categorical",
            "occupation": "categorical",
            "zip_code": "categorical",  # 925 of 943 numbers: 98.1% < 99%
        }
        for item in junk:  # the two junk years are missing: no year attribute
            attributes = client.get(f"/v1/items/{item}").json()["attributes"]
            assert "year" not in attributes and attributes["title"]
