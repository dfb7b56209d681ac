"""JSON errors a person can act on: `{"detail": "...", "code": "..."}`.

Outages of Postgres or Redis answer 503 with Retry-After, never 500: the
request can simply be tried again.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("sluice.webui")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


# Refusals that may leave the request body unread. The connection is closed after
# them: a client that waits `Retry-After` then starts afresh, instead of reusing a
# connection the server is about to drop (uvicorn's keep-alive is 5 s), and the
# unread body is never parsed as a next request.
_REFUSED_UNREAD = frozenset({401, 413, 415, 429})


_HTTP_ERRORS = {
    404: ("not_found", "there is no such page or API endpoint; see /docs"),
    405: ("method_not_allowed", "this endpoint does not accept that HTTP method; see /docs"),
    413: ("body_too_large", "the request body is too large; send less at once"),
}


def not_found(what: str = "file") -> ApiError:
    # Another user's id answers exactly like a missing one: no hint that it exists.
    return ApiError(404, "not_found", f"{what} not found")


def _json(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
          **extra: object) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code, **extra}, status, headers=headers)


def _unavailable(detail: str) -> JSONResponse:
    return _json(503, "service_unavailable", detail, {"Retry-After": "5", "Connection": "close"})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        headers = err.headers
        if err.status in _REFUSED_UNREAD:
            headers = {**(headers or {}), "Connection": "close"}
        return _json(err.status, err.code, err.detail, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        # Raised by Starlette/FastAPI themselves: unknown path, wrong method, body over
        # MAX_REQUEST_BODY_KB. Same shape as ours, with a sentence.
        code, detail = _HTTP_ERRORS.get(err.status_code, ("http_error", str(err.detail)))
        headers = dict(err.headers or {})
        if err.status_code in _REFUSED_UNREAD:
            headers["Connection"] = "close"
        return _json(err.status_code, code, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for e in err.errors():
            loc = list(e.get("loc", ()))
            if loc and loc[0] in ("body", "query", "path", "header"):
                loc = loc[1:]  # where it came from is noise; the field name is not
            where = ".".join(str(p) for p in loc)
            problems.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return _json(422, "invalid_request", "; ".join(problems) or "invalid request",
                     errors=[{"loc": e.get("loc"), "msg": e.get("msg")} for e in err.errors()])

    @app.exception_handler(PoolTimeoutError)
    async def _pool_timeout(_: Request, err: PoolTimeoutError) -> JSONResponse:
        log.warning("db.pool_timeout error=%s", err)
        return _unavailable("the database is busy; try again shortly")

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _db_down(_: Request, err: DBAPIError) -> JSONResponse:
        log.warning("db.unavailable error=%s", type(err.orig).__name__ if err.orig else err)
        return _unavailable("the database is unavailable; try again shortly")

    @app.exception_handler(DBAPIError)
    async def _db_error(request: Request, err: DBAPIError) -> JSONResponse:
        # 08xxx connection failures and 57P0x (shutting down, starting up) reach us from
        # asyncpg as plain DBAPIError, e.g. while Postgres restarts.
        sqlstate = str(getattr(err.orig, "sqlstate", None) or "")
        if err.connection_invalidated or sqlstate.startswith(("08", "57P")):
            return _unavailable("the database connection was lost; try again shortly")
        raise err

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(_: Request, err: RedisError) -> JSONResponse:
        log.warning("redis.unavailable error=%s", err)
        return _unavailable("the queue is unavailable; try again shortly")

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        # A bug: the detail goes to the log under an id the person can quote, not to them.
        incident = uuid.uuid4().hex[:12]
        log.error("webui.unhandled incident=%s method=%s path=%s", incident, request.method,
                  request.url.path, exc_info=err)
        return _json(500, "internal_error",
                     f"something went wrong on our side; try again, "
                     f"and if it keeps happening give the operator this reference: {incident}",
                     # uvicorn drops the connection after an unhandled error: say so, or
                     # the client's next request on it meets a reset.
                     {"Connection": "close"}, incident=incident)

    @app.exception_handler(ConnectionError)
    @app.exception_handler(OSError)
    async def _os_down(_: Request, err: OSError) -> JSONResponse:
        log.warning("backend.unavailable error=%s", err)
        return _unavailable("a backing service is unavailable; try again shortly")
