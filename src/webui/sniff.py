"""The upload gate: a bounded, linear-time look at an upload before it is queued.

It runs in the API process, so it reads at most `SNIFF_BYTES` from the start of
the file (and, for a ZIP, its end-of-directory record and a directory of
bounded size), and every check is a single pass over that prefix: a hostile
upload costs a few milliseconds here, whatever it contains. It refuses what is
plainly not a document, with a sentence saying so, and guesses a kind.

Deep detection (charset guessing, csv dialects, a full ZIP directory) is the
worker's, in its resource-limited parser child (`shared.detect.detect_type`,
called from `worker.pipeline.isolated`), which also sets the final kind.
"""

from __future__ import annotations

import csv
import struct
import zipfile
from pathlib import Path

from shared.detect import (
    BOMS,
    NAME_PROMISES,
    describe_binary,
    kind_from_zip_names,
    parses_as_json,
    starts_like_html,
    utf16_without_bom,
)
from shared.document_errors import DocumentRejected

SNIFF_BYTES = 8 * 1024
MB = 1024 * 1024
MAX_ZIP_ENTRIES = 10_000
"""A Word document has tens of entries; one with images, hundreds."""
MAX_ZIP_DIRECTORY_BYTES = 2 * MB
"""10,000 entries with 100-byte names fit in 1.5 MB."""
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
_ZIP64_LOCATOR = b"PK\x06\x07"
# Bytes that do not occur in text in any ASCII-compatible encoding.
_CONTROL = bytes([*range(0, 8), 11, *range(14, 27), *range(28, 32), 127])
_MARKDOWN_EXTS = (".md", ".markdown", ".mdown", ".mkd")
_PLAIN_EXTS = (".txt", ".text", ".log", *_MARKDOWN_EXTS)
_HTML_EXTS = (".html", ".htm", ".xhtml")


def sniff_type(path: Path, filename: str) -> str:
    """A provisional kind for the upload at `path`; `DocumentRejected` for what is
    plainly not a supported document (or a name that lies about a binary format)."""
    with path.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
        size = fh.seek(0, 2)
    ext = Path(filename.strip().lower()).suffix
    promised = NAME_PROMISES.get(ext)
    kind = _binary_kind(path, head, size)
    if kind is None:
        text = _as_text(head)
        if text is None:
            what = describe_binary(head)
            if promised:
                raise DocumentRejected(
                    f"file is named {ext} but its content is not {promised[1]} ({what})"
                )
            raise DocumentRejected(f"unsupported file type: {what}")
        kind = _text_kind(text, ext, complete=size <= len(head))
    if promised and promised[0] != kind:
        raise DocumentRejected(f"file is named {ext} but its content is not {promised[1]}")
    return kind


def _binary_kind(path: Path, head: bytes, size: int) -> str | None:
    if head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"%PDF-"):
        return "pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return kind_from_zip_names(_zip_names(path, size))
    return None


def _zip_names(path: Path, size: int) -> set[str]:
    """The entry names, read only once the end record promises a small directory."""
    damaged = DocumentRejected("unsupported file type: a damaged or incomplete ZIP archive")
    with path.open("rb") as fh:
        tail_start = max(0, size - (_EOCD_SIZE + 65_535))  # the record plus its longest comment
        fh.seek(tail_start)
        tail = fh.read()
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        raise damaged
    entries, directory_bytes = struct.unpack("<HI", tail[at + 10 : at + 16])
    # Counted as the worker's parser counts (worker.pipeline.parse); a ZIP64 end
    # record stores 0xFFFF here, so a huge archive is refused as such.
    if entries > MAX_ZIP_ENTRIES:
        raise DocumentRejected(f"looks like a zip bomb: more than {MAX_ZIP_ENTRIES} entries")
    if tail[max(0, at - 20) : at].startswith(_ZIP64_LOCATOR):
        raise DocumentRejected("unsupported file type: a ZIP64 archive is not a Word document")
    if directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise DocumentRejected(
            f"looks like a zip bomb: its directory is over {MAX_ZIP_DIRECTORY_BYTES // MB} MB"
        )
    try:
        with zipfile.ZipFile(path) as zf:  # reads the directory whose size was just bounded
            return set(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise damaged from None


def _as_text(head: bytes) -> str | None:
    """The prefix as text good enough to see its structure, or None if it is binary.

    Structure (tags, braces, delimiters) is ASCII, so bytes in any ASCII-compatible
    legacy encoding are read as UTF-8 with replacements; which encoding it really
    is, the worker decides.
    """
    for bom, codec in BOMS:
        if head.startswith(bom):
            return head.decode(codec, errors="replace")
    if (utf16 := utf16_without_bom(head)) is not None:
        return head.decode(utf16, errors="replace")
    if b"\x00" in head or head.startswith(b"{\\rtf"):
        return None
    # Real binaries without NULs in their first 8 KB are rare; most are dense in
    # other control bytes. One pass (C speed) counts them.
    controls = len(head) - len(head.translate(None, _CONTROL))
    if controls > len(head) // 100:
        return None
    return head.decode("utf-8", errors="replace")


def _text_kind(text: str, ext: str, *, complete: bool) -> str:
    sample = text.lstrip("\ufeff \t\r\n")
    if starts_like_html(sample):
        return "html"
    if sample[:1] in ("{", "["):
        if ext == ".json" or not complete or parses_as_json(sample):
            return "json"
    if ext in _HTML_EXTS:
        return "html"
    if ext in _MARKDOWN_EXTS:
        return "markdown"
    if ext in (".csv", ".tsv") or (ext not in _PLAIN_EXTS and _looks_like_csv(sample, complete)):
        return "csv"
    return "text"


def _looks_like_csv(sample: str, complete: bool) -> bool:
    """At least 3 lines splitting into the same number (≥ 2) of fields for one
    delimiter. csv.reader is a single pass; csv.Sniffer, quadratic, stays in the worker."""
    lines = [ln for ln in sample.splitlines() if ln.strip()]
    if not complete:
        lines = lines[:-1]  # the last line may be cut off mid-row
    lines = lines[:20]
    if len(lines) < 3:
        return False
    for delimiter in ",;\t|":
        widths = {len(row) for row in csv.reader(lines, delimiter=delimiter)}
        if len(widths) == 1 and widths.pop() >= 2:
            return True
    return False
