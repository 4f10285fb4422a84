"""``RawJsonResponse`` sends the status, headers (in order) and body that Starlette's
``Response`` built from the same content and ``X-Bundle-Id`` sends."""

from __future__ import annotations

from starlette.responses import Response

from recall.service.http_common import RawJsonResponse


def test_the_same_response_as_starlettes() -> None:
    content = b'{"bundle_id":"20261207T000000Z-abc","items":[]}'
    ours = RawJsonResponse(content, "20261207T000000Z-abc")
    theirs = Response(
        content, media_type="application/json", headers={"X-Bundle-Id": "20261207T000000Z-abc"}
    )
    assert (ours.status_code, ours.raw_headers, ours.body, ours.background) == (
        theirs.status_code,
        theirs.raw_headers,
        theirs.body,
        theirs.background,
    )
    assert ours.headers["content-length"] == str(len(content))
