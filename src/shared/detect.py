"""Decide what kind of document an upload is, from its content.

Uploads are untrusted and their names are chosen by the uploader, so binary
formats are recognised by magic bytes only; the file name is merely a hint
for choosing between text sub-types (csv vs markdown vs plain text).  A
name that promises a binary format the content does not have is rejected
outright, because silently parsing a "report.pdf" as text surprises users.

``detect_type`` takes the *path* rather than a head of bytes: telling a DOCX
from any other ZIP needs the zip central directory, which sits at the end of
the file.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import zipfile
from pathlib import Path

import puremagic
from charset_normalizer import from_bytes

from shared.charsets import decode_legacy
from shared.document_errors import DocumentRejected

KINDS = ("pdf", "docx", "html", "json", "csv", "markdown", "text")

HEAD_BYTES = 64 * 1024
"""How much of the file is sniffed for text-type decisions."""

SNIFF_CHARS = 8 * 1024
"""csv.Sniffer is quadratic on hostile input (~30 s for 64 KB); keep it small."""

BINARY_PROBE_BYTES = 8 * 1024
"""A NUL byte within this prefix (and no UTF-16/32 BOM, nor BOM-less UTF-16) means binary."""

BOMS: tuple[tuple[bytes, str], ...] = (
    # Order matters: the UTF-32-LE BOM starts with the UTF-16-LE one.  These
    # codecs consume the BOM.
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)

MIXED_PROBE_BYTES = 1024 * 1024
"""How much of a non-UTF-8 file decides between "mixed UTF-8" and a legacy encoding."""
_CP1252_FALLBACK = "sluice-cp1252-fallback"
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)


def _cp1252_fallback(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return exc.object[exc.start : exc.end].decode("cp1252", errors="replace"), exc.end


codecs.register_error(_CP1252_FALLBACK, _cp1252_fallback)

# Friendly names for binary formats users commonly upload by mistake.  puremagic
# knows far more, but its first guess for short signatures can be obscure.
_KNOWN_BINARY: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "a Linux executable (ELF)"),
    (b"\xcf\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xce\xfa\xed\xfe", "a macOS executable (Mach-O)"),
    (b"\xca\xfe\xba\xbe", "a Java class or macOS universal binary"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "a legacy Microsoft Office file (.doc/.xls/.ppt); save it as .docx",
    ),
    (b"\x89PNG\r\n\x1a\n", "an image (PNG)"),
    (b"\xff\xd8\xff", "an image (JPEG)"),
    (b"GIF8", "an image (GIF)"),
    (b"BM", "an image (BMP)"),
    (b"II*\x00", "an image (TIFF)"),
    (b"MM\x00*", "an image (TIFF)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"{\\rtf", "an RTF document; save it as .docx or PDF"),
)

NAME_PROMISES = {".pdf": ("pdf", "a PDF"), ".docx": ("docx", "a Word document")}
_MARKDOWN_EXTS = (".md", ".markdown", ".mdown", ".mkd")
_PLAIN_EXTS = (".txt", ".text", ".log", *_MARKDOWN_EXTS)
_HTML_TAG = re.compile(
    r"<(html|head|body|div|p|span|table|tr|td|title|meta|a\s+href|ul|li|h[1-6])[\s>/]", re.I
)


def detect_type(path: Path, filename: str) -> str:
    """Return one of ``KINDS`` for the file at ``path``.

    ``filename`` is the uploader-supplied name, used only as a hint for text
    sub-types and to reject names that lie about a binary format.  Raises
    ``DocumentRejected`` for empty, binary-but-unsupported or mislabelled files.
    """
    size = path.stat().st_size
    if size == 0:
        raise DocumentRejected("file is empty")
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    ext = Path(filename.strip().lower()).suffix

    promised = NAME_PROMISES.get(ext)
    kind = _binary_kind(path, head)
    if kind is None and not _looks_textual(head):
        what = describe_binary(head)
        if promised:
            raise DocumentRejected(
                f"file is named {ext} but its content is not {promised[1]} ({what})"
            )
        raise DocumentRejected(f"unsupported file type: {what}")
    if kind is None:
        kind = _text_kind(head, ext, complete=size <= len(head))
    if promised and promised[0] != kind:
        raise DocumentRejected(f"file is named {ext} but its content is not {promised[1]}")
    return kind


def _binary_kind(path: Path, head: bytes) -> str | None:
    """PDF or DOCX by magic bytes; ``None`` when it is neither."""
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if stripped.startswith(b"%PDF-"):
        return "pdf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_kind(path)
    return None


def _zip_kind(path: Path) -> str:
    """A ZIP is only accepted when its central directory names a Word body."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise DocumentRejected(
            "unsupported file type: a damaged or incomplete ZIP archive"
        ) from None
    return kind_from_zip_names(names)


