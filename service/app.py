"""The HTTP API v1 (DESIGN.md): ``create_app(settings)`` builds the FastAPI app.

Routes only translate HTTP to :mod:`service.recaller` and back. Everything that touches
vectors or FAISS runs in a thread pool (FAISS releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any, TypeVar

import faiss
import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from service import recaller as core
from service.accept import NPY_MEDIA_TYPE, wants_npy
from service.docs import install_docs
from service.errors import (
    ApiError,
    Forbidden,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    ReloadFailed,
    Unauthorized,
    envelope,
    install_error_handlers,
)
from service.head import HeadAsGetMiddleware
from service.limits import BodyLimitMiddleware
from service.metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from service.recaller import RecallQuery, RecallResult, ServingBundle
from service.reloader import BundleHolder
from service.schemas import (
    BatchRecallRequest,
    BatchRecallResponse,
    ErrorResponse,
    IdsRequest,
    ModelInfo,
    RecallRequest,
    RecallResponse,
    ReloadResponse,
    VectorResponse,
    VectorsResponse,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (404, 413, 422, 503)
}


class JsonResponse(Response):
    """JSON via orjson (numpy arrays serialized natively)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _model_response(bundle: ServingBundle, content: Any, **kwargs: Any) -> JsonResponse:
    return JsonResponse(content, headers={"X-Bundle-Id": bundle.id}, **kwargs)


def _recall_body(result: RecallResult) -> dict[str, Any]:
    return {
        "bundle_id": result.bundle_id,
        "source": result.source.value,
        "items": [
            {"item_id": i, "score": s} for i, s in zip(result.item_ids, result.scores, strict=True)
        ],
    }


async def current_bundle(request: Request) -> ServingBundle:
    """The bundle this request runs on, taken once: it cannot change under the request.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a
    thread hop per request for one attribute read."""
    holder: BundleHolder = request.app.state.holder
    return holder.require()


BundleDep = Annotated[ServingBundle, Depends(current_bundle)]


