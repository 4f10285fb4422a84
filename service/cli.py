"""The ``recall`` command line: one entry point, one subcommand per job.

Each subcommand imports its implementation only when it runs, so the service's image
(no torch, no pyarrow) can run ``recall serve`` while ``recall train`` lives in the
trainer's image. Logging is configured here, once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from recall.index.bundle import BundleError

logger = logging.getLogger("recall")

Handler = Callable[[argparse.Namespace], int]

# The index kinds, spelled out here so the parser needs no faiss import
# (tests/test_index_cli.py checks they match index.faiss_index.KIND_CHOICES).
KIND_CHOICES = ("auto", "flat", "hnsw", "ivf-flat", "ivf-sq8", "ivf-pq")

# The flags of `recall serve` and the settings they set, for errors that name both.
SERVE_FLAGS = {"root": "--root", "host": "--host", "port": "--port", "workers": "--workers"}


def _synth(args: argparse.Namespace) -> int:
    from recall.trainer.synth import SynthConfig, write_synthetic

    summary = write_synthetic(
        args.out,
        SynthConfig(
            n_users=args.users,
            n_items=args.items,
            n_clusters=args.clusters,
            mean_history=args.mean_history,
            seed=args.seed,
        ),
    )
    logger.info(
        "wrote %d users, %d items, %d interactions to %s in %.1f s",
        summary.n_users,
        summary.n_items,
        summary.n_interactions,
        args.out,
        summary.seconds,
    )
    return 0


def _train_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "seed": args.seed,
        "device": args.device,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "loss": args.loss,
        "hidden": args.hidden,
        "max_examples_per_user": args.max_examples_per_user,
        "item_schema": args.item_schema,
        "user_schema": args.user_schema,
    }


def _train(args: argparse.Namespace) -> int:
    bundle = _run_training(
        args.data, args.out, args.config, _train_overrides(args), progress=not args.no_progress
    )
    sys.stdout.write(f"{bundle}\n")
    return 0


def _run_training(
    data: Path, out: Path, config_file: Path | None, overrides: dict[str, object], progress: bool
) -> Path:
    from recall.trainer.config import load_config
    from recall.trainer.data import load_dataset
    from recall.trainer.export import export_bundle
    from recall.trainer.train import train

    config = load_config(config_file, overrides)
    dataset = load_dataset(data, config.item_schema, config.user_schema)
    trained = train(dataset, config, progress=progress)
    return export_bundle(trained, dataset, config, out)


def _eval(args: argparse.Namespace) -> int:
    _run_eval(args.bundle, args.data, args.out, args.max_users)
    return 0


def _run_eval(bundle: Path, data: Path, out: Path | None, max_users: int | None) -> None:
    from recall.trainer.data import load_dataset
    from recall.trainer.evaluate import evaluate_bundle, format_table

    results = evaluate_bundle(bundle, load_dataset(data), max_users)
    sys.stdout.write(format_table(results) + "\n")
    if out is not None:  # strict JSON: a NaN raises instead of writing a bare NaN
        report = {"bundle": str(bundle), "data": str(data), "results": results}
        out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        logger.info("wrote %s", out)


def _build_index(args: argparse.Namespace) -> int:
    from recall.index.build import BuildOptions, build_index
    from recall.index.publish import publish

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
    if args.publish and _is_current(args.bundle):  # a re-run after the publish was done
        logger.info(
            "%s is already CURRENT: not rebuilt (published bundles are immutable)", args.bundle
        )
    else:
        build_index(args.bundle, options)
    if args.publish:
        publish(args.bundle, keep=args.keep)
    sys.stdout.write(f"{args.bundle}\n")
    return 0


def _is_current(bundle: Path) -> bool:
    from recall.index.current import inspect_current

    bundle = Path(os.path.abspath(bundle))
    return inspect_current(bundle.parent).bundle_id == bundle.name


def _publish(args: argparse.Namespace) -> int:
    from recall.index.publish import publish

    publish(args.bundle, keep=args.keep)
    return 0


def _events_export(args: argparse.Namespace) -> int:
    from recall.service.state import StateUnavailable
    from recall.service.state.export import DEFAULT_RETENTION_S, export_events

    retention = float(os.environ.get("RECALL_EVENTS_RETENTION_S") or DEFAULT_RETENTION_S)
    try:
        result = export_events(
            args.state_url,
            args.out,
            since=args.since,
            with_data=args.with_data,
            retention_s=retention,
        )
    except StateUnavailable as e:  # exit 3: the store, not the input (train-and-publish.sh)
        logger.error("recall events export: state store unavailable: %s", e)
        return 3
    print(result.path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    _run_server(args.root, args.host, args.port, args.workers)
    return 0


def _run_server(root: Path | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Run uvicorn with the app factory; flags override ``RECALL_*`` variables, which the
    workers read (they are separate processes when ``workers > 1``)."""
    import functools

    import uvicorn

    from recall.service.header_timeout import HeaderTimeoutProtocol
    from recall.service.metrics_dir import multiprocess_metrics_dir
    from recall.service.settings import load_settings

    for name, value in (("ROOT", root), ("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"RECALL_{name}"] = str(value)
    settings = load_settings(SERVE_FLAGS)  # fail fast, before any worker starts
    logger.info(
        "serving %s on http://%s:%d (API docs at /docs), %d worker(s)",
        settings.root,
        settings.host,
        settings.port,
        settings.workers,
    )
    with multiprocess_metrics_dir():  # /metrics sums all workers (service/metrics.py)
        uvicorn.run(
            "recall.service.app:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            # httptools with a bound on slow headers; uvicorn calls it as it calls a class
            http=functools.partial(  # type: ignore[arg-type]
                HeaderTimeoutProtocol, header_timeout_s=settings.header_timeout_s
            ),
            access_log=False,
            log_level="warning",
        )


def _demo(args: argparse.Namespace) -> int:
    from recall.index.build import build_index
    from recall.index.publish import publish
    from recall.trainer.synth import SynthConfig, write_synthetic

    work: Path = args.workdir
    data = work / "data"
    if not (data / "interactions.csv").exists():
        logger.info("demo: synthesizing %d users x %d items into %s", args.users, args.items, data)
        write_synthetic(data, SynthConfig(n_users=args.users, n_items=args.items, seed=args.seed))
    logger.info("demo: training on %s", data)
    bundle = _run_training(data, work / "bundles", None, {"seed": args.seed}, progress=True)
    logger.info("demo: evaluating %s", bundle)
    _run_eval(bundle, data, work / f"eval-{bundle.name}.json", None)
    logger.info("demo: building the index of %s", bundle)
    build_index(bundle)
    publish(bundle)
    logger.info("demo: published %s as %s", bundle.name, bundle.parent / "CURRENT")
    if not args.no_serve:
        _run_server(bundle.parent, "127.0.0.1", args.port, 1)
    return 0


def _version() -> str:
    try:
        return version("recall")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and flag, each with a help line (tests/test_cli.py checks)."""
    parser = argparse.ArgumentParser(
        prog="recall",
        description="Train, index and serve embeddings for candidate generation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING"],
        help="log level on stderr (default %(default)s; DEBUG also shows faiss's loader)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="the job to run"
    )

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    demo = command("demo", _demo, "the whole pipeline on built-in synthetic data")
    demo.add_argument(
        "--workdir", type=Path, default=Path("runs/demo"), help="where it all goes (%(default)s)"
    )
    demo.add_argument("--users", type=int, default=5_000, help="users to synthesize (%(default)s)")
    demo.add_argument("--items", type=int, default=2_000, help="items to synthesize (%(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data and training")
    demo.add_argument("--port", type=int, default=8000, help="port to serve on (%(default)s)")
    demo.add_argument("--no-serve", action="store_true", help="stop after publishing")

    synth = command("synth", _synth, "generate a synthetic data set in the input format")
    synth.add_argument("--out", type=Path, required=True, help="output data directory")
    synth.add_argument("--users", type=int, default=5_000, help="users (%(default)s)")
    synth.add_argument("--items", type=int, default=2_000, help="items (%(default)s)")
    synth.add_argument(
        "--clusters", type=int, default=20, help="planted taste clusters (%(default)s)"
    )
    synth.add_argument(
        "--mean-history", type=float, default=30.0, help="mean interactions per user"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")

    tr = command("train", _train, "train the model and write a bundle (prints its path)")
    tr.add_argument("--data", type=Path, required=True, help="input data directory")
    tr.add_argument("--out", type=Path, required=True, help="bundle root")
    tr.add_argument("--config", type=Path, help="TOML file with TrainConfig fields")
    tr.add_argument("--device", choices=["cpu", "cuda"], help="where torch trains")
    tr.add_argument("--seed", type=int, help="random seed of the run")
    tr.add_argument("--epochs", type=int, help="upper bound (early stopping)")
    tr.add_argument("--batch-size", type=int, help="examples per step")
    tr.add_argument("--lr", type=float, help="learning rate (Adam)")
    tr.add_argument(
        "--loss",
        choices=["auto", "full", "sampled"],
        help="softmax: full, sampled (log-Q), or auto by catalog size",
    )
    tr.add_argument("--hidden", type=int, nargs="+", help="tower widths; the last is dim(u)")
    tr.add_argument("--max-examples-per-user", type=int, help="cap on training examples")
    tr.add_argument(
        "--item-schema",
        metavar="COL=KIND,...",
        help="declare items.csv column kinds (numeric, categorical, multi) over inference",
    )
    tr.add_argument(
        "--user-schema",
        metavar="COL=KIND,...",
        help="declare users.csv column kinds (numeric, categorical) over inference",
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = command("eval", _eval, "offline quality report (leave-last-out) vs popularity")
    ev.add_argument("bundle", type=Path, help="ROOT/<bundle-id>")
    ev.add_argument("--data", type=Path, required=True, help="the data set it was trained on")
    ev.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    ev.add_argument("--max-users", type=int, help="evaluate a random sample of users")

    bi = command("build-index", _build_index, "build, tune and measure the FAISS index of a bundle")
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
    bi.add_argument("--keep", type=int, default=3, help="bundles to keep when publishing")

    serve = command("serve", _serve, "serve the published bundle over HTTP (API v1)")
    serve.add_argument("--root", type=Path, help="bundle root (RECALL_ROOT)")
    serve.add_argument("--host", help="bind address (RECALL_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (RECALL_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (RECALL_WORKERS)")

    pub = command("publish", _publish, "verify a bundle and make it CURRENT (also rollback)")
    pub.add_argument("bundle", type=Path, help="ROOT/<bundle-id>")
    pub.add_argument("--keep", type=int, default=3, help="bundles to keep (CURRENT always)")

    events = sub.add_parser(
        "events", help="the live events of the state store", description="live events"
    )
    events_sub = events.add_subparsers(
        dest="events_command", required=True, metavar="ACTION", help="what to do"
    )
    exp = events_sub.add_parser(
        "export",
        help="write the stored interactions as DIR/interactions.csv (the trainer's input)",
        description="write the stored interactions as DIR/interactions.csv (the trainer's "
        "input); impressions are skipped; exit 3 when the store is unavailable",
    )
    exp.set_defaults(handler=_events_export)
    exp.add_argument("--state-url", required=True, help="sqlite:///path or redis://host:port/db")
    exp.add_argument("--out", type=Path, required=True, help="output directory")
    exp.add_argument("--since", type=float, help="only events at or after this unix time")
    exp.add_argument(
        "--with-data",
        type=Path,
        help="data directory to merge: its interactions first, its users/items copied",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":  # its INFO lines list each CPU-specific module it tries
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        code: int = args.handler(args)
    except (BundleError, ValueError, OSError) as e:  # bad input: one line, no traceback
        logger.error("recall %s: %s", args.command, e)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
