"""No input may produce a 500 (issue 8 §4): hostile and sloppy inputs over a real uvicorn."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recall.service import recaller as core
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from tests.live import live_server, settings

JSON = {"content-type": "application/json"}
KNOWN = ("gender (categorical)", "country (categorical)", "age (numeric)")


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    message: str = error["message"]
    return message


def _local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response``."""
    port: int = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    return port


@pytest.mark.parametrize("age", ["1e308", "-1e308", str(10**40), str(10**400), '"1e308"'])
def test_numeric_feature_beyond_float32_is_a_422_naming_it(
    served: tuple[httpx.Client, ServingBundle], age: str
) -> None:
    client, _ = served
    body = '{"history": [1, 2], "features": {"age": ' + age + '}, "k": 3}'
    message = _error(client.post("/v1/recall", content=body, headers=JSON), 422, "invalid_input")
    assert "'age'" in message
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("kind", ["users", "items"])
def test_lone_surrogate_ids_are_422_everywhere(
    served: tuple[httpx.Client, ServingBundle], kind: str
) -> None:
    client, _ = served
    surrogate = b'"\\ud800"'  # the JSON escape of a lone surrogate, not valid Unicode text
    message = _error(
        client.post(f"/v1/{kind}/vectors", content=b'{"ids": [1, %s]}' % surrogate, headers=JSON),
        422,
        "invalid_input",
    )
    assert "ids.1" in message and "surrogate" in message
    for body in (
        b'{"user_id": %s}' % surrogate,
        b'{"history": [%s]}' % surrogate,
        b'{"user_id": 1, "exclude": [%s]}' % surrogate,
        b'{"history": [1], "features": {%s: 1}}' % surrogate,
        b'{"history": [1], "features": {"gender": %s}}' % surrogate,
        b"{%s: 1}" % surrogate,
    ):
        response = client.post("/v1/recall", content=body, headers=JSON)
        _error(response, 422, "invalid_input")
    batch = client.post(
        "/v1/recall/batch",
        content=b'{"requests": [{"user_id": %s}, {"user_id": 1, "k": 2}]}' % surrogate,
        headers=JSON,
    )
    assert [r["status"] for r in batch.json()["results"]] == [422, 200]


@pytest.mark.parametrize("fill", ["3e38", "1e39"])
def test_vector_whose_scores_overflow_is_a_422(
    served: tuple[httpx.Client, ServingBundle], fill: str
) -> None:
    client, bundle = served
    body = '{"vector": [' + ", ".join([fill] * bundle.dim) + '], "k": 200}'
    message = _error(client.post("/v1/recall", content=body, headers=JSON), 422, "invalid_input")
    assert "float32" in message


