"""The console (``GET /console``) and the read-only JSON endpoints its pages use.

- ``GET /console``: ``service/console/index.html``; ``GET /console/assets/<file>``: the
  other files of ``service/console/`` (package data, no CDN). ``Cache-Control: no-cache``
  (revalidate with ETag / Last-Modified: the file names carry no version).
- ``GET /v1/users/{id}/history``: a user's training window and newer events;
- ``GET /v1/items/search``: items by title, for the new-user builder;
- ``GET /v1/replica``: this replica's start time and reload attempts.

:func:`install_console` adds them; it must run before ``/v1/items/{id}`` is registered
(else ``search`` would be taken for an item id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from recall.service.browse import history_rows, search_items, training_window
from recall.service.errors import UnknownId, clip
from recall.service.http_common import (
    BundleDep,
    JsonResponse,
    StateDep,
    fresh_after,
    model_response,
)
from recall.service.reloader import BundleHolder
from recall.service.schemas import ErrorResponse, PathId, QueryInt

__all__ = ["CONSOLE_DIR", "install_console"]

CONSOLE_DIR = Path(__file__).parent / "console"
CACHE_CONTROL = "no-cache"
MAX_HISTORY_LIMIT = 1000
MAX_SEARCH_LIMIT = 100
MAX_QUERY_CHARS = 200

InPool = Callable[..., Awaitable[Any]]


class HistoryItem(BaseModel):
    item_id: int | str
    timestamp: float = Field(description="unix seconds")
    attributes: dict[str, Any] | None = Field(
        None, description="the item's attributes (left out when the bundle has none)"
    )


class HistoryResponse(BaseModel):
    bundle_id: str
    user_id: int | str
    known: bool = Field(description="the bundle has this user (trained on their history)")
    history: list[HistoryItem] = Field(description="the training window, newest first")
    fresh_events: list[HistoryItem] = Field(
        description="interactions stored after the bundle's training data, newest first"
    )
    fresh: bool = Field(description="false when the state store could not be read")


class FoundItem(BaseModel):
    item_id: int | str
    attributes: dict[str, Any]


class SearchResponse(BaseModel):
    bundle_id: str
    items: list[FoundItem]


class Reload(BaseModel):
    at: float = Field(description="unix seconds")
    bundle_id: str | None
    result: str = Field(description="success, failure or unchanged")
    reason: str | None = Field(None, description="why a reload failed (bundle ids only)")


class ReplicaInfo(BaseModel):
    started_at: float = Field(description="unix seconds")
    bundle_id: str | None
    reloads: list[Reload] = Field(description="the last 50 reload attempts, oldest first")


class ConsoleAssets(StaticFiles):
    """The console's files, each answer marked ``Cache-Control: no-cache``."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            return Response(status_code=405, headers={"Allow": "GET, HEAD"})
        return await super().get_response(path, scope)


def install_console(app: FastAPI, in_pool: InPool) -> None:
    """Add the console and its endpoints to ``app`` (``app.state.holder`` and
    ``app.state.state`` as :func:`recall.service.app.create_app` sets them); ``in_pool`` runs a
    function in the search thread pool."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (404, 422, 503)
    }

    @app.get(
        "/v1/users/{id}/history",
        response_model=HistoryResponse,
        responses=errors,
        tags=["console"],
    )
    async def user_history(
        id: PathId,
        bundle: BundleDep,
        state: StateDep,
        limit: Annotated[QueryInt, Query(ge=1, le=MAX_HISTORY_LIMIT)] = 50,
    ) -> Response:
        """A user's training window (the last `limit` items the bundle's user vector was
        made from) and their interactions stored after the training data (`fresh_events`),
        each newest first with the items' attributes; 404 when the bundle does not know
        the user and the state store holds no event of theirs."""
        user_id = bundle.user_ids.canonical(id)
        row = bundle.user_ids.row(user_id)
        known = row is not None
        after = fresh_after(bundle, [user_id])
        read = await state.read([user_id], after=after, with_shown=False)
        events = read.events[0]
        if not known and not events:
            raise UnknownId(f"unknown user id {clip(id)}")
        typed_id = bundle.user_ids.ids[row].item() if row is not None else user_id

        def body() -> dict[str, Any]:
            return {
                "bundle_id": bundle.id,
                "user_id": typed_id,
                "known": known,
                "history": history_rows(bundle, training_window(bundle, row), limit),
                "fresh_events": history_rows(bundle, events, limit),
                "fresh": read.fresh,
            }

        return model_response(bundle, await in_pool(body))

    @app.get(
        "/v1/items/search",
        response_model=SearchResponse,
        responses=errors,
        tags=["console"],
    )
    async def item_search(
        bundle: BundleDep,
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
        limit: Annotated[QueryInt, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 20,
    ) -> Response:
        """Items whose `title` attribute contains `q` (case-insensitive; the id for a
        bundle without titles), most popular first, with their attributes."""
        items = await in_pool(search_items, bundle, q, limit)
        return model_response(bundle, {"bundle_id": bundle.id, "items": items})

    @app.get(
        "/v1/replica",
        response_model=ReplicaInfo,
        tags=["console"],
    )
    async def replica(request: Request) -> Response:
        """This replica (process): when it started, the bundle it serves (null before the
        first load) and its last 50 reload attempts that loaded or refused a bundle, or
        found it already served on an admin reload (bundle ids only)."""
        holder: BundleHolder = request.app.state.holder
        current = holder.current
        body = {
            "started_at": holder.started_at,
            "bundle_id": None if current is None else current.id,
            "reloads": list(holder.reloads),
        }
        return model_response(current, body) if current else JsonResponse(body)

    @app.get("/console", response_class=FileResponse, include_in_schema=False)
    async def console() -> Response:
        """The console page (a single page; the hash picks the view)."""
        return FileResponse(
            CONSOLE_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": CACHE_CONTROL},
        )

    app.mount("/console/assets", ConsoleAssets(directory=CONSOLE_DIR), name="console-assets")