def kind_from_zip_names(names: set[str]) -> str:
    """``"docx"``, or ``DocumentRejected`` saying which other ZIP format this is."""
    if "word/document.xml" in names:
        return "docx"
    # Only the central directory was read: nothing of a non-Word ZIP is ever
    # decompressed, so a bomb dressed as .xlsx/.pptx costs nothing here.  Say
    # plainly which format it is, since users upload these expecting them to work.
    if "xl/workbook.xml" in names:
        raise DocumentRejected("Excel workbooks (.xlsx) are not supported; save the sheet as CSV")
    if "ppt/presentation.xml" in names:
        raise DocumentRejected("PowerPoint presentations (.pptx) are not supported; save it as PDF")
    if "mimetype" in names and "content.xml" in names:
        raise DocumentRejected("OpenDocument files are not supported; save it as .docx or PDF")
    if "META-INF/container.xml" in names:
        raise DocumentRejected("EPUB e-books are not supported")
    raise DocumentRejected("unsupported file type: looks like a ZIP archive")


def starts_like_html(text: str) -> bool:
    """An HTML document: optional comments and XML declarations, then a doctype or
    <html>. A left-to-right scan, linear in ``text``: the regex it replaces
    (``(<!--.*?-->\\s*|...)*<html``) backtracked exponentially on ``<!---->`` repeats."""
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if text.startswith("<!--", pos):
            close = text.find("-->", pos + 4)
        elif text[pos : pos + 5].lower() == "<?xml":
            close = text.find(">", pos + 5)
        else:
            break
        if close < 0:
            return False
        pos = close + (3 if text[pos + 1] == "!" else 1)
    head = text[pos : pos + 64].lower()
    if head.startswith("<!doctype"):
        rest = head[9:]
        return rest[:1].isspace() and rest.lstrip().startswith("html")
    return head.startswith("<html") and (head[5:6].isspace() or head[5:6] == ">")


def _looks_textual(head: bytes) -> bool:
    """Text if it carries a Unicode BOM, or has no NUL and a plausible encoding."""
    if any(head.startswith(bom) for bom, _ in BOMS):
        return True
    if utf16_without_bom(head):
        return True
    # Real binaries have NULs in their headers; matching magic alone would
    # misfile text that merely starts with "BM" or "MZ".  RTF is the textual
    # format we still refuse.
    if b"\x00" in head[:BINARY_PROBE_BYTES] or head.startswith(b"{\\rtf"):
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:  # a multi-byte char cut by the head limit
            return True
    return from_bytes(head[:BINARY_PROBE_BYTES]).best() is not None


def _known_binary(head: bytes) -> str | None:
    for magic, what in _KNOWN_BINARY:
        if head.startswith(magic):
            return what
    return None


def describe_binary(head: bytes) -> str:
    """A human phrase for a binary file we do not support."""
    known = _known_binary(head)
    if known:
        return f"looks like {known}"
    try:
        best = puremagic.magic_string(head[:BINARY_PROBE_BYTES])[0]
    except (puremagic.PureError, IndexError, ValueError):
        return "unrecognised binary file"
    label = best.name or best.extension.lstrip(".").upper()
    return f"looks like {label}" if label else "unrecognised binary file"


