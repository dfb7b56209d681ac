"""Hostile files through the real API, webui and worker.

Each must end `failed` with a reason a person understands (or `done` where
there is honest text), within a time bound, failed at once rather than
retried, with the worker alive and its memory back to normal afterwards. A
file the webui's upload-time type check refuses (4xx with a detail) counts
as handled too, where the same reason is given there.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import Engine, text

from conftest import Stack, make_user
from helpers import upload, wait_for_status
from security import hostile
from shared.settings import Settings

FINAL_WITHIN_S = 60
"""Upload to `done`/`failed`; the worker's parse limit in the suite is 30 s."""
RSS_SLACK_MB = 150
UPLOAD_REFUSALS = {400, 415}
"""What the webui answers when it refuses a file at upload (empty; type by magic bytes)."""
PASSWD_LINE = next(
    (line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith("root:")),
    "root:x:0:0:",
)


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    build: Callable[[], bytes]
    reason: str | None = None
    """Regex the failure reason must match; None: the file must end `done`."""
    text: tuple[str, ...] = ()
    """For `done`: phrases the stored chunks must contain."""
    refusable: bool = False
    """The webui's upload-time type check may refuse it (with the same reason)."""


CASES = [
    # Zip bombs: DOCX is checked before decompressing; XLSX/PPTX are refused from
    # the central directory alone, whatever their name says.
    Case("docx-zip-bomb", "bomb.docx", lambda: hostile.ooxml_zip_bomb("docx"),
         r"^looks like a zip bomb: it would expand to more than \d+ MB$"),
    Case("xlsx-zip-bomb", "bomb.xlsx", lambda: hostile.ooxml_zip_bomb("xlsx"),
         r"^Excel workbooks \(\.xlsx\) are not supported", refusable=True),
    Case("pptx-zip-bomb", "bomb.pptx", lambda: hostile.ooxml_zip_bomb("pptx"),
         r"^PowerPoint presentations \(\.pptx\) are not supported", refusable=True),
    Case("xlsx-bomb-named-docx", "budget.docx", lambda: hostile.ooxml_zip_bomb("xlsx"),
         r"^Excel workbooks \(\.xlsx\) are not supported", refusable=True),
    Case("docx-lying-sizes", "lying.docx", hostile.docx_with_lying_sizes,
         r"^Word document could not be read; it may be damaged"),
    Case("docx-10001-entries", "many.docx", hostile.zip_with_entries,
         r"^looks like a zip bomb: more than 10000 entries$"),
    # XML entities: never resolved or expanded; refused as Word never writes a DTD.
    Case("docx-xxe", "xxe.docx", hostile.docx_xxe,
         r"^Word document contains XML entity or DOCTYPE declarations"),
    Case("docx-billion-laughs", "laughs.docx", hostile.docx_billion_laughs,
         r"^Word document contains XML entity or DOCTYPE declarations"),
    # PDF: decompression bombs, reference loops, deep nesting.
    Case("pdf-flate-bomb", "bomb.pdf", hostile.pdf_flate_bomb,
         r"^PDF contains a compressed stream that expands beyond the safety limit"),
    Case("pdf-stream-array-bomb", "bombs.pdf", hostile.pdf_stream_array_bomb,
         r"^PDF contains a compressed stream that expands beyond the safety limit"),
    Case("pdf-kids-self-loop", "loop.pdf", hostile.pdf_kids_self_loop,
         r"^PDF contains a reference loop"),
    Case("pdf-kids-cycle", "cycle.pdf", hostile.pdf_kids_cycle, r"^PDF contains a reference loop"),
    Case("pdf-parent-cycle", "parents.pdf", hostile.pdf_parent_cycle,
         r"^PDF contains a reference loop"),
    Case("pdf-self-reference", "self.pdf", hostile.pdf_self_reference,
         r"^PDF (could not be read|contains a reference loop)"),
    Case("pdf-nested-arrays", "nested.pdf", hostile.pdf_nested_arrays,
         r"^PDF is nested too deeply to read$"),
    # HTML: lxml caps the tree depth itself, so the text survives.
    Case("html-100k-nested-divs", "deep.html", hostile.nested_html, text=("deep text",)),
    # Encodings.
    Case("utf16le-no-bom", "wide.txt",
         lambda: "Grüße aus Köln, zweite Zeile.\n".encode("utf-16-le") * 20,
         text=("Grüße aus Köln, zweite Zeile.",)),
    Case("utf16be-no-bom", "wide-be.txt",
         lambda: "Grüße aus Köln, zweite Zeile.\n".encode("utf-16-be") * 20,
         text=("Grüße aus Köln, zweite Zeile.",)),
    Case("shift-jis", "jp.txt",
         lambda: "これは日本語のテキストです。東京の天気は晴れです。\n".encode("shift_jis") * 10,
         text=("これは日本語のテキストです。",)),
    Case("utf8-with-latin1-lines", "mixed.log",
         lambda: "café ouvert à 8h\n".encode() * 5 + "crème brûlée du jour\n".encode("latin-1"),
         text=("café ouvert à 8h", "crème brûlée du jour")),
    Case("invalid-utf8", "odd.txt",
         lambda: b"valid start " + b"\xff\xfe\xc3\x28 mixed \xe2\x82 bytes " * 20,
         text=("valid start", "mixed", "bytes")),
    # Nothing to index.
    Case("empty", "empty.txt", lambda: b"", r"(?i)\bempty\b", refusable=True),
    Case("whitespace-only", "blank.txt", lambda: b" \n\t\n" * 100, r"^no text could be extracted"),
    Case("pdf-image-only", "scan.pdf", hostile.pdf_image_only,
         r"^PDF has no extractable text \(scanned images\?\)$"),
    Case("docx-no-paragraphs", "blank.docx", lambda: hostile.docx_bytes([]),
         r"^no text could be extracted"),
    # Renamed executables.
    Case("elf-named-txt", "notes.txt", lambda: hostile.ELF,
         r"^unsupported file type: looks like a Linux executable \(ELF\)$", refusable=True),
    Case("exe-named-pdf", "invoice.pdf", lambda: hostile.MZ,
         r"^file is named \.pdf but its content is not a PDF \(looks like a Windows executable\)$",
         refusable=True),
]


