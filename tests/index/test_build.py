"""The index builder: what it writes, the recall it records, the bundles it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from recall.index import bundle as b
from recall.index import faiss_index as fi
from recall.index.attributes import ItemAttributes
from recall.index.build import BuildOptions, build_index, sample_query_rows
from recall.index.filtered_recall import choose_filters
from recall.index.search import STRATEGIES, ItemIndex
from tests.index_data import clustered, write_vectors_bundle

N_ITEMS, N_USERS, DIM = 3000, 400, 16


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N_ITEMS, N_USERS, DIM, seed=5)


def _independent_recall(index: ItemIndex, items: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Recall@k of what the loaded index finds vs a float64 numpy argsort, by set overlap."""
    _, found = index.search_index(queries, k)
    exact = np.argsort(-(queries.astype(np.float64) @ items.astype(np.float64).T), axis=1)
    return float(
        np.mean(
            [
                len(set(f.tolist()) & set(e[:k].tolist())) / k
                for f, e in zip(found, exact, strict=True)
            ]
        )
    )


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("hnsw", {"ef_construction": 40}),
        ("ivf-flat", {}),
        ("ivf-sq8", {}),
        pytest.param("ivf-pq", {"pq_m": 6}, marks=pytest.mark.slow),
    ],
)
def test_recorded_recall_equals_an_independent_computation(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray], kind: str, options: dict[str, int]
) -> None:
    items, users = vectors
    bundle = write_vectors_bundle(tmp_path, items, users)
    opts = BuildOptions(kind=kind, sample_queries=150, latency_queries=20, seed=11, **options)
    section = build_index(bundle, opts)

    manifest = b.read_manifest(bundle)
    assert manifest.index == json.loads(json.dumps(section))
    recall = section["recall"]
    assert recall["k"] == 100 and recall["queries"] == 150 and recall["tune_queries"] == 150
    assert recall["target_met"] and recall["at_100"] >= 0.95

    index = ItemIndex.load(bundle)
    _, measure = sample_query_rows(N_USERS, 150, 11)
    queries = users[measure]
    assert _independent_recall(index, items, queries, 100) == pytest.approx(
        recall["at_100"], abs=1e-4
    )
    assert _independent_recall(index, items, queries, 10) == pytest.approx(
        recall["at_10"], abs=1e-4
    )
    # and the tuned setting is the first rung of its ladder that met the target
    assert section["search_params"] == index.settings.to_manifest()
    met = [t for t in section["tuning"] if t["recall_at_100"] >= 0.95]
    filtered = ("cluster_factor", "cluster_rows", "filter_nprobe_power")
    unfiltered = {k: v for k, v in section["search_params"].items() if k not in filtered}
    assert unfiltered in [
        {k: v for k, v in t.items() if k not in ("recall_at_100", "batch_seconds")} for t in met
    ]
    # the filtered knob: the first rung of its ladder whose recall met the target everywhere
    steps = section["filter_tuning"]
    assert steps and all(
        {k: v for k, v in t.items() if k not in ("strategy", "recall_at_100")}
        == {**unfiltered, **{k: t[k] for k in filtered if k in t}}
        for t in steps
    )
    first_met = next((t for t in steps if min(t["recall_at_100"].values()) >= 0.95), steps[-1])
    assert section["search_params"] == {
        k: v for k, v in first_met.items() if k in section["search_params"]
    }


