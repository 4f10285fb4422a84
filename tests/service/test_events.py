"""POST /v1/events and recall from fresh events, over a real uvicorn server and a real
SQLite state store (and a real redis-server for the store-down cases).

Expected vectors are built here with the tower directly (the bundle's training window
followed by the new item rows, through ``encode_encoded`` with the user's stored
features); expected top-k lists by brute force (the test bundle's index is Flat: exact).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recall.client import Query, RecallClient, RecallResult, StateUnavailable
from recall.index.current import CURRENT
from recall.index.ids import IdMap
from recall.index.publish import publish
from recall.service.app import create_app
from recall.service.deps import app_state_of
from recall.service.fresh import user_vectors
from recall.service.recaller import ServingBundle
from recall.service.settings import STATE_FILE
from recall.service.state import sqlite_url
from tests.index.test_history import make_v1
from tests.index.test_verify import copy_bundle
from tests.live import live_server, settings
from tests.redis_server import load_users, redis_server
from tests.service.test_metrics_workers import recall_serve

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def bundle(published_root: Path) -> ServingBundle:
    loaded = ServingBundle.load(published_root / (published_root / CURRENT).read_text().strip())
    assert loaded.history is not None and loaded.trained_until is not None  # a v2 bundle
    return loaded


@pytest.fixture(scope="module")
def client(published_root: Path) -> Iterator[httpx.Client]:
    """One server with its own empty SQLite store; each test uses users of its own."""
    with (
        live_server(create_app(settings(published_root))) as url,
        httpx.Client(base_url=url) as c,
    ):
        yield c


def user(bundle: ServingBundle, row: int) -> int:
    user_id: int = bundle.user_ids.ids[row].item()
    return user_id


def unseen_items(bundle: ServingBundle, row: int, n: int, skip: int = 0) -> list[int]:
    """``n`` item ids the user never interacted with in training."""
    seen = set(bundle.seen(row).tolist())
    rows = [r for r in range(len(bundle.item_ids)) if r not in seen][skip : skip + n]
    return [bundle.item_ids.ids[r].item() for r in rows]


def fresh_vector(bundle: ServingBundle, row: int, item_ids: list[Any]) -> np.ndarray:
    """The user's vector from their training window followed by ``item_ids``."""
    history = bundle.history
    assert history is not None
    rows = bundle.item_ids.rows(item_ids)
    window = np.concatenate([history.window(row)[0], rows[rows >= 0]])
    window = window[-bundle.tower.spec.history_length :]
    vector: np.ndarray = bundle.tower.encode_encoded(
        [window], history.categorical[row : row + 1], history.numeric[row : row + 1]
    )[0]
    return vector


def top_k(bundle: ServingBundle, vector: np.ndarray, exclude: np.ndarray, k: int) -> list[Any]:
    scores = np.asarray(bundle.item_vectors) @ vector
    scores[exclude] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    ids: list[Any] = bundle.item_ids.ids[top].tolist()
    return ids


