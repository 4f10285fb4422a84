"""Recall: top-k items for a user, a history or a vector, many at once, and item-to-item.

The routes translate HTTP to :class:`~recall.service.core.RecallCore` and back. A recall
makes one hand-off to the search pool, where the state store is read for a user_id query
(:meth:`~recall.service.state_access.StateAccess.run_with_state`), the core answers and
the answer becomes JSON; the event loop only parses the request and sends the bytes.
Which bundle answers is :meth:`recall.service.experiments.Arms.route`'s choice: a user's
experiment arm, else the arm asked for, else control (CURRENT's); a batch is answered
arm by arm, one hand-off each. The state store knows a user by the id as control types
it (what the events route stores and the arm is hashed from), whatever the arm's bundle
makes of it: the user's events, impressions and served list are one key in every arm.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from recall.index.experiment import ARM_NAME
from recall.index.ids import ExternalId
from recall.service.app_state import AppState
from recall.service.core import RecallAnswer, RecallCore
from recall.service.deps import AppStateDep, BundleDep, StateDep, app_state_of
from recall.service.domain_errors import InvalidRequest, OverLimit, RecallError
from recall.service.errors import describe_errors, envelope, error_body
from recall.service.experiments import Arms, Route
from recall.service.fresh import UserState
from recall.service.http_common import (
    BODY_ERRORS,
    ERRORS,
    fresh_after,
    model_response,
    raw_json_response,
)
from recall.service.json_body import body_openapi, read_body
from recall.service.pool import SearchPool
from recall.service.recaller import RecallQuery, ServingBundle
from recall.service.request_route import RequestRoute
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
from recall.service.state import LIVE_KS, ServedList
from recall.service.state_access import StateAccess

#: ``POST /v1/recall`` takes the request and builds its response: called without
#: FastAPI's per-request handler (:mod:`recall.service.request_route`)
router = APIRouter(tags=["recall"], route_class=RequestRoute)


@dataclass(frozen=True)
class _Entry:
    """One batch entry, parsed: its route, the query (its user id canonical in the route's
    bundle), the user's state-store key (None: not a user_id query) and its two flags."""

    route: Route
    query: RecallQuery
    key: ExternalId | None
    exclude_shown: bool
    with_attributes: bool


#: One batch entry, or its error's answer.
Entry = _Entry | dict[str, Any]


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
    control = app.holder.require()
    state = app.state_access()
    route, query, key = _in_arm(app.core, app.arms, control, _query(body, app.settings), body.arm)
    bundle = route.bundle
    answer = partial(_recall_json, app.core, route, query, key, body.with_attributes)
    if key is None:
        content, _ = await app.pool.run(answer, None)
    else:
        users = [key]
        content = await state.run_and_remember(
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
    """Many recalls; results in request order, errors inline. Each user_id entry is
    answered in its user's experiment arm; the state store is read once per arm for
    every user_id entry of it."""
    settings = app.settings
    if len(body.requests) > settings.max_batch:
        raise OverLimit(f"at most {settings.max_batch} requests per batch")
    entries = await app.pool.run(_parse_batch, app.core, app.arms, settings, bundle, body.requests)
    # an entry over max_k fails on its own (422 inline): it counts as max_k
    asked = sum(min(e.query.k, settings.max_k) for e in entries if isinstance(e, _Entry))
    if asked > settings.max_batch_items:
        raise OverLimit(
            f"a batch may ask for at most {settings.max_batch_items} items in all "
            f"(the sum of k over its requests); this one asks for {asked}"
        )
    parsed = {j: e for j, e in enumerate(entries) if isinstance(e, _Entry)}
    by_route: dict[tuple[str, str, str], list[int]] = {}  # an experiment swap may split a batch
    for j, entry in parsed.items():
        route = entry.route
        by_route.setdefault((route.experiment_id, route.arm, route.bundle.id), []).append(j)
    rows = [b"" if j in parsed else orjson.dumps(e) for j, e in enumerate(entries)]
    answered = await asyncio.gather(
        *(
            _batch_of_route(app.core, state, app.pool, [parsed[j] for j in js])
            for js in by_route.values()
        )
    )
    for js, route_rows in zip(by_route.values(), answered, strict=True):
        for j, row in zip(js, route_rows, strict=True):
            rows[j] = row
    content = b'{"bundle_id":' + orjson.dumps(bundle.id) + b',"results":[' + b",".join(rows) + b"]}"
    return raw_json_response(bundle, content)


async def _batch_of_route(
    core: RecallCore, state: StateAccess, pool: SearchPool, entries: list[_Entry]
) -> list[bytes]:
    """The rows of a batch's entries of one route (one experiment, arm and bundle): one
    hand-off, the store read once for their users and written once with the lists they
    were served."""
    bundle = entries[0].route.bundle
    # one pair per user: the store's key and the id as the arm's bundle types it
    pairs = dict.fromkeys((e.key, e.query.user_id) for e in entries if e.key is not None)
    keys = [key for key, _ in pairs]
    users = [user for _, user in pairs if user is not None]  # None only where key is
    return await state.run_and_remember(
        pool,
        keys,
        partial(_batch_rows, core, entries, users),
        after=fresh_after(bundle, users),
        with_shown=any(e.exclude_shown for e in entries),
        bundle=bundle,
    )


@router.get("/v1/items/{item_id}/similar", response_model=RecallResponse, responses=ERRORS)
async def similar(
    item_id: PathId,
    app: AppStateDep,
    bundle: BundleDep,
    k: Annotated[QueryInt, Query()] = 100,
    arm: Annotated[
        str | None,
        Query(pattern=f"^{ARM_NAME.pattern}$", description="the experiment arm (default control)"),
    ] = None,
) -> Response:
    """Item-to-item neighbours by inner product of item vectors (the item excluded);
    POST the same path for a filter, exclusions or attributes."""
    return await _similar(app, bundle, item_id, SimilarRequest(k=k, arm=arm))


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
    return await _similar(app, bundle, item_id, body)


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
        "arm": answer.arm,
        "source": result.source.value,
        "items": items,
        "fresh_events": answer.fresh_events,
        "fresh": answer.fresh,
    }


