"""Vector lookups: one user's or item's vector, and many in request order (JSON, or a
float32 .npy on request). User vectors are those a recall by user_id uses: the stored one,
or one made from the user's training history followed by newer events."""

from __future__ import annotations

import io
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header
from starlette.responses import Response

from recall.service.accept import NPY_MEDIA_TYPE, wants_npy
from recall.service.deps import AppStateDep, BundleDep, StateDep
from recall.service.domain_errors import OverLimit, StateDown
from recall.service.http_common import (
    BODY_ERRORS,
    ERRORS,
    fresh_after,
    model_response,
)
from recall.service.recaller import ServingBundle
from recall.service.schemas import IdsRequest, PathId, VectorResponse, VectorsResponse

router = APIRouter(tags=["vectors"])

#: ``POST .../vectors`` answers JSON or, on request, a .npy.
VECTORS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **BODY_ERRORS,
    200: {"content": {NPY_MEDIA_TYPE: {}}},
}

# The descriptions of the two lookups of many vectors, one paragraph each in the OpenAPI
# document.
USER_VECTORS_DOC = (
    "User vectors in request order, as a recall by user_id uses them (`fresh_events` "
    "per id: > 0 when newer events went into the vector; a user known only from "
    "events has one); unknown ids listed in `missing` (null rows). With `Accept: "
    f"{NPY_MEDIA_TYPE}` the body is a float32 .npy (len(ids), dim), NaN rows for "
    "unknown ids; X-Missing-Count, X-Fresh-Count (vectors from events) and X-Fresh "
    "(false: the state store was not read) say the rest."
)
ITEM_VECTORS_DOC = (
    "Stored item vectors in request order; unknown ids listed in `missing` "
    f"(null rows). With `Accept: {NPY_MEDIA_TYPE}` (named, with a q-value above 0 "
    "and at least JSON's; `*/*` means JSON) the body is a float32 .npy of "
    "shape (len(ids), dim) whose rows for unknown ids are NaN; X-Missing-Count says "
    "how many."
)


@router.get("/v1/users/{id}/vector", response_model=VectorResponse, responses=ERRORS)
async def user_vector(id: PathId, app: AppStateDep, bundle: BundleDep, state: StateDep) -> Response:
    """One user's vector, as a recall by user_id uses it: the stored one, or from the
    user's training history followed by newer events (`source`, `fresh_events`)."""
    user_id = bundle.user_ids.canonical(id)
    after = fresh_after(bundle, [user_id])
    read = await state.read([user_id], after=after, with_shown=False, bundle=bundle)
    found = await app.pool.run(app.core.user_vector, bundle, user_id, read)
    user = found.user
    body = {
        "bundle_id": bundle.id,
        "id": found.id,
        "vector": user.vector,
        "source": user.source.value,
        "fresh_events": user.fresh_events,
        "fresh": read.fresh,
    }
    return model_response(bundle, body)


@router.post(
    "/v1/users/vectors",
    response_model=VectorsResponse,
    responses=VECTORS_RESPONSES,
    name="user_vectors",
    description=USER_VECTORS_DOC,
)
async def many_user_vectors(
    body: IdsRequest,
    app: AppStateDep,
    bundle: BundleDep,
    state: StateDep,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """User vectors as a recall by user_id uses them (:data:`USER_VECTORS_DOC`)."""
    _check_count(app, body)
    ids = [bundle.user_ids.canonical(i) for i in body.ids]
    users = list(dict.fromkeys(ids))
    read = await state.read(
        users, after=fresh_after(bundle, users), with_shown=False, bundle=bundle
    )
    if read.users_down:
        raise StateDown("the state store is unavailable: the users could not be read")
    position = {user: j for j, user in enumerate(users)}
    events = [read.events[position[i]] for i in ids]
    stored = None if read.users is None else [read.users[position[i]] for i in ids]
    vectors, found, fresh_events = await app.pool.run(
        app.core.user_vectors, bundle, ids, events, stored
    )
    return _vectors_response(
        bundle,
        vectors,
        found,
        _missing(body.ids, found),
        accept,
        headers={
            "X-Fresh-Count": str(sum(n > 0 for n in fresh_events)),
            "X-Fresh": "true" if read.fresh else "false",
        },
        body={"fresh_events": fresh_events, "fresh": read.fresh},
    )


@router.get("/v1/items/{id}/vector", response_model=VectorResponse, responses=ERRORS)
async def item_vector(id: PathId, app: AppStateDep, bundle: BundleDep) -> Response:
    """The stored vector of one item."""
    typed_id, vector = app.core.item_vector(bundle, id)
    return model_response(bundle, {"bundle_id": bundle.id, "id": typed_id, "vector": vector})


@router.post(
    "/v1/items/vectors",
    response_model=VectorsResponse,
    responses=VECTORS_RESPONSES,
    name="item_vectors",
    description=ITEM_VECTORS_DOC,
)
async def many_item_vectors(
    body: IdsRequest,
    app: AppStateDep,
    bundle: BundleDep,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """Stored item vectors in request order (:data:`ITEM_VECTORS_DOC`)."""
    _check_count(app, body)
    vectors, found = await app.pool.run(app.core.item_vectors, bundle, body.ids)
    return _vectors_response(bundle, vectors, found, _missing(body.ids, found), accept)


def _check_count(app: AppStateDep, body: IdsRequest) -> None:
    most = app.settings.max_vector_ids
    if len(body.ids) > most:
        raise OverLimit(f"at most {most} ids per request")


def _missing(ids: list[Any], found: np.ndarray) -> list[Any]:
    """The ids of ``ids`` (request order) whose ``found`` (n,) bool is False."""
    if found.all():
        return []
    return [i for i, ok in zip(ids, found.tolist(), strict=True) if not ok]


def _vectors_response(
    bundle: ServingBundle,
    vectors: np.ndarray,
    found: np.ndarray,
    missing: list[Any],
    accept: str | None,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Response:
    """A vector lookup's answer: a float32 .npy (NaN rows for unknown ids) when `accept`
    asks for one, else JSON rows (None for unknown ids); `headers` follow X-Bundle-Id and
    X-Missing-Count on the .npy, `body` follows bundle_id, dim, vectors and missing."""
    if wants_npy(accept):
        buffer = io.BytesIO()
        np.save(buffer, vectors, allow_pickle=False)
        return Response(
            buffer.getvalue(),
            media_type=NPY_MEDIA_TYPE,
            headers={
                "X-Bundle-Id": bundle.id,
                "X-Missing-Count": str(len(missing)),
                **(headers or {}),
            },
        )
    rows: Any = (
        vectors
        if not missing
        else [v if ok else None for v, ok in zip(vectors, found.tolist(), strict=True)]
    )
    return model_response(
        bundle,
        {
            "bundle_id": bundle.id,
            "dim": bundle.dim,
            "vectors": rows,
            "missing": missing,
            **(body or {}),
        },
    )
