"""A batch's total items are bounded (``RECALL_MAX_BATCH_ITEMS``, 413 above it; issue 15
§6). A real uvicorn on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import httpx

from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from tests.live import live_server, settings


def _users(bundle: ServingBundle, n: int) -> list[int]:
    return [bundle.user_ids.ids[j % len(bundle.user_ids.ids)].item() for j in range(n)]


def test_a_batch_over_its_item_bound_is_a_413_and_at_it_answers(
    published_root: Path, served: tuple[httpx.Client, ServingBundle]
) -> None:
    _, bundle = served
    app = create_app(settings(published_root, max_batch=8, max_k=200, max_batch_items=1000))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        users = _users(bundle, 8)
        over = [{"user_id": u, "k": 200} for u in users[:5]] + [{"user_id": users[5], "k": 1}]
        response = client.post("/v1/recall/batch", json={"requests": over})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "payload_too_large"
        assert "1000" in error["message"] and "1001" in error["message"]
        at = [{"user_id": u, "k": 200} for u in users[:5]]
        response = client.post("/v1/recall/batch", json={"requests": at})
        assert response.status_code == 200, response.text
        assert response.headers["x-bundle-id"] == bundle.id
        body = response.json()
        assert body["bundle_id"] == bundle.id
        assert [r["status"] for r in body["results"]] == [200] * 5
        # an entry whose k is over max_k fails alone and counts as max_k
        mixed = [{"user_id": users[0], "k": 10**6}, {"user_id": users[1], "k": 3}]
        results = client.post("/v1/recall/batch", json={"requests": mixed}).json()["results"]
        assert [r["status"] for r in results] == [422, 200]


def test_the_default_bound_is_max_batch_times_the_default_k(published_root: Path) -> None:
    values = settings(published_root)
    assert type(values).model_fields["max_batch_items"].default == 256 * 100
