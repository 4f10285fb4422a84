"""Peak RSS of ``recall serve`` under one long string id (issue 15 §1).

Builds a 1,000-item bundle with string ids, serves it (one worker, a real subprocess),
then sends ``POST /v1/items/vectors`` with one ``--long-bytes`` id plus ``--short`` short
ids, and reports the server's peak RSS (``VmHWM``) before and after, and the status code.

    .venv/bin/python -m bench.long_id_rss [--long-bytes 100000] [--short 9999]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import httpx
import numpy as np

from bench._bundles import tower_arrays
from bench._results import finish, header
from bench._server import serve
from recall.index import bundle as b
from recall.index.build import BuildOptions, build_index
from recall.index.publish import publish

logger = logging.getLogger("bench.long_id_rss")

N_ITEMS, N_USERS, DIM = 1000, 50, 16


def _string_id_bundle(root: Path) -> Path:
    """A published flat-index bundle whose item and user ids are strings ("m0000"...)."""
    rng = np.random.default_rng(0)
    items = rng.standard_normal((N_ITEMS, DIM + 1)).astype(np.float32)
    users = rng.standard_normal((N_USERS, DIM + 1)).astype(np.float32)
    arrays: dict[str, np.ndarray | dict[str, np.ndarray]] = {
        b.ITEM_IDS: np.array([f"m{i:04d}" for i in range(N_ITEMS)]),
        b.ITEM_VECTORS: items,
        b.USER_IDS: np.array([f"u{i:04d}" for i in range(N_USERS)]),
        b.USER_VECTORS: users,
        b.USER_SEEN: {
            "indptr": np.arange(N_USERS + 1, dtype=np.int64),
            "indices": np.arange(N_USERS, dtype=np.int32),
        },
        b.USER_TOWER: tower_arrays(N_ITEMS, DIM, rng),
        b.ITEM_POPULARITY: np.ones(N_ITEMS, dtype=np.int64),
    }
    bundle = b.write_bundle(
        root,
        b.new_bundle_id(),
        arrays,
        dim=DIM + 1,
        counts=b.Counts(users=N_USERS, items=N_ITEMS, interactions=N_USERS),
        trainer={"source": "bench/long_id_rss.py"},
    )
    build_index(bundle, BuildOptions(kind="flat", sample_queries=20, latency_queries=5))
    publish(bundle)
    return bundle


def _peak_rss_mb(pid: int) -> float:
    """``VmHWM`` (peak resident set) of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-bytes", type=int, default=100_000, help="length of the long id")
    parser.add_argument("--short", type=int, default=9_999, help="short ids beside it")
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args()
    head = header("long_id_rss")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="recall-long-id-") as tmp:
        root = Path(tmp) / "root"
        _string_id_bundle(root)
        ids = ["x" * args.long_bytes, *(f"m{i % N_ITEMS:04d}" for i in range(args.short))]
        body = json.dumps({"ids": ids})
        env = {
            "RECALL_MAX_BODY_BYTES": str(len(body) + 4096),
            "RECALL_MAX_VECTOR_IDS": str(len(ids)),
            "RECALL_STATE_URL": f"sqlite:///{tmp}/state.sqlite",
        }
        with serve(root, workers=1, env=env) as server:
            before = _peak_rss_mb(server.process.pid)
            response = httpx.post(
                f"{server.url}/v1/items/vectors",
                content=body,
                headers={"content-type": "application/json"},
                timeout=300,
            )
            after = _peak_rss_mb(server.process.pid)
    result = {
        **head,
        "long_id_bytes": args.long_bytes,
        "short_ids": args.short,
        "status": response.status_code,
        "peak_rss_mb_before": round(before, 1),
        "peak_rss_mb_after": round(after, 1),
        "answer": response.text[:200],
    }
    finish(args.out, result)


if __name__ == "__main__":
    main()
