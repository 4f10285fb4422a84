"""The user tower's serving cost: one user's folded vector from a 50-item window, in numpy.

:meth:`recall.index.tower.UserTower.encode` for one history of ``--window`` items with
features, on one BLAS thread, for the mean and the attention tower at the default
TrainConfig shapes over a MovieLens-100K-sized catalog (1,682 items, 19 genres, up to 6
per item, gender / occupation / zip prefix / age features). The weights are random: the
cost does not depend on their values. The two towers are timed in alternation, so a noisy
machine slows both alike. Prints a table and writes JSON (machine, date).

    .venv/bin/python bench/tower_speed.py --out bench/results/tower_speed.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._results import finish, header  # noqa: E402
from recall.index.attention import PREFIX, weight_shapes  # noqa: E402
from recall.index.tower import (  # noqa: E402
    SPEC_KEY,
    CategoricalFeature,
    NumericFeature,
    TowerSpec,
    UserTower,
)
from recall.trainer.config import TrainConfig  # noqa: E402

logger = logging.getLogger("bench.tower_speed")
N_ITEMS, N_GENRES, GENRES_PER_ITEM = 1682, 19, 6


def ml100k_shaped_tower(tower: str, rng: np.random.Generator) -> UserTower:
    """A tower of the default config's shapes over an ML-100K-sized catalog, random weights."""
    config = TrainConfig(tower=tower)  # type: ignore[arg-type]
    cat = config.categorical_dim
    spec = TowerSpec(
        n_items=N_ITEMS,
        item_dim=config.item_dim,
        genre_vocab=[f"g{j}" for j in range(N_GENRES)],
        genre_dim=config.genre_dim,
        max_genres_per_item=GENRES_PER_ITEM,
        categorical=[
            CategoricalFeature(name="gender", vocabulary=["F", "M"], dim=cat),
            CategoricalFeature(name="occupation", vocabulary=[f"o{j}" for j in range(21)], dim=cat),
            CategoricalFeature(name="zip", vocabulary=[f"{j:03d}" for j in range(300)], dim=cat),
        ],
        numeric=[NumericFeature(name="age", mean=34.0, std=12.0)],
        hidden=list(config.hidden),
        history_length=config.history_length,
        tower=config.tower,
        attention_heads=config.attention_heads,
    )

    def normal(*shape: int) -> np.ndarray:
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)

    arrays: dict[str, np.ndarray] = {
        SPEC_KEY: np.asarray(spec.model_dump_json()),
        "item_embedding": normal(N_ITEMS, spec.item_dim),
        "genre_embedding": normal(N_GENRES + 1, spec.genre_dim),
        "item_genres": rng.integers(0, N_GENRES + 1, (N_ITEMS, GENRES_PER_ITEM)).astype(np.int32),
    }
    for j, c in enumerate(spec.categorical):
        arrays[f"categorical.{j}"] = normal(len(c.vocabulary) + 1, c.dim)
    width = spec.input_width
    for j, out in enumerate(spec.hidden):
        arrays[f"layers.{j}.weight"], arrays[f"layers.{j}.bias"] = normal(out, width), normal(out)
        width = out
    if tower == "attention":
        for name, shape in weight_shapes(spec.history_length, spec.item_dim).items():
            gain = name.startswith("norm") and name.endswith(".weight")  # LayerNorm scale ~ 1
            arrays[PREFIX + name] = normal(*shape) + np.float32(gain)
    return UserTower.from_arrays(arrays)


def measure(towers: dict[str, UserTower], window: int, calls: int) -> dict[str, dict[str, float]]:
    """p50 / p99 / mean milliseconds of one ``encode`` call per tower, interleaved."""
    rng = np.random.default_rng(1)
    history = rng.integers(0, N_ITEMS, window)
    features = {"gender": "F", "occupation": "o3", "zip": "021", "age": 29}
    seconds: dict[str, list[float]] = {name: [] for name in towers}
    with threadpool_limits(limits=1):
        for tower in towers.values():  # warm-up
            for _ in range(50):
                tower.encode([history], [features])
        for _ in range(calls):
            for name, tower in towers.items():
                started = time.perf_counter()
                tower.encode([history], [features])
                seconds[name].append(time.perf_counter() - started)
    out = {}
    for name, values in seconds.items():
        ms = np.asarray(values) * 1e3
        out[name] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=50, help="items in the history")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per tower")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/tower_speed.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    head = header("tower_speed")
    rng = np.random.default_rng(0)
    towers = {kind: ml100k_shaped_tower(kind, rng) for kind in ("mean", "attention")}
    results = measure(towers, args.window, args.calls)
    lines = [
        f"one user, {args.window}-item window, 1 thread, {args.calls} calls",
        f"{'tower':<11}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}",
    ]
    for name, r in results.items():
        lines.append(f"{name:<11}{r['p50_ms']:>9.4f}{r['p99_ms']:>9.4f}{r['mean_ms']:>9.4f}")
    report = {
        **head,
        "window": args.window,
        "calls": args.calls,
        "n_items": N_ITEMS,
        "results": results,
    }
    finish(args.out, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
