"""Recall: top-k items for a user, a history or a vector, many at once, and item-to-item.

The routes translate HTTP to :class:`~recall.service.core.RecallCore` and back; the core
runs in the search pool, after the state store was read for the user_id queries.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from pydantic import ValidationError
from starlette.responses import Response

from recall.service.core import RecallAnswer, RecallCore
from recall.service.deps import AppStateDep, BundleDep, StateDep
from recall.service.domain_errors import InvalidRequest, OverLimit, RecallError
from recall.service.errors import describe_errors, envelope, error_body
from recall.service.fresh import UserState
from recall.service.http_common import (
    BODY_ERRORS,
    ERRORS,
    JsonResponse,
    fresh_after,
    model_response,
)
from recall.service.recaller import RecallQuery, ServingBundle
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
from recall.service.state_access import StateAccess

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
    query = app.core.canonical(bundle, _query(body, app.settings))
    read = None
    if query.user_id is not None:
        read = await _read_state(state, bundle, [query.user_id], body.exclude_shown)
    answer = await app.pool.run(_recall_one, app.core, bundle, query, read, body.with_attributes)
    return model_response(bundle, _recall_body(answer))


@router.post("/v1/recall/batch", response_model=BatchRecallResponse, responses=BODY_ERRORS)
async def recall_batch(
    body: BatchRecallRequest, app: AppStateDep, bundle: BundleDep, state: StateDep
) -> Response:
    """Many recalls on one bundle; results in request order, errors inline. The state
    store is read once for every user_id entry."""
    settings = app.settings
    if len(body.requests) > settings.max_batch:
        raise OverLimit(f"at most {settings.max_batch} requests per batch")
    entries = await app.pool.run(_parse_batch, app.core, settings, bundle, body.requests)
    # an entry over max_k fails on its own (422 inline): it counts as max_k
    asked = sum(min(e[0].k, settings.max_k) for e in entries if isinstance(e, tuple))
    if asked > settings.max_batch_items:
        raise OverLimit(
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
    return await app.pool.run(_batch_response, app.core, bundle, entries, users, read)


@router.get("/v1/items/{item_id}/similar", response_model=RecallResponse, responses=ERRORS)
async def similar(
    item_id: PathId, app: AppStateDep, bundle: BundleDep, k: Annotated[QueryInt, Query()] = 100
) -> Response:
    """Item-to-item neighbours by inner product of item vectors (the item excluded);
    POST the same path for a filter, exclusions or attributes."""
    answer = await app.pool.run(_similar, app.core, bundle, item_id, SimilarRequest(k=k))
    return model_response(bundle, _recall_body(answer))


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
    answer = await app.pool.run(_similar, app.core, bundle, item_id, body)
    return model_response(bundle, _recall_body(answer))


def _recall_body(answer: RecallAnswer) -> dict[str, Any]:
    """The JSON of an answer; each item's ``attributes`` when the request asked for them
    and the bundle has them."""
    result = answer.result
    items: list[dict[str, Any]] = [
        {"item_id": i, "score": s} for i, s in zip(result.item_ids, result.scores, strict=True)
    ]
    if answer.attributes is not None:
        for item, attrs in zip(items, answer.attributes, strict=True):
            item["attributes"] = attrs
    return {
        "bundle_id": result.bundle_id,
        "source": result.source.value,
        "items": items,
        "fresh_events": answer.fresh_events,
        "fresh": answer.fresh,
    }


async def _read_state(
    state: StateAccess, bundle: ServingBundle, user_ids: list[Any], with_shown: bool
) -> UserState:
    after = fresh_after(bundle, user_ids)
    return await state.read(user_ids, after=after, with_shown=with_shown, bundle=bundle)


def _query(request: RecallRequest, settings: Settings) -> RecallQuery:
    if request.history is not None and len(request.history) > settings.max_history:
        raise InvalidRequest(f"history may hold at most {settings.max_history} items")
    fields = request.model_dump(exclude={"exclude_shown", "filter", "with_attributes"})
    return RecallQuery(**fields, filter=conditions(request.filter))


def _recall_one(
    core: RecallCore,
    bundle: ServingBundle,
    query: RecallQuery,
    state: UserState | None,
    with_attributes: bool,
) -> RecallAnswer:
    return core.recall(bundle, query, state, with_attributes=with_attributes)


def _parse_batch(
    core: RecallCore, settings: Settings, bundle: ServingBundle, raw: list[dict[str, Any]]
) -> list[Entry]:
    """Each entry as (query with a canonical user id, exclude_shown, with_attributes),
    or its error."""
    out: list[Entry] = []
    for item in raw:
        try:
            request = RecallRequest.model_validate(item)
            query = core.canonical(bundle, _query(request, settings))
            out.append((query, request.exclude_shown, request.with_attributes))
        except ValidationError as e:
            message = describe_errors(list(e.errors()))
            out.append({"status": 422, **envelope("invalid_input", message)})
        except RecallError as e:
            out.append(error_body(e))
    return out


def _batch_response(
    core: RecallCore,
    bundle: ServingBundle,
    entries: list[Entry],
    users: list[Any],
    state: UserState,
) -> Response:
    """The batch's answers, serialized here in the pool, one entry per orjson call:
    orjson holds the GIL for a whole call, so one call over a 30 MB answer would stall
    the event loop (/healthz) for as long; between entries the loop gets it back."""
    queries = [e for e in entries if isinstance(e, tuple)]
    answers = iter(core.recall_batch(bundle, queries, users, state))
    results: list[dict[str, Any]] = []
    for entry in entries:
        if isinstance(entry, dict):
            results.append(entry)
            continue
        answer = next(answers)
        if isinstance(answer, RecallAnswer):
            body = _recall_body(answer)
            results.append({"status": 200, **{k: v for k, v in body.items() if k != "bundle_id"}})
        elif isinstance(answer, RecallError):
            results.append(error_body(answer))
        else:  # logged by the core
            results.append({"status": 500, **envelope("internal", "internal error")})
    rows = b",".join([orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in results])
    head = orjson.dumps(bundle.id)
    content = b'{"bundle_id":' + head + b',"results":[' + rows + b"]}"
    return Response(content, media_type=JsonResponse.media_type, headers={"X-Bundle-Id": bundle.id})


def _similar(
    core: RecallCore, bundle: ServingBundle, item_id: str, body: SimilarRequest
) -> RecallAnswer:
    return core.similar(
        bundle, item_id, body.k, conditions(body.filter), body.exclude, body.with_attributes
    )
