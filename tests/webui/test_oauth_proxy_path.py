"""Sign-in behind OpenShift's oauth-proxy, end to end on a real `sluice webui`.

In the cluster (deploy/kustomize/components/oauth-proxy) the sidecar calls the
webui on localhost with the signed-in user's headers. Here the test is that
sidecar: it connects from 127.0.0.1 and sends what openshift/oauth-proxy adds to
a request (X-Forwarded-User/-Email with --pass-user-headers, plus
X-Forwarded-Access-Token had --pass-access-token been on, and the usual
X-Forwarded-For/-Proto), with the webui configured as the component configures
it. tests/deploy/test_oauth_proxy.py checks the manifests match this setup.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.support.helpers import free_port, upload, wait_for_status
from tests.support.stack import Proc, Stack, make_user, start_webui

# What components/oauth-proxy puts into sluice-config.
PROXY_CONFIG = {
    "TRUST_FORWARDED_USER": "true",
    "FORWARDED_USER_HEADER": "X-Forwarded-Email",
    "TRUSTED_PROXIES": "127.0.0.1/32,::1/128",
}


def proxy_headers(user: str) -> dict[str, str]:
    """The headers oauth-proxy adds for a signed-in OpenShift user without an email."""
    return {
        "X-Forwarded-User": user,
        "X-Forwarded-Email": f"{user}@cluster.local",
        "X-Forwarded-Access-Token": f"sha256~{uuid.uuid4().hex}",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "Cookie": f"_oauth_proxy={uuid.uuid4().hex}",
    }


@pytest.fixture(scope="module")
def proxied_webui(
    env: dict[str, str], stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A webui configured like the one behind the sidecar (`stack` runs the worker)."""
    port = free_port()
    log = Path(tmp_path_factory.mktemp("proxied")) / "webui.log"
    webui: Proc = start_webui({**env, **PROXY_CONFIG}, log, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        webui.stop()


def test_a_proxied_user_is_signed_in_uploads_and_searches(proxied_webui: str, db_engine: Engine) -> None:
    name = f"alice-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=proxied_webui, headers=proxy_headers(name), timeout=30) as alice:
        me = alice.get("/api/v1/me")
        assert me.status_code == 200, me.text
        assert me.json()["email"] == f"{name}@cluster.local"
        # Created on first sight, the same account afterwards.
        assert alice.get("/api/v1/me").json()["id"] == me.json()["id"]

        secret = f"proxied heron manifest {uuid.uuid4()}"
        r = upload(alice, "notes.txt", secret.encode(), "text/plain")
        assert r.status_code == 202, r.text
        file_id = r.json()["id"]
        assert wait_for_status(alice, file_id)["status"] == "done"
        hits = alice.post("/api/v1/search", json={"query": secret, "top_k": 3}).json()["hits"]
        assert hits and hits[0]["file_id"] == file_id

    # Another signed-in user does not see it.
    with httpx.Client(base_url=proxied_webui, headers=proxy_headers(f"bob-{name}"), timeout=30) as bob:
        assert bob.get(f"/api/v1/files/{file_id}").status_code == 404
    with db_engine.connect() as conn:
        owners = conn.execute(text("SELECT count(*) FROM users WHERE email = :e"),
                              {"e": f"{name}@cluster.local"}).scalar()
    assert owners == 1


def test_the_same_headers_from_anywhere_else_are_ignored(proxied_webui: str) -> None:
    """Another pod, or the API Route's router, is not the sidecar: 401."""
    # 127.0.0.2 is loopback too, but not in TRUSTED_PROXIES.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=proxied_webui, transport=transport, timeout=30) as other:
        r = other.get("/api/v1/me", headers=proxy_headers("mallory"))
    assert r.status_code == 401


def test_an_api_key_still_wins_behind_the_proxy(proxied_webui: str, db_engine: Engine) -> None:
    """--pass-basic-auth=false keeps the page's own `Authorization: Bearer` intact,
    and a key names its own user whatever the proxy's headers say."""
    keyed = make_user(db_engine, "keyed")
    headers = {**proxy_headers("someone-else"), "Authorization": f"Bearer {keyed.key}"}
    me = httpx.get(f"{proxied_webui}/api/v1/me", headers=headers, timeout=30)
    assert me.status_code == 200 and me.json()["email"] == keyed.email
