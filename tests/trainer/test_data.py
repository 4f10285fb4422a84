"""recall.trainer.data.load_dataset: typing, alignment, Parquet, and every error path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from recall.index.ids import IdMap  # noqa: E402
from recall.trainer.data import DataError, Dataset, load_dataset  # noqa: E402

INTERACTIONS = """user_id,item_id,timestamp,rating,note
u2,i1,100,4,x
u1,i2,200,5,y
u2,i3,300,3.5,z
u3,i1,50,1,
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, interactions: str, **side: str) -> Dataset:
    write(tmp_path, "interactions.csv", interactions)
    for stem, text in side.items():
        write(tmp_path, f"{stem}.csv", text)
    return load_dataset(tmp_path)


def error(tmp_path: Path, interactions: str, **side: str) -> str:
    with pytest.raises(DataError) as info:
        load(tmp_path, interactions, **side)
    return str(info.value)


# ------------------------------------------------------------------------- happy paths


def test_string_ids_rows_and_columns(tmp_path: Path) -> None:
    ds = load(tmp_path, INTERACTIONS)
    assert ds.user_ids.tolist() == ["u1", "u2", "u3"] and ds.user_ids.dtype.kind == "U"
    assert ds.item_ids.tolist() == ["i1", "i2", "i3"]
    assert ds.user_ids[ds.user_rows].tolist() == ["u2", "u1", "u2", "u3"]
    assert ds.item_ids[ds.item_rows].tolist() == ["i1", "i2", "i3", "i1"]
    assert ds.user_rows.dtype == np.int32 and ds.item_rows.dtype == np.int32
    assert ds.timestamps.dtype == np.float64 and ds.timestamps.tolist() == [100, 200, 300, 50]
    assert ds.ratings is not None and ds.ratings.dtype == np.float32
    assert ds.ratings.tolist() == [4, 5, 3.5, 1]
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 3, 4)
    assert ds.user_features == {} and ds.genre_vocab.size == 0
    assert ds.item_genre_indptr.tolist() == [0, 0, 0, 0] and ds.item_genre_indices.size == 0
    assert ds.source == tmp_path


def test_int_ids_sorted_numerically_and_no_rating(tmp_path: Path) -> None:
    ds = load(tmp_path, "user_id,item_id,timestamp\n10,-3,1\n9,100,2\n10,0,3.25\n")
    assert ds.user_ids.dtype == np.int64 and ds.user_ids.tolist() == [9, 10]
    assert ds.item_ids.dtype == np.int64 and ds.item_ids.tolist() == [-3, 0, 100]
    assert ds.user_rows.tolist() == [1, 0, 1] and ds.item_rows.tolist() == [0, 2, 1]
    assert ds.ratings is None and ds.timestamps.tolist() == [1, 2, 3.25]


@pytest.mark.parametrize(
    "odd",
    ["007", "-0", "+7", " 7", "7.0", "1e3", "0x1F", "9223372036854775808", "x"],
)
def test_one_non_canonical_id_makes_the_column_strings(tmp_path: Path, odd: str) -> None:
    ds = load(tmp_path, f'user_id,item_id,timestamp\n7,1,1\n"{odd}",2,2\n10,3,3\n')
    assert ds.user_ids.dtype.kind == "U"
    assert sorted(ds.user_ids.tolist()) == ds.user_ids.tolist()
    assert set(ds.user_ids.tolist()) == {"7", odd, "10"}  # exactly as given
    assert ds.user_ids[ds.user_rows].tolist() == ["7", odd, "10"]
    assert ds.item_ids.dtype == np.int64  # columns are typed independently


def test_int64_limits_stay_ints(tmp_path: Path) -> None:
    lo, hi = -(2**63), 2**63 - 1
    ds = load(tmp_path, f"user_id,item_id,timestamp\n{lo},1,1\n{hi},1,2\n")
    assert ds.user_ids.dtype == np.int64 and ds.user_ids.tolist() == [lo, hi]


