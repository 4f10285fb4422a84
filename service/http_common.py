"""What every route module of the HTTP API shares: the orjson response, the per-request
bundle and state-store dependencies, and the rule for which stored events are fresh."""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from starlette.responses import JSONResponse

from recall.service.recaller import ServingBundle
from recall.service.reloader import BundleHolder
from recall.service.state import Id
from recall.service.state_access import StateAccess

__all__ = [
    "BundleDep",
    "JsonResponse",
    "StateDep",
    "current_bundle",
    "fresh_after",
    "model_response",
    "state_access",
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


async def current_bundle(request: Request) -> ServingBundle:
    """The bundle this request runs on, taken once: it cannot change under the request.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a
    thread hop per request for one attribute read."""
    holder: BundleHolder = request.app.state.holder
    return holder.require()


BundleDep = Annotated[ServingBundle, Depends(current_bundle)]


async def state_access(request: Request) -> StateAccess:
    """The state store of this app (opened by the lifespan)."""
    access: StateAccess = request.app.state.state
    return access


StateDep = Annotated[StateAccess, Depends(state_access)]


def fresh_after(bundle: ServingBundle, user_ids: list[Id]) -> float:
    """Events to read: those after the training data (``trained_until``) when every user is
    known to a v2 bundle; else all the store keeps (a new user's events all count, and a v1
    bundle cannot tell fresh from trained). :mod:`recall.service.fresh` filters per user."""
    if bundle.trained_until is None or bundle.history is None:
        return -math.inf
    if (bundle.user_ids.rows(user_ids) < 0).any():
        return -math.inf
    return bundle.trained_until