def test_index_section_records_build_facts(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = vectors
    bundle = write_vectors_bundle(tmp_path, items, users)
    section = build_index(bundle, BuildOptions(kind="hnsw", sample_queries=100))
    assert section["kind"] == "hnsw" and section["factory"] == "HNSW32,Flat"
    assert section["transform"] == "mips-l2" and section["index_dim"] == DIM + 2
    assert section["max_norm"] == pytest.approx(float(np.linalg.norm(items, axis=1).max()))
    assert section["build_params"] == {"M": 32, "efConstruction": 40, "entry_points": 55}
    assert set(section["search_params"]) <= {
        "efSearch",
        "k_factor",
        "entry_probe",
        "cluster_factor",
        "cluster_rows",
    }
    assert (
        section["search_params"]["cluster_factor"] == section["filter_tuning"][-1]["cluster_factor"]
    )
    rows = section["entry_rows"]  # landmark entry points: unique item rows
    assert 1 <= len(rows) <= 55 and rows == sorted(set(rows)) and 0 <= rows[0] <= rows[-1] < N_ITEMS
    assert section["build_seconds"] > 0 and section["latency_ms"]["p50"] > 0
    assert section["faiss_version"] == faiss.__version__
    manifest = b.read_manifest(bundle)
    entry = manifest.files[b.INDEX]
    assert entry.bytes == section["index_bytes"] == (bundle / b.INDEX).stat().st_size
    assert entry.sha256 == b.sha256_of(bundle / b.INDEX)
    # HNSW's item clusters: listed, checksummed, every item row once
    clusters = b.load_arrays(bundle, manifest, b.ITEM_CLUSTERS)
    assert np.array_equal(np.sort(clusters["rows"]), np.arange(N_ITEMS))
    assert clusters["centroids"].shape[1] == section["index_dim"]
    # the trainer's files and metadata are untouched
    built = {b.INDEX, b.ITEM_CLUSTERS}
    assert {n: e for n, e in manifest.files.items() if n not in built} == {
        n: b.file_entry(bundle / n) for n in b.TRAINER_FILES_V1
    }
    assert manifest.trainer == {"source": "tests.index_data"}
    assert not [p.name for p in bundle.iterdir() if p.name.startswith(".")]


def test_a_rebuild_as_ivf_drops_the_clusters_and_tunes_its_probe_power(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    """IVF answers filters from its own lists: no item_clusters.npz (a stale one from an
    earlier HNSW build is removed), and the tuned nprobe power is recorded and loaded."""
    bundle = write_vectors_bundle(tmp_path, *vectors)
    build_index(bundle, BuildOptions(kind="hnsw", sample_queries=50, latency_queries=5))
    assert (bundle / b.ITEM_CLUSTERS).exists()
    section = build_index(bundle, BuildOptions(kind="ivf-flat", sample_queries=50))
    assert not (bundle / b.ITEM_CLUSTERS).exists()
    assert b.ITEM_CLUSTERS not in b.read_manifest(bundle).files
    power = section["search_params"]["filter_nprobe_power"]
    assert power == section["filter_tuning"][-1]["filter_nprobe_power"]
    assert all(t["strategy"] == "selector" for t in section["filter_tuning"])
    loaded = ItemIndex.load(bundle)
    assert loaded.clusters is None and loaded.settings.filter_nprobe_power == power


def test_auto_is_flat_for_small_catalogs_and_measured_for_large(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fi.resolve_kind("auto", fi.AUTO_FLAT_MAX_ITEMS) == "flat"
    with pytest.raises(ValueError, match="unknown index kind"):
        fi.resolve_kind("lsh", 10)
    monkeypatch.setattr(fi, "AUTO_FLAT_MAX_ITEMS", 1000)  # make 3000 items "large"
    bundle = write_vectors_bundle(tmp_path, *vectors)
    section = build_index(bundle, BuildOptions(sample_queries=100, latency_queries=20))
    candidates = section["auto"]["candidates"]
    assert [c["kind"] for c in candidates] == ["ivf-flat", "hnsw"]
    met = [c for c in candidates if c["target_met"]]
    assert met and section["kind"] == min(met, key=lambda c: c["latency_ms_p50"])["kind"]
    assert ItemIndex.load(bundle).kind == section["kind"]


def test_mips_transform_preserves_the_inner_product_order(
    vectors: tuple[np.ndarray, np.ndarray],
) -> None:
    items, users = vectors
    spec = fi.make_spec("hnsw", N_ITEMS, DIM + 1)
    x, max_norm = fi.to_index_space(items, spec)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), max_norm, rtol=1e-5)
    q = fi.pad_queries(users[:20], spec.index_dim)
    l2 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    ip = users[:20] @ items.T
    np.testing.assert_allclose(l2, (q**2).sum(1)[:, None] + max_norm**2 - 2 * ip, atol=1e-3)


def test_pq_pads_to_a_multiple_of_its_subquantizers() -> None:
    spec = fi.make_spec("ivf-pq", 100_000, 65)
    assert spec.factory == "IVF1024,PQ33x8" and spec.index_dim == 66
    spec = fi.make_spec("ivf-pq", 100_000, 65, pq_m=16)
    assert spec.index_dim == 80


def test_mmap_load_maps_the_index_file_shared(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    bundle = write_vectors_bundle(tmp_path, *vectors)
    build_index(bundle, BuildOptions(kind="hnsw", sample_queries=50))
    index = ItemIndex.load(bundle)
    maps = Path("/proc/self/maps").read_text().splitlines()
    mapped = [m for m in maps if m.endswith(str((bundle / b.INDEX).resolve()))]
    assert mapped and all(m.split()[1] == "r--s" for m in mapped)
    # the item vectors are a plain read-only view of a map: no memmap subclass on the hot path
    assert type(index.items) is np.ndarray and isinstance(index.items.base, np.memmap)
    assert not index.items.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        index.items[0, 0] = 1.0


def _damage(bundle: Path, name: str, how: str) -> None:
    path = bundle / name
    if how == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "how", "message"),
    [
        (b.ITEM_VECTORS, "missing", "missing"),
        (b.ITEM_VECTORS, "flipped", "sha256"),
        (b.USER_VECTORS, "flipped", "sha256"),
    ],
)
def test_build_refuses_a_damaged_bundle(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray], name: str, how: str, message: str
) -> None:
    bundle = write_vectors_bundle(tmp_path, *vectors)
    _damage(bundle, name, how)
    with pytest.raises(b.BundleError, match=message):
        build_index(bundle, BuildOptions(kind="flat"))
    assert not (bundle / b.INDEX).exists()
    assert b.read_manifest(bundle).index is None


