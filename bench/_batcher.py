"""Micro-batching experiment: concurrent recall requests answered by one search call.

Not part of the service: measured with ``bench/service_bench.py --micro-batch``, it lost
throughput on the default workload (see docs/performance.md), so it lives here, where the
experiment can be rerun. :func:`create_app` is a uvicorn factory: the service's own app
(``recall.service.app.create_app``, settings from ``RECALL_*``) with ``POST /v1/recall`` routed
through a :class:`RecallBatcher` when ``BENCH_MICRO_BATCH=1`` (else unchanged, the A/B's
baseline run the same way).

Requests queue on the event loop; a dispatcher takes whatever has queued (up to
``BENCH_MICRO_BATCH_MAX``, optionally waiting ``BENCH_MICRO_BATCH_WAIT_MS`` for more),
resolves every query (id lookup, seen list, tower), stacks the query vectors and runs one
:meth:`recall.index.search.ItemIndex.search` for the batch in a thread pool. There is no fixed
wait by default: a batch is whatever arrived while the previous one was searching.

What a batch can save: one thread-pool hand-off and one pass of the search's Python work
per batch instead of per request, and, for queries without exclusions, one FAISS call for
the whole batch. Queries with exclusions (``exclude_seen`` is on by default for known
users) still cost FAISS one call each (``ItemIndex.search`` runs a per-query
``IDSelectorNot``), and a batch runs on one thread where unbatched requests spread over
the pool's threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import faiss
import numpy as np
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.responses import Response

from recall.service import app as service_app
from recall.service import recaller as core
from recall.service.core import RecallAnswer, RecallCore
from recall.service.deps import BundleDep
from recall.service.domain_errors import RecallError, UnknownId, clip
from recall.service.fresh import user_vectors
from recall.service.http_common import BODY_ERRORS, model_response
from recall.service.recaller import RecallQuery, RecallResult, ServingBundle
from recall.service.routes import recall as recall_routes
from recall.service.schemas import RecallRequest, RecallResponse
from recall.service.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = RecallResult | RecallError
RunInPool = Callable[..., Awaitable[list[Outcome]]]


@dataclass(frozen=True)
class BatchSettings:
    """``BENCH_MICRO_BATCH_MAX`` (most requests in a batch), ``BENCH_MICRO_BATCH_WAIT_MS``
    (extra wait for a batch to fill), ``BENCH_MICRO_BATCH_DISPATCHERS`` (batches in
    flight at once)."""

    max: int = 64
    wait_ms: float = 0.0
    dispatchers: int = 1

    @classmethod
    def from_env(cls) -> BatchSettings:
        env = os.environ
        return cls(
            max=int(env.get("BENCH_MICRO_BATCH_MAX", "64")),
            wait_ms=float(env.get("BENCH_MICRO_BATCH_WAIT_MS", "0")),
            dispatchers=int(env.get("BENCH_MICRO_BATCH_DISPATCHERS", "1")),
        )


def _resolve(
    bundle: ServingBundle, query: RecallQuery
) -> tuple[core.Source, np.ndarray | None, np.ndarray]:
    """(source, query vector or None for the popular fallback, excluded item rows), a
    user_id query's as production makes it (:func:`recall.service.fresh.user_vectors`,
    no stored events)."""
    if query.user_id is None:
        return core.plain_query(bundle, query)
    exclude = bundle.item_ids.rows(list(query.exclude)) if query.exclude else np.zeros(0, np.int64)
    exclude = exclude[exclude >= 0]
    user = user_vectors(bundle, [bundle.user_ids.canonical(query.user_id)], [[]])[0]
    if user is None:
        if query.fallback == "popular":
            return core.Source.POPULAR, None, exclude
        raise UnknownId(f"unknown user_id {clip(query.user_id)}")
    if query.exclude_seen is not False:
        exclude = np.concatenate([exclude, user.seen])
    return user.source, user.vector, exclude


def recall_many(bundle: ServingBundle, queries: list[RecallQuery], max_k: int) -> list[Outcome]:
    """:meth:`recall.service.core.RecallCore.recall` for each query, with one index search for
    all of
    them; a query's domain error is returned in its slot, not raised."""
    out: list[Outcome | None] = [None] * len(queries)
    slots: list[int] = []
    sources: list[core.Source] = []
    vectors: list[np.ndarray] = []
    excludes: list[np.ndarray] = []
    for i, query in enumerate(queries):
        try:
            core.check_k(query.k, max_k)
            source, vector, exclude = _resolve(bundle, query)
            if vector is None:
                rows, scores = core.popular(bundle, query.k, exclude)
                out[i] = RecallResult(
                    bundle.id, source, bundle.item_ids.ids[rows].tolist(), scores.tolist()
                )
            else:
                slots.append(i)
                sources.append(source)
                vectors.append(vector)
                excludes.append(exclude)
        except RecallError as e:
            out[i] = e
    if slots:
        k = max(queries[i].k for i in slots)
        score_matrix, row_matrix = bundle.index.search(np.stack(vectors), k, exclude=excludes)
        ids = bundle.item_ids.ids
        for j, i in enumerate(slots):
            want = queries[i].k
            if row_matrix.shape[1] < want:  # another query's exclusions narrowed the batch
                out[i] = RecallCore(max_k).recall(bundle, queries[i]).result
                continue
            out[i] = RecallResult(
                bundle.id,
                sources[j],
                ids[row_matrix[j, :want]].tolist(),
                score_matrix[j, :want].tolist(),
            )
    return [o for o in out if o is not None]


