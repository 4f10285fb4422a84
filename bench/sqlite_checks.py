"""What the SQLite store's file checks cost: the identity check (3 ``os.stat``) alone, one
``add`` of 100 events and one ``recent([user])`` with the checks on and off, and one
``PRAGMA quick_check`` of the filled file.

    .venv/bin/python bench/sqlite_checks.py            # about 30 s
    .venv/bin/python bench/sqlite_checks.py --users 20000 --rounds 1000

The store is filled with ``WINDOW`` events for each of ``--users`` users first (the steady
state: every insert trims a window); then ``--rounds`` alternating adds (and reads) on two
stores over copies of the same file, one of them with the identity check disabled, so
both meet the same disk and the same load. Prints one JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._results import finish, header  # noqa: E402
from recall.service.state.base import Event, StoreLimits  # noqa: E402
from recall.service.state.sqlite import SQLiteStore  # noqa: E402

logger = logging.getLogger("bench.sqlite_checks")

WINDOW = 50
LIMITS = StoreLimits(
    window=WINDOW, shown_ttl_s=3600, retention_s=86400, timeout_s=1.0, write_timeout_s=5.0
)


class UncheckedStore(SQLiteStore):
    """The store without the identity check (the baseline; quick_check never due)."""

    def _check_identity(self) -> None:
        return None


async def fill(path: Path, users: int) -> None:
    store = SQLiteStore(path, LIMITS)
    try:
        for start in range(0, users, 200):
            await store.add(
                [Event(u, j, 1e9 + j) for u in range(start, start + 200) for j in range(WINDOW)]
            )
    finally:
        await store.close()


def ms_p50_p99(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1e3, 4),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e3, 4),
    }


async def compare(work: Path, users: int, rounds: int) -> dict[str, object]:
    shutil.copyfile(work / "filled.sqlite", work / "checked.sqlite")
    shutil.copyfile(work / "filled.sqlite", work / "unchecked.sqlite")
    checked = SQLiteStore(work / "checked.sqlite", LIMITS, quick_check_every_s=math.inf)
    unchecked = UncheckedStore(work / "unchecked.sqlite", LIMITS, quick_check_every_s=math.inf)
    times: dict[str, list[float]] = {"add_on": [], "add_off": [], "read_on": [], "read_off": []}
    rng = random.Random(0)
    try:
        for store in (checked, unchecked):
            await store.ping()
        for n in range(rounds):
            batch = [Event(rng.randrange(users), n, 2e9 + n) for _ in range(100)]
            reader = [rng.randrange(users)]
            for store, on in ((checked, "on"), (unchecked, "off"))[:: 1 if n % 2 else -1]:
                start = time.perf_counter()
                await store.add(batch)
                times[f"add_{on}"].append(time.perf_counter() - start)
                start = time.perf_counter()
                await store.recent(reader, after=-math.inf)
                times[f"read_{on}"].append(time.perf_counter() - start)
        stat_s = []
        for _ in range(10_000):
            start = time.perf_counter()
            checked._check_identity()
            stat_s.append(time.perf_counter() - start)
        quick_check_s = checked._scheduled_check(quick=True)
        assert quick_check_s > 0
    finally:
        await checked.close()
        await unchecked.close()
    return {
        "identity_check_us_p50": round(statistics.median(stat_s) * 1e6, 2),
        **{name: ms_p50_p99(samples) for name, samples in times.items()},
        "quick_check_s": round(quick_check_s, 3),
        "file_mb": round((work / "checked.sqlite").stat().st_size / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--out", type=Path, help="JSON results file (docs/state.md quotes it)")
    args = parser.parse_args()
    head = header("sqlite_checks")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        start = time.monotonic()
        asyncio.run(fill(work / "filled.sqlite", args.users))
        logger.info("filled %d users in %.1f s", args.users, time.monotonic() - start)
        report = asyncio.run(compare(work, args.users, args.rounds))
    report.update(users=args.users, rounds=args.rounds)
    finish(args.out, {**head, "result": report})


if __name__ == "__main__":
    main()
