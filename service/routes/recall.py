"""Recall: top-k items for a user, a history or a vector, many at once, and item-to-item.

The routes translate HTTP to :class:`~recall.service.core.RecallCore` and back. A recall
makes one hand-off to the search pool, where the state store is read for a user_id query
(:meth:`~recall.service.state_access.StateAccess.run_with_state`), the core answers and
the answer becomes JSON; the event loop only parses the request and sends the bytes.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from recall.index.ids import ExternalId
from recall.service.core import RecallAnswer, RecallCore
from recall.service.deps import AppStateDep, BundleDep, StateDep, app_state_of
from recall.service.domain_errors import InvalidRequest, OverLimit, RecallError
from recall.service.errors import describe_errors, envelope, error_body
from recall.service.fresh import UserState
from recall.service.http_common import (
    BODY_ERRORS,
    ERRORS,
    fresh_after,
    model_response,
    raw_json_response,
)
from recall.service.json_body import body_openapi, read_body
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

router = APIRouter(tags=["recall"])

#: One batch entry: (query with a canonical user id, exclude_shown, with_attributes), or
#: its error's answer.
Entry = tuple[RecallQuery, bool, bool] | dict[str, Any]


@router.post(
    "/v1/recall",
    response_model=RecallResponse,
    responses=BODY_ERRORS,
    openapi_extra=body_openapi(RecallRequest),
)
async def recall(request: Request) -> Response:
    """Top-k items for a user (the bundle's vector, or their training history followed by
    their newer events), a history, or a raw vector."""
    # The body, and what AppStateDep, BundleDep and StateDep give, without FastAPI's
    # dependency solving: on this, the hottest route, they took ~25% of the event loop's
    # time (docs/performance.md); the answers, errors included, are the same
    body = await read_body(request, RecallRequest)
    app = app_state_of(request.app)
    bundle = app.holder.require()
    state = app.state_access()
    query = _query(body, app.settings, bundle)
    answer = partial(_recall_json, app.core, bundle, query, body.with_attributes)
    if query.user_id is None:
        content = await app.pool.run(answer, None)
    else:
        users = [query.user_id]
        content = await state.run_with_state(
            app.pool,
            users,
            answer,
            after=fresh_after(bundle, users),
            with_shown=body.exclude_shown,
            bundle=bundle,
        )
    return raw_json_response(bundle, content)


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
    respond = partial(_batch_response, app.core, bundle, entries, users)
    return await state.run_with_state(
        app.pool,
        users,
        respond,
        after=fresh_after(bundle, users),
        with_shown=with_shown,
        bundle=bundle,
    )


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


def _query(request: RecallRequest, settings: Settings, bundle: ServingBundle) -> RecallQuery:
    """The request as the core's query, its user id typed as ``bundle`` types its ids
    (``"7"`` -> 7)."""
    if request.history is not None and len(request.history) > settings.max_history:
        raise InvalidRequest(f"history may hold at most {settings.max_history} items")
    return RecallQuery(
        user_id=None if request.user_id is None else bundle.user_ids.canonical(request.user_id),
        history=request.history,
        features=request.features,
        vector=request.vector,
        k=request.k,
        exclude_seen=request.exclude_seen,
        exclude=request.exclude,
        fallback=request.fallback,
        filter=conditions(request.filter),
    )


def _recall_json(
    core: RecallCore,
    bundle: ServingBundle,
    query: RecallQuery,
    with_attributes: bool,
    state: UserState | None,
) -> bytes:
    """In a search thread: the answer to ``query`` with the user's ``state`` (None: not a
    user_id query), as the JSON body."""
    answer = core.recall(bundle, query, state, with_attributes=with_attributes)
    return orjson.dumps(_recall_body(answer), option=orjson.OPT_SERIALIZE_NUMPY)


def _parse_batch(
    core: RecallCore, settings: Settings, bundle: ServingBundle, raw: list[dict[str, Any]]
) -> list[Entry]:
    """Each entry as (query with a canonical user id, exclude_shown, with_attributes),
    or its error."""
    out: list[Entry] = []
    for item in raw:
        try:
            request = RecallRequest.model_validate(item)
            query = _query(request, settings, bundle)
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
    users: list[ExternalId],
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
    return raw_json_response(bundle, content)


def _similar(
    core: RecallCore, bundle: ServingBundle, item_id: str, body: SimilarRequest
) -> RecallAnswer:
    return core.similar(
        bundle, item_id, body.k, conditions(body.filter), body.exclude, body.with_attributes
    )
