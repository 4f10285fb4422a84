"""Content negotiation for vector lookups: JSON, or a float32 ``.npy`` body when asked.

The rule: ``.npy`` only when the Accept header names ``application/x-npy`` itself with a
q-value above 0 and at least as high as JSON's. JSON's q-value is that of the most
specific range matching it (``application/json``, else ``application/*``, else ``*/*``),
0 if none does. No header, ``*/*``, ``application/*`` or anything unparseable: JSON.
"""

from __future__ import annotations

NPY_MEDIA_TYPE = "application/x-npy"
JSON_MEDIA_TYPE = "application/json"


def _q(params: list[str]) -> float:
    """The q parameter of one media range (1 when absent, 0 when malformed or outside
    [0, 1])."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def media_ranges(accept: str) -> dict[str, float]:
    """``"a/b;q=0.5, c/d"`` -> ``{"a/b": 0.5, "c/d": 1.0}`` (lower-cased; the highest q
    wins when a range repeats)."""
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        if media:
            ranges[media] = max(ranges.get(media, 0.0), _q(params))
    return ranges


def wants_npy(accept: str | None) -> bool:
    """Whether a response to this Accept header should be ``.npy`` (the rule above)."""
    if not accept:
        return False
    ranges = media_ranges(accept)
    npy = ranges.get(NPY_MEDIA_TYPE, 0.0)
    json = next((ranges[m] for m in (JSON_MEDIA_TYPE, "application/*", "*/*") if m in ranges), 0.0)
    return npy > 0.0 and npy >= json
