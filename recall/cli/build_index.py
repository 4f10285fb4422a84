"""``recall build-index``: build, tune and measure a bundle's FAISS index (then publish)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from recall.cli.command import Subcommands, add_command
from recall.cli.publish import add_root_flags, publish_bundle

logger = logging.getLogger("recall")

# The index kinds, spelled out here so the parser needs no faiss import
# (tests/index/test_publish.py checks they match recall.index.faiss_index.KIND_CHOICES).
KIND_CHOICES = ("auto", "flat", "hnsw", "ivf-flat", "ivf-sq8", "ivf-pq")


def add_parser(sub: Subcommands) -> None:
    bi = add_command(sub, "build-index", run, "build, tune and measure the FAISS index of a bundle")
    bi.add_argument("bundle", type=Path, help="ROOT/<bundle-id>")
    bi.add_argument(
        "--kind", default="auto", choices=KIND_CHOICES, help="index kind (auto: by catalog size)"
    )
    bi.add_argument("--target-recall", type=float, default=0.95, help="recall@k to reach")
    bi.add_argument("--recall-k", type=int, default=100, help="k of the recall target")
    bi.add_argument("--sample-queries", type=int, default=1000, help="user vectors per sample")
    bi.add_argument("--seed", type=int, default=0, help="seed of the query sample")
    bi.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node")
    bi.add_argument("--ef-construction", type=int, default=40, help="HNSW build beam")
    bi.add_argument("--nlist", type=int, help="IVF lists (default ~4 sqrt(n))")
    bi.add_argument("--pq-m", type=int, help="PQ sub-quantizers (default (dim+1)/2)")
    bi.add_argument("--publish", action="store_true", help="then make it CURRENT")
    add_root_flags(bi)


def run(args: argparse.Namespace) -> int:
    from recall.cli.users import user_sink
    from recall.index.build import BuildOptions, build_index

    options = BuildOptions(
        kind=args.kind,
        target_recall=args.target_recall,
        recall_k=args.recall_k,
        sample_queries=args.sample_queries,
        seed=args.seed,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        nlist=args.nlist,
        pq_m=args.pq_m,
    )
    if args.publish and _is_current(args.bundle, args.root):  # a re-run after the publish
        logger.info(
            "%s is already CURRENT: not rebuilt (published bundles are immutable)", args.bundle
        )
    else:
        build_index(args.bundle, options)
    if args.publish:
        with user_sink(args) as users:
            code = publish_bundle(args.bundle, args.root, keep=args.keep, users=users)
        if code != 0:
            return code
    sys.stdout.write(f"{args.bundle}\n")
    return 0


def _is_current(bundle: Path, root: str | None) -> bool:
    from recall.index.bundle import BundleError
    from recall.index.roots import open_root

    bundle = Path(os.path.abspath(bundle))
    try:
        return open_root(root or str(bundle.parent)).current_id() == bundle.name
    except BundleError:  # a CURRENT that names no bundle: publishing repairs it
        return False
