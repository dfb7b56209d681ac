"""Accounts (admin API, CLI, keys), the trusted-proxy mode, and per-user limits.

Limits and the proxy mode need non-default settings, so these tests run the
webui app in-process (its real lifespan: real Postgres, Redis and model) with
`httpx.ASGITransport`, which also lets a test choose the peer address.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, text

from shared.settings import Settings
from tests.support.helpers import upload
from tests.support.stack import ApiUser, Stack, make_user
from webui.app import create_app


@asynccontextmanager
async def app_client(
    settings: Settings, peer: str = "127.0.0.1", **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update=overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice", timeout=30) as c:
            yield c


def bearer(user: ApiUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.key}"}


def _admin(db_engine: Engine) -> ApiUser:
    admin = make_user(db_engine, "admin")
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE users SET is_admin = true WHERE id = :i"), {"i": admin.id})
    return admin


def test_admin_manages_users_and_keys(stack: Stack, db_engine: Engine) -> None:
    admin = _admin(db_engine)
    email = f"new-{uuid.uuid4().hex[:8]}@example.test"
    with httpx.Client(base_url=stack.url, headers=bearer(admin)) as c:
        user = c.post("/api/v1/admin/users", json={"email": email, "name": "New"}).json()
        assert user["email"] == email and not user["is_admin"] and user["is_active"]
        assert c.post("/api/v1/admin/users", json={"email": email}).status_code == 409
        assert c.post("/api/v1/admin/users", json={"email": "not-an-email"}).status_code == 422
        created = c.post(f"/api/v1/admin/users/{user['id']}/keys", json={"name": "ci"}).json()
        key = created["key"]
        assert key.startswith(f"slk_{created['prefix']}_")
        listed = c.get(f"/api/v1/admin/users/{user['id']}/keys").json()
        assert [k["prefix"] for k in listed] == [created["prefix"]]
        assert all("key" not in k and "key_hash" not in k for k in listed)  # shown once only

        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}) as u:
            assert u.get("/api/v1/me").json()["email"] == email
            fid = upload(u, "x.txt", f"admin sees this {uuid.uuid4()}".encode()).json()["id"]
            all_files = c.get("/api/v1/admin/files", params={"owner_id": user["id"]}).json()
            assert [f["id"] for f in all_files["items"]] == [fid]
            assert c.get(f"/api/v1/admin/users/{user['id']}/keys").json()[0]["last_used_at"]

            assert c.delete(f"/api/v1/admin/keys/{created['id']}").json()["revoked_at"]
            r = u.get("/api/v1/me")
            assert r.status_code == 401 and "revoked" in r.json()["detail"]

        key2 = c.post(f"/api/v1/admin/users/{user['id']}/keys", json={}).json()["key"]
        assert c.patch(f"/api/v1/admin/users/{user['id']}", json={"is_active": False}).status_code == 200
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key2}"}) as u:
            r = u.get("/api/v1/files")
            assert r.status_code == 401 and "disabled" in r.json()["detail"]
        r = c.patch(f"/api/v1/admin/users/{admin.id}", json={"is_active": False})
        assert r.status_code == 409


def test_expired_key_is_refused(stack: Stack, db_engine: Engine) -> None:
    user = make_user(db_engine, "expiring")
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET expires_at = :t WHERE user_id = :u"),
                     {"t": datetime.now(UTC) - timedelta(seconds=1), "u": user.id})
    r = httpx.get(f"{stack.url}/api/v1/me", headers=bearer(user))
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_cli_users_and_keys(env: dict[str, str], db_engine: Engine) -> None:
    email = f"cli-{uuid.uuid4().hex[:8]}@example.test"

    def sluice(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shared.cli", *args], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60, check=False)

    assert sluice("users", "create", "--email", email).returncode == 0
    assert email in sluice("users", "list").stdout
    made = sluice("keys", "create", "--email", email)
    assert made.returncode == 0 and "shown only this once" in made.stderr
    key = made.stdout.strip()
    prefix = key.split("_")[1]
    assert prefix in sluice("keys", "list").stdout and key not in sluice("keys", "list").stdout
    assert sluice("users", "disable", email).returncode == 0
    with db_engine.connect() as conn:
        active = conn.execute(text("SELECT is_active FROM users WHERE email=:e"), {"e": email}).scalar()
    assert active is False
    assert sluice("keys", "revoke", prefix).returncode == 0
    assert sluice("users", "disable", "nobody@example.test").returncode == 1


async def test_forged_forwarded_user_is_ignored_by_default(settings: Settings) -> None:
    async with app_client(settings) as c:
        r = await c.get("/api/v1/me", headers={"X-Forwarded-Email": "mallory@example.test"})
    assert r.status_code == 401


async def test_forwarded_user_trusted_only_from_the_proxy(settings: Settings, db_engine: Engine) -> None:
    email = f"proxy-{uuid.uuid4().hex[:8]}@example.test"
    headers = {"X-Forwarded-Email": email}
    async with app_client(settings, trust_forwarded_user=True, trusted_proxies="127.0.0.1/32") as c:
        r = await c.get("/api/v1/me", headers=headers)
        assert r.status_code == 200 and r.json()["email"] == email  # created on first sight
        assert (await c.get("/api/v1/me", headers=headers)).json()["id"] == r.json()["id"]
    async with app_client(settings, peer="10.9.8.7", trust_forwarded_user=True,
                          trusted_proxies="127.0.0.1/32") as c:
        assert (await c.get("/api/v1/me", headers=headers)).status_code == 401


async def test_rate_limit_stops_a_flood_without_slowing_others(
    settings: Settings, db_engine: Engine
) -> None:
    flooder, other = make_user(db_engine, "flood"), make_user(db_engine, "calm")
    async with app_client(settings, rate_limit_per_minute=20) as c:
        flood = await asyncio.gather(*(c.get("/api/v1/files", headers=bearer(flooder))
                                       for _ in range(40)))
        codes = [r.status_code for r in flood]
        assert codes.count(200) == 20 and codes.count(429) == 20
        limited = next(r for r in flood if r.status_code == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        assert "per minute" in limited.json()["detail"]
        for _ in range(10):
            assert (await c.get("/api/v1/files", headers=bearer(other))).status_code == 200


async def test_quota_refuses_with_413_and_leaves_nothing(settings: Settings, db_engine: Engine) -> None:
    user = make_user(db_engine, "quota")
    big = b"quota test line\n" * 40_000  # ~640 KB
    async with app_client(settings, user_quota_mb=1) as c:
        r = await c.post("/api/v1/files", headers=bearer(user),
                         files={"file": ("a.txt", big + uuid.uuid4().bytes)})
        assert r.status_code == 202
        before = {p for p in settings.upload_dir.rglob("*") if p.is_file()}
        r = await c.post("/api/v1/files", headers=bearer(user),
                         files={"file": ("b.txt", big + uuid.uuid4().bytes)})
        assert r.status_code == 413 and r.json()["code"] == "quota_exceeded"
        assert "delete" in r.json()["detail"]
    after = {p for p in settings.upload_dir.rglob("*") if p.is_file()}
    assert after <= before


async def test_uploads_in_flight_are_capped_per_user(settings: Settings, db_engine: Engine) -> None:
    user, other = make_user(db_engine, "inflight"), make_user(db_engine, "inflight2")
    release = asyncio.Event()
    boundary = "sluiceboundary"

    async def slow_body() -> AsyncIterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.txt\"\r\n"
               f"Content-Type: text/plain\r\n\r\n").encode()
        yield b"slow upload " + uuid.uuid4().hex.encode()
        await release.wait()
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**bearer(user), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with app_client(settings, uploads_in_flight_per_user=1) as c:
        first = asyncio.create_task(c.post("/api/v1/files", headers=headers, content=slow_body()))
        await asyncio.sleep(0.5)
        second = await c.post("/api/v1/files", headers=bearer(user),
                              files={"file": ("t.txt", uuid.uuid4().bytes)})
        assert second.status_code == 429 and second.headers["Retry-After"]
        assert "in progress" in second.json()["detail"]
        ok = await c.post("/api/v1/files", headers=bearer(other),
                          files={"file": ("o.txt", f"other {uuid.uuid4()}".encode())})
        assert ok.status_code == 202
        release.set()
        assert (await first).status_code == 202
        again = await c.post("/api/v1/files", headers=bearer(user),
                             files={"file": ("t.txt", f"after {uuid.uuid4()}".encode())})
        assert again.status_code == 202


def test_ten_thousand_parts_are_refused(client: httpx.Client) -> None:
    files = [("f", (None, "x")) for _ in range(10_000)]
    r = client.post("/api/v1/files", files=files)
    assert r.status_code == 400 and r.json()["code"] == "too_many_parts"


@pytest.mark.parametrize("name", ["../../etc/passwd", "a\x00b.txt", "evil\u202etxt.exe.md",
                                  "e\u0301.txt", "line\u2028break\u2029.txt"])
def test_hostile_names_are_cleaned(client: httpx.Client, name: str) -> None:
    r = upload(client, name, f"name test {uuid.uuid4()}".encode())
    assert r.status_code == 202, r.text
    stored = r.json()["filename"]
    assert "/" not in stored and "\x00" not in stored and "\u202e" not in stored
    assert "\u2028" not in stored and "\u2029" not in stored
    assert stored == stored.strip() and len(stored) <= 255
    if name == "e\u0301.txt":
        assert stored == "\u00e9.txt"  # NFC
