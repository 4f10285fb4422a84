"""``POST /v1/events``: what users did, into the state store."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.responses import Response

from recall.service.deps import AppStateDep, BundleDep, StateDep
from recall.service.domain_errors import OverLimit, StateDown
from recall.service.events import parse_events
from recall.service.http_common import error_responses, model_response
from recall.service.schemas import EventsRequest, EventsResponse

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
        try:
            await state.add(parsed.events)
        except StateDown:
            counts.labels("unavailable").inc(len(parsed.events))
            raise
        counts.labels("stored").inc(len(parsed.events))
    return model_response(
        bundle,
        {
            "accepted": len(parsed.events),
            "rejected": parsed.rejected,
            "unknown_items": parsed.unknown_items,
        },
    )
