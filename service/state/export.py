"""``recall events export``: the state store's event log in the trainer's input format.

Writes ``OUT/interactions.csv`` (``user_id,item_id,timestamp``, unix seconds) from
:meth:`StateStore.export`; impressions are not interactions and are skipped. With a data
directory to merge (``with_data``), that directory's interactions come first (the three
columns, from ``interactions.csv`` or ``.parquet``) and its ``users``/``items`` files are
copied beside, so ``recall train --data OUT`` trains on the data plus the events.

Every file appears whole or not at all: written to a temp name in ``OUT``, fsynced, renamed.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from recall.service.state import open_store

logger = logging.getLogger(__name__)

COLUMNS = ("user_id", "item_id", "timestamp")
DEFAULT_RETENTION_S = 30 * 86400.0
SIDE_FILES = ("users", "items")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_events` wrote: rows of ``path`` from the data and from the store."""

    path: Path
    data_rows: int
    event_rows: int
    impressions_skipped: int


def format_timestamp(timestamp: float) -> str:
    """Unix seconds as the shortest exact decimal (``1700000000`` for whole seconds)."""
    return str(int(timestamp)) if timestamp.is_integer() else repr(timestamp)


@contextmanager
def _atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file (text ``"w"`` or binary ``"wb"``) that replaces ``path``, fsynced, when the
    block ends without an error; on an error nothing of it remains."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    binary = "b" in mode
    try:
        with os.fdopen(
            fd, mode, encoding=None if binary else "utf-8", newline=None if binary else ""
        ) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _find(directory: Path, stem: str) -> Path | None:
    """``stem.parquet`` or ``stem.csv`` in ``directory`` (Parquet first, as the trainer)."""
    for suffix in (".parquet", ".csv"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    return None


def _data_rows_csv(path: Path, writer: Any) -> int:
    """Copy the three columns of CSV ``path`` as they are written (ids stay exact strings)."""
    n = 0
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        cols = [header.index(c) for c in COLUMNS]
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(header):
                raise ValueError(
                    f"{path}: line {line}: {len(row)} fields, header has {len(header)}"
                )
            writer.writerow([row[i] for i in cols])
            n += 1
    return n


def _data_rows_parquet(path: Path, writer: Any) -> int:
    """The three columns of Parquet ``path``; timestamp columns as unix seconds."""
    import pyarrow as pa  # the trainer's dependency, imported only for Parquet input
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(COLUMNS))
    ts = table.column("timestamp")
    if pa.types.is_timestamp(ts.type):
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[ts.type.unit]
        ts = pc.divide(pc.cast(pc.cast(ts, pa.int64()), pa.float64()), scale)
    n = 0
    for user, item, t in zip(
        table.column("user_id").to_pylist(),
        table.column("item_id").to_pylist(),
        ts.to_pylist(),
        strict=True,
    ):
        writer.writerow([user, item, format_timestamp(float(t)) if t is not None else ""])
        n += 1
    return n


async def _write_events(
    url: str, since: float | None, retention_s: float, writer: Any
) -> tuple[int, int]:
    store = open_store(url, retention_s=retention_s)
    rows = skipped = 0
    try:
        async for event in store.export(since):
            if event.type != "interaction":
                skipped += 1
                continue
            writer.writerow([event.user_id, event.item_id, format_timestamp(event.timestamp)])
            rows += 1
    finally:
        await store.close()
    return rows, skipped


def export_events(
    state_url: str,
    out: Path,
    *,
    since: float | None = None,
    with_data: Path | None = None,
    retention_s: float = DEFAULT_RETENTION_S,
) -> ExportResult:
    """Write ``out/interactions.csv`` from the store at ``state_url`` (events with timestamp
    >= ``since`` when given, that arrived within ``retention_s``), after ``with_data``'s
    interactions when given, and copy ``with_data``'s users/items files into ``out``.
    Raises StateUnavailable when the store cannot be read (nothing is written then),
    ValueError for unusable input data."""
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for s in ("interactions", *SIDE_FILES) if (p := out / f"{s}.parquet").exists()]
    if stale:  # the trainer reads Parquet before CSV: it would shadow what is written here
        raise ValueError(f"{out} already holds {', '.join(stale)}: use an empty directory")
    source = None
    if with_data is not None:
        source = _find(with_data, "interactions")
        if source is None:
            raise ValueError(f"{with_data}: no interactions.csv or interactions.parquet")
        if with_data.resolve() == out.resolve():
            raise ValueError("--out must not be the --with-data directory")
    target = out / "interactions.csv"
    with _atomic_file(target) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        data_rows = 0
        if source is not None:
            read = _data_rows_parquet if source.suffix == ".parquet" else _data_rows_csv
            data_rows = read(source, writer)
        event_rows, skipped = asyncio.run(_write_events(state_url, since, retention_s, writer))
    if with_data is not None:
        for stem in SIDE_FILES:
            side = _find(with_data, stem)
            if side is not None:
                with _atomic_file(out / side.name, "wb") as copy, side.open("rb") as f:
                    shutil.copyfileobj(f, copy, 1 << 20)
    logger.info(
        "events export: %s: %d data rows, %d events (%d impressions skipped)",
        target,
        data_rows,
        event_rows,
        skipped,
    )
    return ExportResult(target, data_rows, event_rows, skipped)
