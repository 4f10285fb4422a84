"""Integer query parameters follow JSON's rules for an integer, as bodies do (issue 15 §6).

Every integer query parameter the OpenAPI schema lists is tried over a real uvicorn, so a
parameter added later without ``recall.service.schemas.QueryInt`` fails here.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from recall.service.recaller import ServingBundle

LAX = ["1_0", "+5", " 5", "5 ", "5.0", "05", "5e0", "0x5", "\u0665", "5\n", ""]
"""Spellings ``int()`` or pydantic's lax mode would take as 5 or 10; JSON takes none."""


def _integer_query_params(client: httpx.Client) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, parameters) of every route with an integer query parameter."""
    routes = []
    for path, methods in client.get("/openapi.json").json()["paths"].items():
        for method, operation in methods.items():
            params = operation.get("parameters", [])
            if any(p["in"] == "query" and p["schema"].get("type") == "integer" for p in params):
                routes.append((method, path, {p["name"]: p for p in params}))
    return routes


def _url(path: str, params: dict[str, Any], bundle: ServingBundle) -> str:
    user, item = bundle.user_ids.ids[0].item(), bundle.item_ids.ids[0].item()
    return path.replace("{id}", str(user if path.startswith("/v1/users") else item)).replace(
        "{item_id}", str(item)
    )


def test_every_integer_query_parameter_is_found(
    served: tuple[httpx.Client, ServingBundle],
) -> None:
    client, _ = served
    found = {(path, name) for _, path, params in _integer_query_params(client) for name in params}
    assert {
        ("/v1/items/{item_id}/similar", "k"),
        ("/v1/users/{id}/history", "limit"),
        ("/v1/items/search", "limit"),
    } <= found


@pytest.mark.parametrize("value", LAX)
def test_lax_integers_in_query_strings_are_a_422(
    served: tuple[httpx.Client, ServingBundle], value: str
) -> None:
    client, bundle = served
    for method, path, params in _integer_query_params(client):
        required = {n: "a" for n, p in params.items() if p["in"] == "query" and p["required"]}
        for name, param in params.items():
            if param["in"] != "query" or param["schema"].get("type") != "integer":
                continue
            url = _url(path, params, bundle)
            good = client.request(method, url, params={**required, name: "5"})
            assert good.status_code == 200, (path, name, good.text)
            bad = client.request(method, url, params={**required, name: value})
            assert bad.status_code == 422, (path, name, value, bad.text)
            error = bad.json()["error"]
            assert error["code"] == "invalid_input"
            assert name in error["message"] and "integer" in error["message"]


def test_a_negative_integer_is_read_and_refused_by_its_bound(
    served: tuple[httpx.Client, ServingBundle],
) -> None:
    client, bundle = served
    item = bundle.item_ids.ids[0].item()
    response = client.get(f"/v1/items/{item}/similar", params={"k": "-5"})
    assert response.status_code == 422
    assert "k" in response.json()["error"]["message"]
