"""Users in the store (Redis mode): ``recall publish --state-url`` loads each user's record
before ``CURRENT`` changes; a replica serves by user id from the store, opening no
``user_*`` file, with the answers the bundle's own files give; bad URLs exit 2 and a
store that does not answer 3; an interrupted load leaves ``CURRENT`` alone and resumes;
retention removes old users.
Real redis-server processes, a real uvicorn server, ``recall`` subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from recall.index import bundle as b
from recall.index.build import BuildOptions, build_index
from recall.index.current import CURRENT
from recall.index.publish import publish
from recall.index.verify import verify_bundle
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.service.state.users import (
    BUNDLES,
    StoreUsers,
    UserLoader,
    meta_key,
    records_pattern,
)
from recall.service.users import bundle_users
from tests.index.test_verify import copy_bundle, edit_manifest
from tests.index_data import clustered, write_vectors_bundle
from tests.live import TOKEN, free_port, live_server, settings
from tests.redis_cluster import redis_cluster
from tests.redis_server import RedisServer, redis_server

USER_FILES = (b.USER_IDS, b.USER_VECTORS, b.USER_SEEN, b.USER_HISTORY)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def bundle(published_root: Path) -> ServingBundle:
    return ServingBundle.load(published_root / (published_root / CURRENT).read_text().strip())


def recall_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RECALL_STATE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "recall.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, **(env or {})},
    )


def user_keys(client: redis.Redis, bundle_id: str) -> int:
    return sum(1 for _ in client.scan_iter(match=records_pattern(bundle_id), count=10_000))


def test_replica_serves_users_from_the_store_as_the_bundle_files_do(
    published_root: Path, bundle: ServingBundle, store: RedisServer, tmp_path: Path
) -> None:
    """Publish with the Redis URL, then delete the user files from the replica's copy: the
    replica (Redis mode) maps none of them and answers every user route as a SQLite-mode
    replica on the intact bundle does (same items, scores within float32 rounding), before
    and after the same fresh events."""
    root = tmp_path / "store-root"
    root.mkdir()
    published = copy_bundle(published_root, root)
    done = recall_cli("publish", str(published), "--state-url", store.url())
    assert done.returncode == 0, done.stderr
    for name in USER_FILES:
        (published / name).unlink()
    users: list[Any] = bundle.user_ids.ids[:40].tolist()
    item = bundle.item_ids.ids[5].item()
    with (
        live_server(create_app(settings(root, state_url=store.url()))) as in_store,
        live_server(create_app(settings(published_root))) as in_files,
        httpx.Client(timeout=10) as c,
    ):
        maps = Path("/proc/self/maps").read_text()
        assert str(root) in maps  # the item side is mapped...
        assert not any(f"{root}/{published.name}/user_" in line for line in maps.splitlines())

        def same(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
            return _alike(c, in_store, in_files, path, body)

        for user in users:
            assert same("/v1/recall", {"user_id": user, "k": 20})["source"] == "user"
            same("/v1/recall", {"user_id": str(user), "k": 10, "exclude_seen": False})
            same(f"/v1/users/{user}/vector")
            same(f"/v1/users/{user}/history")
        same("/v1/users/vectors", {"ids": [*users[:10], "nobody", users[0]]})
        batch = [{"user_id": u, "k": 5} for u in users[:6]] + [{"user_id": "ghost", "k": 5}]
        same("/v1/recall/batch", {"requests": batch})
        assert c.post(f"{in_store}/v1/recall", json={"user_id": "ghost"}).status_code == 404
        now = time.time()
        for base in (in_store, in_files):
            events = [{"user_id": users[0], "item_id": item, "timestamp": now}]
            assert c.post(f"{base}/v1/events", json={"events": events}).status_code == 200
        fresh = same("/v1/recall", {"user_id": users[0], "k": 20})
        assert (fresh["source"], fresh["fresh_events"]) == ("user+events", 1)
        same(f"/v1/users/{users[0]}/history")


def _alike(
    c: httpx.Client, in_store: str, in_files: str, path: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    """The answer to ``path`` (a POST of ``body``, else a GET) of both servers, checked
    alike (vectors and scores within float32 rounding, the rest equal); the store's."""

    def get(base: str) -> dict[str, Any]:
        response = c.post(base + path, json=body) if body else c.get(base + path)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    mine, theirs = get(in_store), get(in_files)
    for key in ("items", "results"):
        if key in mine:
            _close(mine.pop(key), theirs.pop(key))
    for key in ("vector", "vectors"):
        if key in mine:
            rows, expected = mine.pop(key), theirs.pop(key)
            if key == "vector":
                rows, expected = [rows], [expected]
            assert [r is None for r in rows] == [r is None for r in expected]
            found = [(r, e) for r, e in zip(rows, expected, strict=True) if r is not None]
            np.testing.assert_allclose(*zip(*found, strict=True), rtol=2e-6, atol=2e-6)
    assert mine == theirs
    return mine


