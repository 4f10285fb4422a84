"""A JSON request body that the route reads itself: pydantic parses and validates the bytes
in one pass (``model_validate_json``), without FastAPI's body parameter (``json.loads``, the
content type parsed by ``email.message``, the body's dependency solving: ~10% of the event
loop's time on ``POST /v1/recall``, docs/performance.md).

A body that fails is read again the way FastAPI reads a body parameter, so every error
answers exactly as before: 422 ``invalid_input`` with FastAPI's messages (an empty body,
a content type that is not JSON, JSON that does not parse, a value that does not
validate), 400 ``bad_request`` for bytes that are no JSON text. Only valid bodies take the
fast path, and pydantic's JSON mode accepts the same values as its Python mode on what
``json.loads`` gives (the body models use strict types).

A route using it declares its body with :func:`body_openapi` (its ``openapi_extra``),
which lists the model in :data:`BODY_MODELS`: :func:`recall.service.docs.install_docs`
adds their schemas to the OpenAPI document.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

__all__ = ["BODY_MODELS", "body_openapi", "read_body"]

M = TypeVar("M", bound=BaseModel)

#: The models of the bodies routes read with :func:`read_body`, for the OpenAPI document.
BODY_MODELS: list[type[BaseModel]] = []


def body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """A route's ``openapi_extra``: its required JSON body is ``model`` (as FastAPI
    documents a body parameter); registers ``model`` in :data:`BODY_MODELS`."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}


def _content_type(request: Request) -> str | None:
    """The request's Content-Type, read from the ASGI scope (without building
    ``request.headers``)."""
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            return str(value.decode("latin-1"))
    return None


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, parameters and case aside (what
    FastAPI parses the body as JSON for); no content type is not JSON."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def _body_of(request: Request) -> bytes:
    """The request's body, from its ASGI messages as ``request.body()`` reads them, without
    Starlette's stream (an async generator in an ``aclosing``: a twentieth of the event
    loop's CPU on ``POST /v1/recall``)."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, model: type[M]) -> M:
    """The request's body as ``model``; :class:`RequestValidationError` (422) or a 400
    :class:`HTTPException` as FastAPI's body parameter raises them."""
    raw = await _body_of(request)
    is_json = _is_json(_content_type(request))
    if raw and is_json:
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            pass  # answered below, with FastAPI's errors
    return _as_fastapi_reads(raw, is_json, model)


def _as_fastapi_reads(raw: bytes, is_json: bool, model: type[M]) -> M:
    """``raw`` read and validated as FastAPI 0.16x does for a body parameter of ``model``
    (``fastapi.routing.get_request_handler``): the slow path, taken only by bodies the
    fast one refused."""
    if not raw:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    value: Any = raw
    if is_json:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            error = {
                "type": "json_invalid",
                "loc": ("body", e.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": e.msg},
            }
            raise RequestValidationError([error], body=e.doc) from e
        except ValueError as e:  # not UTF-8 (nor UTF-16/32 with its BOM)
            raise HTTPException(400, "There was an error parsing the body") from e
    try:
        return model.model_validate(value, from_attributes=True)
    except ValidationError as e:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in e.errors()]
        raise RequestValidationError(errors, body=value) from None
