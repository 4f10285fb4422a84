"""``recall events export``: events in through the state store, out as the trainer's input."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import numpy as np
import pytest

from recall.cli import main
from recall.service.state import Event, open_store, sqlite_url
from recall.trainer.data import load_dataset
from recall.trainer.synth import SynthConfig, write_synthetic
from tests.live import free_port
from tests.redis_cluster import RedisCluster
from tests.redis_server import redis_server

EVENTS = [
    Event(7, 100, 1_700_000_000.0),
    Event(7, 101, 1_700_000_010.5),
    Event("ab,c", 'x"y', 1_700_000_020.25),  # a comma and a quote survive the CSV
    Event(8, 102, 1_700_000_030.0, "impression"),  # not an interaction: skipped
    Event(9, 100, 1_700_000_040.0),
]


def _store_events(url: str, events: list[Event]) -> None:
    async def run() -> None:
        store = open_store(url)
        try:
            await store.add(events)
        finally:
            await store.close()

    asyncio.run(run())


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_export_writes_the_interactions_in_the_trainers_format(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "state" / "events.sqlite")
    _store_events(url, EVENTS)
    out = tmp_path / "out"
    assert main(["events", "export", "--state-url", url, "--out", str(out)]) == 0
    assert _rows(out / "interactions.csv") == [
        ["user_id", "item_id", "timestamp"],
        ["7", "100", "1700000000"],
        ["7", "101", "1700000010.5"],
        ["ab,c", 'x"y', "1700000020.25"],
        ["9", "100", "1700000040"],
    ]
    assert sorted(p.name for p in out.iterdir()) == ["interactions.csv"]  # no temp file left
    ds = load_dataset(out)
    assert ds.n_interactions == 4
    assert sorted(ds.user_ids.tolist()) == ["7", "9", "ab,c"]  # one str id: all str
    assert ds.timestamps.tolist() == [
        1_700_000_000.0,
        1_700_000_010.5,
        1_700_000_020.25,
        1.70000004e9,
    ]


def test_export_since_and_int_ids_round_trip(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "events.sqlite")
    _store_events(url, [e for e in EVENTS if isinstance(e.user_id, int)])
    out = tmp_path / "out"
    since = ["--since", "1700000010.5"]
    assert main(["events", "export", "--state-url", url, "--out", str(out), *since]) == 0
    ds = load_dataset(out)
    assert ds.user_ids.dtype == np.int64 and ds.item_ids.dtype == np.int64
    rows = zip(ds.user_rows, ds.item_rows, strict=True)
    pairs = {(int(ds.user_ids[u]), int(ds.item_ids[i])) for u, i in rows}
    assert pairs == {(7, 101), (9, 100)}


def test_export_merges_a_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic(data, SynthConfig(n_users=60, n_items=40, seed=3))
    before = load_dataset(data)
    url = sqlite_url(tmp_path / "events.sqlite")
    known_user, known_item = int(before.user_ids[0]), int(before.item_ids[0])
    new_user = int(before.user_ids.max()) + 1
    late = float(before.timestamps.max()) + 60
    _store_events(url, [Event(known_user, known_item, late), Event(new_user, known_item, late + 1)])
    out = tmp_path / "merged"
    argv = ["events", "export", "--state-url", url, "--out", str(out), "--with-data", str(data)]
    assert main(argv) == 0
    merged = load_dataset(out)
    assert merged.n_interactions == before.n_interactions + 2
    assert merged.n_users == before.n_users + 1
    assert merged.timestamps.max() == late + 1
    for side in ("users.csv", "items.csv"):  # synth writes both
        assert (out / side).read_bytes() == (data / side).read_bytes()
    assert merged.user_features and len(merged.genre_vocab) > 0
    assert merged.user_features.keys() == before.user_features.keys()
    assert merged.genre_vocab.tolist() == before.genre_vocab.tolist()


def test_store_unavailable_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = sqlite_url(blocker / "events.sqlite")  # its directory cannot be created
    out = tmp_path / "out"
    out.mkdir()
    (out / "interactions.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    assert main(["events", "export", "--state-url", url, "--out", str(out)]) == 3
    # the previous file is untouched, no temp file is left behind
    assert sorted(p.name for p in out.iterdir()) == ["interactions.csv"]
    assert (out / "interactions.csv").read_text() == "user_id,item_id,timestamp\n1,2,3\n"


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "events.sqlite")
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["events", "export", "--state-url", url, "--out", str(tmp_path / "o")]
    assert main([*argv, "--with-data", str(empty)]) == 2  # no interactions to merge
    assert main(["events", "export", "--state-url", "ftp://x", "--out", str(tmp_path)]) == 2
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "interactions.parquet").write_bytes(b"")  # the trainer would read this one
    assert main(["events", "export", "--state-url", url, "--out", str(shadow)]) == 2
    with pytest.raises(SystemExit):
        main(["events", "export", "--out", str(tmp_path)])  # --state-url is required


def test_export_from_redis(tmp_path: Path) -> None:
    """The compose trainer job's case: the replicas' Redis, exported the same way."""
    with redis_server(tmp_path / "redis") as server:
        _store_events(server.url(), EVENTS)
        out = tmp_path / "out"
        assert main(["events", "export", "--state-url", server.url(), "--out", str(out)]) == 0
        assert _rows(out / "interactions.csv")[1:] == [
            ["7", "100", "1700000000"],
            ["7", "101", "1700000010.5"],
            ["ab,c", 'x"y', "1700000020.25"],
            ["9", "100", "1700000040"],
        ]
        server.kill()
        # Redis gone: exit 3 (train-and-publish.sh then trains on its data alone)
        again = tmp_path / "again"
        assert main(["events", "export", "--state-url", server.url(), "--out", str(again)]) == 3
        assert list(again.iterdir()) == []  # no file, no temp file


def test_read_events_yields_the_log_in_batches(tmp_path: Path) -> None:
    """The state layer's side of the export: every event, impressions too, in log order."""
    from recall.service.state.retraining_log import read_events

    url = sqlite_url(tmp_path / "events.sqlite")
    _store_events(url, EVENTS)
    batches = list(read_events(url, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [e for b in batches for e in b] == EVENTS


def test_retention_is_read_through_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = sqlite_url(tmp_path / "events.sqlite")
    argv = ["events", "export", "--state-url", url, "--out", str(tmp_path / "out")]
    monkeypatch.setenv("RECALL_EVENTS_RETENTION_S", "0")
    assert main(argv) == 2
    assert "RECALL_EVENTS_RETENTION_S: Input should be greater than 0" in caplog.text
    assert not (tmp_path / "out" / "interactions.csv").exists()


def test_export_from_a_cluster_merges_every_writers_log(
    shared_cluster: RedisCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Writers on several log buckets (one store each), one CSV in arrival order; a URL
    at a server that is not a cluster exits 2 naming the flag, a cluster with no node up 3."""
    shared_cluster.flush()
    url = shared_cluster.url()
    events = [Event(i % 3, i, 1_700_000_000.0 + i) for i in range(40)]

    async def write() -> None:
        stores = [open_store(url, write_timeout_s=5.0) for _ in range(8)]  # a loaded machine
        try:
            for i, event in enumerate(events):
                await stores[i % 8].add([event])
                await asyncio.sleep(0.002)
        finally:
            for store in stores:
                await store.close()

    asyncio.run(write())
    out = tmp_path / "out"
    assert main(["events", "export", "--state-url", url, "--out", str(out)]) == 0
    assert _rows(out / "interactions.csv")[1:] == [
        [str(e.user_id), str(e.item_id), str(int(e.timestamp))] for e in events
    ]
    with redis_server(tmp_path / "plain") as plain:
        not_a_cluster = f"redis+cluster://127.0.0.1:{plain.port}"
        argv = ["events", "export", "--state-url", not_a_cluster, "--out", str(tmp_path / "x")]
        assert main(argv) == 2
    nobody = f"redis+cluster://127.0.0.1:{free_port()}"
    assert main(["events", "export", "--state-url", nobody, "--out", str(tmp_path / "y")]) == 3
    assert main(["events", "export", "--state-url", "redis+cluster://h", "--out", "z"]) == 2
    errors = caplog.text
    assert "--state-url: the server is not a Redis Cluster node" in errors
    assert "--state-url: no Redis Cluster node answered" in errors
    assert "--state-url: each node of a cluster state URL is host:port" in errors
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_store_not_created_yet_exports_none_and_creates_nothing(tmp_path: Path) -> None:
    """Before the service first ran there is no database: nothing to export, and the
    export creates none, nor the directories above it."""
    data = tmp_path / "data"
    write_synthetic(data, SynthConfig(n_users=60, n_items=40, seed=3))
    state = tmp_path / "state"
    state.mkdir()
    out = tmp_path / "out"
    url = sqlite_url(state / "events.sqlite")
    argv = ["events", "export", "--state-url", url, "--out", str(out)]
    assert main([*argv, "--with-data", str(data)]) == 0
    assert list(state.iterdir()) == []
    assert _rows(out / "interactions.csv") == _rows(data / "interactions.csv")
    not_yet = sqlite_url(tmp_path / "root" / ".state" / "events.sqlite")  # nor its directory
    assert main(["events", "export", "--state-url", not_yet, "--out", str(out)]) == 0
    assert not (tmp_path / "root").exists()
    assert _rows(out / "interactions.csv") == [["user_id", "item_id", "timestamp"]]
