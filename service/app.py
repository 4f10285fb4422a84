"""The HTTP API v1 (DESIGN.md): ``create_app(settings)`` builds the FastAPI app.

Routes only translate HTTP to :mod:`recall.service.recaller` (and :mod:`recall.service.fresh` for
users with newer events, :mod:`recall.service.events` for ``POST /v1/events``) and back. The
state store is opened by the lifespan and used through :mod:`recall.service.state_access`
(bounded reads that never fail a recall). Everything that touches vectors or FAISS runs
in a thread pool (FAISS releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from typing import Annotated, Any, TypeVar

import faiss
import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, Query
from pydantic import ValidationError
from starlette.responses import Response

from recall.index.allowed import AllowedItems
from recall.service import recaller as core
from recall.service.accept import NPY_MEDIA_TYPE, wants_npy
from recall.service.availability import Availability, unknown_ids
from recall.service.console_routes import install_console
from recall.service.docs import install_docs
from recall.service.errors import (
    ApiError,
    Forbidden,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    ReloadFailed,
    StateDown,
    Unauthorized,
    UnknownId,
    clip,
    describe_errors,
    envelope,
    install_error_handlers,
)
from recall.service.events import parse_events
from recall.service.fresh import UserVector, recall_user, user_vectors
from recall.service.head import HeadAsGetMiddleware
from recall.service.http_common import (
    BundleDep,
    JsonResponse,
    StateDep,
    fresh_after,
    model_response,
)
from recall.service.limits import BodyLimitMiddleware
from recall.service.metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from recall.service.parent_watch import die_with_parent
from recall.service.recaller import RecallQuery, RecallResult, ServingBundle
from recall.service.reloader import BundleHolder
from recall.service.schemas import (
    AvailabilityChange,
    AvailabilityRequest,
    AvailabilityState,
    BatchRecallRequest,
    BatchRecallResponse,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    IdsRequest,
    ItemResponse,
    ModelInfo,
    PathId,
    QueryInt,
    RecallRequest,
    RecallResponse,
    ReloadResponse,
    SimilarRequest,
    VectorResponse,
    VectorsResponse,
    conditions,
)
from recall.service.settings import Settings
from recall.service.state import Id, StateUnavailable, open_store
from recall.service.state_access import StateAccess, UserState

logger = logging.getLogger(__name__)

T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 413, 422, 503)
}
#: Routes with a JSON body add 400 bad_request: a body that cannot be read (not UTF-8).
BODY_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 400: {"model": ErrorResponse}}


def _vectors_response(
    bundle: ServingBundle,
    vectors: np.ndarray,
    found: np.ndarray,
    missing: list[Id],
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
    state: StateAccess, bundle: ServingBundle, user_ids: list[Id], with_shown: bool
) -> UserState:
    return await state.read(user_ids, after=fresh_after(bundle, user_ids), with_shown=with_shown)


def _query(request: RecallRequest, settings: Settings) -> RecallQuery:
    if request.history is not None and len(request.history) > settings.max_history:
        raise InvalidInput(f"history may hold at most {settings.max_history} items")
    fields = request.model_dump(exclude={"exclude_shown", "filter", "with_attributes"})
    return RecallQuery(**fields, filter=conditions(request.filter))


def create_app(settings: Settings) -> FastAPI:
    """The app for one bundle root; loads CURRENT at startup and polls it after."""
    metrics = Metrics()
    holder = BundleHolder(settings.root, metrics)
    # omp_set_num_threads is per calling thread (libgomp): each search thread sets its own,
    # the call in the lifespan alone leaves the pool on the default (one per core)
    executor = ThreadPoolExecutor(
        settings.search_threads,
        thread_name_prefix="recall-search",
        initializer=faiss.omp_set_num_threads,
        initargs=(1,),
    )

    async def in_pool(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        faiss.omp_set_num_threads(1)  # one thread per search; concurrency comes from requests
        store = open_store(
            settings.state_url,
            window=settings.state_window,
            shown_ttl_s=settings.shown_ttl_s,
            retention_s=settings.events_retention_s,
            timeout_s=settings.state_timeout_s,
        )
        app.state.store = store
        app.state.state = StateAccess(
            store, metrics, timeout_s=settings.state_timeout_s, shown_ttl_s=settings.shown_ttl_s
        )
        availability = Availability(app.state.state, settings.availability_poll_s)
        app.state.availability = availability
        try:
            await store.ping()
        except StateUnavailable as e:  # recall still answers from the bundle
            logger.warning("state store unavailable at startup: %s", e)
        with suppress(ReloadFailed, NotReady):
            await holder.reload()
        await availability.start()  # the disabled items before the first request
        poller = None
        if settings.reload_interval_s > 0:
            poller = asyncio.create_task(holder.poll_forever(settings.reload_interval_s))
        yield
        if poller is not None:
            poller.cancel()
            with suppress(asyncio.CancelledError):
                await poller
        await availability.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        with suppress(StateUnavailable):
            await store.close()

    app = FastAPI(
        title="recall",
        summary="Top-N candidate recall and embedding lookup (YouTube DNN, FAISS)",
        version="1",
        lifespan=lifespan,
        default_response_class=JsonResponse,
        docs_url=None,  # service.docs serves /docs from the package, not from a CDN
        redoc_url=None,
    )
    install_docs(app, max_k=settings.max_k)
    app.state.holder = holder
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(HeadAsGetMiddleware)  # inside metrics: counted as HEAD
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def available(bundle: ServingBundle) -> AllowedItems | None:
        """The items no one disabled, None when none is (the app's ``availability``,
        :mod:`recall.service.availability`)."""
        availability = getattr(app.state, "availability", None)
        if availability is None:
            return None
        items: AllowedItems | None = availability.allowed(bundle)
        return items

    def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        token = settings.admin_token
        if token is None:
            raise Forbidden("the admin API is disabled: set RECALL_ADMIN_TOKEN to enable it")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Unauthorized("send Authorization: Bearer <admin token>")
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise Forbidden("wrong admin token")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> Response:
        """200 with the bundle id once a bundle is loaded, else 503."""
        bundle = holder.require()
        return model_response(bundle, {"status": "ready", "bundle_id": bundle.id})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS, tags=["model"])
    async def model_info(bundle: BundleDep) -> Response:
        """The bundle being served: id, dims, counts, index and trainer metrics."""
        m = bundle.manifest
        return model_response(
            bundle,
            {
                "bundle_id": m.id,
                "created_at": m.created_at.isoformat(),
                "dim": m.dim,
                "counts": m.counts.model_dump(),
                "index": m.index,
                "trainer_metrics": m.trainer.get("metrics", {}),
                "item_attributes": (
                    None if bundle.attributes is None else bundle.attributes.schema()
                ),
                "columns": m.trainer.get("columns"),
            },
        )

    install_console(app, in_pool)  # before /v1/items/{id}: /v1/items/search is not an id

    def counted(result: RecallResult) -> RecallResult:
        """``result``, its search strategy counted (recall_searches_total)."""
        if result.strategy is not None:
            metrics.searches.labels(result.strategy).inc()
        return result

    def _recall_plain(
        bundle: ServingBundle, query: RecallQuery, with_attributes: bool
    ) -> dict[str, Any]:
        masks = core.Allowed(bundle, available(bundle))
        result = counted(core.recall(bundle, query, settings.max_k, masks))
        return _recall_body(result, attributes=_attributes(bundle, result, with_attributes))

    def _recall_one(
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
            settings.max_k,
            state.fresh,
            core.Allowed(bundle, available(bundle)),
        )
        attributes = _attributes(bundle, counted(answer.result), with_attributes)
        return _recall_body(answer.result, answer.fresh_events, state.fresh, attributes)

    @app.post("/v1/recall", response_model=RecallResponse, responses=BODY_ERRORS, tags=["recall"])
    async def recall(body: RecallRequest, bundle: BundleDep, state: StateDep) -> Response:
        """Top-k items for a user (the bundle's vector, or their training history followed by
        their newer events), a history, or a raw vector."""
        query = _query(body, settings)
        if query.user_id is None:
            answer = await in_pool(_recall_plain, bundle, query, body.with_attributes)
            return model_response(bundle, answer)
        user_id = bundle.user_ids.canonical(query.user_id)
        query = replace(query, user_id=user_id)
        read = await _read_state(state, bundle, [user_id], body.exclude_shown)
        answer = await in_pool(_recall_one, bundle, query, user_id, read, body.with_attributes)
        return model_response(bundle, answer)

    def _parse_batch(
        bundle: ServingBundle, raw: list[dict[str, Any]]
    ) -> list[tuple[RecallQuery, bool, bool] | dict[str, Any]]:
        """Each entry as (query with a canonical user id, exclude_shown, with_attributes),
        or its error."""
        out: list[tuple[RecallQuery, bool, bool] | dict[str, Any]] = []
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
        bundle: ServingBundle,
        entries: list[tuple[RecallQuery, bool, bool] | dict[str, Any]],
        users: list[Id],
        state: UserState,
    ) -> list[dict[str, Any]]:
        position = {user: j for j, user in enumerate(users)}
        # one availability for the whole batch, each distinct filter compiled once
        masks = core.Allowed(bundle, available(bundle))
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
                    result = core.recall(bundle, query, settings.max_k, masks)
                    fresh_events = 0
                else:
                    j = position[query.user_id]
                    shown = state.shown[j] if exclude_shown else []
                    user = (
                        vectors[j]
                        if vectors is not None
                        else user_vectors(bundle, [query.user_id], [state.events[j]])[0]
                    )
                    answer = recall_user(
                        bundle, query, user, shown, settings.max_k, state.fresh, masks
                    )
                    result, fresh_events = answer.result, answer.fresh_events
                # only user_id entries read the store
                fresh = state.fresh or query.user_id is None
                attributes = _attributes(bundle, counted(result), with_attributes)
                body = _recall_body(result, fresh_events, fresh, attributes)
                out.append({"status": 200, **{k: v for k, v in body.items() if k != "bundle_id"}})
            except ApiError as e:
                out.append({"status": e.status, **envelope(e.code, e.message)})
            except Exception:  # one entry's bug must not fail the others
                logger.exception("unhandled error in a batch entry")
                out.append({"status": 500, **envelope("internal", "internal error")})
        return out

    @app.post(
        "/v1/recall/batch",
        response_model=BatchRecallResponse,
        responses=BODY_ERRORS,
        tags=["recall"],
    )
    async def recall_batch(
        body: BatchRecallRequest, bundle: BundleDep, state: StateDep
    ) -> Response:
        """Many recalls on one bundle; results in request order, errors inline. The state
        store is read once for every user_id entry."""
        if len(body.requests) > settings.max_batch:
            raise PayloadTooLarge(f"at most {settings.max_batch} requests per batch")
        entries = await in_pool(_parse_batch, bundle, body.requests)
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
        return await in_pool(_batch_response, bundle, entries, users, read)

    def _batch_response(
        bundle: ServingBundle,
        entries: list[tuple[RecallQuery, bool, bool] | dict[str, Any]],
        users: list[Id],
        state: UserState,
    ) -> Response:
        """The batch's answers, serialized here in the pool, one entry per orjson call:
        orjson holds the GIL for a whole call, so one call over a 30 MB answer would stall
        the event loop (/healthz) for as long; between entries the loop gets it back."""
        results = _answer_batch(bundle, entries, users, state)
        rows = b",".join([orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in results])
        head = orjson.dumps(bundle.id)
        content = b'{"bundle_id":' + head + b',"results":[' + rows + b"]}"
        return Response(
            content, media_type=JsonResponse.media_type, headers={"X-Bundle-Id": bundle.id}
        )

    @app.post(
        "/v1/events",
        response_model=EventsResponse,
        responses={code: {"model": ErrorResponse} for code in (400, 413, 422, 503)},
        tags=["events"],
    )
    async def post_events(body: EventsRequest, bundle: BundleDep, state: StateDep) -> Response:
        """Store what users did (interactions move their vectors at the next recall;
        impressions feed exclude_shown). Bad events are rejected inline, the rest stored
        (durably when this answers); 503 state_unavailable when the store cannot take them."""
        if len(body.events) > settings.max_events:
            raise PayloadTooLarge(f"at most {settings.max_events} events per request")
        parsed = await in_pool(parse_events, body.events, bundle, time.time())
        metrics.events.labels("rejected").inc(len(parsed.rejected))
        if parsed.events:
            try:
                await state.add(parsed.events)
            except StateDown:
                metrics.events.labels("unavailable").inc(len(parsed.events))
                raise
            metrics.events.labels("stored").inc(len(parsed.events))
        return model_response(
            bundle,
            {
                "accepted": len(parsed.events),
                "rejected": parsed.rejected,
                "unknown_items": parsed.unknown_items,
            },
        )

    @app.get(
        "/v1/items/{item_id}/similar",
        response_model=RecallResponse,
        responses=ERRORS,
        tags=["recall"],
    )
    async def similar(
        item_id: PathId, bundle: BundleDep, k: Annotated[QueryInt, Query()] = 100
    ) -> Response:
        """Item-to-item neighbours by inner product of item vectors (the item excluded);
        POST the same path for a filter, exclusions or attributes."""
        answer = await in_pool(_similar, bundle, item_id, SimilarRequest(k=k))
        return model_response(bundle, answer)

    def _similar(bundle: ServingBundle, item_id: str, body: SimilarRequest) -> dict[str, Any]:
        result = core.similar(
            bundle,
            item_id,
            body.k,
            settings.max_k,
            conditions(body.filter),
            body.exclude,
            available(bundle),
        )
        attributes = _attributes(bundle, counted(result), body.with_attributes)
        return _recall_body(result, attributes=attributes)

    @app.post(
        "/v1/items/{item_id}/similar",
        response_model=RecallResponse,
        responses=BODY_ERRORS,
        tags=["recall"],
        name="similar_filtered",
    )
    async def similar_filtered(
        item_id: PathId, body: SimilarRequest, bundle: BundleDep
    ) -> Response:
        """Item-to-item neighbours among the items a filter allows, with exclusions and
        attributes on request (the GET form without a body)."""
        answer = await in_pool(_similar, bundle, item_id, body)
        return model_response(bundle, answer)

    @app.get("/v1/items/{id}", response_model=ItemResponse, responses=ERRORS, tags=["items"])
    async def item(id: PathId, bundle: BundleDep) -> Response:
        """One item's attributes as the training data's items table gave them (strings,
        lists of strings for multi-valued attributes, numbers; missing ones left out; {}
        for a bundle without item attributes)."""
        typed_id, attributes = core.item_of(bundle, id)
        return model_response(
            bundle, {"bundle_id": bundle.id, "id": typed_id, "attributes": attributes}
        )

    def _one_vector(kind: str) -> Callable[..., Any]:
        async def one_vector(id: PathId, bundle: BundleDep) -> Response:
            typed_id, vector = core.vector_of(bundle, kind, id)
            body = {"bundle_id": bundle.id, "id": typed_id, "vector": vector}
            return model_response(bundle, body)

        one_vector.__doc__ = f"The stored vector of one {kind[:-1]}."
        return one_vector

    def _many_vectors(kind: str) -> Callable[..., Any]:
        async def many_vectors(
            body: IdsRequest,
            bundle: BundleDep,
            accept: Annotated[str | None, Header()] = None,
        ) -> Response:
            if len(body.ids) > settings.max_vector_ids:
                raise PayloadTooLarge(f"at most {settings.max_vector_ids} ids per request")
            vectors, found = await in_pool(core.vectors_of, bundle, kind, body.ids)
            missing = (
                []
                if found.all()
                else [i for i, ok in zip(body.ids, found.tolist(), strict=True) if not ok]
            )
            return _vectors_response(bundle, vectors, found, missing, accept)

        many_vectors.__doc__ = (
            f"Stored {kind[:-1]} vectors in request order; unknown ids listed in `missing` "
            f"(null rows). With `Accept: {NPY_MEDIA_TYPE}` (named, with a q-value above 0 "
            "and at least JSON's; `*/*` means JSON) the body is a float32 .npy of "
            "shape (len(ids), dim) whose rows for unknown ids are NaN; X-Missing-Count says "
            "how many."
        )
        return many_vectors

    async def one_user_vector(id: PathId, bundle: BundleDep, state: StateDep) -> Response:
        """One user's vector, as a recall by user_id uses it: the stored one, or from the
        user's training history followed by newer events (`source`, `fresh_events`)."""
        user_id = bundle.user_ids.canonical(id)
        read = await _read_state(state, bundle, [user_id], False)
        user = (await in_pool(user_vectors, bundle, [user_id], read.events))[0]
        if user is None:
            raise UnknownId(f"unknown user id {clip(id)}")
        row = bundle.user_ids.row(user_id)
        typed_id = user_id if row is None else bundle.user_ids.ids[row].item()
        body = {
            "bundle_id": bundle.id,
            "id": typed_id,
            "vector": user.vector,
            "source": user.source.value,
            "fresh_events": user.fresh_events,
            "fresh": read.fresh,
        }
        return model_response(bundle, body)

    def _fresh_user_rows(
        bundle: ServingBundle, ids: list[Id], events: list[list[tuple[Id, float]]]
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(vectors (n, dim) float32, NaN rows where unknown; found (n,) bool; fresh events
        per id): stored rows, replaced by :func:`user_vectors` for ids with events."""
        vectors, found = core.vectors_of(bundle, "users", ids)
        fresh_events = [0] * len(ids)
        touched = [j for j, e in enumerate(events) if e]
        if touched:
            made = user_vectors(bundle, [ids[j] for j in touched], [events[j] for j in touched])
            vectors = np.array(vectors)  # writable, not the memory map
            for j, user in zip(touched, made, strict=True):
                if user is not None:
                    vectors[j], found[j], fresh_events[j] = user.vector, True, user.fresh_events
        return vectors, found, fresh_events

    async def many_user_vectors(
        body: IdsRequest,
        bundle: BundleDep,
        state: StateDep,
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        if len(body.ids) > settings.max_vector_ids:
            raise PayloadTooLarge(f"at most {settings.max_vector_ids} ids per request")
        ids = [bundle.user_ids.canonical(i) for i in body.ids]
        read = await _read_state(state, bundle, list(dict.fromkeys(ids)), False)
        by_user = dict(zip(dict.fromkeys(ids), read.events, strict=True))
        events = [by_user[i] for i in ids]
        vectors, found, fresh_events = await in_pool(_fresh_user_rows, bundle, ids, events)
        missing = [i for i, ok in zip(body.ids, found.tolist(), strict=True) if not ok]
        return _vectors_response(
            bundle,
            vectors,
            found,
            missing,
            accept,
            headers={
                "X-Fresh-Count": str(sum(n > 0 for n in fresh_events)),
                "X-Fresh": "true" if read.fresh else "false",
            },
            body={"fresh_events": fresh_events, "fresh": read.fresh},
        )

    many_user_vectors.__doc__ = (
        "User vectors in request order, as a recall by user_id uses them (`fresh_events` "
        "per id: > 0 when newer events went into the vector; a user known only from "
        "events has one); unknown ids listed in `missing` (null rows). With `Accept: "
        f"{NPY_MEDIA_TYPE}` the body is a float32 .npy (len(ids), dim), NaN rows for "
        "unknown ids; X-Missing-Count, X-Fresh-Count (vectors from events) and X-Fresh "
        "(false: the state store was not read) say the rest."
    )

    for kind in ("users", "items"):
        singular = kind[:-1]
        app.get(
            f"/v1/{kind}/{{id}}/vector",
            response_model=VectorResponse,
            responses=ERRORS,
            tags=["vectors"],
            name=f"{singular}_vector",
        )(one_user_vector if kind == "users" else _one_vector(kind))
        app.post(
            f"/v1/{kind}/vectors",
            response_model=VectorsResponse,
            responses={**BODY_ERRORS, 200: {"content": {NPY_MEDIA_TYPE: {}}}},
            tags=["vectors"],
            name=f"{singular}_vectors",
        )(many_user_vectors if kind == "users" else _many_vectors(kind))

    @app.post(
        "/v1/admin/reload",
        response_model=ReloadResponse,
        responses={
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
            409: {"model": ErrorResponse},
        },
        tags=["operations"],
        dependencies=[Depends(require_admin)],
    )
    async def admin_reload() -> Response:
        """Load the bundle CURRENT names now (Authorization: Bearer <RECALL_ADMIN_TOKEN>)."""
        bundle, changed = await holder.reload()
        return model_response(bundle, {"bundle_id": bundle.id, "changed": changed})

    admin_errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (401, 403, 413, 422, 503)
    }
    admin_body_errors = {**admin_errors, 400: {"model": ErrorResponse}}

    @app.post(
        "/v1/admin/items/availability",
        response_model=AvailabilityChange,
        responses=admin_body_errors,
        tags=["operations"],
        dependencies=[Depends(require_admin)],
    )
    async def set_availability(
        body: AvailabilityRequest, bundle: BundleDep, state: StateDep
    ) -> Response:
        """Disable items (no recall, batch or similar answer contains them, on every replica
        within about RECALL_AVAILABILITY_POLL_S) or enable them again; kept in the state
        store by external id, so a new bundle keeps them. Ids the bundle does not know are
        stored and listed in `unknown`. 503 state_unavailable: nothing changed, retry."""
        if len(body.disable) + len(body.enable) > settings.max_availability_ids:
            raise PayloadTooLarge(
                f"at most {settings.max_availability_ids} ids per availability change"
            )
        disable = [bundle.item_ids.canonical(i) for i in body.disable]
        enable = [bundle.item_ids.canonical(i) for i in body.enable]
        both = set(disable).intersection(enable)
        if both:
            raise InvalidInput(f"item {clip(next(iter(both)))} is in both disable and enable")
        version = await state.set_availability(disable, enable)
        availability: Availability = app.state.availability
        await availability.refresh()  # this process applies it now, the others at their poll
        unknown = unknown_ids(bundle, list(dict.fromkeys([*disable, *enable])))
        answer = {"version": version, "disabled": len(availability.disabled), "unknown": unknown}
        return model_response(bundle, answer)

    @app.get(
        "/v1/admin/items/availability",
        response_model=AvailabilityState,
        responses=admin_errors,
        tags=["operations"],
        dependencies=[Depends(require_admin)],
    )
    async def get_availability(state: StateDep) -> Response:
        """The disabled item ids as the state store holds them, and their version."""
        version, disabled = await state.availability()
        return JsonResponse({"version": version, "disabled": disabled})

    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and ``recall serve``): settings from RECALL_*.
    A worker process (``RECALL_WORKERS`` > 1) dies with its master (service/parent_watch.py)."""
    die_with_parent()
    return create_app(Settings())
