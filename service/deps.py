"""The dependencies of the routes, as ``Annotated`` aliases: a route names what it needs
(``bundle: BundleDep``) and FastAPI supplies it from the app's :class:`AppState`.

Every dependency is ``async`` on purpose: FastAPI runs a plain ``def`` dependency in a
worker thread, a thread hop per request for one attribute read.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request

from recall.service.app_state import AppState
from recall.service.domain_errors import Forbidden, Unauthorized
from recall.service.recaller import ServingBundle
from recall.service.state_access import StateAccess

__all__ = [
    "AdminOnly",
    "AppStateDep",
    "BundleDep",
    "StateDep",
    "app_state_of",
]


def app_state_of(app: FastAPI) -> AppState:
    """The :class:`AppState` :func:`recall.service.app.create_app` gave ``app``."""
    state: AppState = app.state.recall
    return state


async def _app_state(request: Request) -> AppState:
    return app_state_of(request.app)


AppStateDep = Annotated[AppState, Depends(_app_state)]


async def _current_bundle(app: AppStateDep) -> ServingBundle:
    """The bundle this request runs on, taken once: it cannot change under the request."""
    return app.holder.require()


BundleDep = Annotated[ServingBundle, Depends(_current_bundle)]


async def _state_access(app: AppStateDep) -> StateAccess:
    """The state store of this app (opened by the lifespan)."""
    return app.state_access()


StateDep = Annotated[StateAccess, Depends(_state_access)]


async def _require_admin(
    app: AppStateDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Pass with ``Authorization: Bearer <RECALL_ADMIN_TOKEN>``; 403 when the admin API is
    disabled or the token is wrong, 401 without a bearer token."""
    token = app.settings.admin_token
    if token is None:
        raise Forbidden("the admin API is disabled: set RECALL_ADMIN_TOKEN to enable it")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("send Authorization: Bearer <admin token>")
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Forbidden("wrong admin token")


#: ``dependencies=AdminOnly`` on an admin route.
AdminOnly = [Depends(_require_admin)]
