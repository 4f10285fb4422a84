"""The end of every benchmark: its table on stdout and its results JSON, stamped with the
benchmark's name, the date and the machine (bench/_machine.py), for docs/ to quote."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._machine import machine

logger = logging.getLogger("bench.results")


def header(benchmark: str, **machine_extra: object) -> dict[str, Any]:
    """``{"benchmark", "date" (UTC, now), "machine" (with ``machine_extra``)}``: the first
    fields of a results JSON. Take it when the run starts, so the load average is the
    machine's before the benchmark loaded it."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(**machine_extra),
    }


def write_json(out: Path, report: Mapping[str, Any]) -> None:
    """``report`` as indented JSON at ``out``, whole or not at all (written beside it, then
    renamed over it)."""
    text = json.dumps(report, indent=2) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("wrote %s", out)


def finish(out: Path | None, report: Mapping[str, Any], table: str | None = None) -> None:
    """Print ``table`` (the report's JSON when None), then write the report to ``out``
    (nowhere when None)."""
    text = json.dumps(report, indent=2) if table is None else table
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()
    if out is not None:
        write_json(out, report)
