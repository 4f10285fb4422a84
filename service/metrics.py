"""Prometheus metrics (prometheus-client) for one app, and for a whole replica.

Single process (tests, an app run in-process): one registry per app, so apps stay
isolated. Multiprocess (``recall serve``, any ``RECALL_WORKERS``): ``recall serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory before any worker imports
prometheus-client; every worker writes its values there and a scrape, whichever worker
answers it, sums the replica (prometheus-client's multiprocess mode):

- counters and histograms: summed over every worker the replica ever ran (they only grow);
- ``recall_bundle_info{bundle_id}``: how many live workers serve that bundle (livesum;
  during a hot swap the old and the new id can both be > 0; 1 in a single process);
- ``recall_items_loaded`` / ``recall_users_loaded``: of the bundle a live worker loaded
  last (livemostrecent).

A worker that exited (or was killed) is dropped from the live gauges at the next scrape.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recall.index.search import STRATEGIES
from recall.service.metrics_dir import MULTIPROC_ENV, process_alive

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]

STATE_OPS = ("recent", "shown", "add", "availability", "remember", "served", "live_counts")
"""The ``op`` label values of ``recall_state_errors_total``."""
UNFRESH_REASONS = ("timeout", "unavailable")
"""The ``reason`` label values of ``recall_unfresh_answers_total``."""
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    """The directory of multiprocess mode, or None in single-process mode."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if values.ValueClass is values.MutexValue:  # the variable came after the import
        raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was imported")
    return Path(path)


def _forget_dead_workers(path: Path) -> None:
    """Drop the live gauges of worker processes that are gone (exited or killed)."""
    pids = {int(m.group(1)) for f in os.listdir(path) if (m := _LIVE_GAUGE_FILE.match(f))}
    for pid in pids:
        if not process_alive(pid):
            multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


class Metrics:
    """The service's metrics: requests, latency, reloads and what is loaded."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        self.requests = Counter(
            "recall_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recall_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reloads = Counter(
            "recall_reloads", "bundle loads by result", ["result"], registry=self.registry
        )
        self.bundle = Gauge(
            "recall_bundle_info",
            "worker processes serving the bundle (1 per process)",
            ["bundle_id"],
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.items = Gauge(
            "recall_items_loaded",
            "items in the served bundle",
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.users = Gauge(
            "recall_users_loaded",
            "users in the served bundle",
            multiprocess_mode="livemostrecent",
            registry=self.registry,
        )
        self.state_errors = Counter(
            "recall_state_errors",
            "state store calls that failed or timed out, by operation (recall then "
            "answers from the bundle alone; events get 503)",
            ["op"],
            registry=self.registry,
        )
        self.unfresh = Counter(
            "recall_unfresh_answers",
            "users answered from the bundle alone (fresh: false) because the state store "
            "could not be read, by reason: timeout (slower than RECALL_STATE_TIMEOUT_S), "
            "unavailable (down or failing); one per user of the read",
            ["reason"],
            registry=self.registry,
        )
        self.events = Counter(
            "recall_events",
            "events of POST /v1/events by result: stored, rejected (invalid), unavailable "
            "(the store could not take them: 503)",
            ["result"],
            registry=self.registry,
        )
        self.searches = Counter(
            "recall_searches",
            "index searches of answers (recall, batch entries, similar) by strategy: index, "
            "selector (a filter as a FAISS bitmap), clusters (exact scan of the allowed items "
            "of the nearest item clusters), scan (exact scan of the few allowed items), "
            "fallback (the index came back short), empty (nothing allowed)",
            ["strategy"],
            registry=self.registry,
        )
        self.experiment_fallbacks = Counter(
            "recall_experiment_fallbacks",
            'requests of an experiment arm answered by control (arm: "control") because '
            "the arm's bundle is refused or not loaded here, by arm",
            ["arm"],
            registry=self.registry,
        )
        self.live_events = Counter(
            "recall_live_events",
            "interaction events of users with a served list (the last recall by user id, "
            "within RECALL_SERVED_TTL_S, served before the event), by the list's arm",
            ["arm"],
            registry=self.registry,
        )
        self.live_hits = Counter(
            "recall_live_hits",
            "live events whose item was in the served list's top k, by arm and k "
            "(live HR@k = hits / events)",
            ["arm", "k"],
            registry=self.registry,
        )
        self.live_unremembered = Counter(
            "recall_live_unremembered",
            "served lists not remembered (their users' next events are not counted), by "
            "reason: timeout, unavailable (the write failed), unread (the recall could not "
            "read the store, so no write was tried)",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("timeout", "unavailable", "unread"):
            self.live_unremembered.labels(reason)
        self.live_uncounted = Counter(
            "recall_live_uncounted",
            "interaction events stored but counted nowhere in the live numbers, by reason: "
            "read_failed (their users' served lists could not be read in time), "
            "write_failed (the counts alone could not be stored: a Redis Cluster whose "
            "master of the counts is down)",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("read_failed", "write_failed"):
            self.live_uncounted.labels(reason)
        self.reloads.labels("success")
        for strategy in STRATEGIES:
            self.searches.labels(strategy)
        self.reloads.labels("failure")
        for op in STATE_OPS:
            self.state_errors.labels(op)
        for reason in UNFRESH_REASONS:
            self.unfresh.labels(reason)
        for result in ("stored", "rejected", "unavailable"):
            self.events.labels(result)
        self._bundle_id: str | None = None

    def bundle_loaded(self, bundle_id: str, n_items: int, n_users: int) -> None:
        """Record that this process now serves ``bundle_id``."""
        if self._bundle_id is not None and self._bundle_id != bundle_id:
            self.bundle.labels(self._bundle_id).set(0)
        self._bundle_id = bundle_id
        self.bundle.labels(bundle_id).set(1)
        self.items.set(n_items)
        self.users.set(n_users)

    def render(self) -> bytes:
        """The Prometheus text of this app, or of every worker in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        _forget_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route, method, status) -> (its counter, its histogram): labels() per request
        # costs a lock and a lookup of its own in prometheus-client
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (getattr(scope.get("route"), "path", "unmatched"), scope["method"], status)
            children = self._children.get(key)
            if children is None:  # bounded: route templates x methods x statuses
                template, method, _ = key
                children = self._children[key] = (
                    self.metrics.requests.labels(template, method, str(status)),
                    self.metrics.latency.labels(template),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
