"""Tests of the synthetic data generator (trainer/synth.py)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recall.index.attributes import ItemAttributes
from recall.trainer.data import load_dataset
from recall.trainer.synth import BLOCK_USERS, SynthConfig, item_clusters, write_synthetic

FILES = ("interactions.csv", "users.csv", "items.csv")
SMALL = SynthConfig(n_users=3 * BLOCK_USERS - 100, n_items=600, n_clusters=12, mean_history=15)


def digests(directory: Path) -> dict[str, str]:
    return {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in FILES}


def read_ints(path: Path) -> tuple[list[str], np.ndarray]:
    header = path.read_text().split("\n", 1)[0].split(",")
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return header, rows


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, SMALL)
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, small: Path) -> None:
    write_synthetic(tmp_path / "again", SMALL)
    assert digests(tmp_path / "again") == digests(small)
    write_synthetic(tmp_path / "other", replace(SMALL, seed=1))
    theirs, ours = digests(tmp_path / "other"), digests(small)
    assert all(theirs[f] != ours[f] for f in FILES)


def test_chunk_size_does_not_change_output(tmp_path: Path, small: Path) -> None:
    write_synthetic(tmp_path, replace(SMALL, chunk_users=1))  # one block per chunk
    assert digests(tmp_path) == digests(small)


def test_files_headers_counts_and_ids(small: Path) -> None:
    header, inter = read_ints(small / "interactions.csv")
    assert header == ["user_id", "item_id", "timestamp"]
    users_lines = (small / "users.csv").read_text().splitlines()
    items_lines = (small / "items.csv").read_text().splitlines()
    assert users_lines[0] == "user_id,age,gender,country"
    assert items_lines[0] == "item_id,genres,title,year,language"
    assert len(users_lines) == SMALL.n_users + 1
    assert len(items_lines) == SMALL.n_items + 1
    assert not list(small.glob(".*")), "temp files left behind"

    user_ids = [int(line.split(",")[0]) for line in users_lines[1:]]
    item_ids = [int(line.split(",")[0]) for line in items_lines[1:]]
    assert user_ids == list(range(1, SMALL.n_users + 1))
    assert item_ids == list(range(1, SMALL.n_items + 1))
    user, item = inter[:, 0], inter[:, 1]
    assert item.min() >= 1 and item.max() <= SMALL.n_items
    per_user = np.bincount(user, minlength=SMALL.n_users + 1)[1:]
    assert per_user.min() >= SMALL.min_history  # every user in users.csv has a history
    assert per_user.size == SMALL.n_users and user.max() == SMALL.n_users
    assert abs(per_user.mean() - SMALL.mean_history) < 0.25 * SMALL.mean_history
    pairs = user * (SMALL.n_items + 1) + item
    assert np.unique(pairs).size == pairs.size, "a user repeats an item"


def test_users_and_items_fields(small: Path) -> None:
    for line in (small / "users.csv").read_text().splitlines()[1:]:
        _, age, gender, country = line.split(",")
        assert 13 <= int(age) <= 90 and gender in ("F", "M") and len(country) == 2
    for line in (small / "items.csv").read_text().splitlines()[1:]:
        genres = line.split(",")[1].split("|")
        assert 1 <= len(genres) <= 3 and len(set(genres)) == len(genres)
        assert all(g.startswith("genre") and 1 <= int(g[5:]) <= SMALL.n_genres for g in genres)


def test_item_attributes_follow_clusters(small: Path) -> None:
    """title names the item and its cluster; year (some blank) and language lean per cluster."""
    clusters = item_clusters(SMALL)
    rows = [line.split(",") for line in (small / "items.csv").read_text().splitlines()[1:]]
    titles = [r[2] for r in rows]
    assert all(t.endswith(f" {i}") for i, t in enumerate(titles, start=1))
    first_word = np.array([t.split(" ")[0] for t in titles])
    for k in range(SMALL.n_clusters):  # one title word per cluster
        assert np.unique(first_word[clusters == k]).size == 1
    years = np.array([float(r[3]) if r[3] else np.nan for r in rows])
    known = ~np.isnan(years)
    assert 0 < (~known).sum() < 0.06 * len(rows)  # ~2% blank: missing values
    assert years[known].min() >= 1950 and years[known].max() <= 2025
    spread = np.mean([np.nanstd(years[clusters == k]) for k in range(SMALL.n_clusters)])
    assert spread < 0.5 * np.nanstd(years)  # an era per cluster
    languages = np.array([r[4] for r in rows])
    assert set(languages) <= {"en", "es", "fr", "de", "ja", "ko", "hi", "pt"}
    values, counts = np.unique(languages, return_counts=True)
    assert len(values) >= 3 and counts.max() > 0.3 * len(rows)  # skewed


def test_the_loader_reads_the_item_attributes(small: Path) -> None:
    ds = load_dataset(small)
    assert set(ds.item_attributes) == {"genres", "title", "year", "language"}
    attributes = ItemAttributes.from_raw(ds.item_attributes, ds.n_items)
    assert attributes.describe() == (
        "genres (multi), title (categorical), year (numeric), language (categorical)"
    )
    rows = {
        int(line.split(",")[0]): line for line in (small / "items.csv").read_text().splitlines()[1:]
    }
    for row, attrs in enumerate(attributes.rows_as_dicts(range(ds.n_items))):
        _, genres, title, year, language = rows[int(ds.item_ids[row])].split(",")
        expected: dict[str, Any] = {
            "genres": sorted(genres.split("|")),
            "title": title,
            "language": language,
        }
        if year:
            expected["year"] = float(year)
        assert attrs == expected


def test_timestamps_non_decreasing_per_user(small: Path) -> None:
    _, inter = read_ints(small / "interactions.csv")
    user, ts = inter[:, 0], inter[:, 2]
    assert np.all(np.diff(user) >= 0), "interactions are user-major"
    same = user[1:] == user[:-1]
    step = np.diff(ts)[same]
    assert np.all(step >= 0)
    assert 0 < np.mean(step == 0) < 0.1  # a few ties
    assert ts.min() > 1_500_000_000


def consecutive_rates(inter: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """(share of consecutive pairs in one cluster, share of random pairs in one cluster)."""
    c = clusters[inter[:, 1] - 1]
    same_user = inter[1:, 0] == inter[:-1, 0]
    consecutive = float(np.mean((c[1:] == c[:-1])[same_user]))
    shuffled = np.random.default_rng(0).permutation(c)
    return consecutive, float(np.mean(c == shuffled))


def test_planted_clusters_are_measurable(small: Path) -> None:
    clusters = item_clusters(SMALL)
    assert clusters.shape == (SMALL.n_items,) and clusters.dtype == np.int64
    assert set(np.unique(clusters)) == set(range(SMALL.n_clusters))
    _, inter = read_ints(small / "interactions.csv")
    consecutive, random_pairs = consecutive_rates(inter, clusters)
    assert consecutive > 0.5 and consecutive > 4 * random_pairs


def test_drift_recent_item_predicts_better_than_first(tmp_path: Path) -> None:
    config = SynthConfig(n_users=500, n_items=400, n_clusters=10, mean_history=40, p_drift=0.3)
    write_synthetic(tmp_path, config)
    _, inter = read_ints(tmp_path / "interactions.csv")
    c = item_clusters(config)[inter[:, 1] - 1]
    user = inter[:, 0]
    starts = np.searchsorted(user, user)  # first row of each row's user
    late = np.arange(user.size) - starts >= 10
    prev_match = np.mean((c[1:] == c[:-1])[late[1:]])
    first_match = np.mean((c == c[starts])[late])
    assert prev_match > first_match + 0.15


def test_popularity_is_skewed(small: Path) -> None:
    _, inter = read_ints(small / "interactions.csv")
    counts = np.sort(np.bincount(inter[:, 1], minlength=SMALL.n_items + 1)[1:])[::-1]
    top_tenth = counts[: SMALL.n_items // 10].sum() / counts.sum()
    assert top_tenth > 0.3  # uniform would be 0.1


def test_genres_follow_clusters(small: Path) -> None:
    clusters = item_clusters(SMALL)
    lines = (small / "items.csv").read_text().splitlines()[1:]
    primary = np.array([int(line.split(",")[1].split("|")[0][5:]) for line in lines])
    # within a cluster, the commonest first genre covers far more than 1 / n_genres
    shares = [np.bincount(primary[clusters == k]).max() / np.sum(clusters == k) for k in range(12)]
    assert np.mean(shares) > 0.3


def test_tiny_catalog_still_meets_min_history(tmp_path: Path) -> None:
    config = SynthConfig(n_users=50, n_items=6, n_clusters=3, min_history=5, mean_history=8)
    summary = write_synthetic(tmp_path, config)
    _, inter = read_ints(tmp_path / "interactions.csv")
    per_user = np.bincount(inter[:, 0], minlength=51)[1:]
    assert per_user.min() >= 5 and per_user.max() <= 6
    assert summary.n_interactions == inter.shape[0] and summary.n_users == 50


@pytest.mark.parametrize(
    "changes",
    [
        {"n_users": 0},
        {"n_items": -1},
        {"n_clusters": 0},
        {"n_genres": 0},
        {"n_genres": 10_001},
        {"chunk_users": 0},
        {"min_history": 0},
        {"n_items": 10, "n_clusters": 11, "min_history": 5},
        {"n_items": 4, "n_clusters": 2, "min_history": 5},
        {"mean_history": 3.0, "min_history": 5},
        {"mean_history": math.nan},
        {"popularity_exponent": -0.5},
        {"p_popular": 1.5},
        {"p_drift": -0.1},
        {"seed": -1},
        {"n_users": 2.5},
        {"n_users": True},
    ],
)
def test_invalid_config_raises(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**changes)


def test_load_dataset_reads_the_output(small: Path) -> None:
    pytest.importorskip("pyarrow")
    from recall.trainer.data import load_dataset

    ds = load_dataset(small)
    _, inter = read_ints(small / "interactions.csv")
    assert ds.n_users == SMALL.n_users and ds.n_interactions == inter.shape[0]
    assert ds.user_ids.dtype == np.int64 and ds.item_ids.dtype == np.int64
    np.testing.assert_array_equal(ds.user_ids[ds.user_rows], inter[:, 0])
    np.testing.assert_array_equal(ds.item_ids[ds.item_rows], inter[:, 1])
    np.testing.assert_array_equal(ds.timestamps, inter[:, 2].astype(np.float64))
    assert ds.ratings is None
    assert sorted(ds.user_features) == ["age", "country", "gender"]
    assert ds.user_features["age"].dtype == np.float64
    assert set(ds.user_features["gender"]) <= {"F", "M"}
    assert 1 <= ds.genre_vocab.size <= SMALL.n_genres
    assert np.all(np.diff(ds.item_genre_indptr) >= 1)  # every item has a genre
