"""The request's session never commits by itself: a route that writes and forgets to
commit is answered 500 and its write is rolled back, never a 2xx for a lost write."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import Engine, text, update

from shared.models import User
from shared.settings import Settings
from tests.support.stack import make_user
from webui.app import create_app
from webui.deps import CurrentUser, SessionDep


async def test_a_write_without_commit_is_a_500_and_rolled_back(
    settings: Settings, db_engine: Engine
) -> None:
    user = make_user(db_engine, "forgetful")
    new_name = f"renamed-{uuid.uuid4().hex[:8]}"

    async def forgets_to_commit(session: SessionDep, caller: CurrentUser) -> dict[str, str]:
        await session.execute(update(User).where(User.id == caller.id).values(name=new_name))
        return {"status": "renamed"}

    app = create_app(settings)
    app.add_api_route("/api/v1/test-forgets-to-commit", forgets_to_commit, methods=["POST"])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice") as c:
            r = await c.post("/api/v1/test-forgets-to-commit",
                             headers={"Authorization": f"Bearer {user.key}"})
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    with db_engine.connect() as conn:
        name = conn.execute(text("SELECT name FROM users WHERE id = :i"), {"i": user.id}).scalar()
    assert name != new_name
