"""The one decision whether a bundle is servable, shared by ``recall publish`` and the service.

:func:`verify_bundle` checks everything a replica needs and returns what it loaded as a
:class:`VerifiedBundle`, so the service uses the very arrays that were checked (each file
is hashed and read once). Publishing calls it too: a bundle that publishes is a bundle
every replica loads, and the other way round. The rules:

- the directory resolves inside its parent (the bundle root): no symlink out of the root;
- its name is a bundle id and equals the manifest's ``id``; the manifest has an index;
- every file is listed and passes its size + sha256 check before it is parsed;
- ``item_ids``/``user_ids``: 1-D, int64 or unicode, the manifest's counts, no duplicates;
- ``user_vectors``/``item_vectors``: float32 (count, dim), every value finite;
- ``item_popularity``: 1-D (n_items,), finite;
- ``user_seen``: exactly ``indptr`` and ``indices``, integer; ``indptr`` (n_users + 1,)
  starts at 0, never decreases, ends at ``len(indices)``; indices are item rows in
  ``[0, n_items)``;
- ``user_tower``: a valid tower whose width is ``dim - 1`` and whose catalog is n_items;
  a bundle without one (``recall import``) has the manifest's ``history_rule`` instead,
  and its history encoder is :class:`recall.index.item_mean.ItemMean`;
- ``metric`` cosine: every user and item vector has unit norm (within 1e-3);
- ``user_history`` (schema_version 2, which has it and ``trained_until``; version 1 has
  neither): :meth:`recall.index.history.UserHistory.from_arrays` (shapes vs counts, CSR, windows
  no longer than the tower's ``history_length``, item rows in range, timestamps finite,
  in time order and <= ``trained_until``, features within the tower's vocabularies);
- ``item_attributes`` (optional, version 2 only): the file and the manifest's
  ``item_attributes`` schema come together or not at all;
  :meth:`recall.index.attributes.ItemAttributes.from_arrays` (keys as the schema says, dtypes and
  shapes vs n_items, sorted unique unicode vocabularies, codes in range, CSR indptr,
  numeric values float64 and never infinite, NaN = missing);
- ``index.faiss`` loads with the manifest's width and holds n_items vectors.

Any failure raises :class:`~recall.index.bundle.BundleError` naming the first problem. Its text
names paths: fit for logs and operators' terminals, not for HTTP clients.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from recall.index import bundle as b
from recall.index.attributes import ItemAttributes
from recall.index.current import BUNDLE_ID
from recall.index.history import UserHistory
from recall.index.ids import IdMap
from recall.index.item_mean import HistoryEncoder, ItemMean
from recall.index.search import ItemIndex, check_vectors, max_row_norm, row_norms
from recall.index.tower import FLOAT32_MAX, UserTower

logger = logging.getLogger(__name__)

__all__ = ["MAX_METADATA_DEPTH", "UsersElsewhere", "VerifiedBundle", "verify_bundle"]

#: How deep the manifest's JSON may nest (orjson, which the service answers with, refuses
#: more than 254 levels; the service nests manifest sections inside its answers).
MAX_METADATA_DEPTH = 64


@dataclass(frozen=True)
class VerifiedBundle:
    """Everything of one bundle, checked. Vectors, the index and the history are memory-mapped."""

    path: Path
    manifest: b.Manifest
    item_ids: IdMap
    user_ids: IdMap
    user_vectors: npt.NDArray[np.float32]  # (n_users, dim)
    seen_indptr: npt.NDArray[np.integer]  # (n_users + 1,)
    seen_items: npt.NDArray[np.integer]  # (nnz,) item rows
    tower: HistoryEncoder  # the user tower, or the item mean of a bundle without one
    popularity: npt.NDArray[np.float32]  # (n_items,) training interactions per item
    index: ItemIndex  # holds item_vectors (n_items, dim) float32 as ``index.items``
    history: UserHistory | None  # schema_version 2: each user's training window + features
    trained_until: float | None  # schema_version 2: unix seconds, the training data's last
    attributes: ItemAttributes | None = None  # schema_version 2, optional: items.csv columns


@dataclass(frozen=True)
class UsersElsewhere:
    """A bundle whose users are served from elsewhere (the state store, where publishing
    loaded them from this bundle, fully verified): their ids' ``kind`` (``"int"`` or
    ``"str"``) and the largest L2 norm of their numeric features (the tower's bound)."""

    kind: str
    numeric_norm: float


def verify_bundle(bundle: Path, users_elsewhere: UsersElsewhere | None = None) -> VerifiedBundle:
    """Verify the bundle directory ``bundle`` (whose parent is its root) and load it.

    With ``users_elsewhere`` the per-user files (``user_ids``, ``user_vectors``,
    ``user_seen``, ``user_history``) are neither opened nor mapped: the result holds no
    user (an empty id map of the given kind, history None) and the score-range check
    bounds the tower by the given numeric norm."""
    _check_location(bundle)
    manifest = b.read_manifest(bundle)
    if manifest.id != bundle.name:
        raise b.BundleError(f"{bundle}: directory name differs from manifest id {manifest.id!r}")
    if manifest.index is None or b.INDEX not in manifest.files:
        raise b.BundleError(f"{bundle}: no index (run `recall build-index {bundle}`)")
    n_items, n_users, dim = manifest.counts.items, manifest.counts.users, manifest.dim
    item_ids = _ids(bundle, manifest, b.ITEM_IDS, n_items)
    popularity = b.load_array(bundle, manifest, b.ITEM_POPULARITY)
    if popularity.ndim != 1 or popularity.shape[0] != n_items or popularity.dtype.kind not in "iuf":
        raise b.BundleError(
            f"{bundle}: {b.ITEM_POPULARITY} must be numbers of shape ({n_items},), "
            f"got {popularity.dtype} {popularity.shape}"
        )
    popularity = popularity.astype(np.float32)
    if not np.isfinite(popularity).all():
        raise b.BundleError(f"{bundle}: {b.ITEM_POPULARITY} holds NaN/Inf")
    if users_elsewhere is None:
        user_ids = _ids(bundle, manifest, b.USER_IDS, n_users)
        user_vectors = b.load_array(bundle, manifest, b.USER_VECTORS, mmap=True)
        check_vectors(bundle, b.USER_VECTORS, user_vectors, n_users, dim)
        indptr, indices = _seen(bundle, manifest, n_users, n_items)
    else:
        kind = np.int64 if users_elsewhere.kind == "int" else np.str_
        user_ids = IdMap(np.zeros(0, dtype=kind))
        user_vectors = np.zeros((0, dim), dtype=np.float32)
        indptr, indices = np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    index = ItemIndex.load(bundle, manifest)  # item vectors + index.faiss, all checked
    tower = _history_encoder(bundle, manifest, index.items)
    if users_elsewhere is None:
        history = _history(bundle, manifest, tower)
        numeric_norm = 0.0 if history is None else float(row_norms(history.numeric).max(initial=0))
    else:
        history, numeric_norm = None, users_elsewhere.numeric_norm
    attributes = _attributes(bundle, manifest)
    if manifest.metric == "cosine":
        _check_unit_norms(bundle, b.ITEM_VECTORS, index.items)
        _check_unit_norms(bundle, b.USER_VECTORS, user_vectors)
    _check_score_range(bundle, user_vectors, index.items, tower, numeric_norm)
    _check_metadata(bundle, manifest)
    return VerifiedBundle(
        path=bundle,
        manifest=manifest,
        item_ids=item_ids,
        user_ids=user_ids,
        user_vectors=user_vectors,
        seen_indptr=indptr,
        seen_items=indices,
        tower=tower,
        popularity=popularity,
        index=index,
        history=history,
        trained_until=manifest.trained_until,
        attributes=attributes,
    )


def _check_location(bundle: Path) -> None:
    if not BUNDLE_ID.fullmatch(bundle.name):
        raise b.BundleError(f"{bundle}: not a bundle directory name")
    root = Path(os.path.realpath(bundle.parent))
    resolved = Path(os.path.realpath(bundle))
    if resolved.parent != root:
        raise b.BundleError(f"{bundle}: resolves to {resolved}, outside its root {root}")
    if not resolved.is_dir():
        raise b.BundleError(f"{bundle}: no such bundle directory")


def _ids(bundle: Path, manifest: b.Manifest, name: str, rows: int) -> IdMap:
    ids = b.load_array(bundle, manifest, name)
    if ids.ndim != 1 or ids.shape[0] != rows:
        raise b.BundleError(f"{bundle}: {name} has shape {ids.shape}, expected ({rows},)")
    try:
        return IdMap(ids)
    except ValueError as e:
        raise b.BundleError(f"{bundle}: {name}: {e}") from None


def _seen(
    bundle: Path, manifest: b.Manifest, n_users: int, n_items: int
) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]]:
    """``user_seen.npz`` as CSR (indptr, indices), checked against the counts."""
    seen = b.load_arrays(bundle, manifest, b.USER_SEEN)
    where = f"{bundle}: {b.USER_SEEN}"
    if set(seen) != {"indptr", "indices"}:
        raise b.BundleError(f"{where} must hold exactly indptr and indices, has {sorted(seen)}")
    indptr, indices = seen["indptr"], seen["indices"]
    for key, array in (("indptr", indptr), ("indices", indices)):
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise b.BundleError(f"{where}: {key} must be 1-D integers, got {array.dtype}")
    if indptr.shape != (n_users + 1,):
        raise b.BundleError(f"{where}: indptr has {indptr.shape[0]} entries, needs {n_users + 1}")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0]:
        raise b.BundleError(
            f"{where}: indptr must run from 0 to {indices.shape[0]}, "
            f"runs from {int(indptr[0])} to {int(indptr[-1])}"
        )
    if (np.diff(indptr) < 0).any():
        raise b.BundleError(f"{where}: indptr decreases (not a CSR)")
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_items):
        raise b.BundleError(f"{where}: item rows out of range [0, {n_items})")
    return indptr, indices


