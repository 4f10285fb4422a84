"""``recall serve``: uvicorn on the service's app factory, flags over ``RECALL_*``."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from pathlib import Path

from recall.cli.command import Subcommands, add_command

logger = logging.getLogger("recall")

# The flags of `recall serve` and the settings they set, for errors that name both.
SERVE_FLAGS = {"root": "--root", "host": "--host", "port": "--port", "workers": "--workers"}


def add_parser(sub: Subcommands) -> None:
    serve = add_command(sub, "serve", run, "serve the published bundle over HTTP (API v1)")
    serve.add_argument(
        "--root", help="bundle root: a directory or s3://bucket/prefix (RECALL_ROOT)"
    )
    serve.add_argument("--host", help="bind address (RECALL_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (RECALL_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (RECALL_WORKERS)")


def run(args: argparse.Namespace) -> int:
    run_server(args.root, args.host, args.port, args.workers)
    return 0


def run_server(
    root: str | Path | None, host: str | None, port: int | None, workers: int | None
) -> None:
    """Run uvicorn with the app factory; flags override ``RECALL_*`` variables, which the
    workers read (they are separate processes when ``workers > 1``)."""
    import functools

    import uvicorn

    from recall.service.header_timeout import HeaderTimeoutProtocol
    from recall.service.metrics_dir import multiprocess_metrics_dir
    from recall.service.settings import load_settings
    from recall.service.state import StoreUnavailable
    from recall.service.state.redis_client import check_reachable

    for name, value in (("ROOT", root), ("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"RECALL_{name}"] = str(value)
    settings = load_settings(SERVE_FLAGS)  # fail fast, before any worker starts
    if isinstance(settings.root, Path):  # a slip would serve 503 forever
        check_local_root(settings.root)
    check_port_free(settings.host, settings.port, "--port or RECALL_PORT")
    try:  # a cluster client cannot start without a slot map: a wrong URL stops here
        check_reachable(settings.state_url, "RECALL_STATE_URL")
    except StoreUnavailable as e:
        raise ValueError(str(e)) from None
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


def check_local_root(root: Path) -> None:
    """ValueError unless ``root`` is a directory and not a bundle itself: either slip
    would serve 503 forever (and a typo leave a .state/ under it)."""
    from recall.index.bundle import MANIFEST

    flag = "--root or RECALL_ROOT"
    if not root.is_dir():
        raise ValueError(
            f"{flag}: {root} is not a directory (create it, or publish a bundle there: "
            "recall build-index ROOT/<id> --publish)"
        )
    if (root / MANIFEST).exists():
        raise ValueError(
            f"{flag}: {root} is a bundle, not a bundle root: serve the directory that holds "
            f"it and CURRENT (--root {root.parent})"
        )


def check_port_free(host: str, port: int, flag: str) -> None:
    """ValueError (naming ``flag`` when another process listens there) unless ``host:port``
    can be bound as uvicorn binds it (SO_REUSEADDR); checked before anything loads, as
    uvicorn would say so only after, and exit 3, the code of a store that did not answer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as e:
        if e.errno != errno.EADDRINUSE:  # a host that is not this machine's, say
            why = os.strerror(e.errno) if e.errno else str(e)
            raise ValueError(f"cannot listen on {host}:{port}: {why}") from None
        raise ValueError(
            f"{flag}: {host}:{port} is already in use (another recall serve or make demo? "
            "stop it, or pick another port)"
        ) from None