def _close(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    """Two answers' items (or batch results) alike: ids equal, scores within float32."""
    assert len(mine) == len(theirs)
    for a, b_ in zip(mine, theirs, strict=True):
        if "item_id" not in a:  # a batch result: its items, or its error
            if "items" in a:
                _close(a.pop("items"), b_.pop("items"))
            assert a == b_
            continue
        assert a["item_id"] == b_["item_id"]
        assert a["score"] == pytest.approx(b_["score"], rel=2e-6, abs=2e-6)


def test_a_replica_on_a_bundle_whose_users_are_not_loaded_is_not_ready(
    published_root: Path, store: RedisServer
) -> None:
    """Published without the Redis URL: the Redis-mode replica refuses the bundle (it
    never falls back to mapping the user files); loaded, an admin reload serves it."""
    with live_server(create_app(settings(published_root, state_url=store.url()))) as base:
        assert httpx.get(f"{base}/readyz").status_code == 503
        current = published_root / (published_root / CURRENT).read_text().strip()
        UserLoader(store.url()).load(verify_bundle(current))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{base}/v1/admin/reload", headers=headers).status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200


def test_bad_or_dead_state_urls_publish_nothing(published_root: Path, tmp_path: Path) -> None:
    """A URL that does not parse exits 2, a store that does not answer (one Redis, or no
    node of a cluster) exits 3, as an s3:// root's object store does: one line naming the
    setting, CURRENT untouched."""
    root = tmp_path / "root"
    root.mkdir()
    first = copy_bundle(published_root, root, "20260101T000000Z-first0")
    second = copy_bundle(published_root, root, "20260101T000000Z-second")
    publish(first)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    dead_cluster = f"redis+cluster://127.0.0.1:{free_port()}"
    for args, env, setting, code in (
        (["--state-url", dead], None, "--state-url", 3),
        ([], {"RECALL_STATE_URL": dead}, "RECALL_STATE_URL", 3),
        (["--state-url", dead_cluster], None, "--state-url", 3),
        ([], {"RECALL_STATE_URL": "memcached://x"}, "RECALL_STATE_URL", 2),
        (["--state-url", "redis+cluster://127.0.0.1"], None, "--state-url", 2),
    ):
        done = recall_cli("publish", str(second), *args, env=env)
        assert done.returncode == code, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and setting in lines[0], done.stderr
        if code == 3:
            assert "did not answer" in lines[0] and "nothing was published" in lines[0]
        assert (root / CURRENT).read_text().strip() == first.name


def test_a_plain_redis_is_not_a_cluster(published_root: Path, store: RedisServer) -> None:
    current = published_root / (published_root / CURRENT).read_text().strip()
    cluster_url = store.url().replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    done = recall_cli("publish", str(current), "--state-url", cluster_url)
    assert done.returncode == 2 and "not a Redis Cluster" in done.stderr, done.stderr


def test_publish_is_idempotent_and_keep_removes_old_users(
    published_root: Path, store: RedisServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    ids = [f"2026010{d}T000000Z-aaaaaa" for d in (1, 2, 3)]
    n = len(np.load(published_root / ids[0] / b.USER_IDS, allow_pickle=False))
    client = redis.Redis.from_url(store.url())
    for bundle_id in ids:
        bundle = copy_bundle(published_root, root, bundle_id)
        edit_manifest(bundle, created_at=datetime(2026, 1, int(bundle_id[7]), tzinfo=UTC))
        done = recall_cli("publish", str(bundle), "--state-url", store.url(), "--keep", "2")
        assert done.returncode == 0, done.stderr
        assert user_keys(client, bundle_id) == n
        assert client.hget(meta_key(bundle_id), "state") == b"complete"
    assert not (root / ids[0]).exists()
    assert user_keys(client, ids[0]) == 0 and not client.exists(meta_key(ids[0]))
    assert {m.decode() for m in client.smembers(BUNDLES)} == set(ids[1:])
    again = recall_cli("publish", str(root / ids[2]), "--state-url", store.url())
    assert again.returncode == 0 and "in the store already" in again.stderr, again.stderr
    client.hset(meta_key(ids[1]), "state", "dropping")  # as a drop that died midway leaves it
    UserLoader(store.url()).drop([])
    assert user_keys(client, ids[1]) == 0 and client.smembers(BUNDLES) == {ids[2].encode()}


@pytest.mark.slow
def test_kill_9_during_the_load_leaves_current_and_a_rerun_completes(
    store: RedisServer, tmp_path: Path
) -> None:
    """A bundle of 300k users: ``recall publish`` SIGKILLed while loading them leaves
    CURRENT on the old bundle (whose replica answers as before); the rerun resumes where
    the load stopped and switches CURRENT."""
    root = tmp_path / "root"
    items, users = clustered(300, 300_000, dim=8)
    old = write_vectors_bundle(root, items, users[:100], "20260101T000000Z-old000")
    new = write_vectors_bundle(root, items, users, "20260102T000000Z-new000")
    for bundle in (old, new):
        build_index(bundle, BuildOptions(kind="flat", sample_queries=50, latency_queries=5))
    assert recall_cli("publish", str(old), "--state-url", store.url()).returncode == 0
    client = redis.Redis.from_url(store.url())
    with live_server(create_app(settings(root, state_url=store.url()))) as base:
        before = httpx.post(f"{base}/v1/recall", json={"user_id": 7, "k": 10}).json()
        process = subprocess.Popen(
            [sys.executable, "-m", "recall.cli", "publish", str(new), "--state-url", store.url()],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while int(client.hget(meta_key(new.name), "next") or 0) == 0:
            assert process.poll() is None and time.monotonic() < deadline, "no load seen"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stopped_at = int(client.hget(meta_key(new.name), "next") or 0)
        assert 0 < stopped_at < len(users)
        assert client.hget(meta_key(new.name), "state") == b"loading"
        assert (root / CURRENT).read_text().strip() == old.name
        after = httpx.post(f"{base}/v1/recall", json={"user_id": 7, "k": 10}).json()
        assert after == before
        rerun = recall_cli("publish", str(new), "--state-url", store.url())
        assert rerun.returncode == 0, rerun.stderr
        assert f"resuming the load of {new.name}'s users at {stopped_at}" in rerun.stderr
        assert (root / CURRENT).read_text().strip() == new.name
        assert user_keys(client, new.name) == len(users)


def test_users_in_a_redis_cluster(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    """A real 3-master cluster: the load spreads the users over every master, a replica's
    read of users on several shards answers them all in request order, a rerun writes
    nothing, and drop removes every key from every master."""
    current = published_root / (published_root / CURRENT).read_text().strip()
    verified = verify_bundle(current)
    with redis_cluster(tmp_path / "cluster") as cluster:
        loader = UserLoader(cluster.url())
        assert loader.load(verified) == len(bundle.user_ids)
        assert loader.load(verified) == 0
        counts = [cluster.client(port).dbsize() for port in cluster.masters()]
        assert len(counts) == 3 and min(counts) > len(bundle.user_ids) / 6, counts

        async def read() -> tuple[Any, list[Any]]:
            users = StoreUsers(cluster.url(), timeout_s=2, write_timeout_s=2)
            try:
                meta = await users.meta(current.name)
                ids = [*bundle.user_ids.ids[:60].tolist(), 10**9]
                return meta, await users.read(current.name, meta.shape, ids)
            finally:
                await users.close()

        meta, stored = asyncio.run(read())
        assert meta.users == len(bundle.user_ids) and stored[-1] is None
        expected = bundle_users(bundle.verified, bundle.user_ids.ids[:60].tolist())
        for got, want in zip(stored[:-1], expected, strict=True):
            assert got is not None and want is not None
            np.testing.assert_array_equal(got.vector, want.vector)
            np.testing.assert_array_equal(got.window, want.window)
            np.testing.assert_array_equal(got.seen, want.seen)
        loader.drop([current.name])
        assert sum(cluster.client(port).dbsize() for port in cluster.masters()) <= 1  # the set
        loader.close()
