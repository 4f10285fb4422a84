"""A route class that calls an endpoint taking only the request, and returning a
:class:`~starlette.responses.Response`, directly: without FastAPI's per-request handler.

FastAPI wraps every endpoint in a handler (``fastapi.routing.get_request_handler``) that,
even for an endpoint whose only parameter is the request, looks up its telemetry data,
solves the endpoint's dependencies (parsing the query string and the cookies, building a
sub-``Response`` for headers), calls it and copies that sub-response's headers and
background onto the answer: about a fifth of the event loop's CPU on ``POST /v1/recall``
(docs/performance.md). An endpoint that reads its own body
(:func:`recall.service.json_body.read_body`) and builds its own response needs none of
that. Everything else stays FastAPI's: matching, the OpenAPI document, the error handlers
(an exception raised by the endpoint reaches them as before) and the middleware. Any
other endpoint of a router with this route class gets FastAPI's handler as usual. With
``RECALL_OPENTELEMETRY=true`` such a route has FastAPI's request span but not the
handler's inner ``fastapi.dependencies`` and ``fastapi.endpoint`` spans.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["RequestRoute"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class RequestRoute(APIRoute):
    """An :class:`APIRoute` whose endpoint, when it is ``async def f(request: Request) ->
    Response`` (a ``Response`` subclass allowed) without route dependencies, is the
    route's handler itself (``APIRouter(route_class=RequestRoute)``)."""

    def get_route_handler(self) -> Handler:
        if _takes_only_the_request(self.endpoint) and not self.dependencies:
            endpoint: Handler = self.endpoint
            return endpoint
        return super().get_route_handler()


def _takes_only_the_request(endpoint: Callable[..., Any]) -> bool:
    if not inspect.iscoroutinefunction(endpoint):
        return False
    hints = get_type_hints(endpoint)
    parameters = list(inspect.signature(endpoint).parameters)
    returns = hints.get("return")
    return (
        len(parameters) == 1
        and hints.get(parameters[0]) is Request
        and isinstance(returns, type)
        and issubclass(returns, Response)
    )