@pytest.mark.parametrize("which", ["items", "users"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_build_refuses_nan_or_inf_rows(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray], which: str, bad: float
) -> None:
    items, users = (v.copy() for v in vectors)
    (items if which == "items" else users)[7, 3] = bad
    bundle = write_vectors_bundle(tmp_path, items, users)
    with pytest.raises(b.BundleError, match=r"1 row\(s\) with NaN/Inf \(first: row 7\)"):
        build_index(bundle, BuildOptions(kind="flat"))
    assert not (bundle / b.INDEX).exists()


def test_build_refuses_vectors_of_the_wrong_width(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = vectors
    bundle = write_vectors_bundle(tmp_path, items, users[:, :-1])
    with pytest.raises(b.BundleError, match=r"user_vectors\.npy has shape \(400, 16\)"):
        build_index(bundle, BuildOptions(kind="flat"))


def test_bad_options_are_refused(tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray]) -> None:
    bundle = write_vectors_bundle(tmp_path, *vectors)
    with pytest.raises(ValueError, match="target recall"):
        build_index(bundle, BuildOptions(target_recall=1.5))
    with pytest.raises(ValueError, match="nlist"):
        build_index(bundle, BuildOptions(kind="ivf-flat", nlist=N_ITEMS + 1))


def test_unreachable_target_is_recorded_not_hidden(tmp_path: Path) -> None:
    bundle = write_vectors_bundle(tmp_path, *clustered(1000, 100, DIM, seed=1))
    opts = BuildOptions(kind="ivf-pq", pq_m=1, nlist=4, recall_k=10, target_recall=1.0)
    section = build_index(bundle, opts)
    assert section["recall"]["target_met"] is False
    assert section["recall"]["at_10"] < 1.0


def _forge_index(bundle: Path, index: object) -> None:
    """Replace index.faiss with ``index`` and re-sign it in the manifest."""
    faiss.write_index(index, str(bundle / b.INDEX))
    manifest = b.read_manifest(bundle)
    files = {**manifest.files, b.INDEX: b.file_entry(bundle / b.INDEX)}
    forged = b.Manifest.model_validate({**manifest.model_dump(), "files": files})
    b.write_json_atomic(bundle / b.MANIFEST, forged.model_dump_json())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda items: faiss.IndexFlatIP(items.shape[1] + 3), "width"),
        (lambda items: _flat_of(items[:-1]), "holds 2999 vectors"),
        (lambda items: None, "cannot be read"),
    ],
)
def test_load_refuses_an_index_that_does_not_match(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray], make: object, message: str
) -> None:
    items, users = vectors
    bundle = write_vectors_bundle(tmp_path, items, users)
    build_index(bundle, BuildOptions(kind="flat", sample_queries=20))
    index = make(items)  # type: ignore[operator]
    if index is None:
        (bundle / b.INDEX).write_bytes(b"not a faiss index")
        manifest = b.read_manifest(bundle)
        files = {**manifest.files, b.INDEX: b.file_entry(bundle / b.INDEX)}
        forged = b.Manifest.model_validate({**manifest.model_dump(), "files": files})
        b.write_json_atomic(bundle / b.MANIFEST, forged.model_dump_json())
    else:
        _forge_index(bundle, index)
    with pytest.raises(b.BundleError, match=message):
        ItemIndex.load(bundle)


