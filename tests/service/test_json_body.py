"""``read_body`` answers every body as FastAPI's own body parameter does (the same model,
the same status and envelope, the same message), over a real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from recall.service.errors import install_error_handlers
from recall.service.json_body import read_body
from recall.service.schemas import RecallRequest
from tests.live import live_server

JSON = {"content-type": "application/json"}
CASES: list[tuple[bytes, dict[str, str]]] = [
    (b'{"user_id": 1, "k": 3}', JSON),
    (b'{"user_id": "1", "k": 3, "exclude": [2, "x"], "exclude_shown": true}', JSON),
    (b'{"history": [1, "a"], "features": {"age": 31.5, "g": "f", "n": null}}', JSON),
    (b'{"vector": [0.5, -1, 2e-3], "filter": {"decile": {"lt": 1}}}', JSON),
    (b'{"user_id": 1, "k": 3}', {}),
    (b'{"user_id": 1, "k": 3}', {"content-type": "text/plain"}),
    (b'{"user_id": 1, "k": 3}', {"content-type": "application/xml"}),
    (b'{"user_id": 1, "k": 3}', {"content-type": "application/vnd.x+json"}),
    (b'{"user_id": 1, "k": 3}', {"content-type": "Application/JSON ; charset=utf-8"}),
    (b"", JSON),
    (b"", {}),
    (b"{", JSON),
    (b'{"user_id": 1,}', JSON),
    (b'{"user_id": 1, "k": 3} x', JSON),
    (b"null", JSON),
    (b"[]", JSON),
    (b"7", JSON),
    (b"\xff\xfe{", JSON),
    (b'\xff{"user_id": 1}', JSON),
    (b'\xef\xbb\xbf{"user_id": 1, "k": 3}', JSON),
    ('{"user_id": "é", "k": 3}'.encode("utf-16"), JSON),
    (b'{"user_id": 1, "k": NaN}', JSON),
    (b'{"vector": [NaN, 1]}', JSON),
    (b'{"vector": [Infinity]}', JSON),
    (b'{"user_id": 1, "k": 1.0}', JSON),
    (b'{"user_id": 1, "k": true}', JSON),
    (b'{"user_id": true}', JSON),
    (b'{"user_id": 1.5}', JSON),
    (b'{"user_id": 1, "user_id": 2}', JSON),
    (b'{"user_id": 1, "zzz": 2}', JSON),
    (b'{"user_id": "\\ud800"}', JSON),
    (b'{"user_id": 1, "exclude": [1e400]}', JSON),
    (b'{"user_id": 99999999999999999999999}', JSON),
    (b'{"history": [1], "exclude_shown": true}', JSON),
    (b'{"user_id": 1, "history": [1]}', JSON),
    (b'{"user_id": 1, "filter": {"decile": {"lt": "x", "any": []}}}', JSON),
]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/fastapi")
    async def by_fastapi(body: RecallRequest) -> dict[str, object]:
        return body.model_dump()

    @app.post("/ours")
    async def by_read_body(request: Request) -> dict[str, object]:
        return (await read_body(request, RecallRequest)).model_dump()

    with live_server(app) as base:
        yield base


@pytest.mark.parametrize(("body", "headers"), CASES)
def test_the_answer_is_fastapis(url: str, body: bytes, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=url) as client:
        theirs = client.post("/fastapi", content=body, headers=headers)
        ours = client.post("/ours", content=body, headers=headers)
    assert theirs.status_code in (200, 400, 422), theirs.text
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
