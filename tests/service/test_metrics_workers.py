"""``/metrics`` of a ``recall serve --workers 2`` replica counts every worker.

Real ``recall serve`` processes (the console script) on 127.0.0.1: requests over fresh
connections land on either worker, and every scrape, whichever worker answers it, must
report all of them (prometheus-client's multiprocess mode, service/metrics.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from recall.service.metrics_dir import MULTIPROC_ENV, PREFIX, multiprocess_metrics_dir
from tests.live import free_port
from tests.serve_process import start_serve, stop, wait_for

ROUTE = "/v1/model"
N_REQUESTS = 60


@contextmanager
def recall_serve(
    root: Path, tmp: Path, workers: int
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``recall serve --workers N`` until the block ends, once every worker has loaded the
    bundle; yields (base URL, process)."""
    port = free_port()
    proc = start_serve(root, tmp, port, workers)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_workers(url, proc, workers)
        yield url, proc
    finally:
        stop(proc)


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape over a fresh connection: {(sample name, sorted labels): value}."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _requests_to(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    key = (
        "recall_http_requests_total",
        (("method", "GET"), ("route", ROUTE), ("status", "200")),
    )
    return samples.get(key, 0.0)


def _bundle_workers(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "recall_bundle_info")


def _wait_for_workers(url: str, proc: subprocess.Popen[bytes], workers: int) -> None:
    """Until every worker has loaded the bundle (the live gauge counts them)."""
    wait_for(proc, lambda: _bundle_workers(_scrape(url)) == workers, f"{workers} workers of {url}")


def _send(url: str, n: int) -> None:
    def one(_: int) -> int:
        return httpx.get(f"{url}{ROUTE}", timeout=10).status_code  # a fresh connection each

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(n))) == [200] * n


def _metrics_dirs(tmp: Path) -> list[Path]:
    return list(tmp.glob("recall-metrics-*"))


def _per_worker_requests(metrics_dir: Path, scratch: Path) -> list[float]:
    """The request count each worker wrote (one counter file per worker pid)."""
    counts = []
    for db in sorted(metrics_dir.glob("counter_*.db")):
        one = scratch / db.stem
        one.mkdir(parents=True)
        shutil.copy(db, one / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(one))  # type: ignore[no-untyped-call]
        counts.append(
            sum(
                s.value
                for f in registry.collect()
                for s in f.samples
                if s.name == "recall_http_requests_total" and s.labels.get("route") == ROUTE
            )
        )
    return counts


def _worker_pids(server_pid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == server_pid and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_metrics_sum_all_workers(published_root: Path, tmp_path: Path) -> None:
    with recall_serve(published_root, tmp_path, workers=2) as (url, proc):
        (metrics_dir,) = _metrics_dirs(tmp_path)  # a fresh dir under TMPDIR
        _send(url, N_REQUESTS)
        scrapes = [_scrape(url) for _ in range(8)]  # fresh connections: either worker
        assert [_requests_to(s) for s in scrapes] == [N_REQUESTS] * 8
        assert [_bundle_workers(s) for s in scrapes] == [2] * 8
        per_worker = _per_worker_requests(metrics_dir, tmp_path / "scratch")
        assert sum(per_worker) == N_REQUESTS
        assert len([c for c in per_worker if c > 0]) == 2, per_worker  # both answered some

        # A worker killed with SIGKILL: uvicorn starts another; its counts stay in the
        # sum, and it no longer counts as a worker serving the bundle.
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while set(_worker_pids(proc.pid)) in ({workers[1]}, set(workers)):
            assert time.monotonic() < deadline, "uvicorn did not replace the killed worker"
            time.sleep(0.1)
        _wait_for_workers(url, proc, 2)
        after = [_scrape(url) for _ in range(6)]
        assert [_requests_to(s) for s in after] == [N_REQUESTS] * 6
        assert [_bundle_workers(s) for s in after] == [2] * 6
    assert _metrics_dirs(tmp_path) == []  # removed when the server stopped

    # A restart starts from zero: no numbers of the earlier run are added.
    with recall_serve(published_root, tmp_path, workers=2) as (url, _):
        assert _requests_to(_scrape(url)) == 0
        _send(url, 5)
        assert _requests_to(_scrape(url)) == 5


def test_an_operator_metrics_dir_is_emptied_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"old run")
    (given / "keep.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    with multiprocess_metrics_dir() as path:
        assert path == given
        assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]
    assert given.is_dir()  # the operator's directory stays


def test_without_a_dir_a_fresh_one_is_made_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with multiprocess_metrics_dir() as path:
        assert path.parent == tmp_path and path.is_dir()
        assert os.environ[MULTIPROC_ENV] == str(path)
    assert not path.exists()
    assert MULTIPROC_ENV not in os.environ


@pytest.mark.slow
def test_sigterm_removes_the_dir_of_a_single_worker_server(
    published_root: Path, tmp_path: Path
) -> None:
    """With one worker uvicorn re-raises SIGTERM after its shutdown, which skips
    ``finally``: the directory must still go, and the process still die of SIGTERM."""
    with recall_serve(published_root, tmp_path, workers=1) as (url, proc):
        assert len(_metrics_dirs(tmp_path)) == 1
        assert _bundle_workers(_scrape(url)) == 1
    assert proc.returncode == -signal.SIGTERM
    assert _metrics_dirs(tmp_path) == []


def test_dirs_of_killed_servers_are_removed_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_OUT)
    dead_dir = tmp_path / f"{PREFIX}{int(dead.stdout)}-abc"
    live_dir = tmp_path / f"{PREFIX}{os.getpid()}-def"  # a server still running
    for path in (dead_dir, live_dir):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"")
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with multiprocess_metrics_dir() as path:
        assert not dead_dir.exists() and live_dir.is_dir()
        assert path.name.startswith(f"{PREFIX}{os.getpid()}-")


_OUT: dict[str, Any] = {"capture_output": True, "text": True, "check": True, "timeout": 60}
