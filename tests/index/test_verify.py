"""One verification: every bundle ``recall publish`` refuses, the service refuses, and the
other way round (both call :func:`recall.index.verify.verify_bundle`).

Each corruption below is applied to a copy of a complete bundle (``published_root``;
re-signed in the manifest where the point is that checksums alone do not catch it), then
handed to both callers: :func:`recall.index.publish.publish` and
:meth:`recall.service.recaller.ServingBundle.load`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from recall.index import bundle as b
from recall.index import faiss_index as fi
from recall.index.build import BuildOptions, build_index
from recall.index.clusters import build_clusters
from recall.index.current import CURRENT, read_current
from recall.index.publish import publish
from recall.index.tower import SPEC_KEY, UserTower
from recall.index.verify import MAX_METADATA_DEPTH, verify_bundle
from recall.service.recaller import ServingBundle
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from tests.index_data import tower_arrays, write_dataset_bundle

OTHER_ID = "20260101T000000Z-bbbbbb"


def copy_bundle(published_root: Path, root: Path, bundle_id: str | None = None) -> Path:
    """A copy of the published test bundle under ``root`` (as ``bundle_id`` when given:
    the manifest id is rewritten to match; files and checksums are unchanged)."""
    source = published_root / (published_root / CURRENT).read_text().strip()
    target = root / (bundle_id or source.name)
    shutil.copytree(source, target)
    if bundle_id is not None:
        edit_manifest(target, id=bundle_id)
    return target


def edit_manifest(bundle: Path, **changes: Any) -> None:
    manifest = b.read_manifest(bundle)
    forged = b.Manifest.model_validate({**manifest.model_dump(), **changes})
    b.write_json_atomic(bundle / b.MANIFEST, forged.model_dump_json())


def resign(bundle: Path, name: str, value: np.ndarray | dict[str, np.ndarray]) -> None:
    """Replace file ``name`` with ``value`` and record its new size and sha256."""
    (bundle / name).unlink()
    b.save_array(bundle / name, value)
    files = {**b.read_manifest(bundle).files, name: b.file_entry(bundle / name)}
    edit_manifest(bundle, files=files)


def _array(bundle: Path, name: str) -> np.ndarray:
    return np.array(np.load(bundle / name, allow_pickle=False))


def _arrays(bundle: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(bundle / name, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _set(name: str, edit: Callable[[np.ndarray], np.ndarray | None]) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        array = _array(bundle, name)
        resign(bundle, name, _or(edit(array), array))
        return bundle

    return damage


def _seen(edit: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        seen = _arrays(bundle, b.USER_SEEN)
        edit(seen)
        resign(bundle, b.USER_SEEN, seen)
        return bundle

    return damage


def _history(edit: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        history = _arrays(bundle, b.USER_HISTORY)
        edit(history)
        resign(bundle, b.USER_HISTORY, history)
        return bundle

    return damage


def _attributes(edit: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        attributes = _arrays(bundle, b.ITEM_ATTRIBUTES)
        edit(attributes)
        resign(bundle, b.ITEM_ATTRIBUTES, attributes)
        return bundle

    return damage


def _clusters(edit: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], Path]:
    """Give the bundle item clusters (as the builder does for HNSW), damaged by ``edit``."""

    def damage(bundle: Path) -> Path:
        index = faiss.read_index(str(bundle / b.INDEX))
        items = _array(bundle, b.ITEM_VECTORS)
        padded = np.zeros((items.shape[0], index.d), dtype=np.float32)
        padded[:, : items.shape[1]] = items
        arrays = build_clusters(padded, 4).to_arrays()
        edit(arrays)
        b.save_array(bundle / b.ITEM_CLUSTERS, arrays)
        files = b.read_manifest(bundle).files
        edit_manifest(
            bundle, files={**files, b.ITEM_CLUSTERS: b.file_entry(bundle / b.ITEM_CLUSTERS)}
        )
        return bundle

    return damage


def _schema(edit: Callable[[list[dict[str, str]]], None]) -> Callable[[Path], Path]:
    """Edit the manifest's item_attributes as JSON (past the model's own validation)."""

    def damage(bundle: Path) -> Path:
        path = bundle / b.MANIFEST
        manifest = json.loads(path.read_text())
        edit(manifest["item_attributes"])
        path.write_text(json.dumps(manifest))
        return bundle

    return damage


def _v1_with_attributes(bundle: Path) -> Path:
    """A version 1 manifest (no history, no trained_until) that lists item attributes."""
    path = bundle / b.MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["files"][b.USER_HISTORY]
    path.write_text(json.dumps({**manifest, "schema_version": 1, "trained_until": None}))
    return bundle


def _compressed(name: str) -> Callable[[Path], Path]:
    """The same arrays, written with np.savez_compressed (which cannot be memory-mapped)."""

    def damage(bundle: Path) -> Path:
        arrays = _arrays(bundle, name)
        with (bundle / name).open("wb") as f:
            np.savez_compressed(f, **arrays)
        edit_manifest(
            bundle, files={**b.read_manifest(bundle).files, name: b.file_entry(bundle / name)}
        )
        return bundle

    return damage


def _window_too_long(history: dict[str, np.ndarray]) -> None:
    """User 0's window gets items until it is one longer than the tower's history_length
    (50 in the test config), copies of its first item at its first timestamp."""
    indptr = history["indptr"]
    extra = 51 - int(indptr[1])
    for key in ("items", "timestamps"):
        history[key] = np.r_[np.repeat(history[key][:1], extra), history[key]]
    history["indptr"] = np.r_[0, indptr[1:] + extra]


def _out_of_time_order(history: dict[str, np.ndarray]) -> None:
    times = history["timestamps"]
    times[0], times[1] = times[1], times[0] - 1  # user 0: later first


def _later_than_trained_until(bundle: Path) -> Path:
    times = _arrays(bundle, b.USER_HISTORY)["timestamps"]
    edit_manifest(bundle, trained_until=float(times.max()) - 1)
    return bundle


def _unlisted(name: str) -> Callable[[Path], Path]:
    """Drop ``name`` from the manifest's files (editing manifest.json as text)."""

    def damage(bundle: Path) -> Path:
        path = bundle / b.MANIFEST
        manifest = json.loads(path.read_text())
        del manifest["files"][name]
        path.write_text(json.dumps(manifest))
        return bundle

    return damage