@dataclass
class Baseline:
    rss: int
    children: set[int]


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _chunks(db_engine: Engine, file_id: str) -> list[str]:
    with db_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT text FROM chunks WHERE file_id = :f ORDER BY idx"), {"f": file_id}
        )
        return [r.text for r in rows]


@pytest.fixture(scope="module")
def baseline(stack: Stack, db_engine: Engine) -> Baseline:
    """Worker RSS and children before the batch, after one normal job warmed it up
    (the first embedding allocates for good)."""
    user = make_user(db_engine, "hostile-warmup")
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {user.key}"},
                      timeout=30) as c:
        r = upload(c, "warmup.txt", f"warm-up document {uuid.uuid4()}\n".encode() * 50)
        assert r.status_code == 202, r.text
        assert wait_for_status(c, r.json()["id"], timeout=FINAL_WITHIN_S)["status"] == "done"
    worker = psutil.Process(stack.worker.pid)
    return Baseline(_rss(stack.worker.pid), {p.pid for p in worker.children(recursive=True)})


def _assert_worker_alive(stack: Stack) -> None:
    assert stack.worker.popen.poll() is None, f"worker died:\n{stack.worker.log()[-3000:]}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file(
    case: Case, client: httpx.Client, stack: Stack, db_engine: Engine, baseline: Baseline
) -> None:
    data = case.build()
    assert len(data) < 2 * 1024 * 1024 - 4096, f"{case.id} is {len(data)} bytes: over MAX_UPLOAD_MB"
    started = time.monotonic()
    r = upload(client, case.name, data)

    if r.status_code in UPLOAD_REFUSALS:
        assert case.refusable, f"{case.id}: refused at upload ({r.status_code}): {r.text}"
        detail = r.json()["detail"]
        print("\nOUTCOME", case.id, "upload", r.status_code, detail)
        assert case.reason is not None and re.search(case.reason, detail), detail
        return
    assert r.status_code == 202, r.text
    file_id = r.json()["id"]
    body = wait_for_status(client, file_id, timeout=FINAL_WITHIN_S)
    elapsed = time.monotonic() - started
    print("\nOUTCOME", case.id, body["status"], f"{elapsed:.1f}s", body["error"], body["kind"])
    assert elapsed < FINAL_WITHIN_S

    chunks = _chunks(db_engine, file_id)
    assert not any(PASSWD_LINE in chunk for chunk in chunks)  # never an XXE's payload
    if case.reason is None:
        assert body["status"] == "done", body
        stored = "\n".join(chunks)
        for phrase in case.text:
            assert phrase in stored, (phrase, stored[:500])
        assert "\x00" not in stored and "\ufffd" not in stored
    else:
        assert body["status"] == "failed", body
        assert re.search(case.reason, body["error"] or ""), body["error"]
        assert chunks == [] and body["chunk_count"] == 0
        assert PASSWD_LINE not in body["error"]
    # Rejected at once as a property of the bytes: not a crash retried JOB_MAX_RETRIES times.
    assert body["attempts"] == 1, body
    _assert_worker_alive(stack)


