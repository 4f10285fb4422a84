"""Operations: liveness, readiness, Prometheus metrics, the model served, this replica."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from recall.service.deps import AppStateDep, BundleDep
from recall.service.http_common import ERRORS, JsonResponse, error_responses, model_response
from recall.service.metrics import CONTENT_TYPE_LATEST
from recall.service.schemas import ModelInfo, ReplicaInfo

router = APIRouter()


@router.get("/healthz", tags=["operations"])
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses=error_responses(503))
async def readyz(app: AppStateDep) -> Response:
    """200 with the bundle id once a bundle is loaded, else 503."""
    bundle = app.holder.require()
    return model_response(bundle, {"status": "ready", "bundle_id": bundle.id})


@router.get("/metrics", tags=["operations"], response_class=Response)
async def prometheus_metrics(app: AppStateDep) -> Response:
    """Prometheus text format."""
    return Response(app.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", response_model=ModelInfo, responses=ERRORS, tags=["model"])
async def model_info(bundle: BundleDep) -> Response:
    """The bundle being served: id, dims, counts, index and trainer metrics, or where its
    imported vectors came from."""
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
            "item_attributes": (None if bundle.attributes is None else bundle.attributes.schema()),
            "columns": m.trainer.get("columns"),
            "metric": m.metric,
            "history_rule": None if m.history_rule is None else m.history_rule.model_dump(),
            "source": None if m.source is None else m.source.model_dump(),
        },
    )


@router.get("/v1/replica", response_model=ReplicaInfo, tags=["console"])
async def replica(app: AppStateDep) -> Response:
    """This replica (process): when it started, the bundle it serves (null before the
    first load) and its last 50 reload attempts that loaded or refused a bundle, or
    found it already served on an admin reload (bundle ids only); whether the bundle
    store answers and whether the bundle comes from the download cache because it does
    not; the experiment served beside CURRENT and each arm's state here."""
    current = app.holder.current
    body = {
        "started_at": app.holder.started_at,
        "bundle_id": None if current is None else current.id,
        "reloads": list(app.holder.reloads),
        "store_reachable": app.holder.store_reachable,
        "serving_from_cache": app.holder.serving_from_cache,
        "experiment": app.arms.describe(),
    }
    return model_response(current, body) if current else JsonResponse(body)
