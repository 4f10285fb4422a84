"""Many hosts, as local processes: bundles on an S3 root (a real moto_server), the trainer
job publishing to it, ``recall serve`` replicas that download into their own caches,
behind the real nginx (tests/deploy/test_deploy.py's harness).

- Train -> publish to S3 -> two replicas pull, verify, serve; a second training publishes
  under a bounded request loop: no request fails, both replicas follow.
- The store killed during a replica's download, then restarted: the old bundle keeps
  serving, then the swap completes; a replica started while the store is down serves
  from its cache and says so in /v1/replica.
- Two ``recall publish`` racing for CURRENT: exactly one wins, the other exits 4.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from recall.index.build import build_index
from recall.index.roots import S3Location, S3Root
from tests.deploy.test_deploy import (
    TRAIN_SCRIPT,
    Processes,
    _nginx_binary,
    _service_env,
    _trainer_env,
    processes,
    replicas_behind_nginx,
)
from tests.deploy.traffic import ready_id, recall_traffic, switch_watch
from tests.index_data import FAST_FLAT, clustered, write_vectors_bundle
from tests.live import free_port
from tests.moto_server import BUCKET, MotoServer, moto_server, s3_environment
from tests.serve_process import wait_for

__all__ = ["processes"]  # the fixture, used by name

logger = logging.getLogger(__name__)

ROOT_URL = f"s3://{BUCKET}/prod"
POLL_S = 0.5


def _publish_job(tmp_path: Path, moto: MotoServer, seed: int) -> tuple[str, float]:
    """The trainer job onto the S3 root; (the bundle id it published, seconds it took)."""
    env = {
        **_trainer_env(tmp_path, tmp_path / "unused", seed),
        **moto.env(),
        "RECALL_ROOT": ROOT_URL,
        "TRAINER_BUNDLES": str(tmp_path / "built"),
    }
    started = time.perf_counter()
    done = subprocess.run(
        ["sh", str(TRAIN_SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"to {ROOT_URL}" in done.stderr
    with s3_environment(moto):
        current = S3Root(S3Location.parse(ROOT_URL)).current_id()
    assert current is not None
    return current, time.perf_counter() - started


def _replica_env(moto: MotoServer, port: int, cache: Path) -> dict[str, str]:
    env = _service_env(Path("unused"), port)
    env.update(moto.env())
    env.update(
        {
            "RECALL_ROOT": ROOT_URL,
            "RECALL_CACHE_DIR": str(cache),
            "RECALL_RELOAD_INTERVAL_S": str(POLL_S),
        }
    )
    return env


def _replica(url: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{url}/v1/replica", timeout=5).json()
    return body


def _big_bundle(local: Path, n: int, items: int) -> str:
    """A bundle of ``items`` items built locally (not published): a long download."""
    vectors, users = clustered(items, 200, 64, seed=n)
    path = write_vectors_bundle(local, vectors, users, bundle_id=f"20270101T0000{n:02d}Z-big000")
    build_index(path, FAST_FLAT)
    return path.name


def _recall(moto: MotoServer, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``recall ARGS`` on the S3 store ``moto``, started; its stderr goes to ``log``."""
    with log.open("wb") as err:
        return subprocess.Popen(
            ["recall", *args],
            env={**_service_env(Path("unused"), 1), **moto.env()},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


@pytest.mark.slow
def test_replicas_follow_an_s3_root_through_nginx(tmp_path: Path, processes: Processes) -> None:
    nginx = _nginx_binary()
    with moto_server(tmp_path / "moto.log") as moto:
        old_id, first_s = _publish_job(tmp_path, moto, seed=0)
        logger.info("trainer job: published %s to %s in %.1f s", old_id, ROOT_URL, first_s)

        caches = [tmp_path / f"cache-{i}" for i in (1, 2)]
        fleet = replicas_behind_nginx(
            processes,
            nginx,
            tmp_path / "nginx",
            old_id,
            lambda i, port: _replica_env(moto, port, caches[i]),
        )
        replicas, procs, lb = fleet.urls, fleet.procs, fleet.lb
        assert all((c / "CURRENT").read_text().strip() == old_id for c in caches)

        built = tmp_path / "built"
        users = np.load(built / old_id / "user_ids.npy", allow_pickle=False)
        items = np.load(built / old_id / "item_ids.npy", allow_pickle=False)
        with (
            recall_traffic(lb, users[:500].tolist(), items.tolist()) as seen,
            switch_watch(replicas, old_id) as switched,
        ):
            new_id, retrain_s = _publish_job(tmp_path, moto, seed=1)
            published_at = time.time()  # CURRENT switched at most this long ago
        assert new_id != old_id
        assert len(switched) == 2, switched
        both_s = max(switched.values()) - published_at
        report = {
            "retrain_seconds": round(retrain_s, 2),
            "requests_total": len(seen.sent),
            "failures": len(seen.failures),
            "current_to_both_replicas_s_at_most": round(both_s, 3),
            "poll_interval_s": POLL_S,
        }
        (tmp_path / "s3-deploy.json").write_text(json.dumps(report, indent=2))
        logger.info("S3 deployment test: %s", json.dumps(report))
        assert seen.failures == [], seen.failures[:5]
        assert {bundle for _, bundle in seen.sent} <= {old_id, new_id}
        assert seen.sent[-1][1] == new_id
        assert both_s < POLL_S * 1.2 + 10, report  # a poll (jittered) + download + verify

        # The store killed while replica 1 downloads a large bundle.
        big_id = _big_bundle(tmp_path / "big", 1, items=300_000)
        staging = caches[0] / f".download-{big_id}"
        big_path = str(tmp_path / "big" / big_id)
        publish = _recall(moto, tmp_path / "publish.log", "publish", big_path, "--root", ROOT_URL)
        deadline = time.monotonic() + 120
        while not (staging.is_dir() and any(f.stat().st_size for f in staging.iterdir())):
            assert time.monotonic() < deadline, "replica 1 never started the download"
            time.sleep(0.002)
        moto.kill()
        publish.wait(timeout=60)
        time.sleep(3 * POLL_S)
        # replica 1 keeps serving the old bundle and shows the outage (replica 2 may have
        # finished its own download before the kill)
        assert ready_id(replicas[0]) == new_id
        assert _replica(replicas[0])["store_reachable"] is False
        assert not (caches[0] / big_id).exists()

        fresh_port = free_port()
        fresh = f"http://127.0.0.1:{fresh_port}"
        fresh_cache = tmp_path / "cache-3"
        shutil.copytree(caches[0], fresh_cache)  # a restarted replica 1: its cache volume
        proc = processes.start(
            "service-3", ["recall", "serve"], _replica_env(moto, fresh_port, fresh_cache)
        )
        wait_for(proc, lambda: ready_id(fresh) == new_id, fresh)
        info = _replica(fresh)
        assert info["serving_from_cache"] is True and info["store_reachable"] is False
        assert "serving the cached bundle" in (tmp_path / "service-3.log").read_text()

        moto.start()  # empty again (moto keeps objects in memory): publish once more
        log = tmp_path / "republish.log"
        republish = _recall(moto, log, "publish", big_path, "--root", ROOT_URL)
        assert republish.wait(timeout=300) == 0, log.read_text()[-2000:]
        for url, p in zip([*replicas, fresh], [*procs, proc], strict=True):
            wait_for(p, lambda u=url: ready_id(u) == big_id, url)
        info = _replica(fresh)
        assert info["serving_from_cache"] is False and info["store_reachable"] is True
        assert "resuming the download" in (tmp_path / "service-1.log").read_text()


@pytest.mark.slow
def test_two_racing_publishes_one_wins(tmp_path: Path) -> None:
    """A large publish notes CURRENT, then uploads for seconds; a small one, started once
    the large one's first object is in the bucket, switches CURRENT meanwhile. The large
    one's conditional write of CURRENT must then fail: exit 4, CURRENT is the winner's."""
    with moto_server(tmp_path / "moto.log") as moto:
        big_id = _big_bundle(tmp_path, 1, items=300_000)
        vectors, users = clustered(300, 50, 8, seed=2)
        small = write_vectors_bundle(tmp_path, vectors, users, bundle_id="20270101T000002Z-sm")
        build_index(small, FAST_FLAT)
        client = moto.client()
        big = _recall(
            moto, tmp_path / "big.log", "publish", str(tmp_path / big_id), "--root", ROOT_URL
        )
        deadline = time.monotonic() + 120
        while not client.list_objects_v2(Bucket=BUCKET, Prefix=f"prod/{big_id}/").get("KeyCount"):
            assert time.monotonic() < deadline and big.poll() is None
            time.sleep(0.01)
        small_run = _recall(moto, tmp_path / "small.log", "publish", str(small), "--root", ROOT_URL)
        codes = {big_id: big.wait(timeout=300), small.name: small_run.wait(timeout=300)}
        logs = {
            big_id: (tmp_path / "big.log").read_text(),
            small.name: (tmp_path / "small.log").read_text(),
        }
        assert sorted(codes.values()) == [0, 4], (codes, logs)
        winner = next(k for k, v in codes.items() if v == 0)
        loser = next(k for k, v in codes.items() if v == 4)
        assert "another publish replaced CURRENT while this one ran" in logs[loser]
        assert f"now names {winner}" in logs[loser]
        with s3_environment(moto):
            assert S3Root(S3Location.parse(ROOT_URL)).current_id() == winner