def test_names_with_nul_and_dot_dot_are_cleaned_and_bytes_stored_under_a_server_id(
    client: httpx.Client, stack: Stack, db_engine: Engine, settings: Settings
) -> None:
    """Raw multipart, so the NUL byte really reaches the server (httpx would
    percent-encode it): the display name is cleaned, the bytes live under a
    server-chosen key, and nothing is written outside UPLOAD_DIR."""
    cases = {
        b"../../etc/passwd": "passwd",
        b"..\\..\\..\\windows\\system32\\evil.txt": "evil.txt",
        b"report\x00.txt": "report.txt",
        b"../": "unnamed",
    }
    for raw_name, expected in cases.items():
        payload = f"name test {uuid.uuid4()}\n".encode()
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\n".encode()
            + b'Content-Disposition: form-data; name="file"; filename="' + raw_name + b'"\r\n'
            + b"Content-Type: text/plain\r\n\r\n" + payload + f"\r\n--{boundary}--\r\n".encode()
        )
        r = client.post("/api/v1/files", content=body,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 202, (raw_name, r.text)
        file_id = r.json()["id"]
        assert r.json()["filename"] == expected, raw_name
        assert client.get(f"/api/v1/files/{file_id}").json()["filename"] == expected
        with db_engine.connect() as conn:
            key = conn.execute(text("SELECT storage_key FROM files WHERE id = :f"),
                               {"f": file_id}).scalar_one()
        assert re.fullmatch(r"[0-9a-f]{32}", key)
        assert (settings.upload_dir / key[:2] / key).read_bytes() == payload
        download = client.get(f"/api/v1/files/{file_id}/content")
        assert download.status_code == 200 and download.content == payload
        disposition = download.headers["content-disposition"]
        assert "/" not in disposition and "\\" not in disposition and "\x00" not in disposition
        assert wait_for_status(client, file_id, timeout=FINAL_WITHIN_S)["status"] == "done"
    root = settings.upload_dir
    assert not any("passwd" in p.name or "evil" in p.name for p in root.rglob("*"))
    assert not (root.parent / "etc").exists() and not (root.parent.parent / "etc").exists()


def test_worker_survives_the_batch_with_memory_back_to_normal(
    stack: Stack, baseline: Baseline, client: httpx.Client
) -> None:
    """Runs after the cases above (file order): same worker process, RSS within
    RSS_SLACK_MB of before, no parser child left behind, and it still works."""
    _assert_worker_alive(stack)
    r = upload(client, "after.txt", f"after the hostile batch {uuid.uuid4()}\n".encode())
    assert r.status_code == 202, r.text
    assert wait_for_status(client, r.json()["id"], timeout=FINAL_WITHIN_S)["status"] == "done"
    print("\nOUTCOME children", [(p.pid, p.cmdline()[-3:]) for p in psutil.Process(stack.worker.pid).children(recursive=True)], baseline)
    grown_mb = (_rss(stack.worker.pid) - baseline.rss) / (1024 * 1024)
    print("\nOUTCOME rss grown", grown_mb, _rss(stack.worker.pid) / 2**20)
    assert grown_mb < RSS_SLACK_MB, f"worker RSS grew by {grown_mb:.0f} MB over the batch"
    children = {p.pid for p in psutil.Process(stack.worker.pid).children(recursive=True)}
    assert children <= baseline.children, "a parser child outlived its job"
