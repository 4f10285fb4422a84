"""Recall: top-k items for a user, a history or a vector, many at once, and item-to-item."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import ValidationError
from starlette.responses import Response

from recall.service import recaller as core
from recall.service.app_state import AppState
from recall.service.deps import AppStateDep, BundleDep, StateDep
from recall.service.errors import ApiError, InvalidInput, PayloadTooLarge, describe_errors, envelope
from recall.service.fresh import UserVector, recall_user, user_vectors
from recall.service.http_common import (
    BODY_ERRORS,
    ERRORS,
    JsonResponse,
    fresh_after,
    model_response,
)
from recall.service.recaller import RecallQuery, RecallResult, ServingBundle
from recall.service.schemas import (
    BatchRecallRequest,
    BatchRecallResponse,
    PathId,
    QueryInt,
    RecallRequest,
    RecallResponse,
    SimilarRequest,
    conditions,
)
from recall.service.settings import Settings
from recall.service.state import Id
from recall.service.state_access import UserState

logger = logging.getLogger(__name__)

router = APIRouter(tags=["recall"])

#: One batch entry: (query with a canonical user id, exclude_shown, with_attributes), or
#: its error's answer.
Entry = tuple[RecallQuery, bool, bool] | dict[str, Any]


@router.post("/v1/recall", response_model=RecallResponse, responses=BODY_ERRORS)
async def recall(
    body: RecallRequest, app: AppStateDep, bundle: BundleDep, state: StateDep
) -> Response:
    """Top-k items for a user (the bundle's vector, or their training history followed by
    their newer events), a history, or a raw vector."""
    query = _query(body, app.settings)
    if query.user_id is None:
        answer = await app.pool.run(_recall_plain, app, bundle, query, body.with_attributes)
        return model_response(bundle, answer)
    user_id = bundle.user_ids.canonical(query.user_id)
    query = replace(query, user_id=user_id)
    read = await _read_state(state, bundle, [user_id], body.exclude_shown)
    answer = await app.pool.run(
        _recall_one, app, bundle, query, user_id, read, body.with_attributes
    )
    return model_response(bundle, answer)


@router.post("/v1/recall/batch", response_model=BatchRecallResponse, responses=BODY_ERRORS)
async def recall_batch(
    body: BatchRecallRequest, app: AppStateDep, bundle: BundleDep, state: StateDep
) -> Response:
    """Many recalls on one bundle; results in request order, errors inline. The state
    store is read once for every user_id entry."""
    settings = app.settings
    if len(body.requests) > settings.max_batch:
        raise PayloadTooLarge(f"at most {settings.max_batch} requests per batch")
    entries = await app.pool.run(_parse_batch, settings, bundle, body.requests)
    # an entry over max_k fails on its own (422 inline): it counts as max_k
    asked = sum(min(e[0].k, settings.max_k) for e in entries if isinstance(e, tuple))
    if asked > settings.max_batch_items:
        raise PayloadTooLarge(
            f"a batch may ask for at most {settings.max_batch_items} items in all "
            f"(the sum of k over its requests); this one asks for {asked}"
        )
    users = list(
        dict.fromkeys(
            e[0].user_id for e in entries if isinstance(e, tuple) and e[0].user_id is not None
        )
    )
    with_shown = any(isinstance(e, tuple) and e[1] for e in entries)
    read = await _read_state(state, bundle, users, with_shown)
    return await app.pool.run(_batch_response, app, bundle, entries, users, read)


@router.get("/v1/items/{item_id}/similar", response_model=RecallResponse, responses=ERRORS)
async def similar(
    item_id: PathId, app: AppStateDep, bundle: BundleDep, k: Annotated[QueryInt, Query()] = 100
) -> Response:
    """Item-to-item neighbours by inner product of item vectors (the item excluded);
    POST the same path for a filter, exclusions or attributes."""
    answer = await app.pool.run(_similar, app, bundle, item_id, SimilarRequest(k=k))
    return model_response(bundle, answer)


@router.post(
    "/v1/items/{item_id}/similar",
    response_model=RecallResponse,
    responses=BODY_ERRORS,
    name="similar_filtered",
)
async def similar_filtered(
    item_id: PathId, body: SimilarRequest, app: AppStateDep, bundle: BundleDep
) -> Response:
    """Item-to-item neighbours among the items a filter allows, with exclusions and
    attributes on request (the GET form without a body)."""
    answer = await app.pool.run(_similar, app, bundle, item_id, body)
    return model_response(bundle, answer)


def _recall_body(
    result: RecallResult,
    fresh_events: int = 0,
    fresh: bool = True,
    attributes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON of an answer; ``attributes`` (one per item) when the request asked for
    them and the bundle has them."""
    items: list[dict[str, Any]] = [
        {"item_id": i, "score": s} for i, s in zip(result.item_ids, result.scores, strict=True)
    ]
    if attributes is not None:
        for item, attrs in zip(items, attributes, strict=True):
            item["attributes"] = attrs
    return {
        "bundle_id": result.bundle_id,
        "source": result.source.value,
        "items": items,
        "fresh_events": fresh_events,
        "fresh": fresh,
    }


def _attributes(
    bundle: ServingBundle, result: RecallResult, wanted: bool
) -> list[dict[str, Any]] | None:
    return core.attributes_of(bundle, result.item_ids) if wanted else None


async def _read_state(
    state: Any, bundle: ServingBundle, user_ids: list[Id], with_shown: bool
) -> UserState:
    read: UserState = await state.read(
        user_ids, after=fresh_after(bundle, user_ids), with_shown=with_shown
    )
    return read


