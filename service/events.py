"""``POST /v1/events`` bodies -> store events, each validated on its own.

A bad event (not an object, wrong id types, a timestamp that is not a finite number >= 0
or lies more than :data:`~recall.service.schemas.MAX_FUTURE_S` ahead of the server's clock, an
unknown type, unknown fields) is rejected inline with its index; the others are kept.
Ids are typed as the bundle types them (:meth:`recall.index.ids.IdMap.canonical`), so the
store finds a user's events whether a client sent ``7`` or ``"7"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from recall.service.errors import envelope
from recall.service.recaller import ServingBundle
from recall.service.schemas import MAX_FUTURE_S, EventIn
from recall.service.state import Event

_MESSAGES = 3  # validation messages kept per rejected event


@dataclass(frozen=True)
class ParsedEvents:
    """The events to store, the rejected ones (``{"index", "error": {"code", "message"}}``
    in request order) and how many accepted events name an item the bundle lacks."""

    events: list[Event]
    rejected: list[dict[str, Any]]
    unknown_items: int


def _message(error: ValidationError) -> str:
    parts = []
    for e in error.errors()[:_MESSAGES]:
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "; ".join(parts)


def parse_events(raw: Sequence[Any], bundle: ServingBundle, now: float) -> ParsedEvents:
    """Validate each entry of a request's ``events`` (``now``: unix seconds, the default
    timestamp and the reference for "in the future")."""
    events: list[Event] = []
    rejected: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        try:
            event = EventIn.model_validate(item)
        except ValidationError as e:
            rejected.append({"index": index, **envelope("invalid_input", _message(e))})
            continue
        timestamp = now if event.timestamp is None else event.timestamp
        if timestamp > now + MAX_FUTURE_S:
            message = (
                f"timestamp: {timestamp:.0f} is more than {MAX_FUTURE_S:.0f} s after the "
                f"server's clock ({now:.0f})"
            )
            rejected.append({"index": index, **envelope("invalid_input", message)})
            continue
        events.append(
            Event(
                user_id=bundle.user_ids.canonical(event.user_id),
                item_id=bundle.item_ids.canonical(event.item_id),
                timestamp=timestamp,
                type=event.type,
            )
        )
    unknown = 0
    if events:
        unknown = int((bundle.item_ids.rows([e.item_id for e in events]) < 0).sum())
    return ParsedEvents(events, rejected, unknown)
