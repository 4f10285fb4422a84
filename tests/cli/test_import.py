"""``recall import``: round trips of each input format and metric against a numpy oracle
over a real uvicorn server, every bad input (exit 2, one line naming file, row and
problem, no bundle left behind), and the verification imported bundles go through."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recall.cli import main
from recall.index import bundle as b
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from tests.import_files import ImportInputs, run_import, write_interactions, write_vectors
from tests.live import live_server, settings

INPUTS = ImportInputs.make()


def unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def top(scores: np.ndarray, k: int, drop: Sequence[int] = ()) -> tuple[list[int], np.ndarray]:
    """The oracle: item ids of the k best scores (float64) without the rows ``drop``."""
    scores = scores.astype(np.float64).copy()
    scores[list(drop)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return INPUTS.item_ids[order].tolist(), scores[order]


def rows_of(item_ids: list[int]) -> list[int]:
    return [int(np.flatnonzero(INPUTS.item_ids == i)[0]) for i in item_ids]


def import_all(tmp_path: Path, suffix: str, metric: str) -> Path:
    """Import items + users + interactions, build the index and publish; the root."""
    items = write_vectors(tmp_path / f"items{suffix}", INPUTS.item_ids, INPUTS.items)
    users = write_vectors(tmp_path / f"users{suffix}", INPUTS.user_ids, INPUTS.users)
    interactions = write_interactions(tmp_path / "interactions.csv", INPUTS.interactions)
    root = tmp_path / "root"
    code, bundle = run_import(
        "--items", items, "--users", users, "--interactions", interactions,
        "--out", root, "--metric", metric, "--model", "test MF",
    )  # fmt: skip
    assert code == 0 and bundle is not None
    assert main(["build-index", str(bundle), "--publish"]) == 0
    return root


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_round_trip_matches_numpy(tmp_path: Path, suffix: str, metric: str) -> None:
    root = import_all(tmp_path, suffix, metric)
    cosine = metric == "cosine"
    items = unit(INPUTS.items) if cosine else INPUTS.items.astype(np.float64)
    users = unit(INPUTS.users) if cosine else INPUTS.users.astype(np.float64)
    with (
        live_server(create_app(settings(root))) as url,
        httpx.Client(base_url=url) as client,
    ):
        model = client.get("/v1/model").json()
        assert model["metric"] == ("cosine" if cosine else "inner_product")
        assert model["history_rule"] == {"rule": "item_mean", "history_length": 50}
        source = model["source"]
        assert source["kind"] == "import" and source["model"] == "test MF"
        assert source["normalized"] is cosine
        assert source["inputs"]["items"]["path"] == str((tmp_path / f"items{suffix}").resolve())
        assert source["inputs"]["users"]["rows"] == len(INPUTS.user_ids)
        assert source["inputs"]["interactions"]["rows"] == len(INPUTS.interactions)
        assert source["command"].startswith("recall import --items ")

        q = np.linspace(-1.0, 1.0, INPUTS.items.shape[1])
        body = client.post("/v1/recall", json={"vector": q.tolist(), "k": 10}).json()
        ids, scores = top(items @ q, 10)
        assert body["source"] == "vector"
        assert [i["item_id"] for i in body["items"]] == ids
        np.testing.assert_allclose([i["score"] for i in body["items"]], scores, rtol=1e-5)

        user = INPUTS.user_ids[3]
        body = client.post("/v1/recall", json={"user_id": user, "k": 10}).json()
        ids, scores = top(items @ users[3], 10, rows_of(INPUTS.seen(user)))
        assert body["source"] == "user"
        assert [i["item_id"] for i in body["items"]] == ids
        np.testing.assert_allclose([i["score"] for i in body["items"]], scores, rtol=1e-5)

        history = INPUTS.item_ids[[4, 9, 30]].tolist()
        mean = items[[4, 9, 30]].mean(axis=0)
        body = client.post("/v1/recall", json={"history": history, "k": 10}).json()
        ids, scores = top(items @ (unit(mean) if cosine else mean), 10, [4, 9, 30])
        assert body["source"] == "history:item-mean"
        assert [i["item_id"] for i in body["items"]] == ids
        np.testing.assert_allclose([i["score"] for i in body["items"]], scores, rtol=1e-5)

        item = int(INPUTS.item_ids[7])
        body = client.get(f"/v1/items/{item}/similar", params={"k": 10}).json()
        ids, scores = top(items @ items[7], 10, [7])
        assert [i["item_id"] for i in body["items"]] == ids
        np.testing.assert_allclose([i["score"] for i in body["items"]], scores, rtol=1e-5)

        vector = client.get(f"/v1/items/{item}/vector").json()["vector"]
        np.testing.assert_allclose(vector, items[7], rtol=1e-6, atol=1e-7)
        vector = client.get(f"/v1/users/{user}/vector").json()["vector"]
        np.testing.assert_allclose(vector, users[3], rtol=1e-6, atol=1e-7)


def test_imported_bundle_is_verified_in_publish_and_serve(tmp_path: Path) -> None:
    root = import_all(tmp_path, ".npz", "cosine")
    first = root / (root / "CURRENT").read_text().strip()
    assert ServingBundle.load(first).manifest.source is not None
    # a second import, damaged after its index was built: refused by both
    items = tmp_path / "items.npz"
    code, bundle = run_import("--items", items, "--out", root, "--metric", "cosine")
    assert code == 0 and bundle is not None
    assert main(["build-index", str(bundle)]) == 0
    manifest = b.read_manifest(bundle)
    path = bundle / b.ITEM_VECTORS
    vectors = np.load(path)
    vectors[5] *= 2.0  # no longer of unit norm
    np.save(path, vectors)
    assert main(["publish", str(bundle)]) == 2  # the sha256 check
    with pytest.raises(b.BundleError, match="sha256"):
        ServingBundle.load(bundle)
    files = {**manifest.files, b.ITEM_VECTORS: b.file_entry(path)}
    updated = manifest.model_copy(update={"files": files})
    (bundle / b.MANIFEST).write_text(updated.model_dump_json())
    assert main(["publish", str(bundle)]) == 2  # checksums fine, but not unit vectors
    with pytest.raises(b.BundleError, match=r"cosine but item_vectors\.npy has 1 row"):
        ServingBundle.load(bundle)
    assert (root / "CURRENT").read_text().strip() == first.name


def test_items_only_bundle_builds_and_publishes(tmp_path: Path) -> None:
    """No users: build-index tunes on the item vectors."""
    items = write_vectors(tmp_path / "items.parquet", INPUTS.item_ids, INPUTS.items)
    code, bundle = run_import("--items", items, "--out", tmp_path / "root")
    assert code == 0 and bundle is not None
    assert main(["build-index", str(bundle), "--kind", "hnsw", "--publish"]) == 0
    loaded = ServingBundle.load(bundle)
    assert len(loaded.user_ids) == 0 and loaded.manifest.index is not None
    assert loaded.manifest.index["recall"]["tune_queries"] > 0


def _npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _parquet(path: Path, ids: list[object], vectors: list[list[float] | None]) -> Path:
    pq.write_table(pa.table({"id": ids, "vector": vectors}), path)
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str | Path], str]]:
    """Each bad input: (the import's arguments, what the error line must say)."""
    ids, vectors = INPUTS.item_ids, INPUTS.items
    nan = vectors.copy()
    nan[3, 1] = np.nan
    inf = vectors.copy()
    inf[4, 0] = np.inf
    good = write_vectors(tmp / "good.npz", ids, vectors)
    pickled = tmp / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"ids": ids, "vectors": vectors}))
    attributes = tmp / "items.csv"
    attributes.write_text(f"item_id,genre\n{ids[0]},a\n999999,b\n")
    unknown_item = write_interactions(tmp / "interactions.csv", [("u0", 1000, 1.0), ("u0", 5, 2.0)])
    unknown_user = write_interactions(tmp / "other.csv", [("u0", 1000, 1.0), ("nobody", 1001, 2.0)])
    users = write_vectors(tmp / "users.npz", INPUTS.user_ids, INPUTS.users)
    return {
        "nan": (
            [write_vectors(tmp / "nan.npz", ids, nan)],
            "nan.npz: vectors[3] (id 1003): NaN or Inf",
        ),
        "inf": (
            [write_vectors(tmp / "inf.parquet", ids, inf)],
            "inf.parquet: row 5 (id 1004): NaN or Inf",
        ),
        "duplicate": (
            [_npz(tmp / "dup.npz", ids=np.r_[ids[:-1], ids[2]], vectors=vectors)],
            f"dup.npz: vectors[{len(ids) - 1}] (id 1002): duplicate id, first at vectors[2]",
        ),
        "count": (
            [_npz(tmp / "count.npz", ids=ids[:-1], vectors=vectors)],
            f"count.npz: {len(ids) - 1} ids (ids) but {len(ids)} vectors (vectors)",
        ),
        "dims": (
            [good, "--users", write_vectors(tmp / "u3.npz", ["a"], np.ones((1, 3), np.float32))],
            "u3.npz: user vectors have 3 dimensions, the item vectors of",
        ),
        "object": (
            [
                _npz(
                    tmp / "object.npz",
                    ids=np.array([1, "a", None], dtype=object),
                    vectors=vectors[:3],
                )
            ],
            "object.npz: not a plain numpy archive (.npz): Object arrays cannot be loaded",
        ),
        "pickle": ([pickled], "pickled.npz: not a plain numpy archive (.npz): "),
        "mixed": (
            [_parquet(tmp / "mixed.parquet", [1, 2, 3], [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0, 3.0]])],
            "mixed.parquet: row 3, column 'vector': a vector of 3 values, row 1 has 2",
        ),
        "null vector": (
            [_parquet(tmp / "null.parquet", [1, 2], [[1.0, 2.0], None])],
            "null.parquet: row 2, column 'vector': missing vector",
        ),
        "attributes": (
            [good, "--item-attributes", attributes],
            "items.csv: line 3, column 'item_id': item 999999 has no item vector",
        ),
        "interactions": (
            [good, "--interactions", unknown_item],
            "interactions.csv: line 3: item 5 has no item vector",
        ),
        "id type": (
            [good, "--interactions", write_interactions(tmp / "typed.csv", [("u0", "x7", 1.0)])],
            "typed.csv: line 2: item 'x7' has no item vector (this file has string ids, "
            "the item vectors integer ids)",
        ),
        "missing file": ([tmp / "nothing.npz"], "nothing.npz: no such file"),
        "interaction user": (
            [good, "--users", users, "--interactions", unknown_user],
            "other.csv: line 3: user 'nobody' has no user vector",
        ),
        "zero for cosine": (
            [
                write_vectors(tmp / "zero.npz", [1, 2], np.array([[1, 0], [0, 0]], np.float32)),
                "--metric",
                "cosine",
            ],
            "zero.npz: vectors[1] (id 2): a zero vector has no cosine",
        ),
        "format": ([tmp / "items.txt"], "items.txt: vectors come as .npz or .parquet"),
    }


