"""The console's read-only endpoints and files, over a real uvicorn server on the
conftest bundle: ``GET /v1/users/{id}/history``, ``GET /v1/items/search``,
``GET /v1/replica``, ``GET /console`` and ``/console/assets/*``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.service.routes.console import CONSOLE_DIR
from recall.trainer.config import TrainConfig
from tests.index.test_verify import OTHER_ID
from tests.index_data import FIXTURE_METRICS
from tests.live import TOKEN, live_server, settings
from tests.service.test_reload import GOOD, serving_root, write_current

Served = tuple[httpx.Client, ServingBundle]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["message"])


def _title(bundle: ServingBundle, item_id: object) -> str:
    assert bundle.attributes is not None
    row = bundle.item_ids.rows([item_id])
    return str(bundle.attributes.rows_as_dicts(row)[0]["title"])


def test_history_of_a_known_user_is_the_bundle_window_newest_first_with_titles(
    served: Served,
) -> None:
    client, bundle = served
    assert bundle.history is not None and bundle.attributes is not None
    row = int(np.argmax(np.diff(bundle.history.indptr)))  # the longest window
    user_id = bundle.user_ids.ids[row].item()
    rows, times = bundle.history.window(row)
    assert len(rows) >= 3

    response = client.get(f"/v1/users/{user_id}/history", params={"limit": 1000})
    assert response.status_code == 200, response.text
    assert response.headers["x-bundle-id"] == bundle.id
    body = response.json()
    assert body["bundle_id"] == bundle.id and body["user_id"] == user_id
    assert body["known"] is True and body["fresh"] is True and body["fresh_events"] == []
    expected_ids = bundle.item_ids.ids[rows].tolist()[::-1]
    assert [h["item_id"] for h in body["history"]] == expected_ids
    assert [h["timestamp"] for h in body["history"]] == times.tolist()[::-1]
    for entry in body["history"]:
        assert entry["attributes"]["title"] == _title(bundle, entry["item_id"])

    cut = client.get(f"/v1/users/{user_id}/history", params={"limit": 2}).json()
    assert [h["item_id"] for h in cut["history"]] == expected_ids[:2]
    as_string = client.get(f"/v1/users/{user_id!s}/history").json()  # path ids are text
    assert as_string["user_id"] == user_id


def test_fresh_events_appear_after_post_events_newest_first(served: Served) -> None:
    client, bundle = served
    user_id = bundle.user_ids.ids[1].item()
    items = bundle.item_ids.ids[[3, 7]].tolist()
    now = time.time()
    events = [
        {"user_id": user_id, "item_id": items[0], "timestamp": now - 2},
        {"user_id": user_id, "item_id": items[1], "timestamp": now - 1},
        {"user_id": user_id, "item_id": items[1], "timestamp": now, "type": "impression"},
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 3
    body = client.get(f"/v1/users/{user_id}/history").json()
    assert body["known"] is True
    fresh = body["fresh_events"]
    assert [(e["item_id"], e["timestamp"]) for e in fresh] == [
        (items[1], pytest.approx(now - 1)),
        (items[0], pytest.approx(now - 2)),
    ]  # interactions only
    assert fresh[0]["attributes"]["title"] == _title(bundle, items[1])

    # a user the bundle never saw, known only from events; an item it does not know
    new = {"user_id": "console-new-user", "item_id": 999_999_999, "timestamp": now}
    assert client.post("/v1/events", json={"events": [new]}).json()["accepted"] == 1
    body = client.get("/v1/users/console-new-user/history").json()
    assert body["known"] is False and body["history"] == []
    assert body["fresh_events"] == [{"item_id": 999_999_999, "timestamp": pytest.approx(now)}]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/users/no-such-user/history", 404),
        (f"/v1/users/{'x' * 256}/history", 404),  # the longest id there is
        (f"/v1/users/{'x' * 6000}/history", 422),  # over 256 bytes
        ("/v1/users/1/history?limit=0", 422),
        ("/v1/users/1/history?limit=1001", 422),
        ("/v1/users/1/history?limit=abc", 422),
        ("/v1/items/search", 422),
        ("/v1/items/search?q=", 422),
        (f"/v1/items/search?q={'a' * 201}", 422),
        ("/v1/items/search?q=a&limit=0", 422),
        ("/v1/items/search?q=a&limit=101", 422),
    ],
)
def test_bad_input_is_a_4xx_envelope(served: Served, path: str, status: int) -> None:
    client, _ = served
    message = _error(client.get(path), status)
    assert len(message) < 500  # long ids are cut


def test_search_finds_titles_by_substring_case_insensitively_most_popular_first(
    served: Served,
) -> None:
    client, bundle = served
    assert bundle.attributes is not None
    titles = [str(d.get("title", "")) for d in bundle.attributes.rows_as_dicts(np.arange(300))]
    word = titles[0].split()[0]  # e.g. a cluster's name: several items share it
    expected = [
        bundle.item_ids.ids[r].item()
        for r in bundle.popular_rows.tolist()
        if word.lower() in titles[r].lower()
    ]
    assert len(expected) > 3

    body = client.get("/v1/items/search", params={"q": word.upper(), "limit": 100}).json()
    assert body["bundle_id"] == bundle.id
    assert [i["item_id"] for i in body["items"]] == expected[:100]
    assert all(word.lower() in i["attributes"]["title"].lower() for i in body["items"])

    limited = client.get("/v1/items/search", params={"q": word.lower(), "limit": 3}).json()
    assert [i["item_id"] for i in limited["items"]] == expected[:3]
    nothing = client.get("/v1/items/search", params={"q": "\u2603 no such title"}).json()
    assert nothing["items"] == []


def test_search_route_is_not_taken_for_an_item_id(served: Served) -> None:
    client, bundle = served
    item_id = bundle.item_ids.ids[0].item()
    assert client.get(f"/v1/items/{item_id}").json()["id"] == item_id
    assert client.get("/v1/items/search", params={"q": "a"}).status_code == 200


def test_replica_lists_its_reload_attempts_by_id_only(tmp_path: Path, published_root: Path) -> None:
    root = serving_root(tmp_path, published_root, OTHER_ID)
    before = time.time()
    with (
        live_server(create_app(settings(root))) as url,
        httpx.Client(base_url=url, headers=AUTH) as client,
    ):
        first = client.get("/v1/replica").json()
        assert first["bundle_id"] == GOOD
        assert before - 1 <= first["started_at"] <= time.time()
        assert [(r["bundle_id"], r["result"]) for r in first["reloads"]] == [(GOOD, "success")]

        write_current(root, f"{OTHER_ID}\n".encode())
        assert client.post("/v1/admin/reload").json() == {"bundle_id": OTHER_ID, "changed": True}
        assert client.post("/v1/admin/reload").json()["changed"] is False
        write_current(root, b"20990101T000000Z-ffffff\n")  # no such bundle
        assert client.post("/v1/admin/reload").status_code == 409

        body = client.get("/v1/replica").json()
        assert body["bundle_id"] == OTHER_ID
        assert [(r["bundle_id"], r["result"]) for r in body["reloads"]] == [
            (GOOD, "success"),
            (OTHER_ID, "success"),
            (OTHER_ID, "unchanged"),
            ("20990101T000000Z-ffffff", "failure"),
        ]
        ats = [r["at"] for r in body["reloads"]]
        assert ats == sorted(ats) and before <= ats[0] <= time.time()
        reason = body["reloads"][-1]["reason"]
        assert "refused" in reason and OTHER_ID in reason
        assert str(root) not in client.get("/v1/replica").text  # ids only, no paths
        assert "reason" not in body["reloads"][0]


def test_console_page_and_assets_are_served_read_only(served: Served) -> None:
    client, _ = served
    page = client.get("/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert page.content == (CONSOLE_DIR / "index.html").read_bytes()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)  # no CDN

    assets = sorted(p for p in CONSOLE_DIR.iterdir() if p.is_file())
    for path in assets:
        response = client.get(f"/console/assets/{path.name}")
        assert response.status_code == 200, path.name
        assert response.content == path.read_bytes()
        assert response.headers["cache-control"] == "no-cache"
        assert "etag" in response.headers
        head = client.head(f"/console/assets/{path.name}")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(path.stat().st_size)
    assert client.head("/console").status_code == 200

    assert client.get("/console/assets/nope.js").status_code == 404
    assert client.get("/console/assets/../app.py").status_code == 404
    assert client.post("/console").status_code == 405
    assert client.post("/console/assets/index.html").status_code == 405
    assert client.put("/console/assets/index.html", content=b"x").status_code == 405


def test_model_has_the_training_curve_popularity_and_index_measurements(
    served: Served, small_config: TrainConfig
) -> None:
    client, bundle = served
    body = client.get("/v1/model").json()
    assert body["bundle_id"] == bundle.id
    metrics = body["trainer_metrics"]
    curve = metrics["epochs"]
    assert len(curve) == len(FIXTURE_METRICS["epochs"]) >= 1  # one point per epoch trained
    assert [(e["epoch"], e["train_loss"], e["valid_hr"]) for e in curve] == [
        (e["epoch"], e["train_loss"], e["valid_hr"]) for e in FIXTURE_METRICS["epochs"]
    ]
    key = f"valid_hr@{small_config.validation_k}"
    assert metrics[key] > metrics["popularity"][key] > 0
    index = body["index"]
    assert index["kind"] == "flat" and set(index["recall"]) >= {"at_10", "k", "target"}
    assert index["latency_ms"]["p50"] > 0
    assert index["tuning"] and all("batch_seconds" in t for t in index["tuning"])
    assert isinstance(index["filtered"], list | dict)
