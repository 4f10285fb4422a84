"""HEAD on every GET route (probes: ``HEAD /healthz``): the GET answer without its body.

FastAPI registers ``@app.get`` routes for GET only, so HEAD got 405. This pure ASGI
middleware runs a HEAD request as GET on a copy of the scope and drops the body; status
and headers (Content-Length included) are the GET's. The outer scope keeps ``HEAD`` (the
metrics count it as HEAD) and gets the matched route back.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        inner = {**scope, "method": "GET"}

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(inner, receive, send_without_body)
        finally:
            scope.update((k, v) for k, v in inner.items() if k != "method")
