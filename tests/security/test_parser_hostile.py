"""The same hostile files straight through the isolated parser (no API, no
upload-time type check), plus the edge cases of the defences themselves."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import docx
import pytest

from shared.detect import decode_text, detect_type
from shared.document_errors import DocumentRejected, ParserCrashed
from tests.security import hostile
from tests.security.hostile import CASES, PASSWD_LINE, Case
from worker.pipeline import parse as parse_module
from worker.pipeline.isolated import _run_child, parse_isolated, start_parser_server

# The suite's worker settings (PARSE_TIMEOUT=30, PARSE_MEMORY_MB default).
TIMEOUT_S = 30
MEMORY_MB = 1024


@pytest.fixture(scope="module", autouse=True)
def parser_server() -> None:
    start_parser_server()


def parse(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / "upload"
    path.write_bytes(data)
    return parse_isolated(path, name, timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB).text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file_in_the_isolated_parser(case: Case, tmp_path: Path) -> None:
    if case.reason is None:
        extracted = parse(tmp_path, case.name, case.build())
        for phrase in case.text:
            assert phrase in extracted
        return
    with pytest.raises(DocumentRejected) as info:
        parse(tmp_path, case.name, case.build())
    assert re.search(case.reason, info.value.reason), info.value.reason
    assert PASSWD_LINE not in info.value.reason


def _rezip(data: bytes, replace: dict[str, bytes]) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in source.infolist():
            zf.writestr(info.filename, replace.get(info.filename, source.read(info.filename)))
    return buf.getvalue()


def test_xxe_in_a_utf16_part_is_refused(tmp_path: Path) -> None:
    """OPC allows UTF-16 parts; the DOCTYPE scan must not be blind to them."""
    data = hostile.docx_xxe()
    xml = zipfile.ZipFile(io.BytesIO(data)).read("word/document.xml").decode()
    xml = xml.replace('encoding="UTF-8"', 'encoding="UTF-16"')
    utf16 = _rezip(data, {"word/document.xml": xml.encode("utf-16")})
    with pytest.raises(DocumentRejected, match="XML entity or DOCTYPE"):
        parse(tmp_path, "wide.docx", utf16)


def test_doctype_in_a_relationship_part_is_refused(tmp_path: Path) -> None:
    data = hostile.docx_bytes(["fine"])
    rels = zipfile.ZipFile(io.BytesIO(data)).read("_rels/.rels")
    head, end, rest = rels.partition(b"?>")
    evil = head + end + b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + rest
    with pytest.raises(DocumentRejected, match="XML entity or DOCTYPE"):
        parse(tmp_path, "rels.docx", _rezip(data, {"_rels/.rels": evil}))


def test_xxe_is_never_resolved_even_without_the_scan(tmp_path: Path) -> None:
    """Defence in depth: python-docx itself parses with resolve_entities=False."""
    document = docx.Document(io.BytesIO(hostile.docx_xxe()))
    text = "\n".join(p.text for p in document.paragraphs)
    assert "Visible paragraph before" in text
    assert PASSWD_LINE not in text


def test_a_recursion_error_in_beautifulsoup_is_a_clear_rejection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lxml caps the depth (see the 100 000-div case), but should BeautifulSoup
    recurse past Python's limit anyway, the user reads why."""

    def recurse(*_: object, **__: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(parse_module, "BeautifulSoup", recurse)
    path = tmp_path / "deep.html"
    path.write_bytes(hostile.nested_html(10))
    with pytest.raises(DocumentRejected, match=r"^HTML is nested too deeply to read$"):
        parse_module.extract_text(path, "html")


def test_a_recursion_error_anywhere_in_the_child_is_a_rejection_not_a_crash() -> None:
    """json.loads recurses per nesting level, like parser libraries do; an
    unwrapped RecursionError used to come back as ParserCrashed (retried)."""
    with pytest.raises(DocumentRejected, match="nested too deeply") as info:
        _run_child(json.loads, ("[" * 100_000,), timeout_s=TIMEOUT_S, memory_mb=512)
    assert not isinstance(info.value, ParserCrashed)


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (hostile.ELF, "Linux executable"),
        (hostile.MZ, "Windows executable"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, "PNG"),
        # NULs at one parity only, but the other bytes are not text.
        (bytes(b for i in range(4096) for b in (i % 7 + 1, 0)), "unsupported file type"),
    ],
)
def test_utf16_detection_does_not_take_binaries_for_text(
    tmp_path: Path, data: bytes, what: str
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(data)
    with pytest.raises(DocumentRejected, match=what):
        detect_type(path, "blob")


def test_utf16_without_bom_with_non_latin_text(tmp_path: Path) -> None:
    body = "Привет, мир. 日本語のテキスト and ASCII words.\n" * 30
    for codec in ("utf-16-le", "utf-16-be"):
        assert parse(tmp_path, "wide.txt", body.encode(codec)) == body.strip()


def test_mixed_decoding_leaves_pure_legacy_files_to_charset_detection() -> None:
    latin1 = "Le café était très animé; une crème brûlée.\n".encode("latin-1") * 3
    assert "café était très animé" in decode_text(latin1)
    sjis = "これは日本語のテキストです。\n".encode("shift_jis") * 5
    assert "これは日本語のテキストです。" in decode_text(sjis)
    mixed = "naïve UTF-8 text\n".encode() * 3 + "déjà en Latin-1\n".encode("latin-1")
    assert decode_text(mixed) == "naïve UTF-8 text\n" * 3 + "déjà en Latin-1\n"