def _query(request: RecallRequest, settings: Settings) -> RecallQuery:
    if request.history is not None and len(request.history) > settings.max_history:
        raise InvalidInput(f"history may hold at most {settings.max_history} items")
    fields = request.model_dump(exclude={"exclude_shown", "filter", "with_attributes"})
    return RecallQuery(**fields, filter=conditions(request.filter))


def _counted(app: AppState, result: RecallResult) -> RecallResult:
    """``result``, its search strategy counted (recall_searches_total)."""
    if result.strategy is not None:
        app.metrics.searches.labels(result.strategy).inc()
    return result


def _recall_plain(
    app: AppState, bundle: ServingBundle, query: RecallQuery, with_attributes: bool
) -> dict[str, Any]:
    masks = core.Allowed(bundle, app.available(bundle))
    result = _counted(app, core.recall(bundle, query, app.settings.max_k, masks))
    return _recall_body(result, attributes=_attributes(bundle, result, with_attributes))


def _recall_one(
    app: AppState,
    bundle: ServingBundle,
    query: RecallQuery,
    user_id: Id,
    state: UserState,
    with_attributes: bool,
) -> dict[str, Any]:
    user = user_vectors(bundle, [user_id], state.events)[0]
    answer = recall_user(
        bundle,
        query,
        user,
        state.shown[0],
        app.settings.max_k,
        state.fresh,
        core.Allowed(bundle, app.available(bundle)),
    )
    attributes = _attributes(bundle, _counted(app, answer.result), with_attributes)
    return _recall_body(answer.result, answer.fresh_events, state.fresh, attributes)


def _parse_batch(
    settings: Settings, bundle: ServingBundle, raw: list[dict[str, Any]]
) -> list[Entry]:
    """Each entry as (query with a canonical user id, exclude_shown, with_attributes),
    or its error."""
    out: list[Entry] = []
    for item in raw:
        try:
            request = RecallRequest.model_validate(item)
            query = _query(request, settings)
            if query.user_id is not None:
                query = replace(query, user_id=bundle.user_ids.canonical(query.user_id))
            out.append((query, request.exclude_shown, request.with_attributes))
        except ValidationError as e:
            message = describe_errors(list(e.errors()))
            out.append({"status": 422, **envelope("invalid_input", message)})
        except ApiError as e:
            out.append({"status": e.status, **envelope(e.code, e.message)})
    return out


def _answer_batch(
    app: AppState,
    bundle: ServingBundle,
    entries: list[Entry],
    users: list[Id],
    state: UserState,
) -> list[dict[str, Any]]:
    max_k = app.settings.max_k
    position = {user: j for j, user in enumerate(users)}
    # one availability for the whole batch, each distinct filter compiled once
    masks = core.Allowed(bundle, app.available(bundle))
    vectors: list[UserVector | None] | None = []
    if users:
        try:
            vectors = user_vectors(bundle, users, state.events)
        except Exception:  # a user's vector failed: each entry computes its own below
            logger.exception("user vectors of a batch failed; computing them one by one")
            vectors = None
    out: list[dict[str, Any]] = []
    for entry in entries:
        if isinstance(entry, dict):
            out.append(entry)
            continue
        query, exclude_shown, with_attributes = entry
        try:
            if query.user_id is None:
                result = core.recall(bundle, query, max_k, masks)
                fresh_events = 0
            else:
                j = position[query.user_id]
                shown = state.shown[j] if exclude_shown else []
                user = (
                    vectors[j]
                    if vectors is not None
                    else user_vectors(bundle, [query.user_id], [state.events[j]])[0]
                )
                answer = recall_user(bundle, query, user, shown, max_k, state.fresh, masks)
                result, fresh_events = answer.result, answer.fresh_events
            # only user_id entries read the store
            fresh = state.fresh or query.user_id is None
            attributes = _attributes(bundle, _counted(app, result), with_attributes)
            body = _recall_body(result, fresh_events, fresh, attributes)
            out.append({"status": 200, **{k: v for k, v in body.items() if k != "bundle_id"}})
        except ApiError as e:
            out.append({"status": e.status, **envelope(e.code, e.message)})
        except Exception:  # one entry's bug must not fail the others
            logger.exception("unhandled error in a batch entry")
            out.append({"status": 500, **envelope("internal", "internal error")})
    return out


def _batch_response(
    app: AppState,
    bundle: ServingBundle,
    entries: list[Entry],
    users: list[Id],
    state: UserState,
) -> Response:
    """The batch's answers, serialized here in the pool, one entry per orjson call:
    orjson holds the GIL for a whole call, so one call over a 30 MB answer would stall
    the event loop (/healthz) for as long; between entries the loop gets it back."""
    results = _answer_batch(app, bundle, entries, users, state)
    rows = b",".join([orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in results])
    head = orjson.dumps(bundle.id)
    content = b'{"bundle_id":' + head + b',"results":[' + rows + b"]}"
    return Response(content, media_type=JsonResponse.media_type, headers={"X-Bundle-Id": bundle.id})


def _similar(
    app: AppState, bundle: ServingBundle, item_id: str, body: SimilarRequest
) -> dict[str, Any]:
    result = core.similar(
        bundle,
        item_id,
        body.k,
        app.settings.max_k,
        conditions(body.filter),
        body.exclude,
        app.available(bundle),
    )
    attributes = _attributes(bundle, _counted(app, result), body.with_attributes)
    return _recall_body(result, attributes=attributes)
