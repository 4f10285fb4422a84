"""The user tower in numpy: a history (and optional features) -> a bias-folded user vector.

The trainer's PyTorch model and this module compute the same function; the trainer saves
the weights and a :class:`TowerSpec` into ``user_tower.npz`` and the service runs this
forward pass online for users the bundle does not know. Inputs, in order, concatenated:

- mean of the input embeddings of the last ``history_length`` items watched,
- (``attention`` tower only) the readout of a self-attention block over those items
  (:mod:`recall.index.attention`),
- mean of the genre embeddings of those items' genres (when the catalog has genres),
- one embedding per categorical user feature (row 0 = unknown / out of vocabulary),
- standardized numeric user features (0 when missing),
- example age ``(x, x^2, sqrt x)``, which is 0 at serving time.

Then a ReLU tower; its last layer is the user vector ``u``. The folded vector is
``[u, 1]`` so that ``dot([u, 1], [W_i, b_i])`` is the model's logit for item ``i``.

Feature values from outside (the service) go through :meth:`TowerSpec.check_features`
first, the strict contract: only features the spec knows; a categorical value is a string
(one not in the vocabulary is legitimate and takes the out-of-vocabulary row 0), a numeric
value is an int or float (not bool) within float32; ``None`` means missing. Anything else
raises :class:`FeatureError`. :meth:`TowerSpec.encode_features` itself stays lenient for
the trainer's own values (NaN = missing), but never lets a value overflow float32, and
:meth:`UserTower.encode` raises :class:`FeatureError` rather than return a non-finite vector.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Literal, Self, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recall.index.attention import AttentionReadout

AGE_FEATURES = 3
SPEC_KEY = "spec"
TowerKind = Literal["mean", "attention"]
"""``mean``: the history enters the tower as the mean of its item embeddings (the YouTube
tower); ``attention``: as that mean and the readout of a self-attention block over the
window (:mod:`recall.index.attention`)."""
TOWER_KINDS: tuple[str, ...] = get_args(TowerKind)

FeatureValue = str | int | float | None
FLOAT32_MAX = float(np.finfo(np.float32).max)
_NAME_LIMIT = 64


class FeatureError(ValueError):
    """Feature values the tower cannot take: an unknown name, a value of the wrong type, a
    number beyond float32, or features that drive the user vector out of float32 range."""


class CategoricalFeature(BaseModel):
    """A categorical user feature; value ``vocabulary[j]`` maps to embedding row ``j + 1``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    vocabulary: list[str]
    dim: int = Field(ge=1)