def _history_encoder(
    bundle: Path, manifest: b.Manifest, item_vectors: npt.NDArray[np.float32]
) -> HistoryEncoder:
    """The one place that chooses how this bundle turns a history into a query vector:
    its trained user tower, or (a bundle without one) the rule of its ``history_rule``."""
    rule = manifest.history_rule
    if rule is None:
        return _tower(bundle, manifest)
    return ItemMean(item_vectors, rule.history_length, normalize=manifest.metric == "cosine")


def _check_unit_norms(bundle: Path, name: str, vectors: npt.NDArray[np.float32]) -> None:
    """A cosine bundle's vectors (n, dim) have unit norm (within 1e-3)."""
    off = np.abs(row_norms(vectors) - 1.0) > 1e-3
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise b.BundleError(
            f"{bundle}: the metric is cosine but {name} has {int(off.sum())} row(s) not of "
            f"unit norm (first: row {first})"
        )


def _tower(bundle: Path, manifest: b.Manifest) -> UserTower:
    arrays = b.load_arrays(bundle, manifest, b.USER_TOWER)
    try:
        tower = UserTower.from_arrays(arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise b.BundleError(f"{bundle}: invalid user tower: {e}") from None
    if tower.spec.dim + 1 != manifest.dim or tower.spec.n_items != manifest.counts.items:
        raise b.BundleError(
            f"{bundle}: the user tower (width {tower.spec.dim}, {tower.spec.n_items} items) "
            f"does not match the vectors (width {manifest.dim - 1}, "
            f"{manifest.counts.items} items)"
        )
    return tower


def _history(bundle: Path, manifest: b.Manifest, tower: HistoryEncoder) -> UserHistory | None:
    """``user_history.npz`` of a schema_version 2 bundle, checked; None for version 1."""
    if manifest.schema_version == 1:
        return None
    if manifest.trained_until is None:  # the manifest model refuses this already
        raise b.BundleError(f"{bundle}: schema_version 2 without trained_until")
    arrays = b.map_arrays(bundle, manifest, b.USER_HISTORY)  # shared pages, not copies
    try:
        return UserHistory.from_arrays(
            arrays,
            n_users=manifest.counts.users,
            n_items=manifest.counts.items,
            spec=tower.spec,
            trained_until=manifest.trained_until,
        )
    except ValueError as e:
        raise b.BundleError(f"{bundle}: {b.USER_HISTORY}: {e}") from None


def load_attributes(bundle: Path, manifest: b.Manifest) -> ItemAttributes | None:
    """A bundle's item attributes, checked (raise :class:`~recall.index.bundle.BundleError`);
    None when it has none. For the index builder's filtered recall."""
    return _attributes(bundle, manifest)


def _attributes(bundle: Path, manifest: b.Manifest) -> ItemAttributes | None:
    """``item_attributes.npz`` checked against the manifest's schema; None when neither."""
    has_file = b.ITEM_ATTRIBUTES in manifest.files
    if manifest.item_attributes is None and not has_file:
        return None
    if manifest.item_attributes is None:
        raise b.BundleError(
            f"{bundle}: {b.ITEM_ATTRIBUTES} without item_attributes in the manifest"
        )
    if not has_file:
        raise b.BundleError(f"{bundle}: the manifest's item_attributes without {b.ITEM_ATTRIBUTES}")
    arrays = b.map_arrays(bundle, manifest, b.ITEM_ATTRIBUTES)  # shared pages, not copies
    try:
        return ItemAttributes.from_arrays(arrays, manifest.item_attributes, manifest.counts.items)
    except ValueError as e:
        raise b.BundleError(f"{bundle}: {b.ITEM_ATTRIBUTES}: {e}") from None


def _check_score_range(
    bundle: Path,
    user_vectors: npt.NDArray[np.float32],
    item_vectors: npt.NDArray[np.float32],
    tower: HistoryEncoder,
    numeric_norm: float,
) -> None:
    """Every query vector the bundle itself makes scores within float32, by the service's
    rule (``|q| * max |item| <= FLOAT32_MAX / 2``, :func:`recall.service.recaller._check_range`,
    with the item norm taken as at least 1): each stored user vector, each item vector (the
    query of a similar-items search) and the largest vector the tower can compute from a
    history with numeric features of L2 norm up to ``numeric_norm``
    (:meth:`recall.index.tower.UserTower.norm_bound`)."""
    item_norm = max_row_norm(item_vectors)
    limit = FLOAT32_MAX / 2 / max(item_norm, 1.0)
    why = f"with item vectors of norm up to {item_norm:.3g}, a query's must stay <= {limit:.3g}"
    if item_norm > limit:
        raise b.BundleError(f"{bundle}: {b.ITEM_VECTORS} has a row of norm {item_norm:.3g}: {why}")
    norms = row_norms(user_vectors)
    too_large = ~(norms <= limit)
    if too_large.any():
        first = int(np.flatnonzero(too_large)[0])
        raise b.BundleError(
            f"{bundle}: {b.USER_VECTORS} has {int(too_large.sum())} row(s) too large to score "
            f"(first: row {first}, norm {norms[first]:.3g}): {why}"
        )
    bound = tower.norm_bound(numeric_norm)
    if not bound <= limit:
        raise b.BundleError(
            f"{bundle}: {b.USER_TOWER}: the tower's vectors may reach norm {bound:.3g} "
            f"(bounded by its weights' norms): {why}"
        )


def _check_metadata(bundle: Path, manifest: b.Manifest) -> None:
    """The manifest is JSON the service can write back (``GET /v1/model``, by orjson):
    nesting at most :data:`MAX_METADATA_DEPTH` levels, integers within 64 bits, strings
    valid UTF-8 (no lone surrogates)."""
    problem = _json_problem(manifest, "", 1)
    if problem is not None:
        raise b.BundleError(f"{bundle}: {b.MANIFEST}: {problem}")


def _json_problem(value: object, where: str, depth: int) -> str | None:
    """What orjson could not write about the JSON ``value`` at path ``where`` (None: fine)."""
    at = where or "the top level"
    if isinstance(value, BaseModel):  # the manifest's typed parts: their fields
        value = dict(value)
    if isinstance(value, dict | list):
        if depth > MAX_METADATA_DEPTH:
            return f"nests deeper than {MAX_METADATA_DEPTH} levels at {at}"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, inner in items:
            if isinstance(key, str) and not _utf8(key):
                return f"a key at {at} is not valid UTF-8"
            problem = _json_problem(inner, f"{where}/{key}", depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return f"the integer at {at} does not fit 64 bits"
    if isinstance(value, str) and not _utf8(value):
        return f"the string at {at} is not valid UTF-8"
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
