"""`GET /api/v1/me`: who the caller is. `GET /api/v1/session`: the page's sign-in probe."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from pydantic import BaseModel

from webui.deps import CurrentUser, StateDep

router = APIRouter(tags=["account"])


class Me(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    is_admin: bool
    max_upload_mb: int


class SessionProbe(BaseModel):
    signed_in: bool
    reason: str | None = None
    me: Me | None = None


@router.get("/me", response_model=Me)
async def me(user: CurrentUser, state: StateDep) -> Me:
    return Me(id=user.id, email=user.email, name=user.name, is_admin=user.is_admin,
              max_upload_mb=state.settings.max_upload_mb)


@router.get("/session", response_model=SessionProbe)
async def session_probe(request: Request, state: StateDep) -> SessionProbe:
    """Whether the caller is signed in (key, or the oauth-proxy's user header), always 200.

    The page asks this on every load: a signed-out visitor is the normal case
    there, not an error, and a 401 would show as an error in every visitor's
    console. `reason` says why a key that was sent is not accepted. Rate limits
    still answer 429.
    """
    user = request.scope.get("state", {}).get("user")
    if user is None:  # the guard let the probe through signed out (webui.guard)
        refusal = request.scope.get("state", {}).get("auth_refusal")
        sent_key = bool(request.headers.get("authorization", "").strip())
        return SessionProbe(signed_in=False, reason=refusal if sent_key else None)
    return SessionProbe(signed_in=True, me=await me(user, state))
