"""``POST /v1/events``: what users did, into the state store, with the live hits it makes
(:mod:`recall.service.live_quality`): the users' served lists are read first (one store
read), then the events and their counts written in one go. Interactions stored while that
read failed, or whose counts alone could not be written (a Redis Cluster whose master of
the counts is down), are counted nowhere in the live numbers:
``recall_live_uncounted_total`` says how many."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.responses import Response

from recall.service.app_state import AppState
from recall.service.deps import AppStateDep, BundleDep, StateDep
from recall.service.domain_errors import OverLimit, StateDown
from recall.service.events import parse_events
from recall.service.http_common import error_responses, model_response
from recall.service.live_quality import count_live
from recall.service.metrics import Metrics
from recall.service.schemas import EventsRequest, EventsResponse
from recall.service.state import LIVE_KS, Event, LiveCount
from recall.service.state_access import StateAccess

router = APIRouter()


@router.post(
    "/v1/events",
    response_model=EventsResponse,
    responses=error_responses(400, 413, 422, 503),
    tags=["events"],
)
async def post_events(
    body: EventsRequest, app: AppStateDep, bundle: BundleDep, state: StateDep
) -> Response:
    """Store what users did (interactions move their vectors at the next recall;
    impressions feed exclude_shown). Bad events are rejected inline, the rest stored
    (durably when this answers); 503 state_unavailable when the store cannot take them."""
    if len(body.events) > app.settings.max_events:
        raise OverLimit(f"at most {app.settings.max_events} events per request")
    parsed = await app.pool.run(parse_events, body.events, bundle, time.time())
    counts = app.metrics.events
    counts.labels("rejected").inc(len(parsed.rejected))
    if parsed.events:
        live, unread = await _live_counts(app, state, parsed.events)
        try:
            counted = await state.add(parsed.events, live)
        except StateDown:
            counts.labels("unavailable").inc(len(parsed.events))
            raise
        counts.labels("stored").inc(len(parsed.events))
        _count_metrics(app.metrics, live, unread, counted)
    return model_response(
        bundle,
        {
            "accepted": len(parsed.events),
            "rejected": parsed.rejected,
            "unknown_items": parsed.unknown_items,
        },
    )


async def _live_counts(
    app: AppState, state: StateAccess, events: list[Event]
) -> tuple[list[LiveCount], int]:
    """The live counts ``events`` make against their users' served lists, and how many
    interactions go uncounted because the lists could not be read (then all of them)."""
    interactions = [e for e in events if e.type == "interaction"]
    users = list(dict.fromkeys(e.user_id for e in interactions))
    lists = await state.served(users)
    if lists is None:
        return [], len(interactions)
    served = {user: s for user, s in zip(users, lists, strict=True) if s is not None}
    return count_live(interactions, served, app.settings.live_bucket_s), 0


def _count_metrics(metrics: Metrics, live: list[LiveCount], unread: int, counted: bool) -> None:
    """``recall_live_events_total`` and ``recall_live_hits_total`` of the stored counts
    (``live``, unless ``counted`` is False: the events were stored, their counts not), and
    ``recall_live_uncounted_total`` of the stored interactions that could not be counted
    (``unread``: their served lists could not be read)."""
    if unread:
        metrics.live_uncounted.labels("read_failed").inc(unread)
    if not counted:
        metrics.live_uncounted.labels("write_failed").inc(sum(count.events for count in live))
        return
    for count in live:
        metrics.live_events.labels(count.arm).inc(count.events)
        for k, hits in zip(LIVE_KS, count.hits, strict=True):
            if hits:
                metrics.live_hits.labels(count.arm, str(k)).inc(hits)
