"""Who is calling: `Authorization: Bearer <key>`, or the trusted proxy's user header.

Called by `webui.guard` before any body is read. Uses its own short session: an
upload that streams for minutes, or an event stream that stays open for hours,
must not hold a pooled database connection while it does. Failed attempts are
counted per client address (`RateLimits.check_auth_failures`).
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from starlette.datastructures import Headers

from shared.models import ApiKey, User
from shared.security import key_matches, split_prefix
from shared.settings import Settings
from webui.errors import ApiError
from webui.state import AppState

_LAST_USED_RESOLUTION = timedelta(minutes=1)


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})


def client_address(settings: Settings, headers: Headers, peer: str) -> str:
    """The caller's address: the peer, or, when the peer is a trusted proxy (the
    router, the oauth-proxy sidecar), the last address it appended to X-Forwarded-For."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if any(address in net for net in settings.trusted_proxy_networks):
        forwarded = headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
        if forwarded:
            return forwarded
    return peer


async def authenticate(state: AppState, headers: Headers, peer: str) -> User:
    """The active user behind this request, or a 401/429 `ApiError`."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        address = client_address(state.settings, headers, peer)
        try:
            await state.limits.check_auth_failures(address)
        except ApiError:
            state.metrics.auth_failures.labels(outcome="rate_limited").inc()
            raise
        try:
            user = await _user_from_key(state, token.strip())
        except ApiError:
            state.metrics.auth_failures.labels(outcome="refused").inc()
            await state.limits.auth_failed(address)
            raise
    elif (email := _forwarded_email(state.settings, headers, peer)) is not None:
        user = await _user_from_proxy(state, email)
    else:
        raise _unauthorized("send an API key as 'Authorization: Bearer <key>'")
    if not user.is_active:
        raise _unauthorized("this account is disabled")
    return user


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


def _forwarded_email(settings: Settings, headers: Headers, peer: str) -> str | None:
    """The oauth-proxy's user header, only if enabled and sent by the proxy itself."""
    if not settings.trust_forwarded_user:
        return None  # a forged header is simply ignored
    value = headers.get(settings.forwarded_user_header, "").strip().lower()
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
