"""Training for the replay benchmarks through the real ``recall`` CLI, and its reuse: a
second run with the same ``--workdir`` and the same training flags skips training."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench._server import recall_cli

TRAINED = "trained.json"
"""In a workdir: the stamp of the training done there, and what it recorded."""


def train_flat(split: Path, root: Path, *train_flags: str, publish: bool = False) -> Path:
    """``recall train --data SPLIT --out ROOT --no-progress FLAGS``, then ``recall
    build-index --kind flat`` of the new bundle (``--publish``: and make it CURRENT); the
    bundle's directory."""
    out = recall_cli("train", "--data", split, "--out", root, "--no-progress", *train_flags)
    bundle = Path(out.strip().splitlines()[-1])
    recall_cli("build-index", bundle, "--kind", "flat", *(["--publish"] if publish else []))
    return bundle


def trained_before(workdir: Path, stamp: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``workdir/trained.json`` recorded, when a training with the same ``stamp``
    (data, seed, flags) wrote it; else None."""
    path = workdir / TRAINED
    previous: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return previous if {k: previous.get(k) for k in stamp} == dict(stamp) else None


def record_training(workdir: Path, stamp: Mapping[str, Any], **recorded: Any) -> None:
    """Write ``stamp`` and ``recorded`` (bundle ids, seconds) as ``workdir/trained.json``."""
    (workdir / TRAINED).write_text(json.dumps({**stamp, **recorded}))