def metric(text: str, sample: str) -> float:
    """The value of one sample (name and labels as written) of a Prometheus text."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found is not None, sample
    return float(found.group(1))


def post_events(client: httpx.Client, events: list[Any]) -> dict[str, Any]:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def recall(client: httpx.Client, **request: Any) -> dict[str, Any]:
    response = client.post("/v1/recall", json=request)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_events_change_the_next_recall(client: httpx.Client, bundle: ServingBundle) -> None:
    row = 3
    user_id = user(bundle, row)
    assert bundle.trained_until is not None
    before = recall(client, user_id=user_id, k=20)
    assert before["source"] == "user" and before["fresh_events"] == 0 and before["fresh"] is True
    items = unseen_items(bundle, row, 3)
    t = bundle.trained_until
    answer = post_events(
        client,
        [{"user_id": user_id, "item_id": i, "timestamp": t + 10 + j} for j, i in enumerate(items)],
    )
    assert answer == {"accepted": 3, "rejected": [], "unknown_items": 0}
    after = recall(client, user_id=user_id, k=20)
    assert after["source"] == "user+events" and after["fresh_events"] == 3 and after["fresh"]
    expected = fresh_vector(bundle, row, items)
    exclude = np.concatenate([bundle.seen(row), bundle.item_ids.rows(items)])
    assert [i["item_id"] for i in after["items"]] == top_k(bundle, expected, exclude, 20)
    scores = (
        np.asarray(bundle.item_vectors)[
            bundle.item_ids.rows([i["item_id"] for i in after["items"]])
        ]
        @ expected
    )
    np.testing.assert_allclose([i["score"] for i in after["items"]], scores, **TOLERANCE)
    assert not set(items) & {i["item_id"] for i in after["items"]}  # exclude_seen covers them
    assert after["items"] != before["items"]
    # exclude_seen false: the fresh items are candidates again (exact top-20, nothing dropped)
    unfiltered = recall(client, user_id=user_id, k=20, exclude_seen=False)
    assert [i["item_id"] for i in unfiltered["items"]] == top_k(
        bundle, expected, np.zeros(0, np.int64), 20
    )


def test_without_fresh_events_the_vector_is_the_bundles(
    client: httpx.Client, bundle: ServingBundle
) -> None:
    row = 4
    user_id = user(bundle, row)
    assert bundle.trained_until is not None
    # an event at or before trained_until was (or could have been) trained on: not fresh
    replay = unseen_items(bundle, row, 1)
    post_events(
        client, [{"user_id": user_id, "item_id": replay[0], "timestamp": bundle.trained_until}]
    )
    for path_id in (user_id, str(user_id)):
        body = client.get(f"/v1/users/{path_id}/vector").json()
        assert body["source"] == "user" and body["fresh_events"] == 0 and body["fresh"] is True
        assert body["id"] == user_id
        assert np.array_equal(np.asarray(body["vector"], np.float32), bundle.user_vectors[row])
    assert recall(client, user_id=user_id, k=5)["source"] == "user"


def test_fresh_vectors_through_every_route(client: httpx.Client, bundle: ServingBundle) -> None:
    row, other = 5, 6
    user_id, other_id = user(bundle, row), user(bundle, other)
    assert bundle.trained_until is not None
    items = unseen_items(bundle, row, 2, skip=10)
    # "7"-style string ids name the same user and items of this int-typed bundle
    post_events(
        client,
        [
            {
                "user_id": str(user_id),
                "item_id": str(items[0]),
                "timestamp": bundle.trained_until + 1,
            },
            {"user_id": user_id, "item_id": items[1], "timestamp": bundle.trained_until + 2},
        ],
    )
    expected = fresh_vector(bundle, row, items)
    one = client.get(f"/v1/users/{user_id}/vector").json()
    assert one["source"] == "user+events" and one["fresh_events"] == 2
    np.testing.assert_allclose(one["vector"], expected, **TOLERANCE)

    ids = [user_id, "nobody", other_id]
    many = client.post("/v1/users/vectors", json={"ids": ids})
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["fresh_events"] == [2, 0, 0] and body["missing"] == ["nobody"] and body["fresh"]
    np.testing.assert_allclose(body["vectors"][0], expected, **TOLERANCE)
    assert body["vectors"][1] is None
    assert np.array_equal(np.asarray(body["vectors"][2], np.float32), bundle.user_vectors[other])

    npy = client.post(
        "/v1/users/vectors", json={"ids": ids}, headers={"Accept": "application/x-npy"}
    )
    assert npy.status_code == 200
    assert npy.headers["x-missing-count"] == "1" and npy.headers["x-fresh-count"] == "1"
    assert npy.headers["x-fresh"] == "true"
    matrix = np.load(io.BytesIO(npy.content), allow_pickle=False)
    assert matrix.shape == (3, bundle.dim) and np.isnan(matrix[1]).all()
    np.testing.assert_allclose(matrix[0], expected, **TOLERANCE)
    assert np.array_equal(matrix[2], bundle.user_vectors[other])

    batch = client.post(
        "/v1/recall/batch",
        json={
            "requests": [
                {"user_id": user_id, "k": 5},
                {"user_id": other_id, "k": 5},
                {"user_id": "nobody", "k": 5},
                {"history": [items[0]], "k": 5},
                {"user_id": user_id, "k": 0},
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 404, 200, 422]
    assert [r.get("source") for r in results[:4]] == ["user+events", "user", None, "history"]
    assert [r.get("fresh_events") for r in results[:4]] == [2, 0, None, 0]
    exclude = np.concatenate([bundle.seen(row), bundle.item_ids.rows(items)])
    assert [i["item_id"] for i in results[0]["items"]] == top_k(bundle, expected, exclude, 5)


def test_a_user_known_only_from_events(client: httpx.Client, bundle: ServingBundle) -> None:
    items = [bundle.item_ids.ids[r].item() for r in (11, 12, 13)]
    missing = client.post("/v1/recall", json={"user_id": "newcomer-1", "k": 5})
    assert missing.status_code == 404
    assert client.get("/v1/users/newcomer-1/vector").status_code == 404
    answer = post_events(
        client,
        [{"user_id": "newcomer-1", "item_id": i} for i in items]  # timestamp: now
        + [{"user_id": "newcomer-1", "item_id": "never-heard-of-it"}],
    )
    assert answer == {"accepted": 4, "rejected": [], "unknown_items": 1}
    body = recall(client, user_id="newcomer-1", k=10)
    assert body["source"] == "events" and body["fresh_events"] == 3
    expected = bundle.tower.encode([bundle.item_ids.rows(items)])[0]
    assert [i["item_id"] for i in body["items"]] == top_k(
        bundle, expected, bundle.item_ids.rows(items), 10
    )
    vector = client.get("/v1/users/newcomer-1/vector").json()
    assert vector["source"] == "events" and vector["id"] == "newcomer-1"
    np.testing.assert_allclose(vector["vector"], expected, **TOLERANCE)
    # an int id the bundle does not know, posted as an int, recalled as a string
    unknown = int(bundle.user_ids.ids.max()) + 1000
    post_events(client, [{"user_id": unknown, "item_id": items[0]}])
    assert recall(client, user_id=str(unknown), k=3)["source"] == "events"


def test_exclude_shown_drops_recent_impressions(
    client: httpx.Client, bundle: ServingBundle
) -> None:
    row = 8
    user_id = user(bundle, row)
    top = [i["item_id"] for i in recall(client, user_id=user_id, k=10)["items"]]
    now = time.time()
    post_events(
        client,
        [
            {"user_id": user_id, "item_id": top[0], "type": "impression"},
            {"user_id": user_id, "item_id": top[1], "type": "impression", "timestamp": now - 60},
            # older than RECALL_SHOWN_TTL_S (3600 s): no longer excluded
            {"user_id": user_id, "item_id": top[2], "type": "impression", "timestamp": now - 7200},
        ],
    )
    shown = recall(client, user_id=user_id, k=10, exclude_shown=True)
    assert shown["fresh"] is True and shown["source"] == "user"  # impressions move no vector
    ids = [i["item_id"] for i in shown["items"]]
    assert top[0] not in ids and top[1] not in ids and ids[0] == top[2]
    assert ids == top_k(
        bundle,
        np.asarray(bundle.user_vectors[row]),
        np.concatenate([bundle.seen(row), bundle.item_ids.rows(top[:2])]),
        10,
    )
    assert [i["item_id"] for i in recall(client, user_id=user_id, k=10)["items"]] == top
    batch = client.post(
        "/v1/recall/batch",
        json={
            "requests": [
                {"user_id": user_id, "k": 10, "exclude_shown": True},
                {"user_id": user_id, "k": 10},
            ]
        },
    ).json()["results"]
    assert [i["item_id"] for i in batch[0]["items"]] == ids
    assert [i["item_id"] for i in batch[1]["items"]] == top
    no_user = client.post("/v1/recall", json={"history": [top[0]], "exclude_shown": True})
    assert no_user.status_code == 422 and "exclude_shown" in no_user.json()["error"]["message"]


def test_bad_events_are_rejected_inline(client: httpx.Client, bundle: ServingBundle) -> None:
    row = 9
    user_id = user(bundle, row)
    item = unseen_items(bundle, row, 1)[0]
    now = time.time()
    good = {"user_id": user_id, "item_id": item}
    events: list[Any] = [
        good,
        {**good, "timestamp": now + 2 * 86400},  # more than a day ahead
        {**good, "timestamp": "yesterday"},
        {**good, "user_id": True},
        {**good, "item_id": 1.5},
        {**good, "type": "click"},
        {**good, "color": "red"},
        {"item_id": item},
        7,
        {**good, "timestamp": -1},
        {**good, "timestamp": now + 3600},  # within the day: accepted
    ]
    body = post_events(client, events)
    assert body["accepted"] == 2 and body["unknown_items"] == 0
    assert [r["index"] for r in body["rejected"]] == list(range(1, 10))
    assert {r["error"]["code"] for r in body["rejected"]} == {"invalid_input"}
    messages = [r["error"]["message"] for r in body["rejected"]]
    assert "server's clock" in messages[0] and "timestamp" in messages[1]
    assert "user_id" in messages[2] and "item_id" in messages[3] and "type" in messages[4]
    # raw JSON: NaN, Infinity and 1e999 (a float overflow) are not finite timestamps
    pair = f'"user_id": {user_id}, "item_id": {item}'
    raw = (
        f'{{"events": [{{{pair}, "timestamp": NaN}}, {{{pair}, "timestamp": 1e999}}, '
        f'{{{pair}, "timestamp": -Infinity}}]}}'
    )
    response = client.post("/v1/events", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    nonfinite = response.json()
    assert nonfinite["accepted"] == 0 and [r["index"] for r in nonfinite["rejected"]] == [0, 1, 2]
    assert all("finite" in r["error"]["message"] for r in nonfinite["rejected"])
    metrics = client.get("/metrics").text
    assert metric(metrics, 'recall_events_total{result="rejected"}') >= 12
    assert metric(metrics, 'recall_events_total{result="stored"}') >= 2
    # the two accepted events are the only ones in the user's vector
    assert recall(client, user_id=user_id, k=3)["fresh_events"] == 2
    for body_ in ({"events": "no"}, {"events": [good], "extra": 1}, {}):
        bad = client.post("/v1/events", json=body_)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"


def test_too_many_events_is_413(published_root: Path, bundle: ServingBundle) -> None:
    events = [{"user_id": user(bundle, 1), "item_id": bundle.item_ids.ids[0].item()}] * 6
    with (
        live_server(create_app(settings(published_root, max_events=5))) as url,
        httpx.Client(base_url=url) as c,
    ):
        too_many = c.post("/v1/events", json={"events": events})
        assert too_many.status_code == 413
        assert too_many.json()["error"]["code"] == "payload_too_large"
        assert "5" in too_many.json()["error"]["message"]
        assert c.post("/v1/events", json={"events": events[:5]}).json()["accepted"] == 5


def _store_down_checks(
    c: httpx.Client, bundle: ServingBundle, budget_s: float, user_row: int = 2
) -> None:
    """Recall answers from the bundle, marked not fresh, within ``budget_s``; events 503."""
    user_id = user(bundle, user_row)
    for _ in range(3):
        started = time.perf_counter()
        body = recall(c, user_id=user_id, k=5, exclude_shown=True)
        assert time.perf_counter() - started < budget_s
        assert body["fresh"] is False and body["source"] == "user" and body["fresh_events"] == 0
        assert [i["item_id"] for i in body["items"]] == top_k(
            bundle, np.asarray(bundle.user_vectors[user_row]), bundle.seen(user_row), 5
        )
    vector = c.get(f"/v1/users/{user_id}/vector").json()
    assert vector["fresh"] is False and vector["source"] == "user"
    many = c.post("/v1/users/vectors", json={"ids": [user_id]}).json()
    assert many["fresh"] is False and many["fresh_events"] == [0]
    batch = c.post(
        "/v1/recall/batch",
        json={"requests": [{"user_id": user_id, "k": 2}, {"vector": [0.1] * bundle.dim}]},
    )
    assert [r["fresh"] for r in batch.json()["results"]] == [False, True]  # vector: no store
    unknown = c.post("/v1/recall", json={"user_id": "nobody-at-all"})  # may have events
    assert unknown.status_code == 503 and unknown.headers["retry-after"] == "1"
    assert unknown.json()["error"]["code"] == "state_unavailable"
    popular = c.post("/v1/recall", json={"user_id": "nobody-at-all", "fallback": "popular"})
    assert popular.status_code == 200 and popular.json()["source"] == "popular"
    down = c.post("/v1/events", json={"events": [{"user_id": user_id, "item_id": 1}]})
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
    assert down.json()["error"]["code"] == "state_unavailable"
    metrics = c.get("/metrics").text
    assert metric(metrics, 'recall_events_total{result="unavailable"}') >= 1
    for op in ("recent", "shown", "add"):
        assert metric(metrics, f'recall_state_errors_total{{op="{op}"}}') >= 1


@contextmanager
def _users_loaded(url: str, bundle: ServingBundle) -> Iterator[None]:
    load_users(url, bundle.path)
    yield


def _users_down_checks(
    c: httpx.Client, bundle: ServingBundle, budget_s: float, user_row: int = 2
) -> None:
    """The users live in the store and it is down: recall by user id 503 state_unavailable
    within ``budget_s`` (the popular list when asked for), vector lookups of users 503,
    history and vector recalls answer; events 503; each failure counted."""
    user_id = user(bundle, user_row)
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        down = c.post("/v1/recall", json={"user_id": user_id, "k": 5})
        seconds.append(time.perf_counter() - started)
        assert down.status_code == 503 and down.json()["error"]["code"] == "state_unavailable"
    # the median: one answer late under a loaded machine's scheduling is not the bound
    # failing; a store call that is not bounded makes all three late
    assert sorted(seconds)[1] < budget_s, seconds
    popular = recall(c, user_id=user_id, k=5, fallback="popular")
    assert popular["source"] == "popular" and popular["fresh"] is False
    assert c.get(f"/v1/users/{user_id}/vector").status_code == 503
    assert c.post("/v1/users/vectors", json={"ids": [user_id]}).status_code == 503
    batch = c.post(
        "/v1/recall/batch",
        json={"requests": [{"user_id": user_id, "k": 2}, {"vector": [0.1] * bundle.dim}]},
    )
    assert [r["status"] for r in batch.json()["results"]] == [503, 200]
    history = recall(c, history=bundle.item_ids.ids[:3].tolist(), k=5)
    assert history["source"] == "history" and len(history["items"]) == 5
    down = c.post("/v1/events", json={"events": [{"user_id": user_id, "item_id": 1}]})
    assert down.status_code == 503
    metrics = c.get("/metrics").text
    for op in ("recent", "users", "add"):
        assert metric(metrics, f'recall_state_errors_total{{op="{op}"}}') >= 1


def test_store_down_sqlite_recall_from_the_bundle_events_503(
    published_root: Path, bundle: ServingBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = sqlite_url(blocker / "events.sqlite")  # cannot be created: every call fails
    with (
        caplog.at_level(logging.WARNING, logger="recall.service.state_access"),
        live_server(create_app(settings(published_root, state_url=url))) as base,
        httpx.Client(base_url=base) as c,
    ):
        _store_down_checks(c, bundle, budget_s=1.0)
    logged = [r for r in caplog.records if r.name == "recall.service.state_access"]
    assert len(logged) == 1  # at most one line per 10 s, however many failures


def test_a_v1_bundle_serves_known_users_from_their_stored_vector(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    publish(make_v1(copy_bundle(published_root, root)))
    row = 3
    user_id = user(bundle, row)
    items = unseen_items(bundle, row, 2)
    with (
        live_server(create_app(settings(root))) as url,
        httpx.Client(base_url=url) as c,
    ):
        post_events(c, [{"user_id": user_id, "item_id": i} for i in items])
        post_events(c, [{"user_id": "v1-newcomer", "item_id": i} for i in items])
        body = recall(c, user_id=user_id, k=10)
        assert body["source"] == "user" and body["fresh_events"] == 0 and body["fresh"]
        exclude = np.concatenate([bundle.seen(row), bundle.item_ids.rows(items)])
        assert [i["item_id"] for i in body["items"]] == top_k(
            bundle, np.asarray(bundle.user_vectors[row]), exclude, 10
        )
        vector = c.get(f"/v1/users/{user_id}/vector").json()
        assert np.array_equal(np.asarray(vector["vector"], np.float32), bundle.user_vectors[row])
        assert recall(c, user_id="v1-newcomer", k=3)["source"] == "events"


def test_events_survive_a_restart(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    """A 200 means stored: a new server on the same SQLite file sees the events."""
    url = sqlite_url(tmp_path / "state" / "events.sqlite")
    user_id = user(bundle, 10)
    items = unseen_items(bundle, 10, 2)
    with (
        live_server(create_app(settings(published_root, state_url=url))) as base,
        httpx.Client(base_url=base) as c,
    ):
        post_events(c, [{"user_id": user_id, "item_id": i} for i in items])
    with (
        live_server(create_app(settings(published_root, state_url=url))) as base,
        httpx.Client(base_url=base) as c,
    ):
        body = recall(c, user_id=user_id, k=3)
        assert body["source"] == "user+events" and body["fresh_events"] == 2


def test_openapi_documents_the_event_fields(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    event = schema["paths"]["/v1/events"]["post"]
    assert set(event["responses"]) >= {"200", "413", "422", "503"}
    text = json.dumps(schema)
    assert "user+events" in text and "exclude_shown" in text and "unknown_items" in text


def test_redis_store_paused_then_killed_then_back(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    """A real redis-server holding the users and their events: stopped (SIGSTOP:
    connections open, no answers) or killed, a recall by user id answers 503 (or the
    popular list when asked) within the read bound, recall by history or vector is
    unaffected, events get 503; back, everything acknowledged before is still there."""
    row = 12
    user_id = user(bundle, row)
    items = unseen_items(bundle, row, 2)
    with (
        redis_server(tmp_path / "redis", appendonly=True) as redis,
        _users_loaded(redis.url(), bundle),
        live_server(
            create_app(settings(published_root, state_url=redis.url(), state_timeout_s=0.05))
        ) as base,
        httpx.Client(base_url=base, timeout=10) as c,
    ):
        post_events(c, [{"user_id": user_id, "item_id": i} for i in items])
        assert recall(c, user_id=user_id, k=3)["fresh_events"] == 2
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            _users_down_checks(c, bundle, user_row=2, budget_s=0.5)
        finally:
            redis.process.send_signal(signal.SIGCONT)
        assert recall(c, user_id=user_id, k=3)["fresh"] is True
        redis.kill()
        _users_down_checks(c, bundle, user_row=2, budget_s=0.5)
        redis.start()
        deadline = time.monotonic() + 10
        while c.post("/v1/recall", json={"user_id": user_id}).json()["fresh"] is False:
            assert time.monotonic() < deadline, "the service did not reconnect to Redis"
            time.sleep(0.05)
        body = recall(c, user_id=user_id, k=3)
        assert body["source"] == "user+events" and body["fresh_events"] == 2
        assert post_events(c, [{"user_id": user_id, "item_id": items[0]}])["accepted"] == 1


def test_canonical_ids_follow_the_bundles_id_type() -> None:
    ints = IdMap(np.array([3, 7, 42], dtype=np.int64))
    strs = IdMap(np.array(["a", "7"]))
    assert [ints.canonical(v) for v in ("7", 7, "007", "-5", "x", "9" * 25)] == [
        7,
        7,
        "007",
        -5,
        "x",
        "9" * 25,
    ]
    assert [strs.canonical(v) for v in (7, "7", "a", -1)] == ["7", "7", "a", "-1"]


def test_user_vectors_of_a_batch_equal_one_by_one(bundle: ServingBundle) -> None:
    """The batched tower calls give each user what a call of its own gives."""
    assert bundle.trained_until is not None
    t = bundle.trained_until
    item = [bundle.item_ids.ids[r].item() for r in range(6)]
    users: list[Any] = [user(bundle, 20), user(bundle, 21), "fresh-face", user(bundle, 22), "ghost"]
    events: list[list[tuple[Any, float]]] = [
        [(item[0], t + 1), (item[1], t + 2)],
        [(item[2], t - 5)],  # trained on already: not fresh
        [(item[3], t - 100), ("unknown-item", t + 1)],
        [(item[4], t + 1), (item[5], t + 9)],
        [("unknown-item", t + 1)],  # no known item: no vector
    ]
    batch = user_vectors(bundle, users, events)
    assert [v.source.value if v else None for v in batch] == [
        "user+events",
        "user",
        "events",
        "user+events",
        None,
    ]
    assert [v.fresh_events if v else None for v in batch] == [2, 0, 1, 2, None]
    for j, made in enumerate(batch):
        alone = user_vectors(bundle, [users[j]], [events[j]])[0]
        assert (made is None) == (alone is None)
        if made is not None and alone is not None:
            np.testing.assert_allclose(made.vector, alone.vector, **TOLERANCE)
            assert np.array_equal(np.sort(made.seen), np.sort(alone.seen))
    first = batch[0]
    assert first is not None
    np.testing.assert_allclose(first.vector, fresh_vector(bundle, 20, item[:2]), **TOLERANCE)
    assert np.array_equal(batch[1].vector if batch[1] else None, bundle.user_vectors[21])


def test_the_python_client_posts_events_and_sees_fresh_answers(
    client: httpx.Client, bundle: ServingBundle
) -> None:
    row = 14
    user_id = user(bundle, row)
    items = unseen_items(bundle, row, 2, skip=5)
    with RecallClient(str(client.base_url)) as rc:
        answer = rc.events(
            [{"user_id": user_id, "item_id": i} for i in items]
            + [{"user_id": user_id, "item_id": items[0], "type": "click"}]
        )
        assert answer.accepted == 2 and answer.unknown_items == 0
        [(index, error)] = answer.rejected
        assert index == 2 and error.code == "invalid_input" and "type" in error.message
        result = rc.recall(user_id=user_id, k=5)
        assert result.source == "user+events" and result.fresh_events == 2 and result.fresh
        np.testing.assert_allclose(
            rc.user_vector(user_id), fresh_vector(bundle, row, items), **TOLERANCE
        )
        shown = rc.events(
            [{"user_id": user_id, "item_id": result.item_ids[0], "type": "impression"}]
        )
        assert shown.accepted == 1
        without = rc.recall(user_id=user_id, k=5, exclude_shown=True)
        assert result.item_ids[0] not in without.item_ids
        batch = rc.recall_batch([Query(user_id=user_id, k=5, exclude_shown=True)])
        first = batch.results[0]
        assert isinstance(first, RecallResult) and first.item_ids == without.item_ids
        assert first.fresh_events == 2


def test_the_python_client_raises_state_unavailable(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    url = sqlite_url(blocker / "events.sqlite")
    with (
        live_server(create_app(settings(published_root, state_url=url))) as base,
        RecallClient(base) as rc,
    ):
        with pytest.raises(StateUnavailable) as raised:
            rc.events([{"user_id": user(bundle, 1), "item_id": 1}])
        assert raised.value.status == 503 and raised.value.code == "state_unavailable"
        assert rc.recall(user_id=user(bundle, 1), k=2).fresh is False


@pytest.mark.slow
def test_the_workers_of_a_replica_share_the_default_sqlite_store(
    published_root: Path, bundle: ServingBundle, tmp_path: Path
) -> None:
    """``recall serve --workers 2`` with the default store (``<root>/.state/``): an event
    posted to one worker moves the recall of whichever worker answers next."""
    root = tmp_path / "root"
    root.mkdir()
    publish(copy_bundle(published_root, root))
    row = 16
    user_id = user(bundle, row)
    items = unseen_items(bundle, row, 3)
    with recall_serve(root, tmp_path, workers=2) as (url, _):
        answer = httpx.post(
            f"{url}/v1/events",
            json={"events": [{"user_id": user_id, "item_id": i} for i in items]},
            timeout=10,
        )
        assert answer.status_code == 200 and answer.json()["accepted"] == 3
        for _ in range(20):  # fresh connections: either worker answers
            body = httpx.post(f"{url}/v1/recall", json={"user_id": user_id}, timeout=10).json()
            assert body["source"] == "user+events" and body["fresh_events"] == 3, body
    assert (root / STATE_FILE).is_file()


class CountingStore:
    """The real store, with its read calls counted (a spy, not a stand-in)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: list[tuple[str, int]] = []

    async def recent(self, user_ids: list[Any], after: float) -> Any:
        self.calls.append(("recent", len(user_ids)))
        return await self.store.recent(user_ids, after)

    async def shown(self, user_ids: list[Any], since: float) -> Any:
        self.calls.append(("shown", len(user_ids)))
        return await self.store.shown(user_ids, since)

    def read_in_thread(self, user_ids: list[Any], after: float, shown_since: float | None) -> Any:
        self.calls.append(("recent", len(user_ids)))
        if shown_since is not None:
            self.calls.append(("shown", len(user_ids)))
        return self.store.read_in_thread(user_ids, after, shown_since)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_batch_reads_the_store_once_for_all_its_users(
    published_root: Path, bundle: ServingBundle
) -> None:
    app = create_app(settings(published_root))
    users = [user(bundle, r) for r in (30, 31, 32)]
    with live_server(app) as url, httpx.Client(base_url=url) as c:
        post_events(c, [{"user_id": u, "item_id": bundle.item_ids.ids[0].item()} for u in users])
        spy = CountingStore(app_state_of(app).state_access().store)
        app_state_of(app).state_access().store = spy
        requests = [{"user_id": u, "k": 3} for u in users] + [
            {"user_id": users[0], "k": 2, "exclude_shown": True},
            {"user_id": "new-in-batch", "k": 2, "fallback": "popular"},
            {"history": [bundle.item_ids.ids[1].item()], "k": 2},
        ]
        results = c.post("/v1/recall/batch", json={"requests": requests}).json()["results"]
        assert [r["status"] for r in results] == [200] * 6
        assert [r["source"] for r in results] == ["user+events"] * 4 + ["popular", "history"]
        assert sorted(spy.calls) == [("recent", 4), ("shown", 4)]  # distinct users, once
        spy.calls.clear()
        c.post("/v1/users/vectors", json={"ids": [*users, users[0]]})
        assert spy.calls == [("recent", 3)]