def _manifest_json(**changes: Any) -> Callable[[Path], Path]:
    """Edit manifest.json as text (past the model's own validation)."""

    def damage(bundle: Path) -> Path:
        path = bundle / b.MANIFEST
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        return bundle

    return damage


def _or(new: np.ndarray | None, old: np.ndarray) -> np.ndarray:
    return old if new is None else new


def _put(index: tuple[int, ...] | int, value: float) -> Callable[[np.ndarray], None]:
    def edit(array: np.ndarray) -> None:
        array[index] = value

    return edit


def _rename(bundle: Path) -> Path:
    return bundle.rename(bundle.with_name(OTHER_ID))


def _symlink_outside(bundle: Path) -> Path:
    outside = bundle.parent.parent / "outside"
    outside.mkdir()
    moved = bundle.rename(outside / bundle.name)
    bundle.symlink_to(moved, target_is_directory=True)
    return bundle


def _decreasing(seen: dict[str, np.ndarray]) -> None:
    indptr = seen["indptr"]
    i = int(np.flatnonzero(indptr[1:-1] > 0)[0]) + 1
    indptr[i] = indptr[i + 1] + 1  # up, then down again


def _end_short(seen: dict[str, np.ndarray]) -> None:
    seen["indptr"][-1] -= 1


def _wrong_tower(bundle: Path) -> Path:
    manifest = b.read_manifest(bundle)
    resign(bundle, b.USER_TOWER, tower_arrays(manifest.counts.items + 1, manifest.dim - 1))
    return bundle


def _tower_without_bias(bundle: Path) -> Path:
    arrays = _arrays(bundle, b.USER_TOWER)
    del arrays["layers.0.bias"]
    resign(bundle, b.USER_TOWER, arrays)
    return bundle


def _tower_bad_spec(bundle: Path) -> Path:
    arrays = _arrays(bundle, b.USER_TOWER)
    arrays[SPEC_KEY] = np.asarray(json.dumps({"n_items": 1}))
    resign(bundle, b.USER_TOWER, arrays)
    return bundle


def _tower_spec(**changes: object) -> Callable[[dict[str, np.ndarray]], None]:
    """Edit the tower's spec JSON: set ``changes``; a value None drops the key."""

    def edit(tower: dict[str, np.ndarray]) -> None:
        spec = json.loads(str(tower[SPEC_KEY]))
        for key, value in changes.items():
            if value is None:
                spec.pop(key, None)
            else:
                spec[key] = value
        tower[SPEC_KEY] = np.asarray(json.dumps(spec))

    return edit