@dataclass
class _Pending:
    bundle: ServingBundle
    query: RecallQuery
    future: asyncio.Future[RecallResult]


class RecallBatcher:
    """Coalesces concurrent :func:`recall` calls; start it inside the running loop."""

    def __init__(self, run_in_pool: RunInPool, max_k: int, settings: BatchSettings) -> None:
        self._run = run_in_pool
        self._max_k = max_k
        self._settings = settings
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.batches = 0
        self.requests = 0

    @property
    def settings(self) -> BatchSettings:
        return self._settings

    def start(self) -> None:
        self.started = True
        self._tasks = [
            asyncio.create_task(self._dispatch()) for _ in range(self._settings.dispatchers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def recall(self, bundle: ServingBundle, query: RecallQuery) -> RecallResult:
        future: asyncio.Future[RecallResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(bundle, query, future))
        return await future

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self._settings.max
        wait_s = self._settings.wait_ms / 1e3
        while True:
            batch = [await self._queue.get()]
            if wait_s:
                deadline = loop.time() + wait_s
                while len(batch) < limit and (left := deadline - loop.time()) > 0:
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), left))
                    except TimeoutError:
                        break
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._answer(batch)

    async def _answer(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.done()]  # cancelled by a gone client
        groups: dict[str, list[_Pending]] = {}
        for p in batch:  # a reload may land mid-batch: never mix bundles in one search
            groups.setdefault(p.bundle.id, []).append(p)
        for group in groups.values():
            self.batches += 1
            self.requests += len(group)
            try:
                outcomes = await self._run(
                    recall_many, group[0].bundle, [p.query for p in group], self._max_k
                )
            except Exception as e:  # never leave a request hanging
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, outcome in zip(group, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, RecallError):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)


def create_app() -> FastAPI:
    """uvicorn factory: the service app, ``POST /v1/recall`` batched if BENCH_MICRO_BATCH=1."""
    settings = Settings()
    app = service_app.create_app(settings)
    if os.environ.get("BENCH_MICRO_BATCH") != "1":
        return app
    executor = ThreadPoolExecutor(
        settings.search_threads,
        thread_name_prefix="recall-batch",
        initializer=faiss.omp_set_num_threads,
        initargs=(1,),
    )

    async def in_pool(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    batcher = RecallBatcher(in_pool, settings.max_k, BatchSettings.from_env())
    app.router.routes = [
        r
        for r in app.router.routes
        if not (isinstance(r, APIRoute) and r.path == "/v1/recall" and "POST" in (r.methods or ()))
    ]

    @app.post("/v1/recall", response_model=RecallResponse, responses=BODY_ERRORS)
    async def recall(body: RecallRequest, bundle: BundleDep) -> Response:
        if not batcher.started:
            batcher.start()
        result = await batcher.recall(bundle, recall_routes._query(body, settings))
        return model_response(bundle, recall_routes._recall_body(RecallAnswer(result)))

    logger.info("micro-batching on: %s", batcher.settings)
    return app
