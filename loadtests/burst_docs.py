"""The seed's burst documents: one real file per user from the upload corpus, and a phrase
from each that a search must find.

Kinds are mixed pdf / docx / md / txt / html (the corpus's CSV and JSON are left out: the
seed's users upload office documents and notes). Full length takes every size the corpus
has, 10 KB to ~5 MB (its big PDF/DOCX hold a multi-MB photo, as real office files do);
`quick` keeps files under `max_kb`. The phrase is a sentence read back from the file's own
text (not the corpus manifest's probes, which for PDF/DOCX come from other text), so a
file that is searchable is found by it.
"""

from __future__ import annotations

import html.parser
import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from corpus import _BOILERPLATE, CORPUS_DIR, MEDIA_TYPES, PLACEHOLDER, _sentences, build
from corpus import load as load_corpus

KINDS = ("pdf", "docx", "md", "txt", "html")


@dataclass(frozen=True)
class Doc:
    name: str
    kind: str
    data: bytes  # with a fresh nonce: the server never deduplicates two users' files
    text_chars: int  # length of the text a parser finds in it (what gets chunked)
    phrase: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.kind]


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def text_of(kind: str, data: bytes) -> str:
    """The document's text, read the simple way the corpus wrote it."""
    if kind == "pdf":  # uncompressed content streams of "(line) '" operators
        lines = re.findall(rb"\(((?:[^()\\]|\\.)*)\) '", data)
        return " ".join(ln.decode("latin-1").replace("\\(", "(").replace("\\)", ")")
                        .replace("\\\\", "\\") for ln in lines)
    if kind == "docx":
        import docx

        return "\n\n".join(p.text for p in docx.Document(io.BytesIO(data)).paragraphs)
    if kind == "html":
        parser = _Text()
        parser.feed(data.decode("utf-8", "replace"))
        return "".join(parser.parts)
    return data.decode("utf-8", "replace")


def phrase_of(text: str) -> str:
    """A plain sentence from the middle of the text (a search query a person might type)."""
    found = [s for s in _sentences([text]) if not _BOILERPLATE.search(s) and "NONCE" not in s]
    if not found:
        return " ".join(text.split()[:12])
    return str(found[len(found) // 2])


def _with_nonce(data: bytes, offset: int) -> bytes:
    nonce = secrets.token_hex(8).encode()  # 16 bytes, as long as the placeholder
    return data[:offset] + nonce + data[offset + len(PLACEHOLDER):]


def pick(n: int, max_kb: float | None = None, skip: int = 0, corpus_dir: Path = CORPUS_DIR,
         corpus_files: int | None = None, prefix: str = "user") -> list[Doc]:
    """n documents, kinds in turn, sizes as the corpus has them (under max_kb if given).

    `skip` leaves out the first documents of each kind's list (the calibration's). A corpus
    not built yet is built with `corpus_files` files (default: the corpus's own 400).
    """
    if corpus_files and not (corpus_dir / "manifest.json").exists():
        build(corpus_dir, n_files=corpus_files)
    manifest = load_corpus(corpus_dir)
    entries = manifest["files"]
    assert isinstance(entries, list)
    by_kind: dict[str, list[dict[str, object]]] = {k: [] for k in KINDS}
    for e in entries:
        size = e["bytes"]
        assert isinstance(size, int)
        if e["kind"] in by_kind and (max_kb is None or size <= max_kb * 1000):
            by_kind[str(e["kind"])].append(e)
    kinds = [k for k in KINDS if len(by_kind[k]) > skip]
    if not kinds:
        raise RuntimeError(f"the corpus has no {'/'.join(KINDS)} files under {max_kb} KB")
    docs = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        pool = by_kind[kind][skip:]
        entry = pool[(i // len(kinds)) % len(pool)]
        raw = (corpus_dir / "files" / str(entry["name"])).read_bytes()
        offset = entry["nonce_offset"]
        assert isinstance(offset, int)
        data = _with_nonce(raw, offset)
        text = text_of(kind, data)
        docs.append(Doc(f"{prefix}{i:03d}-{entry['name']}", kind, data, len(text), phrase_of(text)))
    return docs