def test_users_features_aligned_with_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    users = "user_id,age,gender,zip\nu3,30,F,01234\nu1, 41 ,M,AB1\nu9,99,M,x\nu2,,,\n"
    with caplog.at_level(logging.INFO, logger="recall.trainer.data"):
        ds = load(tmp_path, INTERACTIONS, users=users)
    assert list(ds.user_features) == ["age", "gender", "zip"]
    age = ds.user_features["age"]
    assert age.dtype == np.float64
    np.testing.assert_array_equal(age, [41.0, np.nan, 30.0])  # u1, u2 (blank), u3
    assert ds.user_features["gender"].tolist() == ["M", "", "F"]
    assert ds.user_features["gender"].dtype.kind == "U"
    assert ds.user_features["zip"].tolist() == ["AB1", "", "01234"]  # kept as given
    assert "ignoring 1 id(s)" in caplog.text and "users.csv" in caplog.text


def test_user_missing_from_users_file_gets_nan_and_empty(tmp_path: Path) -> None:
    ds = load(tmp_path, INTERACTIONS, users="user_id,age,city\nu1,20,Oslo\n")
    np.testing.assert_array_equal(ds.user_features["age"], [20.0, np.nan, np.nan])
    assert ds.user_features["city"].tolist() == ["Oslo", "", ""]


def test_int_user_ids_match_only_canonical_ids_in_users_file(tmp_path: Path) -> None:
    ds = load(
        tmp_path,
        "user_id,item_id,timestamp\n1,1,1\n2,1,1\n",
        users="user_id,age\n1,10\n002,20\n",
    )
    np.testing.assert_array_equal(ds.user_features["age"], [10.0, np.nan])


def test_items_genres_csr(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    items = (
        "item_id,title,genres\n"
        'i3,"Comma, The",Drama| Comedy |Drama\n'
        "i1,One,Action\n"
        "i7,Not rated,Horror\n"
        "i2,No genre,\n"
    )
    with caplog.at_level(logging.INFO, logger="recall.trainer.data"):
        ds = load(tmp_path, INTERACTIONS, items=items)
    assert ds.genre_vocab.tolist() == ["Action", "Comedy", "Drama"]  # Horror: item unused
    assert ds.item_genre_indptr.dtype == np.int64 and ds.item_genre_indices.dtype == np.int32
    assert ds.item_genre_indptr.tolist() == [0, 1, 1, 3]
    assert ds.item_genres(0).tolist() == ["Action"]
    assert ds.item_genres(1).tolist() == []
    assert ds.item_genres(2).tolist() == ["Comedy", "Drama"]  # deduplicated, sorted
    assert "ignoring 1 id(s)" in caplog.text and "items.csv" in caplog.text


def test_items_without_genres_column(tmp_path: Path) -> None:
    ds = load(tmp_path, INTERACTIONS, items="item_id,title\ni1,a\ni2,b\n")
    assert ds.genre_vocab.size == 0 and ds.item_genre_indptr.tolist() == [0, 0, 0, 0]


def test_crlf_bom_and_quoted_header(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv"
    path.write_bytes('\ufeff"user_id","item_id","timestamp"\r\n1,2,3\r\n4,5,6\r\n'.encode())
    ds = load_dataset(tmp_path)
    assert ds.user_ids.tolist() == [1, 4] and ds.timestamps.tolist() == [3, 6]


def test_whitespace_around_numbers_is_tolerated(tmp_path: Path) -> None:
    ds = load(tmp_path, "user_id,item_id,timestamp,rating\n1,2, 3 ,4 \n")
    assert ds.timestamps.tolist() == [3] and ds.ratings is not None
    assert ds.ratings.tolist() == [4]


def test_parquet_files(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": pa.array([5, 3, 5], pa.int64()),
            "item_id": pa.array(["b", "a", "c"]).dictionary_encode(),
            "timestamp": pa.array([1_000, 2_000, 3_000], pa.timestamp("ms")),
            "rating": pa.array([1, 2, 3], pa.int8()),
        }
    )
    pq.write_table(table, tmp_path / "interactions.parquet")
    pq.write_table(
        pa.table({"user_id": [3, 4], "age": [30.5, None], "tag": ["x", None]}),
        tmp_path / "users.parquet",
    )
    pq.write_table(
        pa.table({"item_id": ["a", "c"], "genres": ["G1|G2", None]}), tmp_path / "items.parquet"
    )
    write(tmp_path, "users.csv", "this file is ignored: the Parquet one wins\n")
    ds = load_dataset(tmp_path)
    assert ds.user_ids.dtype == np.int64 and ds.user_ids.tolist() == [3, 5]
    assert ds.item_ids.tolist() == ["a", "b", "c"]
    assert ds.timestamps.tolist() == [1.0, 2.0, 3.0]
    assert ds.ratings is not None and ds.ratings.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(ds.user_features["age"], [30.5, np.nan])
    assert ds.user_features["tag"].tolist() == ["x", ""]
    assert ds.genre_vocab.tolist() == ["G1", "G2"]
    assert ds.item_genre_indptr.tolist() == [0, 2, 2, 2]


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    table = pa.table({"user_id": ["a", " "], "item_id": [1, 2], "timestamp": [1.0, 2.0]})
    pq.write_table(table, tmp_path / "interactions.parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet: row 2, column 'user_id': blank"):
        load_dataset(tmp_path)
    table = pa.table({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1.0, None]})
    pq.write_table(table, tmp_path / "interactions.parquet")
    with pytest.raises(DataError, match=r"row 2, column 'timestamp': missing value"):
        load_dataset(tmp_path)
    (tmp_path / "interactions.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet: not a readable Parquet"):
        load_dataset(tmp_path)


