"""`GET /api/v1/me`: who the caller is (the page uses it to check a key)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from pydantic import BaseModel

from webui.deps import CurrentUser, StateDep

router = APIRouter(tags=["account"])


class Me(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    is_admin: bool
    max_upload_mb: int


@router.get("/me", response_model=Me)
async def me(user: CurrentUser, state: StateDep) -> Me:
    return Me(id=user.id, email=user.email, name=user.name, is_admin=user.is_admin,
              max_upload_mb=state.settings.max_upload_mb)
