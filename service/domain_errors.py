"""The service's domain errors, without HTTP: what went wrong, as a stable code and a
message for the client. :mod:`recall.service.errors` maps each to its HTTP status and the
JSON envelope, in one place::

    RecallError
    ├── InvalidRequest    invalid_input
    ├── UnknownId         not_found
    ├── OverLimit         payload_too_large
    ├── Unauthorized      unauthorized
    ├── Forbidden         forbidden
    ├── BundleNotReady    not_ready
    ├── StateDown         state_unavailable
    └── ReloadRefused     reload_failed

The client (:mod:`recall.client`) has its own exceptions, named for the client.
"""

from __future__ import annotations

ECHO_LIMIT = 64  # characters of a client's id or name echoed in a message


class RecallError(Exception):
    """A request the service refuses or cannot answer; ``message`` is for the client."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RecallError):
    """A query or request the service cannot answer as asked (k, vector, filter, ...)."""

    code = "invalid_input"


class UnknownId(RecallError):
    code = "not_found"


class OverLimit(RecallError):
    """More ids, events, requests or items than a setting allows in one request."""

    code = "payload_too_large"


class Unauthorized(RecallError):
    code = "unauthorized"


class Forbidden(RecallError):
    code = "forbidden"


class BundleNotReady(RecallError):
    """No bundle loaded yet (or nothing published)."""

    code = "not_ready"


class ReloadRefused(RecallError):
    """A reload did not load the bundle CURRENT names; the old one still serves."""

    code = "reload_failed"


class StateDown(RecallError):
    """The state store could not take a write (``POST /v1/events``): the client retries."""

    code = "state_unavailable"


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters + "…" (a 1 MB id must not
    make a 1 MB message)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
