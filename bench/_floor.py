"""The HTTP floor of ``POST /v1/recall``: a bare app under the same uvicorn settings that
reads the body and answers fixed bytes (a real answer of the service), no work between.

``BENCH_FLOOR_KIND``: ``starlette`` (one Starlette route) or ``fastapi`` (one FastAPI
route, reading the body as the service's route does, OpenTelemetry off as the service
runs); ``BENCH_FLOOR_BODY``: the file with the answer. For ``bench/_server.serve(...,
app_factory="_floor:create_app")``.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


def create_app() -> Starlette:
    """The floor app ``BENCH_FLOOR_KIND`` names, answering ``BENCH_FLOOR_BODY``."""
    return floor_app(
        os.environ["BENCH_FLOOR_KIND"], Path(os.environ["BENCH_FLOOR_BODY"]).read_bytes()
    )


def floor_app(kind: str, body: bytes) -> Starlette:
    """A bare ``kind`` (``starlette`` or ``fastapi``) app whose ``POST /v1/recall`` reads
    the request's body and answers ``body``."""
    headers = {"X-Bundle-Id": "floor"}

    async def recall(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json", headers=headers)

    async def ready(request: Request) -> Response:  # what bench/_server.serve waits for
        return Response(b'{"status":"ready"}', media_type="application/json")

    if kind == "starlette":
        return Starlette(
            routes=[Route("/v1/recall", recall, methods=["POST"]), Route("/readyz", ready)]
        )
    off = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    app = FastAPI(telemetry=off)  # type: ignore[arg-type]
    app.post("/v1/recall")(recall)
    app.get("/readyz")(ready)
    return app