def _flat_of(items: np.ndarray) -> object:
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return index


def test_load_refuses_a_bundle_without_index(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    bundle = write_vectors_bundle(tmp_path, *vectors)
    with pytest.raises(b.BundleError, match="no index"):
        ItemIndex.load(bundle)


def test_filtered_recall_is_recorded_and_equals_an_independent_computation(
    tmp_path: Path, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    """A bundle without attributes: seeded random masks of ~50/10/1/0.1% selectivity; the
    recorded recall@10/@100 of each equals a float64 numpy oracle over the same masks."""
    items, users = vectors
    bundle = write_vectors_bundle(tmp_path, items, users)
    opts = BuildOptions(kind="hnsw", sample_queries=100, latency_queries=40, seed=3)
    section = build_index(bundle, opts)
    filtered = section["filtered"]
    assert [f["selectivity"] for f in filtered] == [0.5, 0.1, 0.01, 0.001]
    assert b.read_manifest(bundle).index["filtered"] == filtered  # type: ignore[index]
    cases = choose_filters(None, N_ITEMS, 3)
    index = ItemIndex.load(bundle)
    _, measure = sample_query_rows(N_USERS, 100, 3)
    queries = users[measure][:40]
    for row, case in zip(filtered, cases, strict=True):
        assert row["filter"] == "random" and row["queries"] == 40
        assert row["allowed_items"] == int(case.mask.sum())
        assert row["share"] == pytest.approx(row["selectivity"], rel=0.5)
        assert row["p50_ms"] > 0
        assert set(row["strategy"].split("+")) <= set(STRATEGIES)
        k = min(100, row["allowed_items"])
        scores = queries.astype(np.float64) @ items.astype(np.float64).T
        scores[:, ~case.mask] = -np.inf
        exact = np.argsort(-scores, axis=1, kind="stable")
        _, found = index.search(queries, k, allowed=case.mask)
        for at, key in ((k, "recall_at_100"), (min(10, k), "recall_at_10")):
            want = np.mean(
                [
                    np.intersect1d(f[:at], e[:at]).size / at
                    for f, e in zip(found, exact, strict=True)
                ]
            )
            assert row[key] == pytest.approx(want, abs=1e-4)
            assert row[key] >= 0.9
    assert filtered[-1]["strategy"] == "scan"  # 3 allowed items: scanned exactly


def test_filters_come_from_the_bundles_attributes_where_one_fits() -> None:
    """A categorical value, a multi value or a numeric quantile with about the target share
    is used as the filter; a selectivity no attribute fits gets a random mask."""
    n = 10_000
    rng = np.random.default_rng(0)
    country = np.where(np.arange(n) % 2 == 0, "de", np.where(np.arange(n) % 10 == 1, "fr", "it"))
    tags = np.where(np.arange(n) % 100 == 7, "rare|x", "x")
    year = rng.uniform(1900, 2000, n).astype(str)
    attributes = ItemAttributes.from_raw({"country": country, "tags": tags, "year": year}, n)
    cases = {c.selectivity: c for c in choose_filters(attributes, n, seed=0)}
    assert set(cases) == {0.5, 0.1, 0.01, 0.001}
    for s, case in cases.items():
        share = case.mask.mean()
        assert 1 / 1.5 <= share / s <= 1.5
        if case.source != "random":
            name, condition = next(iter(case.source.items()))  # type: ignore[union-attr]
            op, operand = next(iter(condition.items()))
            np.testing.assert_array_equal(case.mask, attributes.mask(name, op, operand))
    assert cases[0.01].source == {"tags": {"any": ["rare"]}}
    assert cases[0.5].source in (
        {"country": {"any": ["de"]}},
        {"year": {"gte": pytest.approx(1950, abs=5)}},
    )
    # 0.1: "fr" is exactly 10% (or the year quantile); 0.001: the year quantile ~1999.9
    assert cases[0.1].source != "random" and cases[0.001].source != "random"
    bare = choose_filters(None, n, seed=0)
    assert [c.source for c in bare] == ["random"] * 4
