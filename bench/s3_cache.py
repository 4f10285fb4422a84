"""Bundles from an S3 root: upload, download + verify into a replica's cache, and the time
from CURRENT changing to two replicas serving the new bundle.

Against moto's S3 emulator (``moto_server``, a separate process on loopback): these are
the client's costs (hashing, writing, verifying) plus an emulator's, not a real store's
network (docs/object-store.md says what that leaves out).

1. A small bundle is published to ``s3://recall-test/recall`` (tests/moto_server.py's
   emulator); two ``recall serve`` replicas (each with its own ``RECALL_CACHE_DIR``,
   polling every ``--poll`` s) serve it.
2. A ``--items`` bundle (flat index, dim 64 + 1) is published (upload MB/s); then the
   time from that publish's return until both replicas' ``/readyz`` name it.
3. A fresh cache downloads it (MB/s) and verifies it (``verify_bundle``, MB/s).

    .venv/bin/python -m bench.s3_cache [--items 1000000] [--out bench/results/s3_cache.json]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench._bundles import BenchBundle, ensure_bundle
from bench._results import finish, header
from bench._server import serve
from recall.index import bundle as b
from recall.index.roots import S3Location, S3Root
from recall.index.verify import verify_bundle
from recall.service.bundle_cache import S3CachedSource
from tests.moto_server import BUCKET, moto_server, s3_environment

logger = logging.getLogger("bench.s3_cache")

ROOT = f"s3://{BUCKET}/recall"


def _bytes(bundle: Path) -> int:
    return sum(entry.bytes for entry in b.read_manifest(bundle).files.values())


def _ready_id(url: str) -> str | None:
    response = httpx.get(f"{url}/readyz", timeout=5)
    return str(response.json()["bundle_id"]) if response.status_code == 200 else None


def _wait_for(urls: list[str], bundle_id: str, timeout_s: float) -> float:
    """Seconds until every url's /readyz names ``bundle_id``."""
    started = time.perf_counter()
    waiting = set(urls)
    while waiting:
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"{sorted(waiting)} not on {bundle_id} after {timeout_s} s")
        waiting = {u for u in waiting if _ready_id(u) != bundle_id}
        time.sleep(0.01)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="items of the large bundle")
    parser.add_argument("--users", type=int, default=10_000, help="users of the large bundle")
    parser.add_argument("--poll", type=float, default=1.0, help="replicas' CURRENT poll (s)")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-bundles"))
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("httpx", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    head = header("s3_cache")
    small = ensure_bundle(args.cache, BenchBundle(10_000, 1_000, "flat"))
    large = ensure_bundle(args.cache, BenchBundle(args.items, args.users, "flat"))
    size_mb = _bytes(large) / 1e6
    with tempfile.TemporaryDirectory(prefix="recall-s3-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        moto = stack.enter_context(moto_server(work / "moto.log"))
        stack.enter_context(s3_environment(moto))  # this process's S3Root
        env = moto.env()
        root = S3Root(S3Location.parse(ROOT))
        root.publish(small, keep=5)
        replicas = []
        for i in range(2):
            replica_env = {
                **env,
                "RECALL_CACHE_DIR": str(work / f"cache-{i}"),
                "RECALL_RELOAD_INTERVAL_S": str(args.poll),
                "RECALL_STATE_URL": f"sqlite:///{work}/state-{i}.sqlite",
            }
            server = stack.enter_context(serve(ROOT, workers=1, env=replica_env))
            replicas.append(server.url)
        _wait_for(replicas, small.name, 120)

        t = time.perf_counter()
        root.publish(large, keep=5)
        upload_s = time.perf_counter() - t
        both_s = _wait_for(replicas, large.name, 600)

        source = S3CachedSource(S3Root(root.location), work / "fresh-cache")
        t = time.perf_counter()
        path = source.fetch(large.name)
        download_s = time.perf_counter() - t
        t = time.perf_counter()
        verify_bundle(path)
        verify_s = time.perf_counter() - t
    result = {
        **head,
        "store": "moto_server (S3 emulator) on loopback, in memory",
        "bundle": {"items": args.items, "users": args.users, "index": "flat", "mb": round(size_mb)},
        "upload_s": round(upload_s, 2),
        "upload_mb_per_s": round(size_mb / upload_s, 1),
        "download_s": round(download_s, 2),
        "download_mb_per_s": round(size_mb / download_s, 1),
        "verify_s": round(verify_s, 2),
        "verify_mb_per_s": round(size_mb / verify_s, 1),
        "download_and_verify_mb_per_s": round(size_mb / (download_s + verify_s), 1),
        "poll_interval_s": args.poll,
        "current_to_both_replicas_s": round(both_s, 2),
    }
    table = (
        f"| {size_mb:.0f} MB bundle | upload {result['upload_mb_per_s']} MB/s | download "
        f"{result['download_mb_per_s']} MB/s | verify {result['verify_mb_per_s']} MB/s | "
        f"CURRENT -> both replicas {both_s:.2f} s (poll {args.poll} s) |"
    )
    finish(args.out, result, table)


if __name__ == "__main__":
    main()