# ------------------------------------------------------------------------------ errors


def test_missing_directory_and_interactions(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match=r"interactions\.csv: missing file"):
        load_dataset(tmp_path)


def test_missing_required_columns(tmp_path: Path) -> None:
    msg = error(tmp_path, "user,item_id,time\n1,2,3\n")
    assert "interactions.csv" in msg and "'user_id'" in msg and "'timestamp'" in msg
    assert "'item_id'" not in msg.split("(found")[0]


@pytest.mark.parametrize("side", ["users", "items"])
def test_missing_id_column_in_side_file(tmp_path: Path, side: str) -> None:
    msg = error(tmp_path, INTERACTIONS, **{side: "id,x\n1,2\n"})
    assert f"{side}.csv" in msg and f"'{side[:-1]}_id'" in msg and "missing required" in msg


@pytest.mark.parametrize("stem", ["interactions", "users", "items"])
def test_empty_file(tmp_path: Path, stem: str) -> None:
    write(tmp_path, "interactions.csv", INTERACTIONS)
    write(tmp_path, f"{stem}.csv", "")
    with pytest.raises(DataError, match=rf"{stem}\.csv: empty file \(0 bytes\)"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("stem", "header"),
    [("interactions", "user_id,item_id,timestamp\n"), ("users", "user_id,age\n")],
)
def test_header_only_file(tmp_path: Path, stem: str, header: str) -> None:
    write(tmp_path, "interactions.csv", INTERACTIONS)
    write(tmp_path, f"{stem}.csv", header)
    with pytest.raises(DataError, match=rf"{stem}\.csv: has a header but no data rows"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(("column", "line"), [("user_id", 3), ("item_id", 4)])
def test_blank_id(tmp_path: Path, column: str, line: int) -> None:
    rows = [["1", "1", "1"], ["2", "2", "2"], ["3", "3", "3"]]
    rows[line - 2][0 if column == "user_id" else 1] = "  "
    text = "user_id,item_id,timestamp\n" + "".join(",".join(r) + "\n" for r in rows)
    msg = error(tmp_path, text)
    assert msg.endswith(f"interactions.csv: line {line}, column '{column}': blank id")


def test_first_bad_id_column_is_reported_first(tmp_path: Path) -> None:
    msg = error(tmp_path, "user_id,item_id,timestamp\n1,2,3\n,,3\n")
    assert msg.endswith("line 3, column 'user_id': blank id")


@pytest.mark.parametrize(
    ("column", "value", "what"),
    [
        ("timestamp", "yesterday", "not a number: 'yesterday'"),
        ("timestamp", "1,5", None),  # quoted comma
        ("timestamp", "inf", "non-finite value 'inf'"),
        ("timestamp", "NaN", "non-finite value 'NaN'"),
        ("timestamp", "", "blank value"),
        ("rating", "five", "not a number: 'five'"),
        ("rating", "nan", "non-finite value 'nan'"),
        ("rating", "1e39", "non-finite value '1e39'"),  # finite in float64, not in float32
    ],
)
def test_bad_numbers(tmp_path: Path, column: str, value: str, what: str | None) -> None:
    rows = [["a", "x", "10", "1"], ["b", "y", "11", "2"], ["c", "z", "12", "3"]]
    rows[2][2 if column == "timestamp" else 3] = f'"{value}"'
    text = "user_id,item_id,timestamp,rating\n" + "".join(",".join(r) + "\n" for r in rows)
    msg = error(tmp_path, text)
    assert f"interactions.csv: line 4, column '{column}': " in msg
    assert what is None or msg.endswith(what)
    assert what is not None or repr(value) in msg


def test_duplicate_user_in_users_file(tmp_path: Path) -> None:
    msg = error(tmp_path, INTERACTIONS, users="user_id,age\nu1,1\nu2,2\nu3,3\nu2,4\n")
    assert msg.endswith("users.csv: line 5, column 'user_id': duplicate id 'u2' (first on line 3)")


def test_duplicate_item_in_items_file(tmp_path: Path) -> None:
    ints = "user_id,item_id,timestamp\n1,7,1\n"
    msg = error(tmp_path, ints, items="item_id,genres\n7,A\n8,B\n8,C\n")
    assert msg.endswith("items.csv: line 4, column 'item_id': duplicate id 8 (first on line 3)")


def test_blank_id_in_side_file(tmp_path: Path) -> None:
    msg = error(tmp_path, INTERACTIONS, items="item_id,genres\ni1,A\n,B\n")
    assert msg.endswith("items.csv: line 3, column 'item_id': blank id")


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("é" * 129, "an id is at most 256 bytes of UTF-8, got 258 bytes"),
        ("a\x00b", "an id may not contain NUL (U+0000)"),
    ],
)
def test_a_long_or_nul_id_names_file_line_and_column(tmp_path: Path, value: str, what: str) -> None:
    """Issue 15 §1: the service refuses such ids, so training data may not hold them."""
    at_limit = "é" * 128  # 256 bytes: accepted
    assert load(tmp_path, f"user_id,item_id,timestamp\n{at_limit},i1,1\n").n_users == 1
    msg = error(tmp_path, f"user_id,item_id,timestamp\nu1,i1,1\nu2,{value},2\n")
    assert msg.endswith(f"interactions.csv: line 3, column 'item_id': {what}")
    msg = error(tmp_path, INTERACTIONS, users=f"user_id,age\n{value},3\n")
    assert msg.endswith(f"users.csv: line 2, column 'user_id': {what}")


