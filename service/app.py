"""The HTTP API v1: ``create_app(settings)`` builds the FastAPI app.

The routes (:mod:`recall.service.routes`, one router per group) only translate HTTP to the
recall core (:mod:`recall.service.recaller`, :mod:`recall.service.fresh`) and back; what
they need comes through :mod:`recall.service.deps` from the app's
:class:`~recall.service.app_state.AppState`. The state store is opened by the lifespan and
used through :mod:`recall.service.state_access` (bounded reads that never fail a recall).
Everything that touches vectors or FAISS runs in the search pool
(:mod:`recall.service.pool`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import faiss
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from recall.index.roots import S3Location
from recall.service.app_state import AppState
from recall.service.availability import Availability
from recall.service.deps import app_state_of
from recall.service.docs import install_docs
from recall.service.domain_errors import BundleNotReady, ReloadRefused
from recall.service.errors import install_error_handlers
from recall.service.head import HeadAsGetMiddleware
from recall.service.http_common import JsonResponse
from recall.service.limits import BodyLimitMiddleware
from recall.service.metrics import Metrics, MetricsMiddleware
from recall.service.parent_watch import die_with_parent
from recall.service.pool import SearchPool
from recall.service.reloader import BundleHolder, BundleSource, LocalSource
from recall.service.routes import (
    admin,
    console,
    events,
    experiment,
    items,
    operations,
    recall,
    vectors,
)
from recall.service.settings import Settings
from recall.service.state import StoreUnavailable, check_url, open_store
from recall.service.state.base import DEFAULT_WRITE_TIMEOUT_S
from recall.service.state.users import USER_FILES, StoreUsers
from recall.service.state_access import StateAccess

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The app for one bundle root; loads CURRENT at startup and polls it after."""
    metrics = Metrics()
    app = FastAPI(
        title="recall",
        summary="Top-N candidate recall and embedding lookup (YouTube DNN, FAISS)",
        version="1",
        lifespan=lifespan,
        default_response_class=JsonResponse,
        docs_url=None,  # service.docs serves /docs from the package, not from a CDN
        redoc_url=None,
        telemetry=_telemetry(settings.opentelemetry),
    )
    holder = BundleHolder(bundle_source(settings), metrics)
    app.state.recall = AppState(settings, metrics, holder, SearchPool(settings.search_threads))
    # Middleware, innermost first: the error catch-all (so metrics counts the 500), HEAD
    # as GET (counted as HEAD), the body limit, the metrics.
    install_error_handlers(app)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Routes: no two groups' paths overlap, so their order only decides how many routes a
    # request is matched against before its own (inside a group it matters:
    # routes/items.py). FastAPI checks each in turn: recall's come first, and as the app's
    # own routes: FastAPI 0.165 matches a request through an included router twice, with
    # scope bookkeeping each time (~10% of the loop's CPU on /v1/recall; performance.md).
    app.router.routes[:0] = recall.router.routes
    install_docs(app, max_k=settings.max_k)
    for group in (operations, items, vectors, events, experiment, admin, console):
        app.include_router(group.router)
    app.mount(console.ASSETS_PATH, console.ConsoleAssets(), name="console-assets")
    return app


def _telemetry(enabled: bool) -> TelemetryConfig:
    """FastAPI's native OpenTelemetry, on or off (off: its per-request checks of the
    global providers end at the first flag; the service's metrics are /metrics)."""
    return {"tracing": enabled, "metrics": enabled, "logs": enabled, "operation_spans": enabled}


def bundle_source(settings: Settings) -> BundleSource:
    """The local root read in place, or an s3:// root through the download cache."""
    if not isinstance(settings.root, S3Location):
        return LocalSource(settings.root)
    from recall.index.roots import S3Root
    from recall.service.bundle_cache import S3CachedSource

    assert settings.cache_dir is not None  # Settings refuses an s3:// root without one
    skip = USER_FILES if users_in_store(settings) else ()
    return S3CachedSource(S3Root(settings.root), settings.cache_dir, settings.cache_keep, skip)


def users_in_store(settings: Settings) -> bool:
    """Whether the bundles' users are served from the state store (Redis, Redis Cluster)
    rather than from each bundle's user files (the embedded SQLite store)."""
    return check_url(settings.state_url) != "sqlite"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the state store and the item availability, load the bundle CURRENT names (a
    failure leaves the app not ready) and the experiment's arms, poll CURRENT and
    EXPERIMENT; on shutdown, undo it all."""
    state = app_state_of(app)
    settings = state.settings
    faiss.omp_set_num_threads(1)  # one thread per search; concurrency comes from requests
    store = open_store(
        settings.state_url,
        window=settings.state_window,
        shown_ttl_s=settings.shown_ttl_s,
        retention_s=settings.events_retention_s,
        timeout_s=settings.state_timeout_s,
        served_ttl_s=settings.served_ttl_s,
    )
    users = None
    if users_in_store(settings):
        users = StoreUsers(
            settings.state_url,
            timeout_s=settings.state_timeout_s,
            write_timeout_s=DEFAULT_WRITE_TIMEOUT_S,
        )
    state.holder.users = users
    state.access = StateAccess(
        store,
        state.metrics,
        timeout_s=settings.state_timeout_s,
        shown_ttl_s=settings.shown_ttl_s,
        users=users,
    )
    availability = state.availability = Availability(state.access, settings.availability_poll_s)
    try:
        await store.ping()
    except StoreUnavailable as e:  # recall still answers from the bundle
        logger.warning("state store unavailable at startup: %s", e)
    with suppress(ReloadRefused, BundleNotReady):
        await state.holder.reload()
    await state.arms.refresh()
    await availability.start()  # the disabled items before the first request
    pollers = []
    if settings.reload_interval_s > 0:
        interval = settings.reload_interval_s
        pollers = [
            asyncio.create_task(state.holder.poll_forever(interval)),
            asyncio.create_task(state.arms.poll_forever(interval)),
        ]
    yield
    for poller in pollers:
        poller.cancel()
        with suppress(asyncio.CancelledError):
            await poller
    await availability.stop()
    state.pool.shutdown()
    with suppress(StoreUnavailable):
        await store.close()
    if users is not None:
        await users.close()


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and ``recall serve``): settings from RECALL_*.
    A worker process (``RECALL_WORKERS`` > 1) dies with its master (service/parent_watch.py)."""
    die_with_parent()
    return create_app(Settings())