def _short_index(bundle: Path) -> Path:
    items = _array(bundle, b.ITEM_VECTORS)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items[:-1])
    faiss.write_index(index, str(bundle / b.INDEX))
    edit_manifest(
        bundle, files={**b.read_manifest(bundle).files, b.INDEX: b.file_entry(bundle / b.INDEX)}
    )
    return bundle


def _write_index(bundle: Path, index: Any) -> None:
    faiss.write_index(index, str(bundle / b.INDEX))
    edit_manifest(
        bundle, files={**b.read_manifest(bundle).files, b.INDEX: b.file_entry(bundle / b.INDEX)}
    )


def _ivf_for_flat(bundle: Path) -> Path:
    """An IVF index of the manifest's width where the manifest says flat."""
    items = _array(bundle, b.ITEM_VECTORS)
    index = faiss.index_factory(items.shape[1], "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(items)
    index.add(items)
    _write_index(bundle, index)
    return bundle


def _id_map(bundle: Path) -> Path:
    """An IndexIDMap whose labels are n_items..2 n_items - 1 (no item row)."""
    items = _array(bundle, b.ITEM_VECTORS)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(items.shape[1]))
    index.add_with_ids(items, np.arange(len(items), 2 * len(items), dtype=np.int64))
    _write_index(bundle, index)
    return bundle


def _flat_l2(bundle: Path) -> Path:
    items = _array(bundle, b.ITEM_VECTORS)
    index = faiss.IndexFlatL2(items.shape[1])
    index.add(items)
    _write_index(bundle, index)
    return bundle


def _built(kind: str) -> Callable[[Path], Path]:
    """Rebuild the bundle's index as ``kind`` with the project's builder."""

    def damage(bundle: Path) -> Path:
        opts = BuildOptions(kind=kind, sample_queries=50, latency_queries=10, nlist=4)
        build_index(bundle, opts)
        return bundle

    return damage


def _search_params(kind: str, **params: object) -> Callable[[Path], Path]:
    """Build a ``kind`` index, then set its manifest's search parameters ``params``."""

    def damage(bundle: Path) -> Path:
        section = b.read_manifest(_built(kind)(bundle)).index
        assert section is not None
        edit_manifest(
            bundle, index={**section, "search_params": {**section["search_params"], **params}}
        )
        return bundle

    return damage


def _ivf_labels(shift: int) -> Callable[[Path], Path]:
    """An ivf-flat index (the builder's) refilled with labels ``row + shift``."""

    def damage(bundle: Path) -> Path:
        _built("ivf-flat")(bundle)
        index = faiss.read_index(str(bundle / b.INDEX))
        manifest = b.read_manifest(bundle)
        items = _array(bundle, b.ITEM_VECTORS)
        spec = fi.make_spec("ivf-flat", len(items), manifest.dim, nlist=4)
        padded, _ = fi.to_index_space(items, spec)
        index.reset()
        index.add_with_ids(padded, np.arange(len(items), dtype=np.int64) + shift)
        _write_index(bundle, index)
        return bundle

    return damage


