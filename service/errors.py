"""Domain errors and the one JSON error envelope: ``{"error": {"code", "message"}}``.

Errors raised below the HTTP layer carry an HTTP status and a stable machine-readable
code; :func:`install_error_handlers` maps them, FastAPI's validation errors and anything
unexpected onto the envelope in one place::

    ApiError
    ├── InvalidInput      422  invalid_input
    ├── UnknownId         404  not_found
    ├── PayloadTooLarge   413  payload_too_large
    ├── Unauthorized      401  unauthorized
    ├── Forbidden         403  forbidden
    ├── NotReady          503  not_ready
    ├── StateDown         503  state_unavailable
    └── ReloadFailed      409  reload_failed
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class ApiError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ApiError):
    status, code = 422, "invalid_input"


class UnknownId(ApiError):
    status, code = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotReady(ApiError):
    status, code = 503, "not_ready"


class ReloadFailed(ApiError):
    status, code = 409, "reload_failed"


class StateDown(ApiError):
    """The state store could not take a write (``POST /v1/events``): the client retries."""

    status, code = 503, "state_unavailable"


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


ECHO_LIMIT = 64  # characters of a client's id or name echoed in a message


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters + "…" (a 1 MB id must not
    make a 1 MB message)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


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
    """Every error leaves the app as the envelope, with the status of DESIGN.md.

    Call it before adding other middleware: the catch-all then sits innermost, so the
    metrics middleware still sees (and counts) the 500."""
    app.add_middleware(UnexpectedErrorMiddleware)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

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
    for route in request.app.router.routes:
        if (
            isinstance(route, Route)
            and route.methods
            and route.matches(request.scope)[0] != Match.NONE
        ):
            methods |= route.methods
    return ", ".join(sorted(methods))
