"""FastAPI dependencies: the app state, one DB session per request, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState

from shared.models import User
from webui.errors import ApiError
from webui.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.sluice
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def _track_writes(session: AsyncSession) -> None:
    """Mark the session when it flushes or executes a write, clear it on commit/rollback."""
    sync = session.sync_session

    def wrote(*_: object) -> None:
        sync.info["uncommitted_writes"] = True

    def settled(*_: object) -> None:
        sync.info.pop("uncommitted_writes", None)

    def dml(state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            wrote()

    event.listen(sync, "after_flush", wrote)
    event.listen(sync, "do_orm_execute", dml)
    event.listen(sync, "after_commit", settled)
    event.listen(sync, "after_rollback", settled)


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One session per request. It never commits: the use case commits at its end,
    before it returns, so a write is durable before its 2xx leaves and a failed
    commit is an error response, never a 2xx.

    Function-scoped (see `SessionDep`): closed when the route returns, before the
    response is sent, so a download or stream holds no pooled connection. A write
    left uncommitted is a bug; it is rolled back and answered 500 rather than
    silently lost after a 2xx.
    """
    async with state.session_factory() as session:
        _track_writes(session)
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        if session.new or session.dirty or session.deleted or session.sync_session.info.get(
            "uncommitted_writes"
        ):
            await session.rollback()
            raise UncommittedWrite("a route wrote to the database without committing")


class UncommittedWrite(RuntimeError):
    """A programming error: every write use case ends with `await session.commit()`."""


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_current_user(request: Request) -> User:
    """The caller, authenticated by `webui.guard.RequestGuard` from the headers
    before any body was read (FastAPI reads a body before resolving dependencies)."""
    user: User | None = request.scope.get("state", {}).get("user")
    if user is None:  # a route outside /api/ asked for a user: a wiring mistake
        raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'",
                       {"WWW-Authenticate": "Bearer"})
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        # Not 403-with-details: the admin API simply does not exist for others.
        raise ApiError(404, "not_found", "not found")
    return user


AdminUser = Annotated[User, Depends(get_admin)]
