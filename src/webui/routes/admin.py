"""Admin API: users, their keys, and every user's files. Answers 404 to non-admins."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from shared.dispatch import BACKLOG_SQL
from shared.models import ApiKey, File, User
from shared.reembed import progress
from shared.security import generate_api_key
from webui.deps import AdminUser, SessionDep
from webui.errors import ApiError, not_found
from webui.schemas import FileList, FileRead, Status

router = APIRouter(prefix="/admin", tags=["admin"])
# Each write below ends with its commit, before it returns: the answer is sent only
# once the change is durable (see `webui.deps.get_session`).


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    email: str
    name: str
    is_admin: bool
    is_active: bool
    created_at: datetime


class UserCreate(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    name: str = Field(default="", max_length=200)
    is_admin: bool = False


class UserUpdate(BaseModel):
    is_active: bool | None = None
    is_admin: bool | None = None
    name: str | None = Field(default=None, max_length=200)


class KeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreate(BaseModel):
    name: str = Field(default="", max_length=200)
    expires_at: datetime | None = None


class KeyCreated(KeyRead):
    key: str = Field(description="the full key; shown only this once")


async def _user(session: SessionDep, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise not_found("user")
    return user


@router.get("/users", response_model=list[UserRead])
async def list_users(session: SessionDep, _: AdminUser) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.created_at)))


@router.post("/users", status_code=201, response_model=UserRead)
async def create_user(body: UserCreate, session: SessionDep, _: AdminUser) -> User:
    user = User(email=str(body.email).lower(), name=body.name or str(body.email).split("@")[0],
                is_admin=body.is_admin)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise ApiError(409, "exists", f"a user with email {body.email} already exists") from None
    await session.refresh(user)
    await session.commit()
    return user


@router.patch("/users/{user_id}", response_model=UserRead)
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, session: SessionDep, admin: AdminUser
) -> User:
    user = await _user(session, user_id)
    if user.id == admin.id and (body.is_active is False or body.is_admin is False):
        raise ApiError(409, "self_lockout", "you cannot disable or demote your own account")
    for field, value in body.model_dump(exclude_none=True).items():
        setattr(user, field, value)
    await session.flush()
    await session.refresh(user)
    await session.commit()  # a disabled account is refused from the moment this 200 leaves
    return user


@router.get("/users/{user_id}/keys", response_model=list[KeyRead])
async def list_keys(user_id: uuid.UUID, session: SessionDep, _: AdminUser) -> list[ApiKey]:
    await _user(session, user_id)
    return list(await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at)
    ))


@router.post("/users/{user_id}/keys", status_code=201, response_model=KeyCreated)
async def create_key(
    user_id: uuid.UUID, body: KeyCreate, session: SessionDep, _: AdminUser
) -> KeyCreated:
    await _user(session, user_id)
    key, prefix, key_hash = generate_api_key()
    row = ApiKey(user_id=user_id, name=body.name, prefix=prefix, key_hash=key_hash,
                 expires_at=body.expires_at)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    await session.commit()  # the key works from the moment its 201 leaves
    return KeyCreated(**KeyRead.model_validate(row).model_dump(), key=key)


@router.delete("/keys/{key_id}", response_model=KeyRead)
async def revoke_key(key_id: uuid.UUID, session: SessionDep, _: AdminUser) -> ApiKey:
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise not_found("key")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.commit()  # refused from the moment this 200 leaves
    return row


@router.get("/files", response_model=FileList)
async def list_all_files(
    session: SessionDep, _: AdminUser,
    status: Annotated[Status | None, Query()] = None,
    owner_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> FileList:
    """Every user's files and their status (admins only)."""
    where = []
    if status is not None:
        where.append(File.status == status)
    if owner_id is not None:
        where.append(File.owner_id == owner_id)
    total = await session.scalar(select(func.count()).select_from(File).where(*where)) or 0
    rows = await session.scalars(
        select(File).where(*where).order_by(File.created_at.desc(), File.id).limit(limit).offset(offset)
    )
    return FileList(items=[FileRead.model_validate(f) for f in rows], total=total, limit=limit,
                    offset=offset)


class BacklogRead(BaseModel):
    owner_id: uuid.UUID
    email: str | None
    pending: int = Field(description="units waiting in Postgres (including retries not yet due)")
    dispatched: int = Field(description="units handed to the queue, not yet taken by a worker")
    running: int
    oldest_pending_at: datetime | None


@router.get("/backlog", response_model=list[BacklogRead])
async def backlog(session: SessionDep, _: AdminUser) -> list[BacklogRead]:
    """Work waiting or running per user (units: a file's parse, then its segments)."""
    rows = (await session.execute(BACKLOG_SQL)).all()
    emails = dict((await session.execute(
        select(User.id, User.email).where(User.id.in_([r.owner_id for r in rows]))
    )).tuples().all()) if rows else {}
    return [BacklogRead(owner_id=r.owner_id, email=emails.get(r.owner_id), pending=r.pending,
                        dispatched=r.dispatched, running=r.running,
                        oldest_pending_at=r.oldest_pending_at) for r in rows]


class ReembedRead(BaseModel):
    state: str  # idle | running | done | cancelled
    active_space: str | None
    target_space: str | None
    backend: str | None
    started_at: str | None
    finished_at: str | None
    chunks_total: int
    chunks_done: int
    files_total: int
    files_done: int
    units: dict[str, int]


@router.get("/reembed", response_model=ReembedRead)
async def reembed_progress(session: SessionDep, _: AdminUser) -> dict[str, Any]:
    """The background re-embed (README, "Switching the encoder"): state (idle | running |
    done | cancelled), active and target space, chunks and files done / total, units by state."""
    return (await session.run_sync(progress)).as_dict()  # the same reads as `sluice reembed status`
