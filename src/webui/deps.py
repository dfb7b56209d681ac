"""FastAPI dependencies: the app state, one DB session per request, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import ApiKey, User
from shared.security import key_matches, split_prefix
from webui.errors import ApiError
from webui.state import AppState

_LAST_USED_RESOLUTION = timedelta(minutes=1)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.sluice
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One session per request; committed here on success, rolled back on error.

    Routes that must act after a commit (enqueue after the file row is durable)
    call `session.commit()` themselves; the commit here is then a no-op.
    """
    async with state.session_factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})


async def get_current_user(request: Request, state: StateDep) -> User:
    """The caller, from `Authorization: Bearer <key>`.

    Uses its own short session, closed before the route runs: an upload that
    streams for minutes, or an event stream that stays open for hours, must not
    hold a pooled database connection while it does.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("send an API key as 'Authorization: Bearer <key>'")
    prefix = split_prefix(token.strip())
    if prefix is None:
        raise _unauthorized("the API key is malformed")
    now = datetime.now(UTC)
    async with state.session_factory() as session:
        row = (
            await session.execute(
                select(ApiKey, User).join(User, User.id == ApiKey.user_id)
                .where(ApiKey.prefix == prefix)
            )
        ).first()
        if row is None or not key_matches(token.strip(), row.ApiKey.key_hash):
            raise _unauthorized("the API key is not valid")
        key: ApiKey = row.ApiKey
        user: User = row.User
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            raise _unauthorized("the API key has been revoked or has expired")
        if not user.is_active:
            raise _unauthorized("this account is disabled")
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
            await session.commit()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def as_dict(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}
