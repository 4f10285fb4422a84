"""What every route module of the HTTP API shares: the orjson response with the bundle's
id, the error responses it documents, and the rule for which stored events are fresh
(the dependencies: :mod:`recall.service.deps`)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response

from recall.index.ids import ExternalId
from recall.service.recaller import ServingBundle
from recall.service.schemas import ErrorResponse

__all__ = [
    "BODY_ERRORS",
    "ERRORS",
    "JsonResponse",
    "RawJsonResponse",
    "error_responses",
    "fresh_after",
    "model_response",
    "raw_json_response",
]


class JsonResponse(JSONResponse):
    """JSON via orjson (numpy arrays serialized natively). A ``JSONResponse``, so that
    FastAPI's OpenAPI document gives routes answering with it their response model's
    schema (for any other response class it writes ``type: string``)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def model_response(bundle: ServingBundle, content: Any, **kwargs: Any) -> JsonResponse:
    """``content`` as JSON with the ``X-Bundle-Id`` header of the bundle that answered."""
    return JsonResponse(content, headers={"X-Bundle-Id": bundle.id}, **kwargs)


class RawJsonResponse(Response):
    """JSON already serialized (in a search thread) with the answering bundle's
    ``X-Bundle-Id``: the headers ``Response(content, media_type=..., headers=...)`` gives,
    in its order, written down at once instead of lower-cased, encoded and searched per
    response (a twentieth of the event loop's CPU on ``POST /v1/recall``)."""

    media_type = JsonResponse.media_type

    def __init__(self, content: bytes, bundle_id: str) -> None:
        self.status_code = 200
        self.background = None
        self.body = content
        self.raw_headers = [
            (b"x-bundle-id", bundle_id.encode("latin-1")),
            (b"content-length", b"%d" % len(content)),
            (b"content-type", b"application/json"),
        ]


def raw_json_response(bundle: ServingBundle, content: bytes) -> Response:
    """JSON already serialized (in a search thread) with the answering bundle's
    ``X-Bundle-Id``."""
    return RawJsonResponse(content, bundle.id)


def fresh_after(bundle: ServingBundle, user_ids: list[ExternalId]) -> float:
    """Events to read: those after the training data (``trained_until``) when every user is
    known to a v2 bundle; else all the store keeps (a new user's events all count, and a v1
    bundle cannot tell fresh from trained). :mod:`recall.service.fresh` filters per user."""
    if bundle.trained_until is None or bundle.history is None:
        return -math.inf
    known = bundle.user_ids
    if len(user_ids) == 1:  # a recall's user: no arrays on the event loop
        unknown = known.row(user_ids[0]) is None
    else:
        unknown = bool((known.rows(user_ids) < 0).any())
    return -math.inf if unknown else bundle.trained_until


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer these statuses with the envelope."""
    return {status: {"model": ErrorResponse} for status in statuses}


#: The errors of a route without a body, and of one with a JSON body (400 bad_request: a
#: body that cannot be read, e.g. not UTF-8).
ERRORS = error_responses(404, 413, 422, 503)
BODY_ERRORS = error_responses(400, 404, 413, 422, 503)
