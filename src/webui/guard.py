"""An ASGI middleware that decides who is calling from the headers, before the body.

FastAPI reads a JSON body before it resolves dependencies, so an authentication
dependency runs only after the whole body arrived: an anonymous `POST /search`
declaring 100 MB made the server wait for it. Here `/api/` requests are
authenticated and rate-limited (`webui.auth`, `webui.limits`) before anything
reads the body; the user goes in `scope["state"]["user"]` for
`webui.deps.get_current_user`.

Then every body except the upload's is capped at MAX_REQUEST_BODY_KB: a declared
length over it is refused at once, a chunked one as soon as it passes it (413,
JSON). The upload route streams and counts its own (`webui.receive`). Not
Starlette's RequestBodyLimitMiddleware (FastAPI `max_body_size`): it answers
text/plain, and replaces any response to an over-long request with its own 413,
so an anonymous caller learned the limit instead of getting the 401.

Errors are answered with the app's exception handlers (503 for a database outage,
and so on): a middleware sits outside FastAPI's exception handling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.admission import arrival, mark_arrival
from webui.auth import authenticate
from webui.errors import ApiError
from webui.state import AppState

UPLOAD = ("POST", "/api/v1/files")
# Bodies their routes stream and count themselves (webui.receive, webui.loader).
STREAMED = {UPLOAD, ("PUT", "/process")}
# Open WebUI's endpoints (routes/openwebui.py) live outside /api/ at the paths it calls.
OPENWEBUI_PATHS = ("/v1/", "/process")
# Public like /openapi.json, which it is a filtered copy of (webui.tool_server).
PUBLIC = {"/api/v1/openwebui/tools.json"}
SESSION_PROBE = "/api/v1/session"  # the one /api/ path a signed-out caller may ask


class RequestGuard:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mark_arrival(scope)
        state: AppState = scope["app"].state.sluice
        headers = Headers(scope=scope)
        try:
            if _needs_caller(scope["path"]):
                peer = scope["client"][0] if scope.get("client") else ""
                try:
                    async with _turn(state, scope):
                        user = await authenticate(state, headers, peer)
                        await state.limits.check_user(user.id)
                except ApiError as err:
                    if scope["path"] != SESSION_PROBE or err.status != 401:
                        raise
                    # The page's sign-in probe answers 200 signed out (webui.routes.me).
                    scope["state"]["auth_refusal"] = err.detail
                else:
                    scope["state"]["user"] = user
            if (scope["method"], scope["path"]) not in STREAMED:
                receive = await _capped(receive, headers, _body_limit(scope["path"], state))
        except Exception as exc:
            await _handled(scope, receive, send, exc)
            return
        await self.app(scope, receive, send)


def _turn(state: AppState, scope: Scope) -> AbstractAsyncContextManager[None]:
    """An upload authenticates in its turn (`webui.admission`); other requests at once."""
    if (scope["method"], scope["path"]) == UPLOAD:
        return state.admission.slot(arrival(scope))
    return nullcontext()


def _needs_caller(path: str) -> bool:
    if path in PUBLIC:
        return False
    return path.startswith("/api/") or path.startswith(OPENWEBUI_PATHS)


def _body_limit(path: str, state: AppState) -> int:
    """MAX_REQUEST_BODY_KB, or for /v1/embeddings what its own limits allow (inputs ×
    characters, 4 bytes each in UTF-8 at worst): it answers those with a sentence."""
    settings = state.settings
    if path == "/v1/embeddings":
        allowed = settings.openai_embed_max_inputs * settings.openai_embed_max_chars * 4 + 65_536
        return max(settings.max_request_body_bytes, allowed)
    return settings.max_request_body_bytes


async def _capped(receive: Receive, headers: Headers, limit: int) -> Receive:
    """The body, read whole (it is at most `limit` bytes) and replayed to the app."""
    declared = headers.get("content-length")
    if declared is None and "chunked" not in headers.get("transfer-encoding", "").lower():
        return receive  # no body: leave `receive` alone (it later reports the disconnect)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)  # the client went away: let the app see it
        body += message.get("body", b"")
        if len(body) > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            break
    return _replay([{"type": "http.request", "body": bytes(body), "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large",
                    f"the request body is larger than {limit // 1024} KB; send less at once")


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