def test_unexpected_error_is_the_500_envelope_and_keeps_the_connection(
    published_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in the core")

    monkeypatch.setattr(core, "answer", broken)  # every recall path ends there
    with (
        live_server(create_app(settings(published_root))) as url,
        httpx.Client(base_url=url) as client,
        caplog.at_level(logging.ERROR, logger="recall.service.errors"),
    ):
        failed = client.post("/v1/recall", json={"user_id": 1, "k": 3})
        assert failed.status_code == 500
        assert failed.json() == {"error": {"code": "internal", "message": "internal error"}}
        after = client.get("/healthz")  # the same keep-alive connection still works
        assert after.status_code == 200
        assert _local_port(after) == _local_port(failed)
        batch = client.post("/v1/recall/batch", json={"requests": [{"user_id": 1}, {"k": 0}]})
        assert batch.status_code == 200
        assert [r["status"] for r in batch.json()["results"]] == [500, 422]
        metrics = client.get("/metrics")
        assert _local_port(metrics) == _local_port(failed)
        assert 'route="/v1/recall",status="500"' in metrics.text
    logged = [r for r in caplog.records if "unhandled error on POST /v1/recall" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_history_with_no_known_item_answers_like_an_unknown_user(
    served: tuple[httpx.Client, ServingBundle],
) -> None:
    client, _ = served
    for history in (["ghost", -7], []):
        response = client.post("/v1/recall", json={"history": history, "k": 4})
        assert "history" in _error(response, 404, "not_found")
        popular = client.post(
            "/v1/recall", json={"history": history, "k": 4, "fallback": "popular"}
        ).json()
        unknown_user = client.post(
            "/v1/recall", json={"user_id": "ghost", "k": 4, "fallback": "popular"}
        ).json()
        assert popular["source"] == "popular" and popular["items"] == unknown_user["items"]


@pytest.mark.parametrize(
    "features",
    [{"shoe": 3}, {"gender": 5}, {"age": "old"}, {"gender": "F", "age": "30"}, {"age": True}],
)
def test_unknown_or_mistyped_features_are_a_422_listing_the_known_ones(
    served: tuple[httpx.Client, ServingBundle], features: dict[str, object]
) -> None:
    client, bundle = served
    history = bundle.item_ids.ids[:2].tolist()
    response = client.post("/v1/recall", json={"history": history, "features": features})
    message = _error(response, 422, "invalid_input")
    if features != {"age": True}:  # a bool is refused by the schema, before the model
        assert all(known in message for known in KNOWN), message


def test_a_category_the_vocabulary_lacks_is_served_as_unknown(
    served: tuple[httpx.Client, ServingBundle],
) -> None:
    client, bundle = served
    history = bundle.item_ids.ids[:3].tolist()
    answers = [
        client.post(
            "/v1/recall", json={"history": history, "features": {"country": c}, "k": 10}
        ).json()
        for c in ("Atlantis", None)
    ]
    assert answers[0]["source"] == "history" and answers[0]["items"] == answers[1]["items"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/recall", {"user_id": True}),
        ("/v1/recall", {"user_id": 1.0}),
        ("/v1/recall", {"user_id": 1, "k": "5"}),
        ("/v1/recall", {"user_id": 1, "k": 5.0}),
        ("/v1/recall", {"user_id": 1, "exclude_seen": "yes"}),
        ("/v1/recall", {"user_id": 1, "exclude_seen": 1}),
        ("/v1/recall", {"user_id": 1, "exclude": [False]}),
        ("/v1/recall", {"history": [1, True]}),
        ("/v1/recall", {"vector": ["0.5"] * 17}),
        ("/v1/recall", {"user_id": 2**63}),
        ("/v1/users/vectors", {"ids": [True]}),
        ("/v1/items/vectors", {"ids": [1.5]}),
    ],
)
def test_no_type_coercion(
    served: tuple[httpx.Client, ServingBundle], path: str, body: dict[str, object]
) -> None:
    client, _ = served
    _error(client.post(path, json=body), 422, "invalid_input")


def test_no_type_coercion_in_batch_entries(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, _ = served
    requests = [{"user_id": True}, {"user_id": 1, "k": "5"}, {"user_id": 1, "k": 5}]
    results = client.post("/v1/recall/batch", json={"requests": requests}).json()["results"]
    assert [r["status"] for r in results] == [422, 422, 200]


def _types(schema: dict[str, Any]) -> set[str]:
    """Every JSON type a (possibly nested anyOf) schema allows."""
    found = {schema["type"]} if "type" in schema else set()
    for option in schema.get("anyOf", ()):
        found |= _types(option)
    return found


def test_openapi_keeps_the_id_and_field_types(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, _ = served
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    recall = schemas["RecallRequest"]["properties"]
    assert _types(recall["user_id"]) == {"integer", "string", "null"}
    assert _types(recall["history"]["anyOf"][0]["items"]) == {"integer", "string"}
    assert recall["k"]["type"] == "integer"
    assert _types(recall["exclude_seen"]) == {"boolean", "null"}
    assert _types(schemas["IdsRequest"]["properties"]["ids"]["items"]) == {"integer", "string"}


@pytest.mark.parametrize(
    ("accept", "npy"),
    [
        ("application/x-npy;q=0, application/json", False),
        ("application/x-npy; q=0.5, application/json", False),
        ("application/json;q=0.5, application/x-npy", True),
        ("application/x-npy", True),
        ("*/*", False),
        (None, False),
    ],
)
def test_accept_q_values_choose_json_or_npy(
    served: tuple[httpx.Client, ServingBundle], accept: str | None, npy: bool
) -> None:
    client, bundle = served
    ids = bundle.item_ids.ids[:3].tolist()
    headers = {"Accept": accept} if accept is not None else {}
    response = client.post("/v1/items/vectors", json={"ids": ids}, headers=headers)
    assert response.status_code == 200
    if npy:
        assert response.headers["content-type"] == "application/x-npy"
        array = np.load(io.BytesIO(response.content), allow_pickle=False)
        np.testing.assert_array_equal(array, np.asarray(bundle.item_vectors)[:3])
    else:
        assert response.headers["content-type"] == "application/json"
        assert len(response.json()["vectors"]) == 3


def test_head_answers_every_get_route_without_a_body(
    served: tuple[httpx.Client, ServingBundle],
) -> None:
    client, bundle = served
    user, item = bundle.user_ids.ids[0].item(), bundle.item_ids.ids[0].item()
    for path in (
        "/healthz",
        "/readyz",
        "/v1/model",
        "/metrics",
        f"/v1/users/{user}/vector",
        f"/v1/items/{item}/similar?k=5",
        "/v1/users/nobody/vector",
    ):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b""
        for header in ("content-type", "x-bundle-id"):
            assert head.headers.get(header) == get.headers.get(header), (path, header)
        if path != "/metrics":  # the metrics text changes between the two requests
            assert head.headers["content-length"] == get.headers["content-length"]
    assert client.head("/v1/recall").status_code == 405  # a POST route stays POST
    assert 'method="HEAD",route="/healthz",status="200"' in client.get("/metrics").text


def test_long_ids_are_cut_in_error_messages(served: tuple[httpx.Client, ServingBundle]) -> None:
    client, _ = served
    for long_id, status, code in (
        ("x" * 256, 404, "not_found"),
        ("x" * 6000, 422, "invalid_input"),
    ):
        for response in (  # 256 bytes is the longest id there is; longer ones are refused
            client.get(f"/v1/users/{long_id}/vector"),
            client.get(f"/v1/items/{long_id}/similar"),
            client.post("/v1/recall", json={"user_id": long_id}),
        ):
            message = _error(response, status, code)
            assert len(message) < 120 and "x" * 65 not in message
    response = client.post("/v1/recall", json={"history": [1], "features": {long_id: 1}})
    assert len(_error(response, 422, "invalid_input")) < 400
    response = client.post("/v1/recall", json={"user_id": 1, "k": 10**4000})
    assert len(_error(response, 422, "invalid_input")) < 200
