"""Ids are at most 256 bytes of UTF-8 and hold no NUL, wherever they enter the HTTP API
(issue 15 §1), over a real uvicorn serving a bundle with string ids."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from recall.index.build import build_index
from recall.index.publish import publish
from recall.service.app import create_app
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from tests.index_data import FAST_FLAT, write_dataset_bundle
from tests.live import TOKEN, live_server, settings

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 256  # index.ids.MAX_ID_BYTES, the documented limit
AT_LIMIT = "é" * (LIMIT // 2)  # 128 characters, 256 bytes: accepted
OVER = "é" * (LIMIT // 2 + 1)  # 129 characters, 258 bytes: the limit counts bytes
ITEM, USER = "m00001", "u00001"  # ids of the bundle below
NUL_ITEM = ITEM + "\u0000"  # numpy's fixed-width strings would read it as ITEM


@pytest.fixture(scope="module")
def client(
    synthetic: Dataset,
    small_config: TrainConfig,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[httpx.Client]:
    """A live server on the synthetic data's bundle (no torch) re-labelled with string ids
    ("m00001", "u00001")."""
    root = tmp_path_factory.mktemp("string-ids")
    labelled = dataclasses.replace(
        synthetic,
        item_ids=np.array([f"m{int(i):05d}" for i in synthetic.item_ids]),
        user_ids=np.array([f"u{int(u):05d}" for u in synthetic.user_ids]),
    )
    bundle = write_dataset_bundle(root, labelled, small_config, "20260101T000000Z-5751d5")
    build_index(bundle, FAST_FLAT)
    publish(bundle)
    app = create_app(settings(root, max_body_bytes=1 << 20, max_vector_ids=2000))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def _invalid(response: httpx.Response, where: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    message: str = error["message"]
    assert where in message, message
    return message


def _bodies(bad: str) -> list[tuple[str, dict[str, Any], str]]:
    """(path, body, where the error points) of every request body that carries ids."""
    return [
        ("/v1/items/vectors", {"ids": [ITEM, bad]}, "ids.1"),
        ("/v1/users/vectors", {"ids": [bad]}, "ids.0"),
        ("/v1/recall", {"user_id": bad, "k": 5}, "user_id"),
        ("/v1/recall", {"history": [ITEM, bad], "k": 5}, "history.1"),
        ("/v1/recall", {"user_id": USER, "exclude": [bad], "k": 5}, "exclude.0"),
        (f"/v1/items/{ITEM}/similar", {"exclude": [bad], "k": 5}, "exclude.0"),
    ]


@pytest.mark.parametrize(
    ("bad", "what"), [(OVER, "256 bytes"), (NUL_ITEM, "NUL")], ids=["258B", "NUL"]
)
def test_a_long_or_nul_id_in_a_body_is_a_422(client: httpx.Client, bad: str, what: str) -> None:
    for path, body, where in _bodies(bad):
        assert what in _invalid(client.post(path, json=body), where), path
    for path, body, _ in _bodies(AT_LIMIT):  # at the limit: an unknown id, answered
        response = client.post(path, json=body)
        assert response.status_code in (200, 404), (path, response.text)
        assert response.json().get("error", {}).get("code", "not_found") == "not_found"


@pytest.mark.parametrize("bad", [OVER, NUL_ITEM], ids=["258B", "NUL"])
def test_a_long_or_nul_id_in_a_path_is_a_422(client: httpx.Client, bad: str) -> None:
    for template in (
        "/v1/items/{}/vector",
        "/v1/users/{}/vector",
        "/v1/items/{}",
        "/v1/items/{}/similar",
        "/v1/users/{}/history",
    ):
        url = template.format(quote(bad, safe=""))
        _invalid(client.get(url), "path")
        at_limit = client.get(template.format(quote(AT_LIMIT, safe="")))
        assert at_limit.status_code == 404, (template, at_limit.text)
    _invalid(client.post(f"/v1/items/{quote(bad, safe='')}/similar", json={"k": 5}), "path")


def test_one_long_id_among_many_is_a_422_not_a_bundle_sized_copy(client: httpx.Client) -> None:
    """The reported attack, scaled to the test settings: one 100 KB id beside short ones
    (main answered 200 after copying the sorted ids to the long id's width)."""
    ids = ["x" * 100_000, *[ITEM] * 1999]
    message = _invalid(client.post("/v1/items/vectors", json={"ids": ids}), "ids.0")
    assert "256 bytes" in message and len(message) < 500  # the id is not echoed
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("bad", [OVER, NUL_ITEM], ids=["258B", "NUL"])
def test_a_long_or_nul_id_in_a_batch_entry_fails_that_entry(client: httpx.Client, bad: str) -> None:
    body = {"requests": [{"user_id": USER, "k": 3}, {"user_id": bad, "k": 3}]}
    response = client.post("/v1/recall/batch", json=body)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["status"] == 200 and len(first["items"]) == 3
    assert second["status"] == 422 and second["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("bad", [OVER, NUL_ITEM], ids=["258B", "NUL"])
def test_an_event_with_a_long_or_nul_id_is_rejected_inline(client: httpx.Client, bad: str) -> None:
    user = f"u-new-{len(bad)}"
    events = [
        {"user_id": user, "item_id": bad},
        {"user_id": bad, "item_id": ITEM},
        {"user_id": user, "item_id": ITEM},
    ]
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 1
    assert [r["index"] for r in answer["rejected"]] == [0, 1]
    assert all(r["error"]["code"] == "invalid_input" for r in answer["rejected"])
    history = client.get(f"/v1/users/{user}/history").json()
    assert [e["item_id"] for e in history["fresh_events"]] == [ITEM]  # only the good one


def test_availability_refuses_a_long_or_nul_id_and_changes_nothing(client: httpx.Client) -> None:
    url = "/v1/admin/items/availability"
    before = client.get(url, headers=ADMIN).json()
    for bad in (OVER, NUL_ITEM):
        _invalid(client.post(url, json={"disable": [bad]}, headers=ADMIN), "disable.0")
        _invalid(client.post(url, json={"enable": [bad]}, headers=ADMIN), "enable.0")
    assert client.get(url, headers=ADMIN).json() == before
    # ITEM is still served: disabling "m00001\0" did not remove it
    vectors = client.post("/v1/items/vectors", json={"ids": [ITEM]}).json()
    assert vectors["missing"] == [] and vectors["vectors"][0] is not None
