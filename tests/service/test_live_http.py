"""Live recall quality over real uvicorn servers: a scripted sequence of recalls and events
gives exactly the expected live events and hits per K in ``GET /v1/experiment`` and
``/metrics`` (impressions, users never recalled by id and events before their list ignored),
on SQLite, a real redis-server and the real Redis Cluster; two servers on one store report
the same numbers; the store down leaves recall answering (the list not remembered, counted)
and events 503."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis

from recall.index.build import build_index
from recall.index.current import CURRENT
from recall.index.experiment import CONTROL, EXPERIMENT, Experiment, arm_of, parse_experiment
from recall.service.app import create_app
from recall.service.live_quality import wilson
from recall.service.state import ServedList, open_store, sqlite_url
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from tests.index_data import FAST_FLAT, write_dataset_bundle
from tests.live import TOKEN, live_server, settings
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer, load_users, redis_server
from tests.service.test_experiments import CANARY_ID, CONTROL_ID, KNOWN, bundles, root, start

__all__ = ["bundles", "root"]

UNKNOWN_ITEM = 987_654_321


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis", "redis+cluster"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path, published_root: Path) -> str:
    """An empty store of each backend (the Redis ones with the bundle's users loaded)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "events.sqlite")
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("shared_redis")
        with redis.Redis.from_url(server.url()) as client:
            client.flushall()
        url = server.url()
    else:
        cluster: RedisCluster = request.getfixturevalue("shared_cluster")
        cluster.flush()
        url = cluster.url()
    load_users(url, published_root / (published_root / CURRENT).read_text().strip())
    return url


def recall(client: httpx.Client, user: int, k: int) -> list[int]:
    answer = client.post("/v1/recall", json={"user_id": user, "k": k})
    assert answer.status_code == 200, answer.text
    assert answer.json()["arm"] == "control"
    return [item["item_id"] for item in answer.json()["items"]]


def post(client: httpx.Client, *events: dict[str, object]) -> None:
    answer = client.post("/v1/events", json={"events": list(events)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["rejected"] == []


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return 0.0 if found is None else float(found.group(1))


def test_scripted_recalls_and_events_count_exactly(published_root: Path, state_url: str) -> None:
    with ExitStack() as stack:
        urls = [
            stack.enter_context(
                live_server(create_app(settings(published_root, state_url=state_url)))
            )
            for _ in range(2)
        ]
        one, two = (stack.enter_context(httpx.Client(base_url=u, timeout=30)) for u in urls)
        before = time.time() - 60
        a, b = 11, 12
        list_a = recall(one, a, 100)
        list_b = recall(two, b, 20)  # the other server: the lists live in the store
        not_in_b = next(i for i in list_a if i not in list_b)
        post(
            one,
            {"user_id": a, "item_id": list_a[0]},  # rank 0: a hit at 10, 50, 100
            {"user_id": a, "item_id": list_a[30]},  # rank 30: at 50, 100
            {"user_id": a, "item_id": UNKNOWN_ITEM},  # unknown to the bundle: a miss
            {"user_id": a, "item_id": list_a[1], "type": "impression"},  # never counted
            {"user_id": a, "item_id": list_a[2], "timestamp": before},  # before its list
            {"user_id": 13, "item_id": list_a[0]},  # never recalled by id
        )
        post(
            two,
            {"user_id": str(b), "item_id": list_b[5]},  # "12" is user 12: rank 5
            {"user_id": b, "item_id": not_in_b},  # b was served 20 items: a miss
        )
        one.post("/v1/recall", json={"history": [list_a[0]], "k": 5})  # no user id: no list
        reports = [c.get("/v1/experiment") for c in (one, two)]
        assert [r.status_code for r in reports] == [200, 200]
        assert reports[0].json() == reports[1].json()  # one store, one answer
        body = reports[0].json()
        assert body["experiment"] is None and body["ks"] == [10, 50, 100]
        (control,) = body["arms"]
        assert control["events"] == 5
        assert control["hits"] == {"10": 2, "50": 3, "100": 3}
        assert control["bundle_ids"] == [(published_root / CURRENT).read_text().strip()]
        value, low, high = wilson(3, 5)  # type: ignore[misc]
        assert control["hr"]["50"] == {"value": value, "low": low, "high": high}
        assert sum(s["events"] for s in body["series"]) == 5
        metrics = [c.get("/metrics").text for c in (one, two)]
        events = [metric(m, "recall_live_events_total", arm="control") for m in metrics]
        assert events == [3.0, 2.0]  # per process: Prometheus sums the replicas
        assert [metric(m, "recall_live_hits_total", arm="control", k="10") for m in metrics] == [
            1.0,
            1.0,
        ]


def test_sqlite_store_lost_recall_answers_events_503(published_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    app = create_app(settings(published_root, state_url=sqlite_url(path)))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        recall(client, 21, 10)  # the store opened, healthy
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        deadline = time.monotonic() + 10
        while (
            client.post("/v1/events", json={"events": [{"user_id": 21, "item_id": 1}]}).status_code
            != 503
        ):
            assert time.monotonic() < deadline, "the lost file was never noticed"
            time.sleep(0.05)
        answer = client.post("/v1/recall", json={"user_id": 21, "k": 10})
        assert answer.status_code == 200 and answer.json()["fresh"] is False
        text = client.get("/metrics").text
        assert metric(text, "recall_live_unremembered_total", reason="unread") >= 1
        assert client.get("/v1/experiment").status_code == 503


def test_redis_down_recall_answers_events_503(published_root: Path, tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as server:
        load_users(server.url(), published_root / (published_root / CURRENT).read_text().strip())
        app = create_app(settings(published_root, state_url=server.url(), state_timeout_s=0.2))
        with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            recall(client, 31, 10)
            server.kill()
            answer = client.post("/v1/recall", json={"user_id": 31, "k": 10, "fallback": "popular"})
            assert answer.status_code == 200 and answer.json()["fresh"] is False
            events = client.post("/v1/events", json={"events": [{"user_id": 31, "item_id": 1}]})
            assert events.status_code == 503
            assert events.json()["error"]["code"] == "state_unavailable"
            text = client.get("/metrics").text
            assert metric(text, "recall_live_unremembered_total", reason="unread") >= 1
            assert metric(text, "recall_live_events_total", arm="control") == 0


def test_arms_of_an_experiment_are_counted_apart(root: Path) -> None:
    """Batch recalls of 60 users with an experiment running, then one event per user: its
    top-1 item for even users, its 60th for odd ones; each arm gets exactly its users'."""
    start(root, ("canary", CANARY_ID, 0.5))
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    app = create_app(settings(root, max_batch=60, max_batch_items=6000, max_body_bytes=1 << 20))
    users = list(range(1, 61))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        batch = [{"user_id": u, "k": 100} for u in users]
        results = client.post("/v1/recall/batch", json={"requests": batch}).json()["results"]
        arms = {u: r["arm"] for u, r in zip(users, results, strict=True)}
        events = [
            {"user_id": u, "item_id": r["items"][0 if u % 2 == 0 else 59]["item_id"]}
            for u, r in zip(users, results, strict=True)
        ]
        post(client, *events)
        body = client.get("/v1/experiment").json()
    assert body["experiment"]["id"] == experiment.id
    by_arm = {a["name"]: a for a in body["arms"]}
    assert [(a["name"], a["share"]) for a in body["arms"]] == [("control", 0.5), ("canary", 0.5)]
    for arm, bundle_id in ((CONTROL, CONTROL_ID), ("canary", CANARY_ID)):
        mine = [u for u in users if arms[u] == arm]
        even = sum(u % 2 == 0 for u in mine)
        assert by_arm[arm]["events"] == len(mine) > 0
        assert by_arm[arm]["hits"] == {"10": even, "50": even, "100": len(mine)}
        assert by_arm[arm]["bundle_ids"] == [bundle_id]
    assert [d["k"] for d in body["differences"]] == ["10", "50", "100"]


TEXT_ID = "20260105T000000Z-ffffff"
"""An arm bundle of the synthetic data set whose user and item ids are typed as text."""


@pytest.fixture(scope="module")
def text_ids_bundle(
    tmp_path_factory: pytest.TempPathFactory, synthetic: Dataset, small_config: TrainConfig
) -> Path:
    """TEXT_ID: ``synthetic``'s bundle (another random tower) with its ids as strings
    (``"7"`` where control has ``7``), as an imported or relabelled model may have them."""
    as_text = replace(
        synthetic, user_ids=synthetic.user_ids.astype(str), item_ids=synthetic.item_ids.astype(str)
    )
    bundle = write_dataset_bundle(
        tmp_path_factory.mktemp("text-ids"), as_text, small_config, TEXT_ID, seed=11
    )
    build_index(bundle, FAST_FLAT)
    return bundle


@pytest.fixture(params=["sqlite", "redis", "redis+cluster"])
def arm_store(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite, each server's own), or an emptied Redis / Redis Cluster URL."""
    if request.param == "sqlite":
        return None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("shared_redis")
        with redis.Redis.from_url(server.url()) as client:
            client.flushall()
        return server.url()
    cluster: RedisCluster = request.getfixturevalue("shared_cluster")
    cluster.flush()
    return cluster.url()


def test_an_arm_typing_ids_otherwise_than_control_is_counted_and_fresh(
    root: Path, text_ids_bundle: Path, arm_store: str | None
) -> None:
    """Control's ids are integers, the arm's text: the arm's users' lists, events and live
    counts meet under one key (control's id), items match as spelled ("42" is 42), and
    the arm's recalls see the users' new events."""
    shutil.copytree(text_ids_bundle, root / TEXT_ID)
    if arm_store is not None:
        load_users(arm_store, root / CONTROL_ID)
    start(root, ("text", TEXT_ID, 0.5), state_url=arm_store)
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    users = list(KNOWN)[:40]
    arms = {u: arm_of(experiment, u) for u in users}
    assert set(arms.values()) == {CONTROL, "text"}
    overrides = {} if arm_store is None else {"state_url": arm_store}
    with (
        live_server(create_app(settings(root, **overrides))) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        events = []
        for user in users:
            answer = client.post("/v1/recall", json={"user_id": user, "k": 100}).json()
            assert (answer["arm"], answer["fresh"]) == (arms[user], True), answer
            items = [i["item_id"] for i in answer["items"]]
            assert {type(i) for i in items} == {str if arms[user] == "text" else int}
            # the client posts the ids it was given, and spells the user either way
            spelled: int | str = str(user) if user % 2 else user
            events += [{"user_id": spelled, "item_id": items[r]} for r in (0, 60)]
        post(client, *events)
        by_arm = {a["name"]: a for a in client.get("/v1/experiment").json()["arms"]}
        for arm, bundle_id in ((CONTROL, CONTROL_ID), ("text", TEXT_ID)):
            n = sum(a == arm for a in arms.values())
            assert by_arm[arm]["events"] == 2 * n
            assert by_arm[arm]["hits"] == {"10": n, "50": n, "100": 2 * n}
            assert by_arm[arm]["bundle_ids"] == [bundle_id]
        for user in (u for u in users if arms[u] == "text"):
            again = client.post("/v1/recall", json={"user_id": user, "k": 5}).json()
            assert (again["arm"], again["fresh_events"]) == ("text", 2), again


def test_a_batch_under_experiment_swaps_files_each_list_under_its_arms_experiment(
    root: Path,
) -> None:
    """Two experiments (arm ``a``, then ``b``, other salts) swapped as fast as the server
    takes them while batches of recalls by user id run: every list remembered is filed
    under an experiment that assigns its user the list's arm."""
    start(root, ("a", CANARY_ID, 0.5))
    first = parse_experiment((root / EXPERIMENT).read_bytes())
    arm_b = {**first.arms[0].model_dump(), "name": "b"}
    second = Experiment.model_validate(
        {**first.model_dump(), "id": first.id + "-b", "salt": "0" * 16, "arms": [arm_b]}
    )
    experiments = {e.id: e for e in (first, second)}
    store = sqlite_url(root.parent / "state.sqlite")
    app = create_app(
        settings(
            root,
            state_url=store,
            max_batch=300,
            max_batch_items=300,
            max_body_bytes=1 << 20,
        )
    )
    swapping = threading.Event()
    reloads: list[int] = []  # the status of each swap's reload

    def swap(url: str) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        staged = root.parent / "EXPERIMENT.tmp"  # a new file each time: a new key
        with httpx.Client(base_url=url, timeout=30) as client:
            while not swapping.is_set():
                staged.write_bytes((first, second)[len(reloads) % 2].to_json())
                staged.replace(root / EXPERIMENT)
                reloads.append(client.post("/v1/admin/reload", headers=headers).status_code)

    users: list[int] = []  # new users in every batch: every list stays
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        swapper = threading.Thread(target=swap, args=(url,))
        swapper.start()
        try:
            deadline = time.monotonic() + 60
            while len(users) < 12 * 300 or len(reloads) < 40:  # batches under many swaps
                assert time.monotonic() < deadline, f"{len(reloads)} swaps in 60 s"
                new = list(range(10_000 + len(users), 10_300 + len(users)))
                batch = [{"user_id": u, "k": 1, "fallback": "popular"} for u in new]
                answer = client.post("/v1/recall/batch", json={"requests": batch})
                assert answer.status_code == 200, answer.text
                users += new
        finally:
            swapping.set()
            swapper.join()
    assert set(reloads) == {200}
    lists = asyncio.run(served_lists(store, users))
    filed = Counter(s.experiment_id for s in lists if s is not None)
    assert set(filed) == set(experiments) and sum(filed.values()) == len(users)
    wrong = [
        (s.user_id, s.experiment_id, s.arm)
        for s in lists
        if s is not None and s.arm != arm_of(experiments[s.experiment_id], s.user_id)
    ]
    assert not wrong, f"{len(wrong)} lists filed under an experiment without their arm"


async def served_lists(url: str, users: list[int]) -> list[ServedList | None]:
    """The served lists the store at ``url`` holds for ``users``."""
    store = open_store(url, timeout_s=30)
    try:
        return await store.served(users)
    finally:
        await store.close()


def test_events_stored_while_the_served_lists_cannot_be_read_are_counted_as_uncounted(
    published_root: Path, tmp_path: Path
) -> None:
    """A Redis paused past the read bound but not the write bound: the events are stored,
    not counted in the live numbers, and ``recall_live_uncounted_total`` says how many."""
    with redis_server(tmp_path / "redis") as server:
        load_users(server.url(), published_root / (published_root / CURRENT).read_text().strip())
        app = create_app(settings(published_root, state_url=server.url(), state_timeout_s=0.05))
        with (
            live_server(app) as url,
            httpx.Client(base_url=url, timeout=30) as client,
            redis.Redis.from_url(server.url()) as admin,
        ):
            items = recall(client, 41, 100)
            admin.execute_command("CLIENT", "PAUSE", 600, "ALL")  # 600 ms: writes wait 1 s
            post(
                client,
                *({"user_id": 41, "item_id": i} for i in items[:3]),
                {"user_id": 41, "item_id": items[3], "type": "impression"},  # never counted
            )
            text = client.get("/metrics").text
            assert metric(text, "recall_live_uncounted_total", reason="read_failed") == 3
            assert metric(text, "recall_state_errors_total", op="served") >= 1
            assert metric(text, "recall_events_total", result="stored") == 4
            assert client.get("/v1/experiment").json()["arms"][0]["events"] == 0
            post(client, {"user_id": 41, "item_id": items[4]})  # read again: counted
            text = client.get("/metrics").text
            assert metric(text, "recall_live_uncounted_total", reason="read_failed") == 3
            assert client.get("/v1/experiment").json()["arms"][0]["events"] == 1
