"""Imported bundles through every route over a real uvicorn server: an items-only bundle
(item2vec-like, cosine, with item attributes) and a users-without-tower bundle (MF-like,
inner product, with interactions): what each answers, the 404/422 where a route cannot
apply, how live events move their vectors by the item-mean rule, and what the console
shows of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from recall.cli import main
from recall.service.app import create_app
from tests.browser import Tab
from tests.import_files import ImportInputs, run_import, write_interactions, write_vectors
from tests.live import live_server, settings

INPUTS = ImportInputs.make(seed=1)
DIM = INPUTS.items.shape[1]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def serve_import(tmp: Path, *args: str | Path) -> Iterator[httpx.Client]:
    code, bundle = run_import(*args, "--out", tmp / "root")
    assert code == 0 and bundle is not None
    assert main(["build-index", str(bundle), "--publish"]) == 0
    with (
        live_server(create_app(settings(tmp / "root"))) as url,
        httpx.Client(base_url=url) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def items_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("items-only")
    items = write_vectors(tmp / "items.parquet", INPUTS.item_ids, INPUTS.items)
    attributes = tmp / "items.csv"
    genres = ["drama" if j % 2 else "comedy" for j in range(len(INPUTS.item_ids))]
    rows = [f"{i},{g}" for i, g in zip(INPUTS.item_ids.tolist(), genres, strict=True)]
    attributes.write_text("item_id,genre\n" + "\n".join(rows) + "\n")
    yield from serve_import(
        tmp, "--items", items, "--metric", "cosine", "--item-attributes", attributes
    )


@pytest.fixture(scope="module")
def mf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("mf")
    items = write_vectors(tmp / "items.npz", INPUTS.item_ids, INPUTS.items)
    users = write_vectors(tmp / "users.npz", INPUTS.user_ids, INPUTS.users)
    interactions = write_interactions(tmp / "interactions.csv", INPUTS.interactions)
    yield from serve_import(tmp, "--items", items, "--users", users, "--interactions", interactions)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    message: str = body["message"]
    return message


def ids_of(body: dict[str, Any]) -> list[Any]:
    return [item["item_id"] for item in body["items"]]


def oracle(items: np.ndarray, query: np.ndarray, k: int, drop: list[int]) -> list[int]:
    scores = items @ query
    scores[drop] = -np.inf
    top: list[int] = INPUTS.item_ids[np.argsort(-scores, kind="stable")[:k]].tolist()
    return top


def test_items_only_model_and_lookups(items_only: httpx.Client) -> None:
    model = ok(items_only.get("/v1/model"))
    assert model["counts"]["users"] == 0 and model["metric"] == "cosine"
    assert set(model["source"]["inputs"]) == {"items", "item_attributes"}
    item = int(INPUTS.item_ids[5])
    np.testing.assert_allclose(
        ok(items_only.get(f"/v1/items/{item}/vector"))["vector"], unit(INPUTS.items[5]), **TOLERANCE
    )
    assert ok(items_only.get(f"/v1/items/{item}"))["attributes"] == {"genre": "drama"}
    batch = ok(items_only.post("/v1/items/vectors", json={"ids": [item, 5]}))
    assert batch["missing"] == [5]
    error(items_only.get("/v1/users/u1/vector"), 404, "not_found")
    assert ok(items_only.post("/v1/users/vectors", json={"ids": ["u1"]}))["missing"] == ["u1"]


def test_items_only_recalls(items_only: httpx.Client) -> None:
    items = unit(INPUTS.items)
    history = [1, 2, 40]
    body = ok(
        items_only.post("/v1/recall", json={"history": INPUTS.item_ids[history].tolist(), "k": 10})
    )
    assert body["source"] == "history:item-mean"
    assert ids_of(body) == oracle(items, unit(items[history].mean(axis=0)), 10, history)
    body = ok(items_only.get(f"/v1/items/{INPUTS.item_ids[3]}/similar", params={"k": 5}))
    assert body["source"] == "item" and ids_of(body) == oracle(items, items[3], 5, [3])
    query = np.arange(DIM, dtype=np.float64)
    body = ok(items_only.post("/v1/recall", json={"vector": query.tolist(), "k": 5}))
    assert ids_of(body) == oracle(items, query, 5, [])
    body = ok(
        items_only.post(
            "/v1/recall",
            json={"vector": query.tolist(), "k": 5, "filter": {"genre": {"any": ["comedy"]}}},
        )
    )
    comedy = [j for j in range(len(INPUTS.item_ids)) if j % 2]
    assert ids_of(body) == oracle(items, query, 5, comedy)  # the dramas dropped
    # what cannot apply: a user nobody knows, features, a vector of the wrong width
    assert "unknown user_id" in error(
        items_only.post("/v1/recall", json={"user_id": "u1"}), 404, "not_found"
    )
    popular = ok(items_only.post("/v1/recall", json={"user_id": "u1", "fallback": "popular"}))
    assert popular["source"] == "popular"
    message = error(
        items_only.post("/v1/recall", json={"history": [1000], "features": {"age": 3}}),
        422,
        "invalid_input",
    )
    assert "takes no user features" in message
    error(items_only.post("/v1/recall", json={"vector": [1.0] * (DIM + 1)}), 422, "invalid_input")
    batch = ok(
        items_only.post(
            "/v1/recall/batch",
            json={"requests": [{"user_id": "u1"}, {"history": [1000], "k": 3}]},
        )
    )
    assert [r["status"] for r in batch["results"]] == [404, 200]
    assert batch["results"][1]["source"] == "history:item-mean"


def test_items_only_events_make_a_user(items_only: httpx.Client) -> None:
    """A user known only from events: the item mean of the events' items."""
    events = [4, 8, 15]
    posted = ok(
        items_only.post(
            "/v1/events",
            json={
                "events": [{"user_id": "new", "item_id": int(INPUTS.item_ids[j])} for j in events]
            },
        )
    )
    assert posted["accepted"] == 3
    body = ok(items_only.post("/v1/recall", json={"user_id": "new", "k": 10}))
    items = unit(INPUTS.items)
    assert body["source"] == "events:item-mean" and body["fresh_events"] == 3
    assert ids_of(body) == oracle(items, unit(items[events].mean(axis=0)), 10, events)
    vector = ok(items_only.get("/v1/users/new/vector"))
    assert vector["source"] == "events:item-mean"
    np.testing.assert_allclose(vector["vector"], unit(items[events].mean(axis=0)), **TOLERANCE)


