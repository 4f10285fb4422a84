"""Items: one item's attributes, and items by title (for the console's new-user builder).

``/v1/items/search`` is declared before ``/v1/items/{id}``: routes match in order, and
``search`` is not an item id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from recall.service.browse import search_items
from recall.service.deps import AppStateDep, BundleDep
from recall.service.http_common import ERRORS, error_responses, model_response
from recall.service.schemas import ItemResponse, PathId, QueryInt, SearchResponse

MAX_SEARCH_LIMIT = 100
MAX_QUERY_CHARS = 200

router = APIRouter()


@router.get(
    "/v1/items/search",
    response_model=SearchResponse,
    responses=error_responses(404, 422, 503),
    tags=["console"],
)
async def item_search(
    app: AppStateDep,
    bundle: BundleDep,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
    limit: Annotated[QueryInt, Query(ge=1, le=MAX_SEARCH_LIMIT)] = 20,
) -> Response:
    """Items whose `title` attribute contains `q` (case-insensitive; the id for a
    bundle without titles), most popular first, with their attributes."""
    items = await app.pool.run(search_items, bundle, q, limit)
    return model_response(bundle, {"bundle_id": bundle.id, "items": items})


@router.get("/v1/items/{id}", response_model=ItemResponse, responses=ERRORS, tags=["items"])
async def item(id: PathId, app: AppStateDep, bundle: BundleDep) -> Response:
    """One item's attributes as the training data's items table gave them (strings,
    lists of strings for multi-valued attributes, numbers; missing ones left out; {}
    for a bundle without item attributes)."""
    typed_id, attributes = app.core.item(bundle, id)
    return model_response(
        bundle, {"bundle_id": bundle.id, "id": typed_id, "attributes": attributes}
    )
