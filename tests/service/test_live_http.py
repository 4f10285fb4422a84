"""Live recall quality over real uvicorn servers: a scripted sequence of recalls and events
gives exactly the expected live events and hits per K in ``GET /v1/experiment`` and
``/metrics`` (impressions, users never recalled by id and events before their list ignored),
on SQLite, a real redis-server and the real Redis Cluster; two servers on one store report
the same numbers; the store down leaves recall answering (the list not remembered, counted)
and events 503."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis

from recall.index.current import CURRENT
from recall.index.experiment import CONTROL, EXPERIMENT, parse_experiment
from recall.service.app import create_app
from recall.service.live_quality import wilson
from recall.service.state import sqlite_url
from tests.live import live_server, settings
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer, load_users, redis_server
from tests.service.test_experiments import CANARY_ID, CONTROL_ID, bundles, root, start

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