def _query(request: RecallRequest, settings: Settings) -> RecallQuery:
    if request.history is not None and len(request.history) > settings.max_history:
        raise InvalidInput(f"history may hold at most {settings.max_history} items")
    return RecallQuery(**request.model_dump())


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
        with suppress(ReloadFailed, NotReady):
            await holder.reload()
        poller = None
        if settings.reload_interval_s > 0:
            poller = asyncio.create_task(holder.poll_forever(settings.reload_interval_s))
        yield
        if poller is not None:
            poller.cancel()
            with suppress(asyncio.CancelledError):
                await poller
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="recall",
        summary="Top-N candidate recall and embedding lookup (YouTube DNN, FAISS)",
        version="1",
        lifespan=lifespan,
        default_response_class=JsonResponse,
        docs_url=None,  # service.docs serves /docs from the package, not from a CDN
        redoc_url=None,
    )
    install_docs(app)
    app.state.holder = holder
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(HeadAsGetMiddleware)  # inside metrics: counted as HEAD
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

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
        return _model_response(bundle, {"status": "ready", "bundle_id": bundle.id})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", response_model=ModelInfo, responses=ERRORS, tags=["model"])
    async def model_info(bundle: BundleDep) -> Response:
        """The bundle being served: id, dims, counts, index and trainer metrics."""
        m = bundle.manifest
        return _model_response(
            bundle,
            {
                "bundle_id": m.id,
                "created_at": m.created_at.isoformat(),
                "dim": m.dim,
                "counts": m.counts.model_dump(),
                "index": m.index,
                "trainer_metrics": m.trainer.get("metrics", {}),
            },
        )

    @app.post("/v1/recall", response_model=RecallResponse, responses=ERRORS, tags=["recall"])
    async def recall(body: RecallRequest, bundle: BundleDep) -> Response:
        """Top-k items for a known user, a fresh history, or a raw vector."""
        result = await in_pool(core.recall, bundle, _query(body, settings), settings.max_k)
        return _model_response(bundle, _recall_body(result))

    def _answer_batch(bundle: ServingBundle, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in raw:
            try:
                query = _query(RecallRequest.model_validate(item), settings)
                body = _recall_body(core.recall(bundle, query, settings.max_k))
                out.append({"status": 200, "source": body["source"], "items": body["items"]})
            except ValidationError as e:
                message = "; ".join(err["msg"] for err in e.errors()[:3])
                out.append({"status": 422, **envelope("invalid_input", message)})
            except ApiError as e:
                out.append({"status": e.status, **envelope(e.code, e.message)})
            except Exception:  # one entry's bug must not fail the others
                logger.exception("unhandled error in a batch entry")
                out.append({"status": 500, **envelope("internal", "internal error")})
        return out

    @app.post(
        "/v1/recall/batch", response_model=BatchRecallResponse, responses=ERRORS, tags=["recall"]
    )
    async def recall_batch(body: BatchRecallRequest, bundle: BundleDep) -> Response:
        """Many recalls on one bundle; results in request order, errors inline."""
        if len(body.requests) > settings.max_batch:
            raise PayloadTooLarge(f"at most {settings.max_batch} requests per batch")
        results = await in_pool(_answer_batch, bundle, body.requests)
        return _model_response(bundle, {"bundle_id": bundle.id, "results": results})

    @app.get(
        "/v1/items/{item_id}/similar",
        response_model=RecallResponse,
        responses=ERRORS,
        tags=["recall"],
    )
    async def similar(
        item_id: str, bundle: BundleDep, k: Annotated[int, Query()] = 100
    ) -> Response:
        """Item-to-item neighbours by inner product of item vectors (the item excluded)."""
        result = await in_pool(core.similar, bundle, item_id, k, settings.max_k)
        return _model_response(bundle, _recall_body(result))

    def _one_vector(kind: str) -> Callable[..., Any]:
        async def one_vector(id: str, bundle: BundleDep) -> Response:
            typed_id, vector = core.vector_of(bundle, kind, id)
            body = {"bundle_id": bundle.id, "id": typed_id, "vector": vector}
            return _model_response(bundle, body)

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
            if wants_npy(accept):
                buffer = io.BytesIO()
                np.save(buffer, vectors, allow_pickle=False)
                return Response(
                    buffer.getvalue(),
                    media_type=NPY_MEDIA_TYPE,
                    headers={"X-Bundle-Id": bundle.id, "X-Missing-Count": str(len(missing))},
                )
            rows: Any = (
                vectors
                if not missing
                else [v if ok else None for v, ok in zip(vectors, found.tolist(), strict=True)]
            )
            return _model_response(
                bundle,
                {"bundle_id": bundle.id, "dim": bundle.dim, "vectors": rows, "missing": missing},
            )

        many_vectors.__doc__ = (
            f"Stored {kind[:-1]} vectors in request order; unknown ids listed in `missing` "
            f"(null rows). With `Accept: {NPY_MEDIA_TYPE}` (named, with a q-value above 0 "
            "and at least JSON's; `*/*` means JSON) the body is a float32 .npy of "
            "shape (len(ids), dim) whose rows for unknown ids are NaN; X-Missing-Count says "
            "how many."
        )
        return many_vectors

    for kind in ("users", "items"):
        singular = kind[:-1]
        app.get(
            f"/v1/{kind}/{{id}}/vector",
            response_model=VectorResponse,
            responses=ERRORS,
            tags=["vectors"],
            name=f"{singular}_vector",
        )(_one_vector(kind))
        app.post(
            f"/v1/{kind}/vectors",
            response_model=VectorsResponse,
            responses={**ERRORS, 200: {"content": {NPY_MEDIA_TYPE: {}}}},
            tags=["vectors"],
            name=f"{singular}_vectors",
        )(_many_vectors(kind))

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
        return _model_response(bundle, {"bundle_id": bundle.id, "changed": changed})

    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and ``recall serve``): settings from RECALL_*."""
    return create_app(Settings())
