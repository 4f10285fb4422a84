"""Write a data directory in the trainer's input format from interaction rows.

Writes ``OUT/interactions.csv`` (``user_id,item_id,timestamp``, unix seconds), the file
:func:`recall.trainer.data.load_dataset` reads. With a data directory to merge
(``with_data``), that directory's interactions come first (the three columns, from
``interactions.csv`` or ``.parquet``) and its ``users``/``items`` files are copied beside,
so ``recall train --data OUT`` trains on the data plus the new rows.

Every file appears whole or not at all: written to a temp name in ``OUT``, fsynced, renamed;
an error while the rows are read (the caller's iterator raising) leaves nothing behind.
pyarrow is imported only to read a Parquet ``with_data``.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["COLUMNS", "Row", "WrittenInteractions", "format_timestamp", "write_interactions"]

COLUMNS = ("user_id", "item_id", "timestamp")
SIDE_FILES = ("users", "items")

Row = tuple[int | str, int | str, float]
"""One interaction: user id, item id, unix seconds."""


@dataclass(frozen=True)
class WrittenInteractions:
    """What :func:`write_interactions` wrote: ``path``'s rows from the data and the rest."""

    path: Path
    data_rows: int
    rows: int


def format_timestamp(timestamp: float) -> str:
    """Unix seconds as the shortest exact decimal (``1700000000`` for whole seconds)."""
    return str(int(timestamp)) if timestamp.is_integer() else repr(timestamp)


def write_interactions(
    out: Path, rows: Iterable[Row], *, with_data: Path | None = None
) -> WrittenInteractions:
    """Write ``out/interactions.csv``: ``with_data``'s interactions when given, then
    ``rows`` (consumed while the file is written); copy ``with_data``'s users/items files
    into ``out``. Raises ValueError for unusable input data, before ``rows`` is touched;
    whatever iterating ``rows`` raises propagates, and nothing is written then."""
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
        n = 0
        for user, item, timestamp in rows:
            writer.writerow([user, item, format_timestamp(timestamp)])
            n += 1
    if with_data is not None:
        for stem in SIDE_FILES:
            side = _find(with_data, stem)
            if side is not None:
                with _atomic_file(out / side.name, "wb") as copy, side.open("rb") as f:
                    shutil.copyfileobj(f, copy, 1 << 20)
    return WrittenInteractions(target, data_rows, n)


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
    import pyarrow as pa  # only for Parquet input: a CSV export runs without pyarrow
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
