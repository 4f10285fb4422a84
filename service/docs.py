"""``/docs``: Swagger UI served from the package, so it works on an air-gapped host.

FastAPI's built-in page loads Swagger UI from a CDN; this one loads the vendored files in
``service/static/swagger-ui/`` (npm ``swagger-ui-dist``, see its README.md) from
``/docs/assets/``. ReDoc is turned off (``redoc_url=None`` in the app): one docs page.
The OpenAPI document also states the limits that are settings rather than schema
constants (``k``'s maximum, ``RECALL_MAX_K``), and holds the schemas of the bodies routes
read themselves (:mod:`recall.service.json_body`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.models import Schema
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema
from starlette.responses import HTMLResponse

from recall.service.json_body import BODY_MODELS

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS_PATH = "/docs/assets"

# validatorUrl null: no call to the online spec validator (another host) from the page.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def install_docs(app: FastAPI, docs_path: str = "/docs", *, max_k: int | None = None) -> None:
    """Add ``docs_path`` (Swagger UI) and its assets to ``app``; create the app with
    ``docs_url=None`` so FastAPI does not add its CDN page too. ``max_k``: documented as
    the ``maximum`` (and 1 as the ``minimum``) of every ``k``, body field or query."""
    if max_k is not None:
        _document_k(app, max_k)
    if not (ASSETS_DIR / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"Swagger UI assets missing from {ASSETS_DIR} (package data)")
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(docs_path, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )


def _document_k(app: FastAPI, max_k: int) -> None:
    """Make ``app.openapi()`` give every ``k`` (request-body property or query parameter)
    the bounds the service enforces (1..``max_k``, 422 outside)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            _add_body_models(document)
            bounds = {"minimum": 1, "maximum": max_k}
            for schema in document.get("components", {}).get("schemas", {}).values():
                k = schema.get("properties", {}).get("k")
                if k is not None:
                    k.update(bounds)
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", []):
                        if parameter.get("name") == "k":
                            parameter["schema"].update(bounds)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_body_models(document: dict[str, Any]) -> None:
    """The schemas of :data:`~recall.service.json_body.BODY_MODELS` (and of the models
    they use) in ``document``'s components, as FastAPI gives a body parameter's (passed
    through its OpenAPI models: ``le=2**63-1`` as a float, no ``default: null``)."""
    _, top = models_json_schema(
        [(model, "validation") for model in BODY_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in top.get("$defs", {}).items():
        if name not in schemas:
            schemas[name] = jsonable_encoder(Schema(**schema), by_alias=True, exclude_none=True)
    document["components"]["schemas"] = dict(sorted(schemas.items()))
