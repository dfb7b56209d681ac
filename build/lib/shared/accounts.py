"""Users and API keys (sync; used by the CLI and by `sluice up`)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import ApiKey, User
from shared.security import generate_api_key


def ensure_user(session: Session, email: str, *, name: str = "", is_admin: bool = False) -> User:
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise ValueError(f"not an email address: {email!r}")
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(email=email, name=name or email.split("@")[0], is_admin=is_admin)
        session.add(user)
        session.flush()
    return user


def create_key(session: Session, user: User, *, name: str = "", expires_at: datetime | None = None) -> str:
    """Create a key and return it; this is the only time the full key exists in clear."""
    key, prefix, key_hash = generate_api_key()
    session.add(ApiKey(user_id=user.id, name=name, prefix=prefix, key_hash=key_hash,
                       expires_at=expires_at))
    session.flush()
    return key


def list_keys(session: Session) -> list[tuple[ApiKey, User]]:
    rows = session.execute(
        select(ApiKey, User).join(User, User.id == ApiKey.user_id).order_by(ApiKey.created_at)
    )
    return [(k, u) for k, u in rows.tuples()]


def revoke_key(session: Session, prefix: str) -> bool:
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None:
        return False
    key.revoked_at = datetime.now(UTC)
    return True


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.created_at)))


def set_active(session: Session, email: str, active: bool) -> bool:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        return False
    user.is_active = active
    return True