def _query(request: RecallRequest, settings: Settings) -> RecallQuery:
    if request.history is not None and len(request.history) > settings.max_history:
        raise InvalidRequest(f"history may hold at most {settings.max_history} items")
    return RecallQuery(
        user_id=request.user_id,
        history=request.history,
        features=request.features,
        vector=request.vector,
        k=request.k,
        exclude_seen=request.exclude_seen,
        exclude=request.exclude,
        fallback=request.fallback,
        filter=conditions(request.filter),
    )


def _served(key: ExternalId | None, route: Route, answer: RecallAnswer) -> list[ServedList]:
    """The list a user_id query served to the user of state-store ``key``, to remember
    under ``route``'s experiment (none for other queries)."""
    if key is None:
        return []
    result = answer.result
    items = tuple(result.item_ids[: LIVE_KS[-1]])
    return [ServedList(key, route.experiment_id, answer.arm, result.bundle_id, items, time.time())]


def _in_arm(
    core: RecallCore, arms: Arms, control: ServingBundle, query: RecallQuery, asked: str | None
) -> tuple[Route, RecallQuery, ExternalId | None]:
    """``(route, query, key)`` for a request on ``control``: the user id made canonical as
    control types it (``key``: what the arm is hashed from and the state store knows the
    user by; None without a user id), and the query with it as the arm's bundle types it."""
    query = core.canonical(control, query)
    route = arms.route(control, query.user_id, asked)
    if route.bundle is not control:
        return route, core.canonical(route.bundle, query), query.user_id
    return route, query, query.user_id


def _recall_json(
    core: RecallCore,
    route: Route,
    query: RecallQuery,
    key: ExternalId | None,
    with_attributes: bool,
    state: UserState | None,
) -> tuple[bytes, list[ServedList]]:
    """In a search thread: the answer to ``query`` on ``route``'s bundle with the user's
    ``state`` (None: not a user_id query), as the JSON body, and the list it served."""
    answer = core.recall(route.bundle, query, state, with_attributes=with_attributes, arm=route.arm)
    body = orjson.dumps(_recall_body(answer), option=orjson.OPT_SERIALIZE_NUMPY)
    return body, _served(key, route, answer)


def _parse_batch(
    core: RecallCore,
    arms: Arms,
    settings: Settings,
    control: ServingBundle,
    raw: list[dict[str, Any]],
) -> list[Entry]:
    """Each entry parsed, in its arm (its user id canonical in the arm's bundle), or its
    error."""
    out: list[Entry] = []
    for item in raw:
        try:
            request = RecallRequest.model_validate(item)
            route, query, key = _in_arm(core, arms, control, _query(request, settings), request.arm)
            out.append(_Entry(route, query, key, request.exclude_shown, request.with_attributes))
        except ValidationError as e:
            message = describe_errors(list(e.errors()))
            out.append({"status": 422, **envelope("invalid_input", message)})
        except RecallError as e:
            out.append(error_body(e))
    return out


def _batch_rows(
    core: RecallCore, entries: list[_Entry], users: list[ExternalId], state: UserState
) -> tuple[list[bytes], list[ServedList]]:
    """The answers of a batch's entries of one route, serialized here in the pool, one
    entry per orjson call: orjson holds the GIL for a whole call, so one call over a 30 MB
    answer would stall the event loop (/healthz) for as long; between entries the loop
    gets it back. And the lists its user_id entries served. ``users``: their distinct
    ids as the route's bundle types them, ``state`` theirs in that order."""
    route = entries[0].route
    queries = [(e.query, e.exclude_shown, e.with_attributes) for e in entries]
    rows = []
    served: list[ServedList] = []
    answers = core.recall_batch(route.bundle, queries, users, state, route.arm)
    for entry, answer in zip(entries, answers, strict=True):
        if isinstance(answer, RecallAnswer):
            served += _served(entry.key, route, answer)
            result: dict[str, Any] = {"status": 200, **_recall_body(answer)}
        elif isinstance(answer, RecallError):
            result = error_body(answer)
        else:  # logged by the core
            result = {"status": 500, **envelope("internal", "internal error")}
        rows.append(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))
    return rows, served


async def _similar(
    app: AppState, control: ServingBundle, item_id: str, body: SimilarRequest
) -> Response:
    """Item-to-item neighbours in the arm ``body`` names (default control)."""
    route = app.arms.route(control, None, body.arm)
    answer = await app.pool.run(
        partial(
            app.core.similar,
            route.bundle,
            item_id,
            body.k,
            conditions(body.filter),
            body.exclude,
            body.with_attributes,
            route.arm,
        )
    )
    return model_response(route.bundle, _recall_body(answer))
