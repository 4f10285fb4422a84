"""The stored form of a served list (:class:`~recall.service.state.base.ServedList`), one
codec for every backend: JSON ``[experiment_id, arm, bundle_id, served_at, [item ids]]``
(orjson; ids keep their type, so ``7`` and ``"7"`` stay apart). 100 item ids of up to
seven digits take about 0.8 kB."""

from __future__ import annotations

import orjson

from recall.index.ids import ExternalId
from recall.service.state.base import LIVE_KS, ServedList


def encode(served: ServedList) -> bytes:
    """``served`` as stored (its user id is the key, not part of the value)."""
    items = served.item_ids[: LIVE_KS[-1]]
    return orjson.dumps(
        [served.experiment_id, served.arm, served.bundle_id, served.served_at, items],
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def decode(user_id: ExternalId, value: bytes) -> ServedList:
    """The served list of ``user_id`` stored as ``value`` (by :func:`encode`)."""
    experiment_id, arm, bundle_id, served_at, items = orjson.loads(value)
    return ServedList(user_id, experiment_id, arm, bundle_id, tuple(items), float(served_at))
