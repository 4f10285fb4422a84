"""``RequestRoute`` calls an endpoint of the request alone, returning a Response, directly;
over a real uvicorn it answers (errors included) as FastAPI's handler does, and every
other endpoint of its router keeps FastAPI's handler."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from recall.service.domain_errors import InvalidRequest
from recall.service.errors import install_error_handlers
from recall.service.request_route import RequestRoute
from tests.live import live_server


async def answer(request: Request) -> Response:
    """Echo the body with a header; 422 (a domain error) for ``bad``, 500 for ``boom``."""
    body = await request.body()
    if body == b"bad":
        raise InvalidRequest("bad body")
    if body == b"boom":
        raise RuntimeError("boom")
    return Response(body, media_type="application/json", headers={"X-Echo": "1"})


async def as_dict(request: Request) -> dict[str, str]:
    return {"path": request.url.path}


async def with_query(request: Request, k: int = 1) -> Response:
    return Response(str(k))


def _router(route_class: type[APIRoute]) -> APIRouter:
    router = APIRouter(route_class=route_class)
    router.post("/answer")(answer)
    router.get("/dict")(as_dict)
    router.get("/query")(with_query)
    return router


def _app(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(_router(route_class))
    return app


@pytest.fixture(scope="module")
def urls() -> Iterator[tuple[str, str]]:
    with live_server(_app(RequestRoute)) as ours, live_server(_app(APIRoute)) as theirs:
        yield ours, theirs


def test_only_an_endpoint_of_the_request_returning_a_response_is_called_directly() -> None:
    routes = [route for route in _router(RequestRoute).routes if isinstance(route, APIRoute)]
    handlers = {route.path: route.get_route_handler() for route in routes}
    assert handlers["/answer"] is answer
    assert handlers["/dict"] is not as_dict
    assert handlers["/query"] is not with_query


@pytest.mark.parametrize("body", [b'{"a": 1}', b"bad", b"boom", b""])
def test_the_direct_route_answers_as_fastapis_handler(urls: tuple[str, str], body: bytes) -> None:
    ours, theirs = (httpx.post(f"{url}/answer", content=body) for url in urls)
    assert ours.status_code == theirs.status_code
    assert ours.content == theirs.content
    assert _headers(ours) == _headers(theirs)


def test_other_endpoints_keep_fastapis_handler(urls: tuple[str, str]) -> None:
    ours, _ = urls
    assert httpx.get(f"{ours}/dict").json() == {"path": "/dict"}
    assert httpx.get(f"{ours}/query", params={"k": 7}).text == "7"
    assert httpx.get(f"{ours}/query", params={"k": "x"}).status_code == 422


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    """The headers in order, but the date."""
    return [(k, v) for k, v in response.headers.items() if k != "date"]
