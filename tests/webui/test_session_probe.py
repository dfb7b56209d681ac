"""`GET /api/v1/session`: the page's sign-in probe answers 200 signed in or not,
so a signed-out visitor's console stays clean; `/me` still answers 401."""

from __future__ import annotations

import httpx

from tests.support.stack import ApiUser, Stack


def test_probe_answers_200_and_says_why(stack: Stack, user: ApiUser) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        anonymous = c.get("/api/v1/session")
        assert anonymous.status_code == 200
        assert anonymous.json() == {"signed_in": False, "reason": None, "me": None}
        wrong = c.get("/api/v1/session", headers={"Authorization": "Bearer slk_000000000000_wrong"})
        assert wrong.status_code == 200
        assert wrong.json()["signed_in"] is False and "not valid" in wrong.json()["reason"]
        good = c.get("/api/v1/session", headers={"Authorization": f"Bearer {user.key}"})
        assert good.status_code == 200
        body = good.json()
        assert body["signed_in"] is True and body["me"]["email"] == user.email
        assert body["me"]["max_upload_mb"] > 0
        assert c.get("/api/v1/me").status_code == 401
