"""Experiments served by a real uvicorn server on 127.0.0.1: sticky arms whose shares hold
over thousands of users, requests without a user id on control unless they name an arm,
a refused arm's users on control (counted), arms hot-swapped and the experiment stopped
under concurrent traffic with no failed request, an arm sharing CURRENT's bundle, and
Redis mode (a real redis-server) with the arm's users loaded by ``recall experiment
start --state-url``."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recall.cli import main
from recall.index import bundle as b
from recall.index.build import build_index
from recall.index.current import CURRENT
from recall.index.experiment import CONTROL, EXPERIMENT, arm_of, parse_experiment
from recall.index.roots import S3Location, S3Root
from recall.service.app import create_app
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from tests.conftest import PUBLISHED_ID
from tests.index.test_verify import copy_bundle
from tests.index_data import FAST_FLAT, flip_a_byte, write_dataset_bundle
from tests.live import TOKEN, live_server, settings
from tests.moto_server import BUCKET, moto_server, s3_environment
from tests.redis_cluster import RedisCluster
from tests.redis_server import redis_server
from tests.service.test_reload import wait_until

CONTROL_ID = PUBLISHED_ID  # control is the published test bundle
CANARY_ID = "20260102T000000Z-cccccc"
OTHER_ID = "20260103T000000Z-dddddd"
BROKEN_ID = "20260104T000000Z-eeeeee"
POLL_S = 0.05
KNOWN = range(1, 401)
"""The user ids of the synthetic data set."""


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, synthetic: Dataset, small_config: TrainConfig
) -> Path:
    """CANARY_ID and OTHER_ID: ``synthetic``'s bundle with other random towers (other
    answers than control's); BROKEN_ID: one whose item vectors fail their sha256."""
    where = tmp_path_factory.mktemp("arm-bundles")
    for seed, bundle_id in ((3, CANARY_ID), (5, OTHER_ID), (7, BROKEN_ID)):
        bundle = write_dataset_bundle(where, synthetic, small_config, bundle_id, seed=seed)
        build_index(bundle, FAST_FLAT)
    flip_a_byte(where / BROKEN_ID)
    return where


