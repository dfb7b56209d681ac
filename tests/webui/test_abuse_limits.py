"""Failed sign-ins limited per address across replicas, the quota under concurrent
uploads, and the upload volume refusing writes. In-process apps (real lifespan:
real Postgres, Redis and model) with non-default settings."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from shared.settings import Settings
from tests.support.stack import make_user
from tests.webui.test_accounts_and_limits import app_client, bearer


async def test_failed_sign_ins_are_limited_per_address_across_replicas(
    settings: Settings, db_engine: Engine
) -> None:
    """Before: a well-formed wrong key cost a database query, without limit."""
    user = make_user(db_engine, "signin")
    wrong = {"Authorization": f"Bearer slk_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}"}
    attacker = f"10.66.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    async with app_client(settings, peer=attacker, auth_failures_per_minute=5) as a, \
            app_client(settings, peer=attacker, auth_failures_per_minute=5) as b:
        codes = [(await a.get("/api/v1/me", headers=wrong)).status_code for _ in range(3)]
        codes += [(await b.get("/api/v1/me", headers=wrong)).status_code for _ in range(2)]
        assert codes == [401] * 5
        refused = await b.get("/api/v1/me", headers=wrong)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "failed sign-in" in refused.json()["detail"]
        assert (await a.get("/api/v1/me", headers=bearer(user))).status_code == 429
    async with app_client(settings, peer="10.1.2.3", auth_failures_per_minute=5) as c:
        assert (await c.get("/api/v1/me", headers=bearer(user))).status_code == 200


async def test_concurrent_uploads_cannot_pass_the_quota(
    settings: Settings, db_engine: Engine
) -> None:
    """Before: each upload checked the quota, then inserted; ten at once all passed."""
    user = make_user(db_engine, "racer")
    size = 300 * 1024  # 3 fit in 1 MB, not 4

    async with app_client(settings, user_quota_mb=1, uploads_in_flight_per_user=20) as c:
        answers = await asyncio.gather(*(
            c.post("/api/v1/files", headers=bearer(user),
                   files={"file": (f"q{i}.txt", uuid.uuid4().hex.encode() * (size // 32))})
            for i in range(10)
        ))
        with db_engine.connect() as conn:
            stored = conn.execute(text("SELECT sum(size_bytes) FROM files WHERE owner_id = :u"),
                                  {"u": user.id}).scalar()
        for r in answers:  # their jobs become no-ops: no backlog for the suite's worker
            if r.status_code == 202:
                await c.delete(f"/api/v1/files/{r.json()['id']}", headers=bearer(user))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 3 + [413] * 7, codes
    assert stored is not None and stored <= 1024 * 1024


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A 256 KB tmpfs: a full disk for real (ENOSPC), not an imitation of one."""
    mount = tmp_path / "volume"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _metric(text_: str, name: str, reason: str) -> float:
    for line in text_.splitlines():
        if line.startswith(f'{name}_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_full_upload_volume_is_507_with_a_metric(
    settings: Settings, db_engine: Engine, tiny_volume: Path
) -> None:
    """Before: ENOSPC answered "503, try again", as if a backing service were down."""
    user = make_user(db_engine, "diskfull")
    async with app_client(settings, upload_dir=tiny_volume, max_upload_mb=2) as c:
        r = await c.post("/api/v1/files", headers=bearer(user),
                         files={"file": ("big.txt", b"full disk\n" * 60_000)})
        assert r.status_code == 507, r.text
        assert r.json()["code"] == "storage_full" and "full" in r.json()["detail"]
        app = c._transport.app  # type: ignore[attr-defined]
        metrics = _exposition(app)
    assert _metric(metrics, "sluice_upload_storage_errors", "full") == 1
    assert not list((tiny_volume / ".incoming").glob("*.part"))  # nothing left behind


async def test_unwritable_upload_volume_is_500_with_a_metric(
    settings: Settings, db_engine: Engine, tmp_path: Path
) -> None:
    user = make_user(db_engine, "unwritable")
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / ".incoming").write_text("a file where the folder should be")
    async with app_client(settings, upload_dir=volume) as c:
        r = await c.post("/api/v1/files", headers=bearer(user),
                         files={"file": ("a.txt", f"x {uuid.uuid4()}".encode())})
        assert r.status_code == 500, r.text
        assert r.json()["code"] == "storage_error" and "operator" in r.json()["detail"]
        metrics = _exposition(c._transport.app)  # type: ignore[attr-defined]
    assert _metric(metrics, "sluice_upload_storage_errors", "unwritable") == 1


def _exposition(app: object) -> str:
    from prometheus_client import generate_latest

    return generate_latest(app.state.sluice.metrics.registry).decode()  # type: ignore[attr-defined]
