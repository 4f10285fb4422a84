"""The console (``GET /console``, its files under ``/console/assets``) and the user history
its pages show. Its other endpoints: ``GET /v1/items/search`` (routes/items.py) and
``GET /v1/replica`` (routes/operations.py).

The console's files are ``service/console/`` (package data, no CDN), each answered with
``Cache-Control: no-cache`` (revalidate with ETag / Last-Modified: the file names carry no
version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from recall.service.browse import history_rows, training_window
from recall.service.deps import AppStateDep, BundleDep, StateDep
from recall.service.domain_errors import StateDown, UnknownId, clip
from recall.service.http_common import error_responses, fresh_after, model_response
from recall.service.schemas import HistoryResponse, PathId, QueryInt
from recall.service.users import bundle_users

__all__ = ["ASSETS_PATH", "CONSOLE_DIR", "ConsoleAssets", "router"]

CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"
ASSETS_PATH = "/console/assets"
CACHE_CONTROL = "no-cache"
MAX_HISTORY_LIMIT = 1000

router = APIRouter()


class ConsoleAssets(StaticFiles):
    """The console's files, each answer marked ``Cache-Control: no-cache``; mounted at
    :data:`ASSETS_PATH` by ``create_app`` (a router cannot hold a mount)."""

    def __init__(self) -> None:
        super().__init__(directory=CONSOLE_DIR)

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            return Response(status_code=405, headers={"Allow": "GET, HEAD"})
        return await super().get_response(path, scope)


@router.get("/console", response_class=FileResponse, include_in_schema=False)
async def console() -> Response:
    """The console page (a single page; the hash picks the view)."""
    return FileResponse(
        CONSOLE_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": CACHE_CONTROL},
    )


@router.get(
    "/v1/users/{id}/history",
    response_model=HistoryResponse,
    responses=error_responses(404, 422, 503),
    tags=["console"],
)
async def user_history(
    id: PathId,
    app: AppStateDep,
    bundle: BundleDep,
    state: StateDep,
    limit: Annotated[QueryInt, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 50,
) -> Response:
    """A user's training window (the last `limit` items the bundle's user vector was
    made from) and their interactions stored after the training data (`fresh_events`),
    each newest first with the items' attributes; 404 when the bundle does not know
    the user and the state store holds no event of theirs."""
    user_id = bundle.user_ids.canonical(id)  # as the bundle types it
    after = fresh_after(bundle, [user_id])
    read = await state.read([user_id], after=after, with_shown=False, bundle=bundle)
    if read.users_down:
        raise StateDown("the state store is unavailable: the user could not be read")
    user = (read.users or bundle_users(bundle.verified, [user_id]))[0]
    events = read.events[0]
    if user is None and not events:
        raise UnknownId(f"unknown user id {clip(id)}")

    def body() -> dict[str, Any]:
        return {
            "bundle_id": bundle.id,
            "user_id": user_id,
            "known": user is not None,
            "history": history_rows(bundle, training_window(bundle, user), limit),
            "fresh_events": history_rows(bundle, events, limit),
            "fresh": read.fresh,
        }

    return model_response(bundle, await app.pool.run(body))
