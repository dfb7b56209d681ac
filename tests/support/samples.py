"""Documents of every supported type, built by the tests (no binary fixtures in the repo)."""

from __future__ import annotations

import io
import json

import docx


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF with real Helvetica text, xref offsets computed."""
    n = len(pages)
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>")
    font_id = 3 + 2 * n
    for i, lines in enumerate(pages):
        ops = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
        stream = f"BT /F1 12 Tf 72 720 Td {ops} ET" if lines else ""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{off:010d} 00000 n \n" for off in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def make_docx_bytes(paragraphs: list[str]) -> bytes:
    document = docx.Document()
    for p in paragraphs:
        document.add_paragraph(p)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def document_with_phrase(kind: str, phrase: str, nonce: str) -> tuple[str, bytes]:
    """A file of `kind` whose text contains `phrase` (and a nonce so its bytes are unique)."""
    filler = "Sluice gates regulate water flow in canals and rivers."
    if kind == "txt":
        return "notes.txt", f"{filler}\n\n{phrase}\n\n{nonce}\n".encode()
    if kind == "md":
        return "readme.md", f"# Notes\n\n{filler}\n\n## Finding\n\n{phrase}\n\n{nonce}\n".encode()
    if kind == "html":
        body = f"<!doctype html><html><head><title>t</title><script>var x=1;</script></head>" \
               f"<body><h1>Report</h1><p>{filler}</p><p>{phrase}</p><p>{nonce}</p></body></html>"
        return "page.html", body.encode()
    if kind == "csv":
        return "table.csv", f"id,comment\n1,{filler}\n2,{phrase}\n3,{nonce}\n".encode()
    if kind == "json":
        return "data.json", json.dumps({"title": filler, "finding": phrase, "n": nonce}).encode()
    if kind == "pdf":
        return "paper.pdf", make_pdf([[filler], [phrase, nonce]])
    if kind == "docx":
        return "memo.docx", make_docx_bytes([filler, phrase, nonce])
    raise ValueError(kind)


ALL_KINDS = ["txt", "md", "html", "csv", "json", "pdf", "docx"]
