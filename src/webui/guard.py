"""An ASGI middleware that decides who is calling from the headers, before the body.

FastAPI reads a JSON body before it resolves dependencies, so an authentication
dependency runs only after the whole body arrived: an anonymous `POST /search`
declaring 100 MB made the server wait for it. Here `/api/` requests are
authenticated and rate-limited (`webui.auth`, `webui.limits`) before anything
reads the body; the user goes in `scope["state"]["user"]` for
`webui.deps.get_current_user`. The body itself is capped by FastAPI's
`max_body_size` (see `webui.app`), counted as the app reads it.

Errors are answered with the app's exception handlers (503 for a database outage,
and so on): a middleware sits outside FastAPI's exception handling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from webui.auth import authenticate
from webui.state import AppState


class RequestGuard:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.sluice
        headers = Headers(scope=scope)
        try:
            if scope["path"].startswith("/api/"):
                peer = scope["client"][0] if scope.get("client") else ""
                user = await authenticate(state, headers, peer)
                await state.limits.check_user(user.id)
                scope.setdefault("state", {})["user"] = user
        except Exception as exc:
            await _handled(scope, receive, send, exc)
            return
        await self.app(scope, receive, send)


async def _handled(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer `exc` with the app's handler for it, as FastAPI would inside a route."""
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Any]]] = (
        scope["app"].exception_handlers
    )
    for cls in type(exc).__mro__:
        if cls in handlers:
            response = await handlers[cls](Request(scope, receive), exc)
            await response(scope, receive, send)
            return
    raise exc