def utf16_without_bom(data: bytes) -> str | None:
    """``"utf-16-le"``/``"utf-16-be"`` for UTF-16 text written without a BOM.

    Windows tools (PowerShell 5 ``>``, some exports) write BOM-less UTF-16.
    Its NUL high bytes made it look binary ("unrecognised binary file").
    Mostly-Latin UTF-16 has NULs in about every other byte, all at one parity;
    binaries have NULs at both (and rarely decode to printable text).
    """
    sample = data[:BINARY_PROBE_BYTES]
    sample = sample[: len(sample) // 2 * 2]
    half = len(sample) // 2
    if half < 2 or b"\x00" not in sample:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd >= 0.3 * half and even <= 0.02 * half:
        codec = "utf-16-le"
    elif even >= 0.3 * half and odd <= 0.02 * half:
        codec = "utf-16-be"
    else:
        return None
    try:
        text = sample.decode(codec)
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 2:  # not merely a surrogate pair cut by the probe
            return None
        text = sample[: exc.start].decode(codec)
    if "\x00" in text:
        return None
    printable = sum(ch.isprintable() or ch in "\t\n\r\f" for ch in text)
    return codec if printable >= 0.95 * len(text) else None


def decode_text(data: bytes, *, truncated: bool = False) -> str:
    """Decode bytes of unknown encoding: BOM, BOM-less UTF-16, UTF-8 (tolerating
    stray cp1252 bytes in otherwise UTF-8 text), then charset-normalizer.

    ``truncated`` means ``data`` is a prefix, so a multi-byte UTF-8 character
    cut at the end is not evidence against UTF-8.  Never raises.
    """
    for bom, codec in BOMS:
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    # Before UTF-8: ASCII-range UTF-16 is valid UTF-8 (with NULs between letters).
    utf16 = utf16_without_bom(data)
    if utf16:
        return data.decode(utf16, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(data) - 3:
            return data[: exc.start].decode("utf-8", errors="replace")
    if _mostly_utf8(data[:MIXED_PROBE_BYTES]):
        return data.decode("utf-8", errors=_CP1252_FALLBACK)
    return decode_legacy(data)  # cp1252 when it reads as Western text: shared.charsets


def _mostly_utf8(data: bytes) -> bool:
    """UTF-8 with some legacy (cp1252/Latin-1) bytes mixed in, e.g. a UTF-8 log
    with lines appended by an old tool.  Decoding the whole file as cp1252
    would garble every UTF-8 character, so when at least half of the non-ASCII
    bytes form valid UTF-8 sequences, decode as UTF-8 and only the stray
    bytes as cp1252.  Legacy-encoded files (Latin-1, Shift-JIS) rarely form
    valid UTF-8 sequences and keep going to charset-normalizer."""
    valid = sum(len(m) for m in _UTF8_MULTIBYTE.findall(data))
    high = len(data) - len(data.translate(None, bytes(range(0x80, 0x100))))
    return valid > 0 and valid >= high - valid


def _text_kind(head: bytes, ext: str, *, complete: bool) -> str:
    """Pick a text sub-type: content first, then the name as a tie-breaker."""
    sample = decode_text(head, truncated=not complete).lstrip("\ufeff \t\r\n")
    if starts_like_html(sample[:4096]):
        return "html"
    if sample[:1] in ("{", "["):
        if complete and parses_as_json(sample):
            return "json"
        if ext == ".json" or (not complete and re.match(r"[\[{]\s*[\"\[{\]}]", sample)):
            return "json"
    if ext in (".html", ".htm", ".xhtml") and _HTML_TAG.search(sample):
        return "html"
    if ext in _MARKDOWN_EXTS:
        return "markdown"
    if ext not in _PLAIN_EXTS and len(_HTML_TAG.findall(sample[:8192])) >= 3:
        return "html"
    if ext in (".csv", ".tsv") or (ext not in _PLAIN_EXTS and _sniffs_as_csv(sample)):
        return "csv"
    return "text"


def parses_as_json(sample: str) -> bool:
    """Whether the whole text is one JSON document (the webui's gate uses it too)."""
    try:
        json.loads(sample)
    except (ValueError, RecursionError):
        return False
    return True


def _sniffs_as_csv(sample: str) -> bool:
    """csv.Sniffer alone is too eager on prose; also require a stable column count."""
    lines = sample[:SNIFF_CHARS].splitlines()[:21]
    if len(lines) == 21 or len(sample) > SNIFF_CHARS:
        lines = lines[:-1]  # the last line may be cut off mid-row
    lines = [ln for ln in lines if ln.strip()]
    if len(lines) < 3:
        return False
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t|")
    except csv.Error:
        return False
    widths = {len(row) for row in csv.reader(lines, dialect)}
    return len(widths) == 1 and widths.pop() >= 2