class NumericFeature(BaseModel):
    """A numeric user feature, fed to the tower as ``(x - mean) / std`` (0 when missing)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    mean: float
    std: float = Field(gt=0)


class TowerSpec(BaseModel):
    """Shapes and vocabularies of the user tower."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_items: int = Field(ge=1)
    item_dim: int = Field(ge=1)
    genre_vocab: list[str] = Field(default_factory=list)
    genre_dim: int = Field(ge=1, default=16)
    max_genres_per_item: int = Field(ge=0, default=0)
    categorical: list[CategoricalFeature] = Field(default_factory=list)
    numeric: list[NumericFeature] = Field(default_factory=list)
    hidden: list[int] = Field(min_length=1, description="layer widths; the last is dim(u)")
    history_length: int = Field(ge=1, default=50)
    tower: TowerKind = "mean"
    attention_heads: int = Field(ge=1, default=2, description="attention tower only")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Self:
        if self.tower == "attention" and self.item_dim % self.attention_heads:
            raise ValueError(
                f"item_dim {self.item_dim} is not a multiple of attention_heads "
                f"{self.attention_heads}"
            )
        return self

    @property
    def has_genres(self) -> bool:
        return bool(self.genre_vocab) and self.max_genres_per_item > 0

    @property
    def input_width(self) -> int:
        return (
            self.item_dim * (2 if self.tower == "attention" else 1)
            + (self.genre_dim if self.has_genres else 0)
            + sum(c.dim for c in self.categorical)
            + len(self.numeric)
            + AGE_FEATURES
        )

    @property
    def dim(self) -> int:
        """Width of the user vector ``u`` (the folded vector has one more)."""
        return self.hidden[-1]

    def encode_features(
        self, features: Mapping[str, FeatureValue] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw feature values -> (categorical rows (n_cat,) int64, numeric (n_num,) float32).

        Lenient (the trainer's convention): unknown names are ignored; missing, unknown or
        NaN values become the out-of-vocabulary row 0 / the mean (0 after standardization).
        A numeric value that does not fit float32 once standardized raises
        :class:`FeatureError`.
        """
        features = features or {}
        rows = np.zeros(len(self.categorical), dtype=np.int64)
        for j, cat in enumerate(self.categorical):
            value = features.get(cat.name)
            if value is not None:
                rows[j] = _vocab_row(cat.vocabulary, _category_key(value))
        numeric = np.zeros(len(self.numeric), dtype=np.float32)
        for j, num in enumerate(self.numeric):
            x = _as_float(features.get(num.name))
            if x is not None and not math.isnan(x):
                numeric[j] = _standardize(num, x)
        return rows, numeric

    def describe_features(self) -> str:
        """The features the tower knows, for error messages: ``"age (numeric), ..."``."""
        known = [f"{c.name} (categorical)" for c in self.categorical]
        known += [f"{n.name} (numeric)" for n in self.numeric]
        return ", ".join(known) if known else "none"

    def check_features(self, features: Mapping[str, object] | None) -> None:
        """Raise :class:`FeatureError` unless every entry of ``features`` is a feature this
        tower knows with a value of its kind (see the module docstring); ``None`` = missing."""
        if not features:
            return
        kinds = {c.name: "categorical" for c in self.categorical}
        numeric = {n.name: n for n in self.numeric}
        kinds.update(dict.fromkeys(numeric, "numeric"))
        unknown = [name for name in features if name not in kinds]
        if unknown:
            names = ", ".join(_clip(name) for name in unknown[:5])
            raise FeatureError(
                f"unknown feature(s) {names}; this model knows: {self.describe_features()}"
            )
        for name, value in features.items():
            if value is None:
                continue
            if kinds[name] == "categorical":
                if not isinstance(value, str):
                    raise FeatureError(
                        f"feature {_clip(name)} is categorical: give a string (one its "
                        f"vocabulary does not know counts as unknown), got "
                        f"{type(value).__name__}; this model knows: {self.describe_features()}"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FeatureError(
                    f"feature {_clip(name)} is numeric: give a number, got "
                    f"{type(value).__name__}; this model knows: {self.describe_features()}"
                )
            x = _as_float(value)
            if x is None or math.isnan(x):
                raise FeatureError(f"feature {_clip(name)} must be a number, not NaN")
            if not abs(x) <= FLOAT32_MAX:
                raise FeatureError(
                    f"feature {_clip(name)} is {x:.3g}, beyond float32 (|x| <= {FLOAT32_MAX:.3g})"
                )
            _standardize(numeric[name], x)


def _clip(name: str) -> str:
    """A client-given name for a message: repr, cut to a short prefix."""
    text = repr(name)
    return text if len(text) <= _NAME_LIMIT else text[:_NAME_LIMIT] + "…"


def _standardize(feature: NumericFeature, x: float) -> float:
    """``(x - mean) / std``; raise :class:`FeatureError` if ``x`` or that is not finite
    in float32 (infinite ``x`` included: only NaN means missing)."""
    z = (x - feature.mean) / feature.std
    if not (abs(x) <= FLOAT32_MAX and abs(z) <= FLOAT32_MAX):
        raise FeatureError(f"feature {_clip(feature.name)} is {x:.3g}, out of float32 range")
    return z


def _category_key(value: str | int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _vocab_row(vocabulary: list[str], value: str) -> int:
    try:
        return vocabulary.index(value) + 1
    except ValueError:
        return 0


def _as_float(value: FeatureValue) -> float | None:
    """A feature value as a float (NaN and inf kept); None if missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) > 2**1023:  # float() would overflow
        return math.inf if value > 0 else -math.inf
    try:
        return float(value)
    except ValueError:
        return None


def age_features(age: np.ndarray) -> np.ndarray:
    """Example age ``x`` in [0, 1], shape (B,) -> ``(x, x^2, sqrt x)``, shape (B, 3) float32."""
    x = np.asarray(age, dtype=np.float32)
    out = np.empty((len(x), AGE_FEATURES), dtype=np.float32)
    out[:, 0] = x
    np.multiply(x, x, out=out[:, 1])
    np.sqrt(x, out=out[:, 2])
    return out


def window_rows(
    item_embedding: np.ndarray, genre_embedding: np.ndarray | None, item_genres: np.ndarray
) -> np.ndarray:
    """What the tower pools over a window, one row per item, so that pooling is one gather
    and one masked matmul: ``[E_i, 1]``, then with genres ``[sum of the item's genre
    embeddings, their count]``; (n_items, item_dim + 1 [+ genre_dim + 1]) float32.

    item_embedding (n_items, item_dim); genre_embedding (n_genres + 1, genre_dim), row 0
    padding; item_genres (n_items, G) genre rows, 0 = none."""
    n_items, item_dim = item_embedding.shape
    genre_width = 0 if genre_embedding is None else genre_embedding.shape[1] + 1
    rows = np.ones((n_items, item_dim + 1 + genre_width), dtype=np.float32)
    rows[:, :item_dim] = item_embedding
    if genre_embedding is not None:
        table = genre_embedding.astype(np.float64)
        table[0] = 0.0  # padding
        sums = np.zeros((n_items, genre_width - 1))
        for column in item_genres.T:  # a genre slot at a time: (n_items, genre_dim) temporaries
            sums += table[column]
        rows[:, item_dim + 1 : -1] = sums
        rows[:, -1] = (item_genres > 0).sum(axis=1)
    return rows


def pad_histories(histories: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last ``length`` item rows of each history, right-aligned.

    Returns ``(rows (B, length) int64, mask (B, length) bool)``; padded slots hold row 0
    and mask False.
    """
    rows = np.zeros((len(histories), length), dtype=np.int64)
    mask = np.zeros((len(histories), length), dtype=bool)
    for b, history in enumerate(histories):
        tail = np.asarray(history, dtype=np.int64)[-length:]
        if tail.size:
            rows[b, length - tail.size :] = tail
            mask[b, length - tail.size :] = True
    return rows, mask


class UserTower:
    """Numpy forward pass of the trained user tower (float32 throughout)."""

    def __init__(self, spec: TowerSpec, weights: Mapping[str, np.ndarray]) -> None:
        self.spec = spec
        item_embedding = _matrix(weights, "item_embedding", (spec.n_items, spec.item_dim))
        self.genre_embedding: np.ndarray | None = None
        item_genres = np.zeros((spec.n_items, 0), dtype=np.int64)
        if spec.has_genres:
            n_genre_rows = len(spec.genre_vocab) + 1
            self.genre_embedding = _matrix(
                weights, "genre_embedding", (n_genre_rows, spec.genre_dim)
            )
            item_genres = np.asarray(weights["item_genres"])
            if item_genres.shape != (spec.n_items, spec.max_genres_per_item):
                raise ValueError(f"item_genres has shape {item_genres.shape}")
            if item_genres.size and (item_genres.min() < 0 or item_genres.max() >= n_genre_rows):
                raise ValueError("item_genres holds genre rows out of range")
        self.item_rows = window_rows(item_embedding, self.genre_embedding, item_genres)
        self.item_embedding = self.item_rows[:, : spec.item_dim]  # a view
        self.attention: AttentionReadout | None = None
        if spec.tower == "attention":
            self.attention = AttentionReadout(
                weights, length=spec.history_length, dim=spec.item_dim, heads=spec.attention_heads
            )
        self.categorical = [
            _matrix(weights, f"categorical.{j}", (len(c.vocabulary) + 1, c.dim))
            for j, c in enumerate(spec.categorical)
        ]
        self.category_rows = np.array([len(t) for t in self.categorical], dtype=np.int64)
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        width = spec.input_width
        for j, out in enumerate(spec.hidden):
            w = _matrix(weights, f"layers.{j}.weight", (out, width))
            b = np.asarray(weights[f"layers.{j}.bias"], dtype=np.float32).reshape(out)
            _check_finite(f"layers.{j}.bias", b[None, :])
            self.layers.append((np.ascontiguousarray(w.T), b))
            width = out

    def norm_bound(self, numeric_norm: float = 0.0) -> float:
        """An upper bound (float64) of the norm of the folded vector ``[u, 1]`` for any
        history of item rows, any categorical rows and standardized numeric features of norm
        at most ``numeric_norm``, example age 0: each pooled part is at most its table's
        largest row norm, and a ReLU layer maps norm ``x`` to at most ``|W|_F x + |b|``."""
        parts = [_max_row_norm(self.item_embedding), numeric_norm]
        if self.attention is not None:
            parts.append(self.attention.norm_bound())
        if self.genre_embedding is not None:
            parts.append(_max_row_norm(self.genre_embedding))
        parts.extend(_max_row_norm(table) for table in self.categorical)
        x = math.sqrt(sum(p * p for p in parts))
        for w_t, b in self.layers:
            x = float(np.linalg.norm(w_t.astype(np.float64))) * x + float(
                np.linalg.norm(b.astype(np.float64))
            )
        return math.sqrt(x * x + 1.0)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> UserTower:
        """Build from the contents of ``user_tower.npz`` (weights + ``spec`` JSON); a spec
        without ``tower`` (bundles from before tower kinds) is the mean tower."""
        raw = json.loads(str(arrays[SPEC_KEY]))
        kind = raw.get("tower", "mean") if isinstance(raw, dict) else "mean"
        if kind not in TOWER_KINDS:  # a bundle from a newer trainer, say
            raise ValueError(
                f"unknown tower kind {kind!r}; this version runs {', '.join(TOWER_KINDS)}"
            )
        return cls(TowerSpec.model_validate(raw), arrays)

    def forward(
        self,
        history: np.ndarray,
        mask: np.ndarray,
        categorical: np.ndarray,
        numeric: np.ndarray,
        age: np.ndarray,
    ) -> np.ndarray:
        """User vectors ``u``, shape (B, dim) float32.

        history: (B, L) int64 item rows; mask: (B, L) bool; categorical: (B, n_cat) int64
        rows; numeric: (B, n_num) float32 standardized; age: (B,) example age in [0, 1].
        """
        d = self.spec.item_dim
        rows = self.item_rows[history]  # (B, L, width of window_rows)
        sums = (mask.astype(np.float32)[:, None, :] @ rows)[:, 0]  # over the window's items
        parts = [sums[:, :d] / np.maximum(sums[:, d : d + 1], 1.0)]
        if self.attention is not None:
            parts.append(self.attention(rows[..., :d], mask))
        if self.genre_embedding is not None:
            parts.append(sums[:, d + 1 : -1] / np.maximum(sums[:, -1:], 1.0))
        parts.extend(table[categorical[:, j]] for j, table in enumerate(self.categorical))
        parts.append(np.asarray(numeric, dtype=np.float32).reshape(len(history), -1))
        parts.append(age_features(age))
        h = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
        for w_t, b in self.layers:
            h = np.maximum(h @ w_t + b, 0.0)
        return h

    def encode(
        self,
        histories: Sequence[np.ndarray],
        features: Sequence[Mapping[str, FeatureValue] | None] | None = None,
    ) -> np.ndarray:
        """Folded serving vectors ``[u, 1]`` for item-row histories, shape (B, dim + 1).

        Each history is a 1-D array of item rows in time order (oldest first); only the
        last ``history_length`` count. Raw feature values go through
        :meth:`TowerSpec.encode_features`; then as :meth:`encode_encoded`. Raises
        :class:`FeatureError` if a feature value leaves float32, or the features drive a
        vector out of float32 range (it is never NaN or Inf).
        """
        n = len(histories)
        if features is not None and len(features) != n:
            raise ValueError("features must have one entry per history")
        categorical = np.zeros((n, len(self.spec.categorical)), dtype=np.int64)
        numeric = np.zeros((n, len(self.spec.numeric)), dtype=np.float32)
        for row, values in enumerate(features or ()):
            categorical[row], numeric[row] = self.spec.encode_features(values)
        return self.encode_encoded(histories, categorical, numeric)

    def encode_encoded(
        self, histories: Sequence[np.ndarray], categorical: np.ndarray, numeric: np.ndarray
    ) -> np.ndarray:
        """Folded serving vectors ``[u, 1]`` (B, dim + 1) from already-encoded features.

        histories: B 1-D arrays of item rows, oldest first (the last ``history_length``
        count); categorical: (B, n_categorical) int64 embedding rows (0 = unknown);
        numeric: (B, n_numeric) float32, standardized (0 = missing) -- the arrays of
        :class:`~recall.index.history.UserHistory`. Example age is 0, as at serving time. Raises
        :class:`ValueError` for item or category rows out of range or wrong shapes, and
        :class:`FeatureError` if the result would not be finite.
        """
        n = len(histories)
        categorical = np.asarray(categorical)
        numeric = np.asarray(numeric, dtype=np.float32)
        if (
            categorical.shape != (n, len(self.spec.categorical))
            or categorical.dtype.kind not in "iu"
        ):
            raise ValueError(
                f"categorical must be integer rows of shape {(n, len(self.spec.categorical))}, "
                f"got {categorical.dtype} {categorical.shape}"
            )
        if numeric.shape != (n, len(self.spec.numeric)):
            raise ValueError(
                f"numeric must have shape {(n, len(self.spec.numeric))}, got {numeric.shape}"
            )
        bad = ((categorical < 0) | (categorical >= self.category_rows)).any(axis=0)
        if bad.any():  # one test for every feature: each reduction costs a microsecond
            j = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"categorical rows of feature {j} out of range [0, {self.category_rows[j]})"
            )
        for history in histories:
            h = np.asarray(history)
            if h.size and (h.min() < 0 or h.max() >= self.spec.n_items):
                raise ValueError("history holds item rows out of range")
        if n == 0:
            return np.zeros((0, self.spec.dim + 1), dtype=np.float32)
        history, mask = pad_histories(histories, self.spec.history_length)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            u = self.forward(
                history, mask, categorical.astype(np.int64), numeric, np.zeros(n, np.float32)
            )
        if not np.isfinite(u).all():
            raise FeatureError("the features drive the user vector out of float32 range")
        return fold_user(u)


def fold_user(u: np.ndarray) -> np.ndarray:
    """``[u, 1]``: (B, d) -> (B, d + 1) float32."""
    folded = np.ones((len(u), u.shape[1] + 1), dtype=np.float32)
    folded[:, :-1] = u
    return folded


def _matrix(weights: Mapping[str, np.ndarray], key: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        array = np.asarray(weights[key], dtype=np.float32)
    except KeyError:
        raise ValueError(f"user tower weights lack {key!r}") from None
    if array.shape != shape:
        raise ValueError(f"user tower weight {key!r} has shape {array.shape}, expected {shape}")
    _check_finite(key, array)
    return array


def _check_finite(key: str, array: np.ndarray) -> None:
    """Raise ValueError if the weight ``array`` (rows, cols) float32 holds NaN/Inf."""
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"user tower weight {key!r} has {int(bad.sum())} row(s) with NaN/Inf "
            f"(first: row {first})"
        )


def _max_row_norm(array: np.ndarray) -> float:
    """Largest L2 norm of the rows of ``array`` (n, d), float64; 0 for no rows."""
    a = np.asarray(array, dtype=np.float64)
    return float(np.sqrt(np.einsum("ij,ij->i", a, a).max(initial=0.0)))
