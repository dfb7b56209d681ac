"""The upload corpus: real text found on this machine, built once into loadtests/.corpus/.

Text comes from Python's own documentation (pydoc of stdlib modules, as plain
text and as pydoc's HTML), from markdown files under /usr/share/doc and the
README parts of installed packages' METADATA, and from stdlib introspection
(CSV / JSON inventories of functions with their docstrings). Sizes follow a
lognormal (median ~30 KB, 10-250 KB); about 1 in 20 files is a multi-MB
PDF/DOCX whose bytes are mostly an embedded photo, as real big office files
are. Every file holds a 16-byte placeholder at a recorded offset, which each
upload overwrites with a fresh nonce so the server never deduplicates.

`python loadtests/corpus.py [--rebuild]` builds it; the locustfile and
local_proof.py build it on first use.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import inspect
import io
import json
import pydoc
import random
import re
import sys
import warnings
import zipfile
from pathlib import Path

PLACEHOLDER = b"NONCE@@@@@@@@@@@"  # 16 bytes, overwritten in place by each upload
CORPUS_DIR = Path(__file__).resolve().parent / ".corpus"
VERSION = 1
KIND_WEIGHTS = {"txt": 22, "md": 18, "html": 18, "csv": 12, "json": 12, "pdf": 10, "docx": 8}
MEDIA_TYPES = {
    "txt": "text/plain", "md": "text/markdown", "html": "text/html", "csv": "text/csv",
    "json": "application/json", "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
MODULES = """argparse asyncio base64 bisect calendar collections concurrent.futures
configparser contextlib contextvars copy csv dataclasses datetime decimal difflib email
enum fnmatch fractions functools getpass gettext glob gzip hashlib heapq hmac html
http.client http.server imaplib inspect io ipaddress itertools json logging
logging.handlers lzma mailbox mimetypes multiprocessing operator os pathlib pickle
platform pprint queue random re sched secrets selectors shelve shlex shutil signal
smtplib socket socketserver sqlite3 ssl statistics string struct subprocess tarfile
tempfile textwrap threading time timeit tokenize traceback types typing unicodedata
unittest urllib.parse urllib.request uuid warnings weakref xml.etree.ElementTree
zipfile zlib zoneinfo""".split()


def _modules() -> list[object]:
    mods = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            try:
                mods.append(importlib.import_module(name))
            except Exception:  # a module missing on this platform is fine
                continue
    return mods


def _plain_docs(mods: list[object]) -> list[str]:
    return [pydoc.render_doc(m, renderer=pydoc.plaintext) for m in mods]


def _markdown_docs() -> list[str]:
    docs: list[str] = []
    for path in sorted(Path("/usr/share/doc").rglob("*.md*")):
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, gzip.BadGzipFile):
            continue
        if len(text) > 800:
            docs.append(text)
    for meta in sorted(Path(sys.prefix).glob("lib/python3*/site-packages/*.dist-info/METADATA")):
        text = meta.read_text(errors="replace")
        if "Description-Content-Type: text/markdown" in text:
            body = text.split("\n\n", 1)[-1]
            if len(body) > 800:
                docs.append(body)
    return docs


def _api_rows(mods: list[object]) -> list[dict[str, str]]:
    rows = []
    for mod in mods:
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
            doc = inspect.getdoc(obj) or ""
            rows.append({"module": mod.__name__, "name": name,  # type: ignore[attr-defined]
                         "kind": "class" if inspect.isclass(obj) else "function",
                         "signature": sig[:200], "doc": doc[:2000]})
    return rows


def _take(texts: list[str], rng: random.Random, n_bytes: int) -> str:
    """About n_bytes of text: whole documents in random order, the last one cut at a line."""
    out, size = [], 0
    while size < n_bytes:
        doc = rng.choice(texts)
        piece = doc[: n_bytes - size + 1]
        if len(piece) < len(doc):
            piece = piece.rsplit("\n", 1)[0] or piece
        out.append(piece)
        size += len(piece.encode()) + 2
    return "\n\n".join(out)


def _pdf(lines: list[str], image: bytes | None) -> bytes:
    """A valid PDF: Helvetica text pages (+ one page with a JPEG photo), xref computed."""
    esc = [ln.encode("latin-1", "replace").decode("latin-1").replace("\\", "\\\\")
           .replace("(", "\\(").replace(")", "\\)") for ln in lines]
    esc.append(f"ref {PLACEHOLDER.decode()}")
    pages = [esc[i : i + 48] for i in range(0, len(esc), 48)]
    objs: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for page in pages:
        stream = ("BT /F1 10 Tf 50 750 Td 14 TL " + " ".join(f"({ln}) '" for ln in page) + " ET")
        data = stream.encode("latin-1")
        kids.append(len(objs) + 1)
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents "
                    f"{len(objs) + 2} 0 R /Resources << /Font << /F1 FONT 0 R >> >> >>".encode())
        objs.append(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
    if image:
        from PIL import Image

        w, h = Image.open(io.BytesIO(image)).size
        kids.append(len(objs) + 1)
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents "
                    f"{len(objs) + 2} 0 R /Resources << /XObject << /Im1 {len(objs) + 3} 0 R >> "
                    f">> >>".encode())
        draw = b"q 512 0 0 680 50 60 cm /Im1 Do Q"
        objs.append(b"<< /Length %d >>\nstream\n" % len(draw) + draw + b"\nendstream")
        objs.append(f"<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace "
                    f"/DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode /Length {len(image)} >>"
                    f"\nstream\n".encode() + image + b"\nendstream")
    font = len(objs) + 1
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] " \
              f"/Count {len(kids)} >>".encode()
    objs = [o.replace(b"FONT 0 R", f"{font} 0 R".encode()) for o in objs]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{off:010d} 00000 n \n" for off in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _docx(paragraphs: list[str], image: bytes | None) -> bytes:
    import docx
    from docx.shared import Inches

    document = docx.Document()
    document.add_heading("Notes", level=1)
    for p in paragraphs:
        document.add_paragraph(re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", p))
    if image:
        document.add_picture(io.BytesIO(image), width=Inches(6))
    buf = io.BytesIO()
    document.save(buf)
    with zipfile.ZipFile(buf, "a") as z:  # the nonce lives in the zip comment
        z.comment = PLACEHOLDER
    return buf.getvalue()


def _photo(n_bytes: int, rng: random.Random) -> bytes:
    """A JPEG of about n_bytes: smooth gradients plus grain, like a scanned photo."""
    import numpy as np
    from PIL import Image

    side = max(int((n_bytes / 0.57) ** 0.5), 64)  # ~0.57 byte/pixel at this quality and grain
    g = np.random.default_rng(rng.randrange(1 << 30))
    base = np.linspace(0, 255, side, dtype=np.float32)
    img = (base[None, :, None] * 0.5 + base[:, None, None] * 0.3
           + g.normal(0, 40, (side, side, 3))).clip(0, 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(img, "RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


_BOILERPLATE = re.compile(r"Python Library Documentation|MODULE REFERENCE|may be incomplete|NONCE@")


def _sentences(texts: list[str]) -> list[str]:
    found = []
    for t in texts:
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"[\s|]+", " ", t)):
            words = s.split()
            if 8 <= len(words) <= 40 and sum(w.isalpha() for w in words) > len(words) * 0.7:
                found.append(s)
    return found


def build(out: Path = CORPUS_DIR, n_files: int = 400, seed: int = 1) -> dict[str, object]:
    """Write n_files documents and manifest.json into `out`; return the manifest."""
    rng = random.Random(seed)
    mods = _modules()
    plain = _plain_docs(mods)
    markdown = _markdown_docs() or plain
    rows = _api_rows(mods)
    files_dir = out / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    kinds, weights = zip(*KIND_WEIGHTS.items(), strict=True)
    entries = []
    for i in range(n_files):
        kind = rng.choices(kinds, weights)[0]
        large = kind in ("pdf", "docx") and rng.random() < 0.25
        text_bytes = int(min(max(rng.lognormvariate(10.3, 0.8), 10_000), 250_000))  # e^10.3 ≈ 30 KB
        if large:
            text_bytes = rng.randint(30_000, 120_000)
        data = _render(kind, text_bytes, large, plain, markdown, rows, rng)
        name = f"{i:04d}-{kind}.{kind}"
        (files_dir / name).write_bytes(data)
        offset = data.rfind(PLACEHOLDER)
        assert offset >= 0, name
        probe_text = data.decode("utf-8", "ignore") if kind not in ("pdf", "docx") else \
            _take(plain, random.Random(i), 4000)
        found = [s for s in _sentences([probe_text]) if not _BOILERPLATE.search(s)]
        probes = random.Random(i).sample(found, min(3, len(found)))
        entries.append({"name": name, "kind": kind, "bytes": len(data), "large": large,
                        "text_bytes": text_bytes, "nonce_offset": offset, "probes": probes})
    sentences = _sentences(plain)
    rng.shuffle(sentences)
    manifest = {"version": VERSION, "seed": seed, "files": entries, "sentences": sentences[:1500]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _render(kind: str, n: int, large: bool, plain: list[str], markdown: list[str],
            rows: list[dict[str, str]], rng: random.Random) -> bytes:
    ph = PLACEHOLDER.decode()
    if kind == "txt":
        return (_take(plain, rng, n) + f"\n\nloadtest-ref: {ph}\n").encode()
    if kind == "md":
        return (_take(markdown, rng, n) + f"\n\n<!-- loadtest-ref: {ph} -->\n").encode()
    if kind == "html":
        htmldoc = pydoc.HTMLDoc()
        mods = _modules()
        parts, size = [], 0
        while size < n:
            mod = rng.choice(mods)
            body = htmldoc.document(mod)
            parts.append(body)
            size += len(body)
        body = "".join(parts)[: n + 2000]
        return htmldoc.page("Library reference", body + f"<p>ref {ph}</p>").encode()
    if kind in ("csv", "json"):
        start = rng.randrange(len(rows))
        picked, size = [], 0
        while size < n:
            row = rows[(start + len(picked)) % len(rows)]
            picked.append(row)
            size += sum(len(v) for v in row.values()) + 20
        if kind == "json":
            return json.dumps({"source": "python stdlib", "ref": ph, "items": picked},
                              indent=1).encode()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["module", "name", "kind", "signature", "doc"])
        w.writeheader()
        w.writerows(picked)
        buf.write(f"loadtest,ref,{ph},,\n")
        return buf.getvalue().encode()
    text = _take(plain, rng, n)
    image = _photo(rng.randint(1_000_000, 4_900_000), rng) if large else None
    if kind == "pdf":
        lines = [ln[i : i + 95] for ln in text.splitlines() for i in range(0, max(len(ln), 1), 95)]
        return _pdf(lines, image)
    return _docx([p for p in text.split("\n\n") if p.strip()], image)


def load(out: Path = CORPUS_DIR, rebuild: bool = False) -> dict[str, object]:
    """The manifest, building the corpus first if it is missing or stale."""
    path = out / "manifest.json"
    if not rebuild and path.exists():
        manifest: dict[str, object] = json.loads(path.read_text())
        if manifest.get("version") == VERSION:
            return manifest
    return build(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rebuild", action="store_true")
    m = load(rebuild=ap.parse_args().rebuild)
    files = m["files"]
    assert isinstance(files, list)
    total = sum(f["bytes"] for f in files)
    print(f"{len(files)} files, {total / 1e6:.1f} MB, in {CORPUS_DIR}")
