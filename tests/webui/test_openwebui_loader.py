"""PUT /process as Open WebUI's external document loader sends it (raw bytes, Content-Type,
url-quoted X-Filename, bearer key): parsed by the worker fleet's isolated parser, same
limits as uploads, rejections as 4xx sentences, nothing left on the volume; 503 at once
when no worker runs."""

from __future__ import annotations

import io
import time
import uuid
import zipfile
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from shared.settings import Settings
from tests.support.samples import make_docx_bytes, make_pdf
from tests.support.stack import ApiUser, SideWebuis, Stack


def _put(client: httpx.Client, name: str | None, data: bytes, content_type: str
         ) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if name is not None:
        headers["X-Filename"] = quote(name)  # as Open WebUI does
    return client.put("/process", content=data, headers=headers, timeout=120)


def _stored_files(settings: Settings) -> set[Path]:
    return {p for p in settings.upload_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("name", "content_type", "make", "expect"), [
    ("Field notes é.md", "text/markdown",
     lambda n: f"# Notes\n\nThe sluice gate {n} opens at dawn.\n".encode(), "opens at dawn"),
    ("report.pdf", "application/pdf",
     lambda n: make_pdf([["Quarterly pump report", f"serial {n}"]]), "Quarterly pump report"),
    ("memo.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     lambda n: make_docx_bytes(["Memo about valves", n]), "Memo about valves"),
])
def test_formats_answer_page_content_and_metadata(
    client: httpx.Client, settings: Settings, name: str, content_type: str, make: object,
    expect: str,
) -> None:
    nonce = uuid.uuid4().hex
    before = _stored_files(settings)
    r = _put(client, name, make(nonce), content_type)  # type: ignore[operator]
    assert r.status_code == 200, r.text
    body = r.json()
    assert expect in body["page_content"] and nonce in body["page_content"]
    meta = body["metadata"]
    assert meta["source"] == name and meta["name"] == name  # unquoted, as uploaded
    assert meta["content_type"] == content_type and meta["size_bytes"] > 0
    assert _stored_files(settings) == before  # Sluice keeps nothing of it


def test_rejections_are_4xx_sentences(client: httpx.Client, settings: Settings) -> None:
    before = _stored_files(settings)
    lying = _put(client, "invoice.pdf", b"MZ\x90\x00" + uuid.uuid4().bytes * 64,
                 "application/pdf")
    assert lying.status_code == 422 and "invoice.pdf:" in lying.json()["detail"]
    scan = _put(client, "scan.pdf", make_pdf([[], []]), "application/pdf")
    assert scan.status_code == 422 and "no extractable text" in scan.json()["detail"].lower()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"\x00" * (20 * 1024 * 1024))
    r = _put(client, "bomb.docx", bomb.getvalue(), "application/octet-stream")
    assert r.status_code == 422 and "zip bomb" in r.json()["detail"]
    empty = _put(client, "empty.txt", b"", "text/plain")
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    unnamed = _put(client, None, b"hello", "text/plain")
    assert unnamed.status_code == 400 and "X-Filename" in unnamed.json()["detail"]
    big = _put(client, "big.txt", b"a" * (settings.max_upload_bytes + 1), "text/plain")
    assert big.status_code == 413 and "MB upload limit" in big.json()["detail"]
    assert _stored_files(settings) == before


def test_needs_a_sluice_key(stack: Stack) -> None:
    r = httpx.put(f"{stack.url}/process", content=b"hello", timeout=30,
                  headers={"X-Filename": "a.txt", "Content-Type": "text/plain"})
    assert r.status_code == 401


def test_no_worker_is_503_at_once(side: SideWebuis, user: ApiUser, settings: Settings) -> None:
    """The lonely webui's queues have no worker: answered before the body is stored,
    not after PARSE_TIMEOUT and more."""
    before = _stored_files(settings)
    started = time.monotonic()
    with httpx.Client(base_url=side.lonely, headers={"Authorization": f"Bearer {user.key}"},
                      timeout=30) as c:
        r = _put(c, "notes.md", b"# Notes\n\nnobody will parse this\n", "text/markdown")
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "no_worker" and "no worker is running" in r.json()["detail"]
    assert r.headers["retry-after"]
    assert time.monotonic() - started < 5, "waited for a worker that does not exist"
    assert _stored_files(settings) == before
