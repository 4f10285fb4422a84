"""The one JSON error envelope, ``{"error": {"code", "message"}}``, and the one place that
maps errors to HTTP: the domain errors of :mod:`recall.service.domain_errors` (status by
:data:`STATUS`), FastAPI's validation errors, Starlette's HTTP errors and anything
unexpected (500 ``internal``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recall.service.domain_errors import (
    ECHO_LIMIT,
    BundleNotReady,
    Forbidden,
    InvalidRequest,
    OverLimit,
    RecallError,
    ReloadRefused,
    StateDown,
    Unauthorized,
    UnknownId,
    clip,
)

logger = logging.getLogger(__name__)


#: The HTTP status of each domain error.
STATUS: dict[type[RecallError], int] = {
    InvalidRequest: 422,
    UnknownId: 404,
    OverLimit: 413,
    Unauthorized: 401,
    Forbidden: 403,
    BundleNotReady: 503,
    StateDown: 503,
    ReloadRefused: 409,
}


STATE_RETRY_AFTER_S = "1"
"""``Retry-After`` (seconds) of a 503 ``state_unavailable``: a restarted Redis or a
cluster's failover is back within seconds."""


def status_of(error: RecallError) -> int:
    """The HTTP status of a domain error (500 for one :data:`STATUS` does not name)."""
    return STATUS.get(type(error), 500)


def error_body(error: RecallError) -> dict[str, Any]:
    """A domain error as a batch entry: ``{"status", "error": {"code", "message"}}``."""
    return {"status": status_of(error), **envelope(error.code, error.message)}


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def safe_text(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) replaced by "?", so
    the envelope always serializes."""
    return text.encode("utf-8", "replace").decode("utf-8")


def envelope(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": safe_text(message)}}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(envelope(code, message)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def describe_errors(errors: list[Any]) -> str:
    """Validation errors as one message: ``where: what`` for the first five, joined."""
    parts = []
    for e in errors[:5]:
        where = ".".join(
            p if isinstance(p, str) and len(p) <= ECHO_LIMIT else clip(p)
            for p in e.get("loc", ())
            if p != "body"
        )
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


class UnexpectedErrorMiddleware:
    """An unexpected exception -> the 500 envelope, logged, and the connection kept.

    Starlette's own last resort (``ServerErrorMiddleware``) sends the 500 and then
    re-raises, so uvicorn closes the keep-alive connection and the client's next request
    on it fails too. This pure ASGI middleware sits inside it and does not re-raise. If
    the response had already started, nothing honest can be sent: it re-raises.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await error_response(500, "internal", "internal error")(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the app as the envelope, with the status of :data:`STATUS`.

    Call it before adding other middleware: the catch-all then sits innermost, so the
    metrics middleware still sees (and counts) the 500."""
    app.add_middleware(UnexpectedErrorMiddleware)

    @app.exception_handler(RecallError)
    async def _domain_error(request: Request, exc: RecallError) -> Response:
        retry = {"Retry-After": STATE_RETRY_AFTER_S} if isinstance(exc, StateDown) else None
        return error_response(status_of(exc), exc.code, exc.message, retry)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(422, "invalid_input", describe_errors(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names the first matching route only
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)  # only reached from outer middleware now
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error")


def _allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: the methods of every route matching the path (one
    path may be served by several routes, e.g. GET and POST ``/v1/items/{id}/similar``)."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        if (
            isinstance(route, Route)
            and route.methods
            and route.matches(request.scope)[0] != Match.NONE
        ):
            methods |= route.methods
    return ", ".join(sorted(methods))


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """``routes`` with the routes of the routers ``include_router`` added in their place
    (FastAPI >= 0.16x keeps an included router as one entry holding ``original_router``;
    ours have no prefix, so their routes match as they are)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route
