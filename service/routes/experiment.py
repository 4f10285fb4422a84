"""``GET /v1/experiment``: the experiment served and its live recall quality per arm."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from recall.service.deps import AppStateDep, StateDep
from recall.service.http_common import JsonResponse, error_responses
from recall.service.live_quality import report
from recall.service.schemas import ExperimentReport

router = APIRouter()


@router.get(
    "/v1/experiment",
    response_model=ExperimentReport,
    responses=error_responses(503),
    tags=["experiments"],
)
async def experiment(app: AppStateDep, state: StateDep) -> Response:
    """The experiment served now (null: none) and, per arm, the live events counted from
    the state store (the same on every worker and replica), hits and HR@K with 95% Wilson
    intervals, each arm's difference from control (Newcombe), the series by time bucket;
    503 state_unavailable when the store cannot be read."""
    served = app.experiment
    counts = await state.live_counts("" if served is None else served.id)
    return JsonResponse(report(served, counts))
