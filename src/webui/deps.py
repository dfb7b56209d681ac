"""FastAPI dependencies: the app state, one DB session per request, the caller."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import ApiKey, User
from shared.security import key_matches, split_prefix
from webui.errors import ApiError
from webui.limits import check_rate
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


async def _user_from_key(state: AppState, token: str) -> User:
    prefix = split_prefix(token)
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
        if row is None or not key_matches(token, row.ApiKey.key_hash):
            raise _unauthorized("the API key is not valid")
        key: ApiKey = row.ApiKey
        user: User = row.User
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            raise _unauthorized("the API key has been revoked or has expired")
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            # Bookkeeping, not a record: concurrent requests with one key skip the row
            # another is already updating (instead of queueing on its lock while each
            # holds a pooled connection), and nobody waits for the WAL flush.
            await session.execute(text("SET LOCAL synchronous_commit = off"))
            locked = (select(ApiKey.id).where(ApiKey.id == key.id)
                      .with_for_update(skip_locked=True).scalar_subquery())
            await session.execute(
                update(ApiKey).where(ApiKey.id == locked, or_(
                    ApiKey.last_used_at.is_(None),
                    ApiKey.last_used_at < now - _LAST_USED_RESOLUTION))
                .values(last_used_at=now))
            await session.commit()
    return user


def _forwarded_email(request: Request, state: AppState) -> str | None:
    """The oauth-proxy's user header, only if enabled and sent by the proxy itself."""
    settings = state.settings
    if not settings.trust_forwarded_user:
        return None  # a forged header is simply ignored
    value = request.headers.get(settings.forwarded_user_header, "").strip().lower()
    peer = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if not value or not any(address in net for net in settings.trusted_proxy_networks):
        return None
    return value


async def _user_from_proxy(state: AppState, email: str) -> User:
    """The user the proxy vouches for, created on first sight."""
    async with state.session_factory() as session:
        await session.execute(
            pg_insert(User).values(id=uuid.uuid4(), email=email, name=email.split("@")[0])
            .on_conflict_do_nothing(index_elements=[User.email])
        )
        user: User | None = await session.scalar(select(User).where(User.email == email))
        await session.commit()
    if user is None:  # pragma: no cover - the insert above guarantees a row
        raise _unauthorized("could not resolve the forwarded user")
    return user


async def get_current_user(request: Request, state: StateDep) -> User:
    """The caller: `Authorization: Bearer <key>`, or the trusted proxy's user header.

    Uses its own short session, closed before the route runs: an upload that
    streams for minutes, or an event stream that stays open for hours, must not
    hold a pooled database connection while it does. The per-user rate limit is
    checked here, before any other work.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        user = await _user_from_key(state, token.strip())
    elif (email := _forwarded_email(request, state)) is not None:
        user = await _user_from_proxy(state, email)
    else:
        raise _unauthorized("send an API key as 'Authorization: Bearer <key>'")
    if not user.is_active:
        raise _unauthorized("this account is disabled")
    await check_rate(state.aredis, user.id, state.settings.rate_limit_per_minute)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        # Not 403-with-details: the admin API simply does not exist for others.
        raise ApiError(404, "not_found", "not found")
    return user


AdminUser = Annotated[User, Depends(get_admin)]