BAD = [
    "nan", "inf", "duplicate", "count", "dims", "object", "pickle", "mixed", "null vector",
    "attributes", "interactions", "id type", "missing file", "interaction user",
    "zero for cosine", "format",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_naming_file_row_and_problem(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    cases = _bad_inputs(tmp_path)
    assert sorted(cases) == sorted(BAD)
    args, message = cases[case]
    root = tmp_path / "root"
    with caplog.at_level(logging.ERROR, logger="recall"):
        code, bundle = run_import("--items", *args, "--out", root)
    assert code == 2 and bundle is None
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0], errors
    assert not root.exists()  # nothing written, not even the root


def test_parquet_lists_and_other_column_names(tmp_path: Path) -> None:
    """A vector column of plain lists (not fixed-size) and columns named by flags."""
    ids = INPUTS.item_ids.tolist()
    table = pa.table({"item": ids, "embedding": [row.tolist() for row in INPUTS.items]})
    assert pa.types.is_list(table.schema.field("embedding").type)
    pq.write_table(table, tmp_path / "items.parquet")
    args = ["--id-column", "item", "--vector-column", "embedding", "--out", tmp_path / "root"]
    code, bundle = run_import("--items", tmp_path / "items.parquet", *args)
    assert code == 0 and bundle is not None
    manifest = b.read_manifest(bundle)
    assert manifest.source is not None
    assert manifest.source.inputs["items"].columns == ["item", "embedding"]
    stored = np.load(bundle / b.ITEM_VECTORS)
    np.testing.assert_array_equal(stored, INPUTS.items)
    np.testing.assert_array_equal(np.load(bundle / b.ITEM_IDS), INPUTS.item_ids)