def test_mf_user_history_and_events(mf: httpx.Client) -> None:
    """Users without a tower: the imported vector; history by the item mean; events blend
    into the stored vector, which stands for the user's 3-item window."""
    items, users = INPUTS.items.astype(np.float64), INPUTS.users.astype(np.float64)
    model = ok(mf.get("/v1/model"))
    assert model["counts"] == {"users": 12, "items": 120, "interactions": 36}
    user = INPUTS.user_ids[2]
    seen = [int(np.flatnonzero(INPUTS.item_ids == i)[0]) for i in INPUTS.seen(user)]
    body = ok(mf.post("/v1/recall", json={"user_id": user, "k": 10}))
    assert body["source"] == "user" and ids_of(body) == oracle(items, users[2], 10, seen)
    unexcluded = ok(mf.post("/v1/recall", json={"user_id": user, "k": 10, "exclude_seen": False}))
    assert ids_of(unexcluded) == oracle(items, users[2], 10, [])
    body = ok(mf.post("/v1/recall", json={"history": [1000, 1001], "k": 5}))
    assert body["source"] == "history:item-mean"
    assert ids_of(body) == oracle(items, items[[0, 1]].mean(axis=0), 5, [0, 1])

    fresh = 50
    ok(mf.post("/v1/events", json={"events": [{"user_id": user, "item_id": 1000 + fresh}]}))
    blended = (3 * users[2] + items[fresh]) / 4
    body = ok(mf.post("/v1/recall", json={"user_id": user, "k": 10}))
    assert body["source"] == "user+events:item-mean" and body["fresh_events"] == 1
    assert ids_of(body) == oracle(items, blended, 10, [*seen, fresh])
    vector = ok(mf.get(f"/v1/users/{user}/vector"))
    assert vector["source"] == "user+events:item-mean"
    np.testing.assert_allclose(vector["vector"], blended, **TOLERANCE)
    error(mf.post("/v1/recall", json={"user_id": "stranger"}), 404, "not_found")


def test_the_console_shows_where_the_vectors_came_from(mf: httpx.Client, tab: Tab) -> None:
    source = ok(mf.get("/v1/model"))["source"]
    tab.page.goto(f"{str(mf.base_url).rstrip('/')}/console#/model")
    expect(tab.page.get_by_test_id("import-command")).to_have_text(source["command"])
    for role in ("items", "users", "interactions"):
        row = tab.page.get_by_test_id(f"import-input-{role}")
        expect(row).to_contain_text(source["inputs"][role]["path"])
    tab.page.wait_for_load_state("networkidle")
    assert not tab.console_errors and not tab.page_errors and not tab.blocked