def _tower(edit: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        tower = _arrays(bundle, b.USER_TOWER)
        edit(tower)
        resign(bundle, b.USER_TOWER, tower)
        return bundle

    return damage


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _trainer(**changes: Any) -> Callable[[Path], Path]:
    """Edit the manifest's trainer section as JSON text."""

    def damage(bundle: Path) -> Path:
        path = bundle / b.MANIFEST
        manifest = json.loads(path.read_text())
        manifest["trainer"].update(changes)
        path.write_text(json.dumps(manifest))
        return bundle

    return damage


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path.parent


def _flip(name: str) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        data = bytearray((bundle / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / name).write_bytes(bytes(data))
        return bundle

    return damage


def _truncate(name: str) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        (bundle / name).write_bytes((bundle / name).read_bytes()[:-8])
        return bundle

    return damage


def _unlink(name: str) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        (bundle / name).unlink()
        return bundle

    return damage


def _manifest(**changes: Any) -> Callable[[Path], Path]:
    def damage(bundle: Path) -> Path:
        edit_manifest(bundle, **changes)
        return bundle

    return damage


def _wider(bundle: Path) -> Path:
    edit_manifest(bundle, dim=b.read_manifest(bundle).dim + 1)
    return bundle


#: (name, damage(bundle) -> the path to hand to publish / the service, message regex)
CORRUPTIONS: list[tuple[str, Callable[[Path], Path], str]] = [
    # the service accepted these before
    (
        "user-vector-nan",
        _set(b.USER_VECTORS, _put((5, 0), np.nan)),
        r"user_vectors\.npy has 1 row\(s\) with NaN/Inf \(first: row 5\)",
    ),
    (
        "user-vector-inf",
        _set(b.USER_VECTORS, _put((9, 2), -np.inf)),
        r"user_vectors\.npy has 1 row\(s\) with NaN/Inf \(first: row 9\)",
    ),
    ("name-is-not-the-id", _rename, "directory name differs from manifest id"),
    ("symlink-out-of-root", _symlink_outside, "outside its root"),
    # publish accepted these before
    (
        "duplicate-item-ids",
        _set(b.ITEM_IDS, lambda a: np.r_[a[1], a[1:]]),
        r"item_ids\.npy: ids must be unique",
    ),
    (
        "duplicate-user-ids",
        _set(b.USER_IDS, lambda a: np.r_[a[1], a[1:]]),
        r"user_ids\.npy: ids must be unique",
    ),
    (
        "seen-item-row-too-large",
        _seen(lambda s: _put(0, 10**6)(s["indices"])),
        r"item rows out of range \[0, 300\)",
    ),
    (
        "seen-item-row-negative",
        _seen(lambda s: _put(-1, -1)(s["indices"])),
        r"item rows out of range",
    ),
    ("seen-indptr-decreasing", _seen(_decreasing), "indptr decreases"),
    (
        "seen-indptr-not-from-0",
        _seen(lambda s: _put(0, 1)(s["indptr"])),
        "indptr must run from 0 to",
    ),
    ("seen-indptr-wrong-end", _seen(_end_short), "indptr must run from 0 to"),
    (
        "seen-indptr-too-short",
        _seen(lambda s: s.update(indptr=s["indptr"][:-1])),
        "indptr has 400 entries, needs 401",
    ),
    (
        "seen-extra-array",
        _seen(lambda s: s.update(extra=s["indptr"])),
        "must hold exactly indptr and indices",
    ),
    ("tower-of-another-catalog", _wrong_tower, "the user tower .* does not match"),
    ("tower-without-a-weight", _tower_without_bias, "invalid user tower"),
    ("tower-spec-invalid", _tower_bad_spec, "invalid user tower"),
    (
        "tower-kind-unknown",
        _tower(_tower_spec(tower="transformer")),
        "invalid user tower: unknown tower kind 'transformer'; this version runs mean, attention",
    ),
    (
        "tower-attention-without-a-weight",
        _tower(lambda t: t.pop("attention.position.weight")),
        "invalid user tower: user tower weights lack 'attention.position.weight'",
    ),
    (
        "tower-attention-weight-of-another-shape",
        _tower(lambda t: t.update({"attention.key.weight": t["attention.key.weight"][:-1]})),
        r"invalid user tower: user tower weight 'attention.key.weight' has shape \(15, 16\), "
        r"expected \(16, 16\)",
    ),
    (
        "popularity-short",
        _set(b.ITEM_POPULARITY, lambda a: a[:-1]),
        r"item_popularity\.npy must be numbers of shape \(300,\)",
    ),
    (
        "popularity-nan",
        _set(b.ITEM_POPULARITY, lambda a: np.r_[np.nan, a[1:]]),
        "item_popularity.npy holds NaN/Inf",
    ),
    (
        "item-ids-short",
        _set(b.ITEM_IDS, lambda a: a[:-1]),
        r"item_ids\.npy has shape \(299,\), expected \(300,\)",
    ),
    # both refused these before (kept refused)
    (
        "item-vector-nan",
        _set(b.ITEM_VECTORS, _put((7, 1), np.nan)),
        r"item_vectors\.npy has 1 row\(s\) with NaN/Inf",
    ),
    (
        "user-vectors-float64",
        _set(b.USER_VECTORS, lambda a: a.astype(np.float64)),
        "user_vectors.npy must be float32",
    ),
    ("index-one-vector-short", _short_index, r"index\.faiss holds 299 vectors"),
    ("index-flipped", _flip(b.INDEX), r"index\.faiss fails its sha256"),
    ("seen-flipped", _flip(b.USER_SEEN), r"user_seen\.npz fails its sha256"),
    (
        "user-vectors-truncated",
        _truncate(b.USER_VECTORS),
        r"user_vectors\.npy has \d+ bytes, manifest says",
    ),
    ("tower-missing", _unlink(b.USER_TOWER), r"user_tower\.npz is missing"),
    ("manifest-missing", _unlink(b.MANIFEST), r"no manifest\.json"),
    ("no-index-section", _manifest(index=None), "no index"),
    # schema_version 2: user_history.npz and trained_until
    (
        "history-item-row-too-large",
        _history(lambda h: _put(-1, 300)(h["items"])),
        r"user_history\.npz: item rows out of range \[0, 300\)",
    ),
    (
        "history-item-row-negative",
        _history(lambda h: _put(0, -1)(h["items"])),
        r"user_history\.npz: item rows out of range",
    ),
    ("history-indptr-decreasing", _history(_decreasing), "indptr decreases"),
    ("history-indptr-wrong-end", _history(_end_short), "indptr must run from 0 to"),
    (
        "history-indptr-too-short",
        _history(lambda h: h.update(indptr=h["indptr"][:-1])),
        "indptr has 400 entries, needs 401",
    ),
    (
        "history-window-too-long",
        _history(_window_too_long),
        "a window holds 51 items, more than the tower's history_length 50",
    ),
    (
        "history-timestamps-short",
        _history(lambda h: h.update(timestamps=h["timestamps"][:-1])),
        r"timestamps has shape \(\d+,\), items \(\d+,\)",
    ),
    (
        "history-timestamp-nan",
        _history(lambda h: _put(3, np.nan)(h["timestamps"])),
        "timestamps hold NaN/Inf",
    ),
    (
        "history-out-of-time-order",
        _history(_out_of_time_order),
        "not in time order within a user's window",
    ),
    ("history-after-trained-until", _later_than_trained_until, "is after trained_until"),
    (
        "history-items-float",
        _history(lambda h: h.update(items=h["items"].astype(np.float32))),
        "items must be 1-D integers",
    ),
    (
        "history-category-beyond-vocabulary",
        _history(lambda h: _put((0, 0), 10**6)(h["categorical"])),
        r"categorical feature '\w+': rows out of \[0, \d+\)",
    ),
    (
        "history-category-negative",
        _history(lambda h: _put((5, 1), -1)(h["categorical"])),
        r"categorical feature '\w+': rows out of",
    ),
    (
        "history-categorical-a-column-short",
        _history(lambda h: h.update(categorical=h["categorical"][:, :-1])),
        r"categorical has shape \(400, \d\), needs \(400, \d\)",
    ),
    (
        "history-numeric-inf",
        _history(lambda h: _put((2, 0), np.inf)(h["numeric"])),
        r"numeric holds NaN/Inf",
    ),
    (
        "history-numeric-beyond-float32",
        _history(lambda h: h.update(numeric=np.full(h["numeric"].shape, 1e300))),
        r"numeric holds NaN/Inf \(in float32\)",
    ),
    (
        "history-users-short",
        _history(lambda h: h.update(numeric=h["numeric"][:-1])),
        r"numeric has shape \(399, \d\), needs \(400, \d\)",
    ),
    (
        "history-extra-array",
        _history(lambda h: h.update(extra=h["indptr"])),
        "must hold exactly indptr, items, timestamps, categorical, numeric",
    ),
    ("history-missing", _unlink(b.USER_HISTORY), r"user_history\.npz is missing"),
    (
        "history-compressed",
        _compressed(b.USER_HISTORY),
        r"indptr\.npy is not a stored \.npy member",
    ),
    ("history-flipped", _flip(b.USER_HISTORY), r"user_history\.npz fails its sha256"),
    (
        "v2-manifest-without-history",
        _unlisted(b.USER_HISTORY),
        "schema_version 2 needs trained_until and user_history.npz",
    ),
    (
        "v2-manifest-without-trained-until",
        _manifest_json(trained_until=None),
        "schema_version 2 needs trained_until and user_history.npz",
    ),
    (
        "v1-manifest-with-history",
        _manifest_json(schema_version=1),
        "schema_version 1 has neither trained_until nor user_history.npz",
    ),
    (
        "trained-until-infinite",
        _manifest_json(trained_until=float("inf")),
        "invalid manifest",
    ),
    ("dim-off-by-one", _wider, r"has shape \(\d+, \d+\), manifest says"),
    # item_attributes.npz and the manifest's item_attributes
    (
        "attributes-file-without-schema",
        _manifest_json(item_attributes=None),
        r"item_attributes\.npz without item_attributes in the manifest",
    ),
    (
        "attributes-schema-without-file",
        _unlisted(b.ITEM_ATTRIBUTES),
        r"item_attributes without item_attributes\.npz",
    ),
    (
        "attributes-in-v1",
        _v1_with_attributes,
        r"schema_version 1 has no item attributes \(item_attributes\.npz\)",
    ),
    (
        "attributes-unknown-kind",
        _schema(lambda s: s[0].update(kind="date")),
        "invalid manifest",
    ),
    (
        "attributes-schema-names-a-missing-column",
        _schema(lambda s: s.append({"name": "nope", "kind": "numeric"})),
        r"attribute 'nope' \(numeric\): missing nope\.values",
    ),
    (
        "attributes-name-twice",
        _schema(lambda s: s.append(dict(s[0]))),
        "appears twice",
    ),
    (
        "attributes-invalid-name",
        _schema(lambda s: s.append({"name": "a/b", "kind": "numeric"})),
        r"invalid attribute name 'a/b'",
    ),
    (
        "attributes-extra-array",
        _attributes(lambda a: a.update(extra=a["genres.indptr"])),
        "arrays not in the schema: extra",
    ),
    (
        "attributes-multi-code-out-of-range",
        _attributes(lambda a: _put(0, len(a["genres.vocabulary"]))(a["genres.codes"])),
        r"genres\.codes out of range \[0, \d+\)",
    ),
    (
        "attributes-multi-code-negative",
        _attributes(lambda a: _put(0, -1)(a["genres.codes"])),
        r"genres\.codes out of range",
    ),
    (
        "attributes-indptr-decreasing",
        _attributes(lambda a: _decreasing({"indptr": a["genres.indptr"]})),
        r"genres\.indptr decreases",
    ),
    (
        "attributes-indptr-wrong-end",
        _attributes(lambda a: _end_short({"indptr": a["genres.indptr"]})),
        r"genres\.indptr must run from 0 to",
    ),
    (
        "attributes-indptr-short",
        _attributes(lambda a: a.update({"genres.indptr": a["genres.indptr"][:-1]})),
        r"genres\.indptr must be int64 of shape \(301,\)",
    ),
    (
        "attributes-codes-int64",
        _attributes(lambda a: a.update({"genres.codes": a["genres.codes"].astype(np.int64)})),
        r"genres\.codes must be 1-D int32",
    ),
    (
        "attributes-vocabulary-not-unicode",
        _attributes(lambda a: a.update({"genres.vocabulary": np.arange(3)})),
        r"genres\.vocabulary must be 1-D unicode",
    ),
    (
        "attributes-vocabulary-unsorted",
        _attributes(lambda a: a.update({"genres.vocabulary": a["genres.vocabulary"][::-1]})),
        r"genres\.vocabulary is not sorted and unique",
    ),
    (
        "attributes-compressed",
        _compressed(b.ITEM_ATTRIBUTES),
        r"is not a stored \.npy member",
    ),
    ("attributes-flipped", _flip(b.ITEM_ATTRIBUTES), r"item_attributes\.npz fails its sha256"),
    ("attributes-missing", _unlink(b.ITEM_ATTRIBUTES), r"item_attributes\.npz is missing"),
    # issue 15: published, then refused by every replica, or served and then a 500
    ("index-ivf-where-flat", _ivf_for_flat, r"index\.faiss is a IndexIVFFlat, .* kind flat"),
    ("index-id-map", _id_map, r"index\.faiss is a IndexIDMap, .* kind flat"),
    ("index-flat-l2", _flat_l2, r"index\.faiss is a IndexFlatL2"),
    (
        "ivf-labels-beyond-the-items",
        _ivf_labels(1),
        r"index\.faiss labels items outside rows \[0, 300\)",
    ),
    ("ivf-labels-negative", _ivf_labels(-1), r"labels items outside rows \[0, 300\)"),
    ("hnsw-ef-search-2-40", _search_params("hnsw", efSearch=2**40), r"efSearch \d+ is above"),
    ("ivf-nprobe-beyond-nlist", _search_params("ivf-flat", nprobe=5), "nprobe 5 is above"),
    ("k-factor-absurd", _search_params("flat", k_factor=10**9), "k_factor 1000000000 is above"),
    (
        "tower-item-row-nan",
        _tower(lambda t: _put((7, 0), np.nan)(t["item_embedding"])),
        r"'item_embedding' has 1 row\(s\) with NaN/Inf \(first: row 7\)",
    ),
    (
        "tower-layer-inf",
        _tower(lambda t: _put((0, 3), np.inf)(t["layers.0.weight"])),
        r"'layers\.0\.weight' has 1 row\(s\) with NaN/Inf",
    ),
    (
        "tower-bias-nan",
        _tower(lambda t: _put(0, np.nan)(t["layers.0.bias"])),
        r"'layers\.0\.bias' has 1 row\(s\) with NaN/Inf",
    ),
    (
        "tower-item-row-huge",
        _tower(lambda t: _put((3, 0), 3e37)(t["item_embedding"])),
        r"user_tower\.npz: the tower's vectors may reach norm",
    ),
    (
        "user-vector-huge",
        _set(b.USER_VECTORS, _put((5, 0), 3e38)),
        r"user_vectors\.npy has 1 row\(s\) too large to score \(first: row 5",
    ),
    (
        "item-vector-huge",
        _set(b.ITEM_VECTORS, _put((7, 0), 1e20)),
        r"item_vectors\.npy has a row of norm 1e\+20",
    ),
    (
        "trainer-metrics-300-deep",
        _trainer(metrics=_nested(300)),
        rf"manifest\.json: nests deeper than {MAX_METADATA_DEPTH} levels at /trainer/metrics",
    ),
    (
        "trainer-metrics-2-70",
        _trainer(metrics={"hr@10": 2**70}),
        r"manifest\.json: the integer at /trainer/metrics/hr@10 does not fit 64 bits",
    ),
    (
        "trainer-lone-surrogate",
        _trainer(note="\ud800"),
        r"manifest\.json: the string at /trainer/note is not valid UTF-8",
    ),
    (
        "manifest-100000-deep",
        lambda bundle: _write_text(bundle / b.MANIFEST, "[" * 100_000 + "]" * 100_000),
        r"manifest\.json: invalid manifest: nested too deep",
    ),
    (
        "counts-interactions-2-70",
        _manifest_json(counts={"users": 400, "items": 300, "interactions": 2**70}),
        r"the integer at /counts/interactions does not fit 64 bits",
    ),
    (
        "clusters-row-twice",
        _clusters(lambda c: _put(0, int(c["rows"][1]))(c["rows"])),
        r"item_clusters\.npz: rows must hold each item row",
    ),
    (
        "clusters-offsets-short",
        _clusters(lambda c: c.update(offsets=c["offsets"][:-1])),
        r"item_clusters\.npz: offsets must be int64",
    ),
    (
        "clusters-wrong-width",
        _clusters(lambda c: c.update(centroids=np.c_[c["centroids"], c["centroids"][:, :1]])),
        r"item_clusters\.npz: covers 300 items of width \d+, the index 300 of width",
    ),
    (
        "clusters-flipped",
        lambda bundle: _flip(b.ITEM_CLUSTERS)(_clusters(lambda c: None)(bundle)),
        r"item_clusters\.npz fails its sha256",
    ),
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.mark.parametrize("caller", ["publish", "service"])
@pytest.mark.parametrize(
    ("damage", "message"),
    [pytest.param(d, m, id=name) for name, d, m in CORRUPTIONS],
)
def test_publish_and_the_service_refuse_the_same_bundles(
    published_root: Path,
    root: Path,
    caller: str,
    damage: Callable[[Path], Path],
    message: str,
) -> None:
    bundle = damage(copy_bundle(published_root, root))
    with pytest.raises(b.BundleError, match=message):
        if caller == "publish":
            publish(bundle)
        else:
            ServingBundle.load(bundle)
    assert read_current(root) is None


@pytest.mark.parametrize("caller", ["publish", "service"])
def test_an_intact_copy_passes_both(published_root: Path, root: Path, caller: str) -> None:
    bundle = copy_bundle(published_root, root, OTHER_ID)
    if caller == "publish":
        publish(bundle)
        assert read_current(root) == OTHER_ID
    else:
        assert ServingBundle.load(bundle).id == OTHER_ID


def test_a_tower_spec_from_before_tower_kinds_loads_as_the_mean_tower(
    synthetic: Dataset, small_config: TrainConfig, root: Path
) -> None:
    """Bundles written before the attention tower (a mean tower, no ``tower`` in the spec,
    no ``attention.*`` weights) load as the mean tower and recompute their user vectors."""
    mean = small_config.model_copy(update={"tower": "mean"})
    bundle = write_dataset_bundle(root, synthetic, mean, OTHER_ID)
    _tower(_tower_spec(tower=None, attention_heads=None))(bundle)
    arrays = _arrays(bundle, b.USER_TOWER)
    assert "tower" not in json.loads(str(arrays[SPEC_KEY]))
    assert not [name for name in arrays if name.startswith("attention.")]
    build_index(bundle, BuildOptions(kind="flat", sample_queries=20, latency_queries=2))
    verified = verify_bundle(bundle)
    tower, history = verified.tower, verified.history
    assert isinstance(tower, UserTower) and history is not None
    assert tower.spec.tower == "mean" and tower.attention is None
    windows = [history.window(u)[0] for u in range(4)]
    np.testing.assert_allclose(
        tower.encode_encoded(windows, history.categorical[:4], history.numeric[:4]),
        verified.user_vectors[:4],
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_symlink_inside_the_root_under_its_own_name_is_served(
    published_root: Path, root: Path
) -> None:
    """Only symlinks that leave the root are refused (the root itself may be a link)."""
    real = root / "real"
    real.mkdir()
    bundle = copy_bundle(published_root, real)
    link = root / "link"
    link.symlink_to(real, target_is_directory=True)
    verified = verify_bundle(link / bundle.name)
    assert verified.manifest.id == bundle.name
    publish(link / bundle.name)
    assert read_current(real) == bundle.name


def test_the_service_uses_the_verified_arrays(published_root: Path) -> None:
    path = published_root / (published_root / CURRENT).read_text().strip()
    loaded = ServingBundle.load(path)
    manifest = b.read_manifest(path)
    np.testing.assert_array_equal(loaded.user_vectors, b.load_array(path, manifest, b.USER_VECTORS))
    seen = b.load_arrays(path, manifest, b.USER_SEEN)
    np.testing.assert_array_equal(loaded.verified.seen_indptr, seen["indptr"])
    np.testing.assert_array_equal(loaded.verified.seen_items, seen["indices"])
    assert loaded.index.n_items == manifest.counts.items == len(loaded.item_ids)


def test_the_service_hashes_each_file_once(
    published_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    real = b.open_bundle_file  # verify_file's one way in (manifest.json is read, not hashed)

    def counting(bundle: Path, name: str) -> int:
        hashed.append(name)
        return real(bundle, name)

    monkeypatch.setattr(b, "open_bundle_file", counting)
    ServingBundle.load(published_root / (published_root / CURRENT).read_text().strip())
    hashed = [name for name in hashed if name != b.MANIFEST]
    assert sorted(hashed) == sorted(set(b.TRAINER_FILES) | {b.ITEM_ATTRIBUTES, b.INDEX})


def test_cli_publish_refuses_what_the_service_refuses(published_root: Path, root: Path) -> None:
    from recall import cli

    bundle = _set(b.USER_VECTORS, _put((0, 0), np.nan))(copy_bundle(published_root, root))
    assert cli.main(["publish", str(bundle)]) == 2
    assert not (root / CURRENT).exists()


def test_cli_build_index_publish_refuses_what_the_service_refuses(
    published_root: Path, root: Path
) -> None:
    """The build itself does not check ids; its --publish step does (duplicates here)."""
    from recall import cli

    bundle = _set(b.ITEM_IDS, lambda a: np.r_[a[1], a[1:]])(copy_bundle(published_root, root))
    assert cli.main(["build-index", str(bundle), "--kind", "flat", "--publish"]) == 2
    assert b.read_manifest(bundle).index is not None  # built, but not published
    assert not (root / CURRENT).exists()
    with pytest.raises(b.BundleError, match="ids must be unique"):
        ServingBundle.load(bundle)