@pytest.fixture
def root(tmp_path: Path, published_root: Path, bundles: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    copy_bundle(published_root, root)
    for bundle_id in (CANARY_ID, OTHER_ID, BROKEN_ID):
        shutil.copytree(bundles / bundle_id, root / bundle_id)
    (root / CURRENT).write_text(f"{CONTROL_ID}\n")
    return root


def start(root: Path, *arms: tuple[str, str, float], state_url: str | None = None) -> None:
    flags = [f for name, bundle, _ in arms for f in ("--arm", f"{name}={bundle}")]
    flags += [f for _, _, share in arms for f in ("--share", str(share))]
    more = ["--state-url", state_url] if state_url else []
    assert main(["experiment", "start", str(root), *flags, *more]) == 0


def stop(root: Path, *flags: str) -> None:
    assert main(["experiment", "stop", str(root), *flags]) == 0


def fallbacks(client: httpx.Client, arm: str) -> float:
    text = client.get("/metrics").text
    match = re.search(rf'recall_experiment_fallbacks_total\{{arm="{arm}"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_arms_are_sticky_and_their_shares_hold(root: Path) -> None:
    start(root, ("canary", CANARY_ID, 0.2), ("other", OTHER_ID, 0.3))
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    bundle_of = {CONTROL: CONTROL_ID, "canary": CANARY_ID, "other": OTHER_ID}
    app = create_app(settings(root, max_batch=500, max_batch_items=10_000, max_body_bytes=1 << 20))
    users = list(range(3000))  # 400 known; the others answered with the popular items
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        seen: dict[int, str] = {}
        for first in range(0, len(users), 500):
            batch = [
                {"user_id": u, "k": 1, "fallback": "popular"} for u in users[first : first + 500]
            ]
            response = client.post("/v1/recall/batch", json={"requests": batch})
            assert response.status_code == 200, response.text
            for user, result in zip(users[first:], response.json()["results"], strict=False):
                assert result["status"] == 200
                assert result["arm"] == arm_of(experiment, user)
                assert result["bundle_id"] == bundle_of[result["arm"]]
                seen[user] = result["arm"]
        shares = Counter(seen.values())
        # 3000 users: a share's standard error is at most 0.0092; 4 of them is a sure bound
        for arm, share in ((CONTROL, 0.5), ("canary", 0.2), ("other", 0.3)):
            assert abs(shares[arm] / len(users) - share) < 0.037, shares
        for user in users[:60]:  # one by one, in another order, the id as text: the same arm
            for user_id in (user, str(user)):
                body = {"user_id": user_id, "k": 3, "fallback": "popular"}
                answer = client.post("/v1/recall", json=body)
                assert answer.status_code == 200
                assert answer.json()["arm"] == seen[user]
                assert answer.headers["X-Bundle-Id"] == bundle_of[seen[user]]
        replica = client.get("/v1/replica").json()["experiment"]
        assert replica["id"] == experiment.id
        assert [(a["name"], a["state"]) for a in replica["arms"]] == [
            ("canary", "loaded"),
            ("other", "loaded"),
        ]


def test_requests_without_a_user_go_to_control_unless_they_name_an_arm(root: Path) -> None:
    start(root, ("canary", CANARY_ID, 0.2))
    with live_server(create_app(settings(root))) as url, httpx.Client(base_url=url) as client:
        item = client.post("/v1/recall", json={"vector": [0.1] * 17, "k": 1}).json()
        assert (item["arm"], item["bundle_id"]) == (CONTROL, CONTROL_ID)
        history = [item["items"][0]["item_id"]]
        for arm, bundle_id in ((None, CONTROL_ID), (CONTROL, CONTROL_ID), ("canary", CANARY_ID)):
            body: dict[str, Any] = {"history": history, "k": 5}
            if arm is not None:
                body["arm"] = arm
            answer = client.post("/v1/recall", json=body)
            assert answer.status_code == 200
            assert (answer.json()["arm"], answer.json()["bundle_id"]) == (arm or CONTROL, bundle_id)
            similar = client.get(
                f"/v1/items/{history[0]}/similar", params={"k": 3, **({"arm": arm} if arm else {})}
            )
            assert similar.status_code == 200 and similar.headers["X-Bundle-Id"] == bundle_id
            assert similar.json()["arm"] == (arm or CONTROL)
            posted = client.post(f"/v1/items/{history[0]}/similar", json={"k": 3, "arm": arm})
            assert posted.json()["bundle_id"] == bundle_id
        canary_items = client.post("/v1/recall", json={"history": history, "arm": "canary"})
        control_items = client.post("/v1/recall", json={"history": history})
        assert canary_items.json()["items"] != control_items.json()["items"]  # another model
        for body, problem in (
            ({"history": history, "arm": "nope"}, "no arm 'nope'"),
            ({"user_id": 1, "arm": "canary"}, "arm goes without user_id"),
            ({"history": history, "arm": "Bad Name"}, "pattern"),
        ):
            refused = client.post("/v1/recall", json=body)
            assert refused.status_code == 422, refused.text
            assert problem in refused.json()["error"]["message"]
        batch = [{"history": history, "arm": "canary"}, {"history": history, "arm": "nope"}]
        results = client.post("/v1/recall/batch", json={"requests": batch}).json()["results"]
        assert (results[0]["status"], results[0]["bundle_id"]) == (200, CANARY_ID)
        assert results[1]["status"] == 422


def test_a_refused_arm_leaves_its_users_on_control_counted_until_the_experiment_changes(
    root: Path,
) -> None:
    start(root, ("broken", CANARY_ID, 0.5))
    (root / EXPERIMENT).write_bytes(  # start refuses a broken bundle: write it as a bug would
        (root / EXPERIMENT).read_bytes().replace(CANARY_ID.encode(), BROKEN_ID.encode())
    )
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    with live_server(create_app(settings(root))) as url, httpx.Client(base_url=url) as client:
        users = [u for u in KNOWN if arm_of(experiment, u) == "broken"][:30]
        for user in users:
            answer = client.post("/v1/recall", json={"user_id": user, "k": 5})
            assert answer.status_code == 200
            assert (answer.json()["arm"], answer.json()["bundle_id"]) == (CONTROL, CONTROL_ID)
        assert fallbacks(client, "broken") == len(users)
        arm = client.get("/v1/replica").json()["experiment"]["arms"][0]
        assert (arm["state"], arm["bundle_id"]) == ("fallback", BROKEN_ID)
        assert "refused" in arm["reason"] and "/" not in arm["reason"]
        named = client.post("/v1/recall", json={"vector": [0.1] * 17, "arm": "broken"})
        assert named.json()["arm"] == CONTROL
        assert fallbacks(client, "broken") == len(users) + 1
        flip_a_byte(root / BROKEN_ID)  # repaired (the bit flipped back) ...
        admin = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/admin/reload", headers=admin).status_code == 200
        assert client.post("/v1/recall", json={"user_id": users[0]}).json()["arm"] == CONTROL
        stop(root)  # ... served once an experiment names it again
        start(root, ("broken", BROKEN_ID, 0.5))
        again = parse_experiment((root / EXPERIMENT).read_bytes())
        assert client.post("/v1/admin/reload", headers=admin).status_code == 200
        user = next(u for u in KNOWN if arm_of(again, u) == "broken")
        answer = client.post("/v1/recall", json={"user_id": user}).json()
        assert (answer["arm"], answer["bundle_id"]) == ("broken", BROKEN_ID)


def test_an_arm_on_currents_bundle_shares_it(root: Path) -> None:
    start(root, ("aa", CONTROL_ID, 0.5))
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    user = next(u for u in KNOWN if arm_of(experiment, u) == "aa")
    with live_server(create_app(settings(root))) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/v1/recall", json={"user_id": user, "k": 5}).json()
        assert (answer.get("arm"), answer.get("bundle_id")) == ("aa", CONTROL_ID), answer
        assert client.get("/v1/replica").json()["experiment"]["arms"][0]["state"] == "shared"
        maps = Path("/proc/self/maps").read_text()
        # mapped once: another copy would map the same files again
        assert maps.count(f"{root}/{CONTROL_ID}/{b.ITEM_VECTORS}") == 1


Answer = tuple[int, int, str, str]
"""(user, status, arm, bundle id) of one answer."""


class Traffic:
    """Threads sending recalls by user id until stopped; every answer kept."""

    def __init__(self, url: str, users: list[int], threads: int = 3) -> None:
        self.url, self.users = url, users
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            j = offset
            while not self._stop.is_set():
                user = self.users[j % len(self.users)]
                j += 1
                response = client.post("/v1/recall", json={"user_id": user, "k": 10})
                body = response.json()
                self.answers.append(
                    (user, response.status_code, body.get("arm", ""), body.get("bundle_id", ""))
                )

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def since(self, n: int) -> list[Answer]:
        return self.answers[n:]


def test_arms_swap_and_stop_under_traffic_without_a_failed_request(root: Path) -> None:
    users = list(KNOWN)[::3]
    app = create_app(settings(root, reload_interval_s=POLL_S))
    with live_server(app) as url, Traffic(url, users) as traffic:

        def answered(arm: str, bundle_id: str) -> bool:
            return any(a[2:] == (arm, bundle_id) for a in traffic.since(mark))

        def recent(mark: int, alike: Callable[[Answer], bool]) -> bool:
            """The last 30 answers since ``mark`` (of more than 50) are all ``alike``."""
            since = traffic.since(mark)
            return len(since) > 50 and all(alike(a) for a in since[-30:])

        mark = len(traffic.answers)
        start(root, ("canary", CANARY_ID, 0.4))
        wait_until(lambda: answered("canary", CANARY_ID))
        stop(root)
        mark = len(traffic.answers)
        wait_until(lambda: recent(mark, lambda a: a[2:] == (CONTROL, CONTROL_ID)))
        start(root, ("canary", OTHER_ID, 0.4))  # the arm on another bundle
        mark = len(traffic.answers)
        wait_until(lambda: answered("canary", OTHER_ID))
        stop(root, "--promote", "canary")  # OTHER_ID becomes CURRENT, then no experiment
        mark = len(traffic.answers)
        wait_until(lambda: recent(mark, lambda a: a[2:] == (CONTROL, OTHER_ID)))
    assert {status for _, status, _, _ in traffic.answers} == {200}
    pairs = {a[2:] for a in traffic.answers}
    assert pairs <= {
        (CONTROL, CONTROL_ID),
        ("canary", CANARY_ID),
        ("canary", OTHER_ID),
        (CONTROL, OTHER_ID),
    }
    assert len(traffic.answers) > 100  # two waits above saw more than 50 each


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a real redis-server of this test's own, or of the session's Redis
    Cluster (six redis-server processes), emptied first."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("shared_cluster")
        cluster.flush()
        yield cluster.url()
        return
    with redis_server(tmp_path / "redis") as server:
        yield server.url()


def test_redis_mode_serves_an_arm_from_its_users_in_the_store(root: Path, store_url: str) -> None:
    """``experiment start --state-url`` loads the arm's users: a Redis-mode replica (user
    files deleted from every bundle) answers the arm's users as a SQLite-mode replica
    of the canary alone does; an arm whose users were not loaded stays on control."""
    assert main(["publish", str(root / CONTROL_ID), "--state-url", store_url]) == 0
    start(root, ("canary", CANARY_ID, 0.5), state_url=store_url)
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    canary_only = root.parent / "canary-only"
    shutil.copytree(root / CANARY_ID, canary_only / CANARY_ID)
    (canary_only / CURRENT).write_text(f"{CANARY_ID}\n")
    for bundle_id in (CONTROL_ID, CANARY_ID):
        for name in (b.USER_IDS, b.USER_VECTORS, b.USER_SEEN, b.USER_HISTORY):
            (root / bundle_id / name).unlink()
    users = [u for u in KNOWN if arm_of(experiment, u) == "canary"][:20]
    in_store = create_app(settings(root, state_url=store_url))
    alone = create_app(settings(canary_only))
    with live_server(in_store) as a, live_server(alone) as c, httpx.Client(timeout=30) as client:
        for user in users:
            mine = client.post(f"{a}/v1/recall", json={"user_id": user, "k": 10}).json()
            theirs = client.post(f"{c}/v1/recall", json={"user_id": user, "k": 10}).json()
            assert (mine["arm"], mine["bundle_id"], mine["source"]) == ("canary", CANARY_ID, "user")
            assert [i["item_id"] for i in mine["items"]] == [i["item_id"] for i in theirs["items"]]
            np.testing.assert_allclose(
                [i["score"] for i in mine["items"]],
                [i["score"] for i in theirs["items"]],
                rtol=2e-6,
                atol=2e-6,
            )
    stop(root)
    start(root, ("other", OTHER_ID, 0.5))  # no --state-url: its users are not in the store
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    user = next(u for u in KNOWN if arm_of(experiment, u) == "other")
    with (
        live_server(create_app(settings(root, state_url=store_url))) as a,
        httpx.Client(base_url=a) as client,
    ):
        answer = client.post("/v1/recall", json={"user_id": user, "k": 5}).json()
        assert (answer["arm"], answer["bundle_id"]) == (CONTROL, CONTROL_ID)
        arm = client.get("/v1/replica").json()["experiment"]["arms"][0]
        assert arm["state"] == "fallback"
        assert fallbacks(client, "other") == 1


def test_an_s3_root_serves_the_arms_through_the_cache(root: Path, tmp_path: Path) -> None:
    """EXPERIMENT read from the bucket (conditional polls), the arm's bundle downloaded into
    the replica's cache and kept there while the arm runs, whatever CURRENT does."""
    with moto_server(tmp_path / "moto.log") as moto, s3_environment(moto):
        s3 = S3Root(S3Location(BUCKET, "exp"))
        for bundle_id in (CANARY_ID, OTHER_ID, CONTROL_ID):  # CONTROL_ID last: CURRENT
            s3.publish(root / bundle_id, keep=10)
        main(["experiment", "start", s3.url, "--arm", f"canary={CANARY_ID}", "--share", "0.5"])
        experiment = s3.experiment().experiment
        assert experiment is not None
        user = next(u for u in KNOWN if arm_of(experiment, u) == "canary")
        cache = tmp_path / "cache"
        app = create_app(settings(s3.url, cache_dir=cache, cache_keep=1, reload_interval_s=POLL_S))
        with live_server(app) as url, httpx.Client(base_url=url) as client:

            def served(arm: str, bundle_id: str) -> bool:
                answer = client.post("/v1/recall", json={"user_id": user, "k": 5}).json()
                return (answer["arm"], answer["bundle_id"]) == (arm, bundle_id)

            assert served("canary", CANARY_ID)
            s3.publish(root / OTHER_ID, keep=10)  # a new CURRENT: the cache prunes to 1 + arms
            wait_until(lambda: client.get("/readyz").json()["bundle_id"] == OTHER_ID)
            assert served("canary", CANARY_ID)
            assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [CANARY_ID, OTHER_ID]
            assert main(["experiment", "stop", s3.url]) == 0
            wait_until(lambda: served(CONTROL, OTHER_ID))
            assert client.get("/v1/replica").json()["experiment"] is None


def test_an_invalid_experiment_file_keeps_the_experiment_served_logged_once(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start(root, ("canary", CANARY_ID, 0.5))
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    user = next(u for u in KNOWN if arm_of(experiment, u) == "canary")
    app = create_app(settings(root, reload_interval_s=POLL_S))
    with live_server(app) as url, httpx.Client(base_url=url) as client:

        def arm() -> str:
            return str(client.post("/v1/recall", json={"user_id": user, "k": 3}).json()["arm"])

        assert arm() == "canary"
        caplog.set_level(logging.INFO, logger="recall.service.experiments")
        (root / EXPERIMENT).write_text('{"format": 1, "id": "x"')  # cut short
        time.sleep(12 * POLL_S)  # a dozen polls
        assert arm() == "canary"
        refused = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(refused) == 1 and "EXPERIMENT refused" in refused[0].getMessage()
        stop(root)  # removes the invalid file: no experiment
        wait_until(lambda: arm() == CONTROL)