def test_malformed_row_names_the_file(tmp_path: Path) -> None:
    msg = error(tmp_path, "user_id,item_id,timestamp\n1,2,3\n4,5\n")
    assert "interactions.csv: cannot parse" in msg and "Expected 3 columns" in msg


def test_duplicate_column_names(tmp_path: Path) -> None:
    msg = error(tmp_path, "user_id,item_id,timestamp,user_id\n1,2,3,4\n")
    assert "interactions.csv: line 1: duplicate column name(s) 'user_id'" in msg


def test_invalid_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_bytes(b"user_id,item_id,timestamp\n\xff,2,3\n")
    with pytest.raises(DataError, match=r"interactions\.csv"):
        load_dataset(tmp_path)


# ------------------------------------------------------------------------------ ml-100k


def test_ml_100k(ml100k_dir: Path) -> None:
    ds = load_dataset(ml100k_dir)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100_000)
    assert ds.user_ids.dtype == np.int64 and ds.item_ids.dtype == np.int64
    assert ds.user_ids.tolist() == list(range(1, 944))
    assert ds.ratings is not None and set(np.unique(ds.ratings).tolist()) == {1, 2, 3, 4, 5}
    assert ds.timestamps.min() > 8.7e8
    assert ds.genre_vocab.size == 19 and "unknown" in ds.genre_vocab.tolist()
    items = IdMap(ds.item_ids)
    toy_story = items.row("1")
    assert toy_story is not None
    assert ds.item_genres(toy_story).tolist() == ["Animation", "Children's", "Comedy"]
    assert np.all(np.diff(ds.item_genre_indptr) >= 1)
    assert sorted(ds.user_features) == ["age", "gender", "occupation", "zip_code"]
    assert ds.user_features["age"].dtype == np.float64
    assert ds.user_features["zip_code"].dtype.kind == "U"  # some zip codes hold letters
    users = IdMap(ds.user_ids)
    u1 = users.row(1)
    assert u1 is not None
    assert ds.user_features["age"][u1] == 24 and ds.user_features["gender"][u1] == "M"
    first = int(users.rows([196])[0]), int(items.rows([242])[0])
    assert (int(ds.user_rows[0]), int(ds.item_rows[0])) == first
    assert ds.timestamps[0] == 881250949
