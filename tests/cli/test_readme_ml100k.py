"""The README's MovieLens 100K conversion (section "Development"), run as written on
GroupLens-format files (``u.data``, ``u.user``, ``u.item``, ``u.genre``) written back from
the ``RECALL_ML100K_DIR`` copy: the training input it makes is that copy's."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from recall.trainer.data import Dataset, load_dataset
from tests.cli.test_readme_import import section_blocks

# u.genre of the GroupLens zip: the order of the 19 flags of each u.item line.
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_grouplens(copy: Path, raw: Path) -> None:
    """The zip's files from the CSV copy: tab- and pipe-separated, no header, latin-1,
    titles with their year in parentheses, genres as 0/1 flags."""
    raw.mkdir()

    def write(name: str, sep: str, rows: list[list[str]]) -> None:
        text = "".join(sep.join(row) + "\n" for row in rows)
        (raw / name).write_text(text, encoding="latin-1")

    columns = ("user_id", "item_id", "rating", "timestamp")
    write("u.data", "\t", [[r[c] for c in columns] for r in _rows(copy / "interactions.csv")])
    columns = ("user_id", "age", "gender", "occupation", "zip_code")
    write("u.user", "|", [[r[c] for c in columns] for r in _rows(copy / "users.csv")])
    write("u.genre", "|", [[name, str(i)] for i, name in enumerate(GENRES)])
    items = []
    for r in _rows(copy / "items.csv"):
        dated = r["year"].isdigit()
        title = f"{r['title']} ({r['year']})" if dated else r["title"]
        flags = ["1" if g in r["genres"].split("|") else "0" for g in GENRES]
        released = f"01-Jan-{r['year']}" if dated else ""
        items.append([r["item_id"], title, released, "", "http://example.invalid/", *flags])
    write("u.item", "|", items)


def _genres(ds: Dataset) -> list[set[str]]:
    return [set(ds.item_genres(row).tolist()) for row in range(ds.n_items)]


def test_the_conversion_gives_the_copy_s_training_input(ml100k_dir: Path, tmp_path: Path) -> None:
    write_grouplens(ml100k_dir, tmp_path / "ml-100k")
    code = section_blocks("Development")["python"]
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
    made, copy = load_dataset(tmp_path / "ml-100k-csv"), load_dataset(ml100k_dir)
    assert (made.n_users, made.n_items, made.n_interactions) == (943, 1682, 100_000)
    for name in ("user_ids", "item_ids", "user_rows", "item_rows", "timestamps", "ratings"):
        np.testing.assert_array_equal(getattr(made, name), getattr(copy, name), err_msg=name)
    assert sorted(made.user_features) == sorted(copy.user_features)
    for name, values in copy.user_features.items():
        np.testing.assert_array_equal(made.user_features[name], values, err_msg=name)
    assert set(made.genre_vocab.tolist()) == set(GENRES) == set(copy.genre_vocab.tolist())
    assert _genres(made) == _genres(copy)
    titles = {r["item_id"]: r["title"] for r in _rows(tmp_path / "ml-100k-csv" / "items.csv")}
    assert titles["1"] == "Toy Story"  # "Toy Story (1995)" in u.item
