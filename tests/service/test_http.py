"""HTTP API v1 over a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from recall.index import bundle as b
from recall.service.app import create_app
from recall.service.core import RecallCore
from recall.service.recaller import RecallQuery, RecallResult, ServingBundle
from tests.conftest import BundleFactory
from tests.live import TOKEN, live_server, settings
from tests.service.test_reload import wait_until


def recall(bundle: ServingBundle, query: RecallQuery, max_k: int) -> RecallResult:
    """The recall production runs (:meth:`RecallCore.recall`; a user with no stored events)."""
    return RecallCore(max_k).recall(bundle, query).result


def test_health_ready_model_and_metrics(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, bundle = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["bundle_id"] == bundle.id
    model = client.get("/v1/model")
    assert model.headers["x-bundle-id"] == bundle.id
    assert model.json()["dim"] == bundle.dim
    assert model.json()["counts"]["items"] == len(bundle.item_ids)
    text = client.get("/metrics").text
    assert 'recall_http_requests_total{method="GET",route="/readyz",status="200"}' in text
    assert "recall_items_loaded" in text and 'recall_reloads_total{result="success"} 1.0' in text


def test_recall_by_user_matches_the_core(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, bundle = served
    user_id = bundle.user_ids.ids[5].item()
    response = client.post("/v1/recall", json={"user_id": user_id, "k": 25})
    assert response.status_code == 200
    body = response.json()
    expected = recall(bundle, RecallQuery(user_id=user_id, k=25), 200)
    assert response.headers["x-bundle-id"] == body["bundle_id"] == bundle.id
    assert body["source"] == "user"
    assert [i["item_id"] for i in body["items"]] == expected.item_ids
    np.testing.assert_allclose([i["score"] for i in body["items"]], expected.scores, rtol=1e-6)


def test_batch_answers_in_order_with_inline_errors(
    served: tuple[httpx.Client, ServingBundle],
) -> None:
    client, bundle = served
    user_id = bundle.user_ids.ids[1].item()
    first_item = bundle.item_ids.ids[0].item()
    response = client.post(
        "/v1/recall/batch",
        json={
            "requests": [
                {"user_id": user_id, "k": 3},
                {"user_id": "nobody"},
                {"user_id": user_id, "history": [1]},
                {"vector": [0.5] * bundle.dim, "k": 2},
                {"history": [first_item], "features": {"gender": "F", "age": 30.5}},
                {"history": [first_item], "features": {"age": 1e308}},
                {"user_id": "nobody", "fallback": "popular", "k": 4},
                {"history": ["ghost"], "fallback": "popular", "k": 2},
            ]
        },
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 404, 422, 200, 200, 422, 200, 200]
    assert results[1]["error"]["code"] == "not_found"
    assert "'age'" in results[5]["error"]["message"]  # an overflowing feature: inline 422
    assert [len(r["items"]) for r in results if r["status"] == 200] == [3, 2, 100, 4, 2]
    assert [r.get("source") for r in results[4:]] == ["history", None, "popular", "popular"]


def test_similar_and_single_vectors(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, bundle = served
    item_id = bundle.item_ids.ids[2].item()
    similar = client.get(f"/v1/items/{item_id}/similar", params={"k": 5}).json()
    assert len(similar["items"]) == 5
    assert item_id not in [i["item_id"] for i in similar["items"]]
    vector = client.get(f"/v1/items/{item_id}/vector").json()["vector"]
    np.testing.assert_array_equal(np.float32(vector), bundle.item_vectors[2])
    user_id = bundle.user_ids.ids[3].item()
    body = client.get(f"/v1/users/{user_id}/vector").json()
    assert body["id"] == user_id
    np.testing.assert_array_equal(np.float32(body["vector"]), bundle.user_vectors[3])


def test_batch_vectors_json_and_npy(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, bundle = served
    ids = bundle.user_ids.ids
    request = [ids[4].item(), "ghost", ids[0].item(), ids[4].item()]
    body = client.post("/v1/users/vectors", json={"ids": request}).json()
    assert body["missing"] == ["ghost"]
    assert body["vectors"][1] is None
    np.testing.assert_array_equal(
        np.float32([body["vectors"][i] for i in (0, 2, 3)]), bundle.user_vectors[[4, 0, 4]]
    )
    response = client.post(
        "/v1/users/vectors", json={"ids": request}, headers={"Accept": "application/x-npy"}
    )
    assert response.headers["content-type"] == "application/x-npy"
    assert response.headers["x-missing-count"] == "1"
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (4, bundle.dim)
    np.testing.assert_array_equal(array[[0, 2, 3]], bundle.user_vectors[[4, 0, 4]])
    assert np.isnan(array[1]).all()


def _vector(bundle: ServingBundle, fill: str) -> str:
    return '{"vector": [' + ", ".join([fill] * bundle.dim) + "]}"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/recall", {"user_id": "nobody"}, 404, "not_found"),
        ("GET", "/v1/items/nothing/similar", None, 404, "not_found"),
        ("GET", "/v1/users/nobody/vector", None, 404, "not_found"),
        ("GET", "/v1/no-such-route", None, 404, "not_found"),
        ("POST", "/v1/recall", {}, 422, "invalid_input"),
        ("POST", "/v1/recall", {"user_id": 1, "vector": [1.0]}, 422, "invalid_input"),
        ("POST", "/v1/recall", {"user_id": 1, "k": 0}, 422, "invalid_input"),
        ("POST", "/v1/recall", {"user_id": 1, "k": -1}, 422, "invalid_input"),
        ("POST", "/v1/recall", {"user_id": 1, "k": 201}, 422, "invalid_input"),
        ("POST", "/v1/recall", {"user_id": 1, "k": "many"}, 422, "invalid_input"),
        ("POST", "/v1/recall", {"vector": [1.0, 2.0]}, 422, "invalid_input"),
        ("POST", "/v1/recall", "NaN", 422, "invalid_input"),
        ("POST", "/v1/recall", "Infinity", 422, "invalid_input"),
        ("POST", "/v1/recall", "{not json", 422, "invalid_input"),
        ("POST", "/v1/recall", {"user_id": 1, "surprise": True}, 422, "invalid_input"),
        ("POST", "/v1/recall", {"history": [1] * 301, "k": 5}, 422, "invalid_input"),
        ("POST", "/v1/recall/batch", {"requests": [{}] * 9}, 413, "payload_too_large"),
        ("POST", "/v1/items/vectors", {"ids": list(range(51))}, 413, "payload_too_large"),
        ("POST", "/v1/items/vectors", {"ids": ["x" * 9000]}, 413, "payload_too_large"),
        ("GET", "/v1/items/1/similar?k=0", None, 422, "invalid_input"),
        ("DELETE", "/v1/recall", None, 405, "method_not_allowed"),
        ("POST", "/v1/admin/reload", None, 401, "unauthorized"),
    ],
)
def test_errors_use_the_envelope(
    served: tuple[httpx.Client, ServingBundle],
    method: str,
    path: str,
    body: object,
    status: int,
    code: str,
) -> None:
    client, bundle = served
    if body in ("NaN", "Infinity"):
        content: str | None = _vector(bundle, str(body))
    elif isinstance(body, str):
        content = body
    else:
        content = None
    response = client.request(
        method,
        path,
        json=body if content is None and body is not None else None,
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_admin_token_is_checked(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, bundle = served
    wrong = client.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong-token"})
    assert wrong.status_code == 403
    basic = client.post("/v1/admin/reload", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    right = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and right.json() == {"bundle_id": bundle.id, "changed": False}


def test_admin_is_disabled_without_a_token(published_root: Path) -> None:
    app = create_app(settings(published_root, admin_token=None))
    with live_server(app) as url:
        response = httpx.post(f"{url}/v1/admin/reload", headers={"Authorization": "Bearer x"})
    assert response.status_code == 403
    assert "disabled" in response.json()["error"]["message"]


def test_no_bundle_means_503_but_alive(tmp_path: Path) -> None:
    with live_server(create_app(settings(tmp_path))) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        for response in (
            httpx.get(f"{url}/readyz"),
            httpx.post(f"{url}/v1/recall", json={"user_id": 1}),
        ):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "not_ready"


@pytest.mark.slow
def test_hot_reload_under_load_fails_no_request(tmp_path: Path, make_bundle: BundleFactory) -> None:
    root = tmp_path / "root"
    ids = [make_bundle(root, "20260101T000000Z-000001", publish=True)]
    dim = b.read_manifest(root / ids[0]).dim
    stop = threading.Event()
    seen_by_client: list[list[str]] = [[] for _ in range(3)]
    failures: list[str] = []
    with live_server(create_app(settings(root, reload_interval_s=0.05))) as url:

        def drive(seen: list[str]) -> None:
            with httpx.Client(base_url=url) as client:
                while not stop.is_set():
                    r = client.post("/v1/recall", json={"vector": [0.1] * dim, "k": 10})
                    if r.status_code != 200 or r.headers["x-bundle-id"] != r.json()["bundle_id"]:
                        failures.append(f"{r.status_code} {r.text}")
                    else:
                        seen.append(r.json()["bundle_id"])

        clients = [threading.Thread(target=drive, args=(s,)) for s in seen_by_client]
        for client in clients:
            client.start()
        for n in range(2, 5):
            ids.append(make_bundle(root, f"20260101T000000Z-00000{n}", publish=True))
            wait_until(lambda: all(s and s[-1] == ids[-1] for s in seen_by_client))
        stop.set()
        for client in clients:
            client.join()
    assert failures == []
    assert sum(map(len, seen_by_client)) > 50
    for seen in seen_by_client:
        positions = [ids.index(i) for i in seen]
        assert positions == sorted(positions), "a client saw the bundle id move backwards"
        assert positions[-1] == len(ids) - 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_bundle_is_refused_and_old_keeps_serving(
    tmp_path: Path, make_bundle: BundleFactory, damage: str
) -> None:
    root = tmp_path / "root"
    good = make_bundle(root, "20260101T000000Z-000001", publish=True)
    with live_server(create_app(settings(root))) as url, httpx.Client(base_url=url) as client:
        bad = make_bundle(root, "20260101T000000Z-000002", publish=True)
        index_file = root / bad / b.INDEX
        data = bytearray(index_file.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        index_file.write_bytes(bytes(data))
        auth = {"Authorization": f"Bearer {TOKEN}"}
        refused = client.post("/v1/admin/reload", headers=auth)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "reload_failed"
        assert client.get("/readyz").json()["bundle_id"] == good
        dim = b.read_manifest(root / good).dim
        ok = client.post("/v1/recall", json={"vector": [0.1] * dim, "k": 3})
        assert ok.status_code == 200 and ok.headers["x-bundle-id"] == good
        assert 'recall_reloads_total{result="failure"} 1.0' in client.get("/metrics").text
