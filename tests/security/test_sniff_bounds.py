"""The webui's upload gate (`webui.sniff`) on hostile inputs: bounded CPU and memory,
measured in this process (CPU time and tracemalloc), not by wall-clock luck.

Before: the HTML regex backtracked exponentially (211 bytes of `<!---->` cost
minutes), and a 300k-entry ZIP's directory was read whole in the API process.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.detect import detect_type, starts_like_html
from shared.document_errors import DocumentRejected
from tests.security import hostile
from webui.sniff import SNIFF_BYTES, sniff_type

CPU_S = 0.02
"""Per sniff: "a few milliseconds", with room for a busy, shared machine."""
PEAK_BYTES = 2 * 1024 * 1024
"""Per sniff: the prefix, its decoded text and a bounded ZIP directory."""

CORPUS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "html-comments-211": ("a.txt", lambda: b"<!---->" * 30 + b"x"),
    "html-comments-1mb": ("a.html", lambda: b"<!---->" * 150_000),
    "html-open-comments": ("a.html", lambda: b"<!--" * 250_000),
    "xml-declarations": ("a.xml", lambda: b"<?xml " * 200_000),
    "html-tags-no-close": ("a.txt", lambda: b"<div " * 200_000),
    "json-deep-open": ("a.json", lambda: b"[" * 1_000_000),
    "json-deep-complete": ("a.txt", lambda: b"[" * 4000 + b"]" * 4000),
    "csv-quotes": ("a", lambda: b'"a,' * 300_000),
    "csv-delimiters": ("a", lambda: (b",;|\t" * 2000 + b"\n") * 100),
    "control-bytes": ("a.txt", lambda: bytes(range(1, 32)) * 30_000),
    "utf16-lookalike": ("a.txt", lambda: b"a\x00" * 500_000),
    "legacy-western": ("a.txt", lambda: "Crème brûlée à Noël ".encode("cp1252") * 50_000),
    "legacy-shift-jis": ("a.txt", lambda: "日本語のテキスト。".encode("shift_jis") * 50_000),
    "high-byte-runs": ("a.txt", lambda: bytes(range(0x80, 0x100)) * 8_000),
    "zip-100k-entries": ("many.docx", lambda: hostile.zip_with_entries(100_000)),
    "zip-10001-entries": ("many.docx", hostile.zip_with_entries),
    "zip-bomb-xlsx": ("bomb.xlsx", lambda: hostile.ooxml_zip_bomb("xlsx")),
    "zip-truncated": ("a.docx", lambda: hostile.zip_with_entries()[: 64 * 1024]),
    "pdf-flate-bomb": ("bomb.pdf", hostile.pdf_flate_bomb),
    "elf": ("setup.pdf", lambda: hostile.ELF),
    "nested-html": ("deep.html", hostile.nested_html),
}


def _measure(path: Path, name: str) -> tuple[float, int, str]:
    tracemalloc.start()
    started = time.process_time()
    try:
        outcome = sniff_type(path, name)
    except DocumentRejected as err:
        outcome = f"refused: {err}"
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return cpu, peak, outcome


@pytest.mark.parametrize("case", CORPUS, ids=list(CORPUS))
def test_sniff_is_bounded(case: str, tmp_path: Path) -> None:
    name, build = CORPUS[case]
    path = tmp_path / "upload"
    path.write_bytes(build())
    _measure(path, name)  # warm imports and caches; the second run is the measurement
    cpu, peak, outcome = _measure(path, name)
    assert cpu < CPU_S, f"{case}: {cpu * 1000:.1f} ms CPU ({outcome})"
    assert peak < PEAK_BYTES, f"{case}: {peak / 1024:.0f} KB peak ({outcome})"


def test_sniff_refuses_many_entry_zips_with_the_workers_reason(tmp_path: Path) -> None:
    path = tmp_path / "many.docx"
    path.write_bytes(hostile.zip_with_entries(100_000))
    with pytest.raises(DocumentRejected, match=r"^looks like a zip bomb: more than 10000 entries$"):
        sniff_type(path, "many.docx")


def test_sniff_reads_only_a_prefix(tmp_path: Path) -> None:
    """A long text file: what lies past SNIFF_BYTES is never looked at."""
    path = tmp_path / "big.txt"
    path.write_bytes(b"plain words\n" * (SNIFF_BYTES // 4) + b"\x00" * 100)
    assert sniff_type(path, "big.txt") == "text"  # the NULs past the prefix are the worker's


def test_sniff_kinds(tmp_path: Path) -> None:
    cases = {
        ("a.html", b"<!-- c --><?xml v?>\n<!DOCTYPE  html><p>x"): "html",
        ("a.txt", b"<html><body>x</body></html>"): "html",
        ("a.json", b'{"a": [1, 2]}'): "json",
        ("a", b"a,b,c\n1,2,3\n4,5,6\n7,8,9\n"): "csv",
        ("a.md", b"# Title\n\ntext"): "markdown",
        ("a.txt", "Crème brûlée".encode("cp1252")): "text",
        ("a.txt", "\ufeffhello".encode("utf-16")): "text",
        ("d.docx", hostile.docx_bytes(["hello"])): "docx",
        ("p.pdf", hostile.build_pdf([hostile.CATALOG])): "pdf",
    }
    for (name, data), kind in cases.items():
        path = tmp_path / "f"
        path.write_bytes(data)
        assert sniff_type(path, name) == kind, name


def test_html_start_is_linear_in_the_worker_too(tmp_path: Path) -> None:
    """The worker's deep detection used the same backtracking regex."""
    started = time.process_time()
    assert not starts_like_html("<!---->" * 100_000 + "x")
    assert starts_like_html("<!-- a --> <?xml version='1.0'?> <html>")
    path = tmp_path / "a.txt"
    path.write_bytes(b"<!---->" * 30 + b"x")
    assert detect_type(path, "a.txt") == "text"
    assert time.process_time() - started < 0.5


def test_the_webui_never_imports_the_worker() -> None:
    code = ("import sys, webui.app; "
            "bad = [m for m in sys.modules if m == 'worker' or m.startswith('worker.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
