"""In-process text extractors, one per document kind.

These run inside the isolated parser child (see ``isolated.py``), which is
what bounds their CPU time and memory; the checks here are the cheap,
deterministic ones that let us reject a hostile file with a precise reason
instead of a generic "exceeded its memory limit".  Parser libraries raise
all sorts of exceptions on damaged input; those are turned into
``DocumentRejected`` because the same bytes will always fail the same way.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Imported at module level on purpose: the forkserver preloads this module,
# so every parser child starts with these libraries already loaded.
import docx
from bs4 import BeautifulSoup
from bs4.dammit import EncodingDetector
from docx.table import Table
from pypdf import PdfReader
from pypdf.errors import LimitReachedError

from shared.detect import BOMS, SNIFF_CHARS, decode_text
from shared.document_errors import DocumentRejected

MAX_PDF_PAGES = 2000
MAX_ZIP_TOTAL_BYTES = 200 * 1024 * 1024
MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_RATIO = 100
ZIP_RATIO_MIN_BYTES = 1024 * 1024
"""Small entries compress absurdly well legitimately; only judge big ones."""
MAX_JSON_DEPTH = 100
ZIP_XML_SCAN_CHUNK = 64 * 1024

_BOMS = tuple(bom for bom, _ in BOMS)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Anchored at the start of a space run and possessive, so it stays linear;
# a naive r"[ \t]+\n" is quadratic on a long run of spaces.
_TRAILING_SPACE = re.compile(r"(?<![ \t])[ \t]++(?=\n|\Z)")


def extract_text(path: Path, kind: str) -> str:
    """Return normalised plain text of the file, or raise ``DocumentRejected``."""
    if path.stat().st_size == 0:
        raise DocumentRejected("file is empty")
    extractor = _EXTRACTORS.get(kind)
    if extractor is None:
        raise ValueError(f"unknown document kind {kind!r}")
    text = normalize_text(extractor(path))
    if not text:
        if kind == "pdf":
            raise DocumentRejected("PDF has no extractable text (scanned images?)")
        raise DocumentRejected("no text could be extracted from this file")
    return text


def normalize_text(text: str) -> str:
    """Unify newlines, drop control characters and lone surrogates (PostgreSQL
    rejects NUL and invalid UTF-8), strip trailing spaces, collapse blank runs."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\x0c", "\n").replace("\x0b", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


@contextmanager
def _reject_on_failure(
    what: str, explain: Callable[[Exception], str | None] | None = None
) -> Iterator[None]:
    """Map a parser library's exception on bad input to a rejection.

    ``explain`` may turn a known exception into a more precise reason.
    MemoryError is re-raised so the child reports a memory-limit hit.
    """
    try:
        yield
    except (DocumentRejected, MemoryError):
        raise
    except RecursionError:
        raise DocumentRejected(f"{what} is nested too deeply to read") from None
    except Exception as exc:  # libraries raise anything on junk
        reason = explain(exc) if explain else None
        raise DocumentRejected(
            reason or f"{what} could not be read; it may be damaged ({type(exc).__name__})"
        ) from None


def _pdf_hostile_reason(exc: Exception) -> str | None:
    """A reason for a decompression bomb or a reference loop, which pypdf stops
    (``LimitReachedError`` past its 75 MB ``ZLIB_MAX_OUTPUT_LENGTH``; Kids and
    Parent cycle checks) but which would otherwise read as "damaged".

    The message is their only distinguishing mark, so we match on it; if pypdf
    rewords one, the file is still rejected, only with the generic reason.
    """
    message = str(exc).lower()
    if "cycl" in message or "loop" in message:
        return "PDF contains a reference loop (an object that refers back to itself)"
    if isinstance(exc, LimitReachedError) and ("decompress" in message or "output" in message):
        return (
            "PDF contains a compressed stream that expands beyond the safety limit "
            "(a decompression bomb)"
        )
    return None


def _pdf_failure_reason(exc: Exception) -> str | None:
    """Bombs and loops, or any other of pypdf's safety limits."""
    if hostile := _pdf_hostile_reason(exc):
        return hostile
    if isinstance(exc, LimitReachedError):
        return "PDF exceeds a safety limit of the PDF reader"
    return None


def _extract_pdf(path: Path) -> str:
    with _reject_on_failure("PDF", _pdf_failure_reason):
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                unlocked = bool(reader.decrypt(""))
            except Exception:  # e.g. missing AES support
                unlocked = False
            if not unlocked:
                raise DocumentRejected("PDF is password-protected")
        count = len(reader.pages)
    if count > MAX_PDF_PAGES:
        raise DocumentRejected(f"PDF has {count} pages; at most {MAX_PDF_PAGES} are supported")
    texts: list[str] = []
    failures = 0
    last_reason: str | None = None
    for index in range(count):
        try:
            texts.append(reader.pages[index].extract_text() or "")
        except MemoryError:
            raise
        except RecursionError:
            # Deeply nested arrays/dicts in a content stream.  Raised out of
            # here it reached the child as "failed unexpectedly" and was
            # retried; the same bytes always recurse the same way.
            raise DocumentRejected("PDF is nested too deeply to read") from None
        except Exception as exc:  # one broken page should not lose the rest...
            hostile = _pdf_hostile_reason(exc)
            if hostile:  # ...but a bomb or a loop is an attack, not damage
                raise DocumentRejected(hostile) from None
            failures += 1
            last_reason = _pdf_failure_reason(exc)
    if failures and failures == count:
        raise DocumentRejected(last_reason or "PDF could not be read; every page is damaged")
    return "\n\n".join(texts)


def check_zip_container(path: Path) -> None:
    """Reject zip bombs before python-docx decompresses anything."""
    with _reject_on_failure("Word document"):
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise DocumentRejected(f"looks like a zip bomb: more than {MAX_ZIP_ENTRIES} entries")
    total = sum(info.file_size for info in infos)
    if total > MAX_ZIP_TOTAL_BYTES:
        limit_mb = MAX_ZIP_TOTAL_BYTES // (1024 * 1024)
        raise DocumentRejected(f"looks like a zip bomb: it would expand to more than {limit_mb} MB")
    for info in infos:
        if info.file_size > ZIP_RATIO_MIN_BYTES and info.file_size > MAX_ZIP_RATIO * max(
            info.compress_size, 1
        ):
            raise DocumentRejected(
                f"looks like a zip bomb: an entry is compressed more than {MAX_ZIP_RATIO}:1"
            )
    # The sizes above come from the central directory and could lie; zipfile
    # never inflates past an entry's declared size (and then fails its CRC
    # check as "damaged"), so a lying entry cannot expand beyond them.


_XML_DECLARATIONS = tuple(
    marker.encode(codec)
    for marker in ("<!DOCTYPE", "<!ENTITY")
    for codec in ("utf-8", "utf-16-le", "utf-16-be")  # OPC allows only UTF-8 and UTF-16
)


def check_docx_xml(path: Path) -> None:
    """Reject DTDs in the XML parts of a Word document.

    Word never writes a DOCTYPE, but an attacker can add one to declare
    external entities (XXE: ``SYSTEM "file:///etc/passwd"``) or nested
    "billion laughs" entities.  python-docx parses with
    ``resolve_entities=False`` (and libxml2 caps entity amplification), so
    neither is expanded; this check turns such a file into a clear refusal
    instead of a parse with silently missing text or an "XMLSyntaxError".
    Runs after ``check_zip_container``, so the bytes inflated here are bounded.
    """
    overlap = max(len(marker) for marker in _XML_DECLARATIONS) - 1
    with _reject_on_failure("Word document"), zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.lower().endswith((".xml", ".rels")):
                continue
            tail = b""
            with zf.open(info) as part:
                while chunk := part.read(ZIP_XML_SCAN_CHUNK):
                    window = tail + chunk
                    if any(marker in window for marker in _XML_DECLARATIONS):
                        raise DocumentRejected(
                            "Word document contains XML entity or DOCTYPE declarations, which "
                            "Word never writes (a possible XXE or entity-expansion attack)"
                        )
                    tail = window[-overlap:]


def _extract_docx(path: Path) -> str:
    check_zip_container(path)
    check_docx_xml(path)
    lines: list[str] = []

    def walk(container: Any) -> None:
        for block in container.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    cells: list[str] = []
                    seen: set[int] = set()
                    for cell in row.cells:
                        if id(cell._tc) in seen:  # merged cells repeat
                            continue
                        seen.add(id(cell._tc))
                        cells.append(" ".join(cell.text.split()))
                    if any(cells):
                        lines.append(" | ".join(cells))
            else:
                lines.append(block.text)

    with _reject_on_failure("Word document"):
        walk(docx.Document(str(path)))
    return "\n".join(lines)


def _extract_html(path: Path) -> str:
    data = path.read_bytes()
    # A declared charset (<meta charset>, BOM) is honoured by handing bs4 the bytes.
    # Without one, bs4's own guess reads short Western pages as cp1250 ("crčme"),
    # so the text is decoded the way plain-text uploads are.
    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    markup: bytes | str = data if declared or data.startswith(_BOMS) else decode_text(data)
    with _reject_on_failure("HTML"):
        # lxml's HTML parser never fetches external resources, and we never follow links.
        soup = BeautifulSoup(markup, "lxml")
        for tag in soup(["script", "style", "noscript", "template"]):
            tag.decompose()
        text = soup.get_text("\n")
    return "\n".join(line.strip() for line in text.splitlines())


def _extract_json(path: Path) -> str:
    raw = decode_text(path.read_bytes())
    try:
        value = json.loads(raw)
    except RecursionError:
        raise DocumentRejected("JSON is nested too deeply to read") from None
    except ValueError:
        return raw  # not valid JSON after all: index it as plain text
    lines: list[str] = []
    _walk_json(value, 0, lines)
    return "\n".join(lines)


def _walk_json(value: Any, depth: int, out: list[str]) -> None:
    """Emit YAML-like ``key: value`` lines so keys and scalars are searchable."""
    if depth > MAX_JSON_DEPTH:
        raise DocumentRejected(f"JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    pad = "  " * depth
    if isinstance(value, dict):
        pairs = [(f"{key}: ", child) for key, child in value.items()]
    elif isinstance(value, list):
        pairs = [("- ", child) for child in value]
    else:
        out.append(f"{pad}{_scalar(value)}")
        return
    for label, child in pairs:
        if isinstance(child, (dict, list)):
            if child:
                out.append(f"{pad}{label.rstrip()}")
                _walk_json(child, depth + 1, out)
        else:
            out.append(f"{pad}{label}{_scalar(child)}")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("\n", " ")


def _extract_csv(path: Path) -> str:
    text = decode_text(path.read_bytes())
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole rows only
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows: list[str] = []
    try:
        for row in csv.reader(io.StringIO(text, newline=""), dialect):
            cells = [" ".join(cell.split()) for cell in row]
            if any(cells):
                rows.append(" | ".join(cells))
    except csv.Error:
        return text  # malformed CSV (e.g. a huge field): keep it as plain text
    return "\n".join(rows)


def _extract_plain(path: Path) -> str:
    return decode_text(path.read_bytes())


_EXTRACTORS = {
    "pdf": _extract_pdf,
    "docx": _extract_docx,
    "html": _extract_html,
    "json": _extract_json,
    "csv": _extract_csv,
    "markdown": _extract_plain,
    "text": _extract_plain,
}
