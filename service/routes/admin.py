"""The admin API (``Authorization: Bearer <RECALL_ADMIN_TOKEN>``): reload the bundle, and
disable or enable items on every replica."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from recall.service.availability import unknown_ids
from recall.service.deps import AdminOnly, AppStateDep, BundleDep, StateDep
from recall.service.domain_errors import InvalidRequest, OverLimit, clip
from recall.service.http_common import JsonResponse, error_responses, model_response
from recall.service.schemas import (
    AvailabilityChange,
    AvailabilityRequest,
    AvailabilityState,
    ReloadResponse,
)

router = APIRouter(tags=["operations"], dependencies=AdminOnly)


@router.post(
    "/v1/admin/reload", response_model=ReloadResponse, responses=error_responses(401, 403, 409)
)
async def admin_reload(app: AppStateDep) -> Response:
    """Load the bundle CURRENT names, and the arms EXPERIMENT names, now (Authorization:
    Bearer <RECALL_ADMIN_TOKEN>)."""
    bundle, changed = await app.holder.reload()
    await app.arms.refresh()
    return model_response(bundle, {"bundle_id": bundle.id, "changed": changed})


@router.post(
    "/v1/admin/items/availability",
    response_model=AvailabilityChange,
    responses=error_responses(400, 401, 403, 413, 422, 503),
)
async def set_availability(
    body: AvailabilityRequest, app: AppStateDep, bundle: BundleDep, state: StateDep
) -> Response:
    """Disable items (no recall, batch or similar answer contains them, on every replica
    within about RECALL_AVAILABILITY_POLL_S) or enable them again; kept in the state
    store by external id, so a new bundle keeps them. Ids the bundle does not know are
    stored and listed in `unknown`. 503 state_unavailable: nothing changed, retry."""
    most = app.settings.max_availability_ids
    if len(body.disable) + len(body.enable) > most:
        raise OverLimit(f"at most {most} ids per availability change")
    disable = [bundle.item_ids.canonical(i) for i in body.disable]
    enable = [bundle.item_ids.canonical(i) for i in body.enable]
    both = set(disable).intersection(enable)
    if both:
        raise InvalidRequest(f"item {clip(next(iter(both)))} is in both disable and enable")
    version = await state.set_availability(disable, enable)
    availability = app.item_availability()
    await availability.refresh()  # this process applies it now, the others at their poll
    unknown = unknown_ids(bundle, list(dict.fromkeys([*disable, *enable])))
    answer = {"version": version, "disabled": len(availability.disabled), "unknown": unknown}
    return model_response(bundle, answer)


@router.get(
    "/v1/admin/items/availability",
    response_model=AvailabilityState,
    responses=error_responses(401, 403, 413, 422, 503),
)
async def get_availability(state: StateDep) -> Response:
    """The disabled item ids as the state store holds them, and their version."""
    version, disabled = await state.availability()
    return JsonResponse({"version": version, "disabled": disabled})