def test_a_users_failing_vector_fails_only_that_batch_entry(
    published_root: Path, bundle: ServingBundle
) -> None:
    """A bundle defect past verification (simulated: the served bundle's tower, in memory,
    gets a NaN row for one item) fails the batch entries of the user whose events touch
    that item, never the whole batch: the other entries answer as they would alone."""
    app = create_app(settings(published_root))
    with live_server(app) as url, httpx.Client(base_url=url) as c:
        served: ServingBundle = app_state_of(app).holder.current
        row, other = 11, 12
        item, good = unseen_items(bundle, row, 2, skip=1)  # not row 0 (padding reads it)
        tower = copy.copy(served.tower)
        tower.item_rows = served.tower.item_rows.copy()  # what the tower pools per item
        tower.item_rows[bundle.item_ids.row(item)] = np.nan
        verified = dataclasses.replace(served.verified, tower=tower)
        app_state_of(app).holder._current = dataclasses.replace(served, verified=verified)
        post_events(c, [{"user_id": user(bundle, row), "item_id": item}])
        alone = recall(c, user_id=user(bundle, other), k=5)

        batch = c.post(
            "/v1/recall/batch",
            json={
                "requests": [
                    {"user_id": user(bundle, row), "k": 5},
                    {"user_id": user(bundle, other), "k": 5},
                    {"history": [good], "k": 5},
                ]
            },
        )
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        assert [r["status"] for r in results] == [500, 200, 200]
        assert results[0]["error"]["code"] == "internal"
        assert results[1]["items"] == alone["items"]
        assert results[2]["source"] == "history"
