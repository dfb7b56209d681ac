"""Builders for hostile files. Every one is generated here, in code: no binary fixtures.

Each stays well under the suite's MAX_UPLOAD_MB=2 as uploaded, however much it
claims to expand to.
"""

from __future__ import annotations

import functools
import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docx

MB = 1024 * 1024
"""The expensive builders are cached: bytes are immutable and both test modules use them."""

# --- PDF --------------------------------------------------------------------


def build_pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF from raw object bodies (object n is objects[n-1]), xref offsets computed."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, root, xref,
    )
    return bytes(out)


def pdf_stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
ONE_PAGE_TREE = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def text_page(contents: bytes, font: int) -> bytes:
    return (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %s "
        b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (contents, font)
    )


@functools.cache
def deflated_zeros(size: int) -> bytes:
    """zlib level 9 of `size` zero bytes (~1000:1), built 1 MB at a time."""
    compressor = zlib.compressobj(9)
    block = b"\0" * MB
    parts = [compressor.compress(block) for _ in range(size // MB)]
    return b"".join([*parts, compressor.flush()])


@functools.cache
def pdf_flate_bomb(expands_to: int = 400 * MB) -> bytes:
    """One page whose FlateDecode content stream inflates to `expands_to` bytes."""
    return build_pdf([
        CATALOG, ONE_PAGE_TREE, text_page(b"4 0 R", 5),
        pdf_stream(deflated_zeros(expands_to), b"/Filter /FlateDecode "), FONT,
    ])


@functools.cache
def pdf_stream_array_bomb(streams: int = 12, each: int = 70 * MB) -> bytes:
    """A content array of streams, each under pypdf's 75 MB per-stream limit (840 MB in all)."""
    data = deflated_zeros(each)
    refs = b" ".join(b"%d 0 R" % (5 + i) for i in range(streams))
    objects = [CATALOG, ONE_PAGE_TREE, text_page(b"[" + refs + b"]", 4), FONT]
    objects += [pdf_stream(data, b"/Filter /FlateDecode ") for _ in range(streams)]
    return build_pdf(objects)


def pdf_kids_self_loop() -> bytes:
    """The page tree lists itself among its own Kids."""
    return build_pdf([
        CATALOG, b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>", text_page(b"4 0 R", 5),
        pdf_stream(b"BT /F1 12 Tf 72 720 Td (loop text) Tj ET"), FONT,
    ])


def pdf_kids_cycle() -> bytes:
    """Pages 2 -> Pages 6 -> Pages 2."""
    return build_pdf([
        CATALOG, b"<< /Type /Pages /Kids [6 0 R] /Count 1 >>", text_page(b"4 0 R", 5),
        pdf_stream(b"BT /F1 12 Tf 72 720 Td (cycle text) Tj ET"), FONT,
        b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R] /Count 1 >>",
    ])


def pdf_parent_cycle() -> bytes:
    """A page without Resources inherits them through a /Parent chain that loops."""
    return build_pdf([
        CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 1 /Parent 6 0 R >>",
        b"<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>",
        pdf_stream(b"BT /F1 12 Tf 72 720 Td (parent loop) Tj ET"), FONT,
        b"<< /Type /Pages /Kids [] /Count 0 /Parent 2 0 R >>",
    ])


def pdf_self_reference() -> bytes:
    """Object 6 is nothing but a reference to itself, used as MediaBox, Contents, Resources."""
    return build_pdf([
        CATALOG, ONE_PAGE_TREE,
        b"<< /Type /Page /Parent 2 0 R /MediaBox 6 0 R /Contents 6 0 R /Resources 6 0 R >>",
        b"<< >>", FONT, b"6 0 R",
    ])


def pdf_nested_arrays(depth: int = 100_000) -> bytes:
    """A content stream of 100 000 nested arrays: pypdf's parser recurses per level."""
    content = b"BT /F1 12 Tf 72 720 Td (before) Tj ET " + b"[" * depth + b"]" * depth
    return build_pdf([CATALOG, ONE_PAGE_TREE, text_page(b"4 0 R", 5), pdf_stream(content), FONT])


def pdf_image_only() -> bytes:
    """A page that only paints an image: no text operators at all."""
    image = zlib.compress(b"\x80" * 256)
    return build_pdf([
        CATALOG, ONE_PAGE_TREE,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /XObject << /Im1 5 0 R >> >> >>",
        pdf_stream(b"q 100 0 0 100 72 600 cm /Im1 Do Q"),
        pdf_stream(image, b"/Type /XObject /Subtype /Image /Width 16 /Height 16 "
                          b"/ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /FlateDecode "),
    ])


# --- ZIP containers (DOCX / XLSX / PPTX) -----------------------------------

OOXML_MAIN_PART = {
    "docx": "word/document.xml", "xlsx": "xl/workbook.xml", "pptx": "ppt/presentation.xml",
}


def docx_bytes(paragraphs: list[str]) -> bytes:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


@functools.cache
def ooxml_zip_bomb(kind: str, expands_to: int = 300 * MB) -> bytes:
    """An Office container whose main part is `expands_to` zero bytes (~1000:1)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        info = zipfile.ZipInfo(OOXML_MAIN_PART[kind])
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as part:
            block = b"\0" * MB
            for _ in range(expands_to // MB):
                part.write(block)
    return buf.getvalue()


@functools.cache
def zip_with_entries(count: int = 10_001) -> bytes:
    """A docx-looking ZIP with more entries than any real document has."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>")
        for i in range(count):
            zf.writestr(f"x/{i}", "")
    return buf.getvalue()


@functools.cache
def docx_with_lying_sizes(real_size: int = 300 * MB, claimed: int = 2048) -> bytes:
    """A real DOCX whose word/document.xml inflates to `real_size` bytes while both
    its local header and the central directory claim `claimed` bytes, so the
    size and ratio checks see nothing wrong."""
    source = zipfile.ZipFile(io.BytesIO(docx_bytes(["lying sizes"])))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in source.infolist():
            if info.filename != "word/document.xml":
                zf.writestr(info.filename, source.read(info.filename))
                continue
            big = zipfile.ZipInfo(info.filename)
            big.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(big, "w") as part:
                block = b"\0" * MB
                for _ in range(real_size // MB):
                    part.write(block)
    data = bytearray(buf.getvalue())
    name = b"word/document.xml"
    # (signature, offset of the uncompressed size, offset of the name length, header size)
    for sig, size_at, name_len_at, header in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):
        patched, i = 0, data.find(sig)
        while i != -1:
            n = int.from_bytes(data[i + name_len_at : i + name_len_at + 2], "little")
            if data[i + header : i + header + n] == name:
                assert int.from_bytes(data[i + size_at : i + size_at + 4], "little") == real_size
                data[i + size_at : i + size_at + 4] = claimed.to_bytes(4, "little")
                patched += 1
            i = data.find(sig, i + 4)
        assert patched == 1, sig
    return bytes(data)


def _docx_with_doctype(doctype: bytes, reference: bytes) -> bytes:
    """A real DOCX whose word/document.xml gets `doctype` in its prolog and
    `reference` in place of a paragraph's text."""
    marker = "ENTITY_GOES_HERE"
    base = docx_bytes(["Visible paragraph before", marker, "Visible paragraph after"])
    source = zipfile.ZipFile(io.BytesIO(base))
    xml = source.read("word/document.xml").replace(marker.encode(), reference)
    declaration, end, rest = xml.partition(b"?>")
    xml = declaration + end + b"\n" + doctype + rest
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in source.infolist():
            body = xml if info.filename == "word/document.xml" else source.read(info.filename)
            zf.writestr(info.filename, body)
    return buf.getvalue()


def docx_xxe(target: str = "file:///etc/passwd") -> bytes:
    """XML external entity: the document's text is the content of `target`."""
    return _docx_with_doctype(
        b'<!DOCTYPE w:document [<!ENTITY xxe SYSTEM "%s">]>' % target.encode(), b"&xxe;"
    )


def docx_billion_laughs(levels: int = 9) -> bytes:
    """Entity expansion: lol9 expands to 10**9 'lol's (3 GB) from a few hundred bytes."""
    entities = [b'<!ENTITY lol0 "lol">'] + [
        b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, levels + 1)
    ]
    return _docx_with_doctype(
        b"<!DOCTYPE w:document [" + b"".join(entities) + b"]>", b"&lol%d;" % levels
    )


# --- HTML, text, executables -------------------------------------------------


def nested_html(depth: int = 100_000) -> bytes:
    return (
        b"<!doctype html><html><body>" + b"<div>" * depth + b"deep text"
        + b"</div>" * depth + b"</body></html>"
    )


ELF = (
    b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00\x01\x00\x00\x00"
    + bytes(range(256)) * 16
)
"""The start of an x86-64 Linux executable."""

MZ = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44
    + b"\x80\x00\x00\x00" + bytes(range(256)) * 16
)
"""The start of a Windows PE executable (DOS header, e_lfanew at 0x3c)."""


# --- The cases and what must become of them -------------------------------

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
    Case("docx-zip-bomb", "bomb.docx", lambda: ooxml_zip_bomb("docx"),
         r"^looks like a zip bomb: it would expand to more than \d+ MB$"),
    Case("xlsx-zip-bomb", "bomb.xlsx", lambda: ooxml_zip_bomb("xlsx"),
         r"^Excel workbooks \(\.xlsx\) are not supported", refusable=True),
    Case("pptx-zip-bomb", "bomb.pptx", lambda: ooxml_zip_bomb("pptx"),
         r"^PowerPoint presentations \(\.pptx\) are not supported", refusable=True),
    Case("xlsx-bomb-named-docx", "budget.docx", lambda: ooxml_zip_bomb("xlsx"),
         r"^Excel workbooks \(\.xlsx\) are not supported", refusable=True),
    Case("docx-lying-sizes", "lying.docx", docx_with_lying_sizes,
         r"^Word document could not be read; it may be damaged"),
    Case("docx-10001-entries", "many.docx", zip_with_entries,
         r"^looks like a zip bomb: more than 10000 entries$", refusable=True),
    # XML entities: never resolved or expanded; refused as Word never writes a DTD.
    Case("docx-xxe", "xxe.docx", docx_xxe,
         r"^Word document contains XML entity or DOCTYPE declarations"),
    Case("docx-billion-laughs", "laughs.docx", docx_billion_laughs,
         r"^Word document contains XML entity or DOCTYPE declarations"),
    # PDF: decompression bombs, reference loops, deep nesting.
    Case("pdf-flate-bomb", "bomb.pdf", pdf_flate_bomb,
         r"^PDF contains a compressed stream that expands beyond the safety limit"),
    Case("pdf-stream-array-bomb", "bombs.pdf", pdf_stream_array_bomb,
         r"^PDF contains a compressed stream that expands beyond the safety limit"),
    Case("pdf-kids-self-loop", "loop.pdf", pdf_kids_self_loop,
         r"^PDF contains a reference loop"),
    Case("pdf-kids-cycle", "cycle.pdf", pdf_kids_cycle, r"^PDF contains a reference loop"),
    Case("pdf-parent-cycle", "parents.pdf", pdf_parent_cycle,
         r"^PDF contains a reference loop"),
    Case("pdf-self-reference", "self.pdf", pdf_self_reference,
         r"^PDF (could not be read|contains a reference loop)"),
    Case("pdf-nested-arrays", "nested.pdf", pdf_nested_arrays,
         r"^PDF is nested too deeply to read$"),
    # HTML: lxml caps the tree depth itself, so the text survives.
    Case("html-100k-nested-divs", "deep.html", nested_html, text=("deep text",)),
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
    Case("pdf-image-only", "scan.pdf", pdf_image_only,
         r"^PDF has no extractable text \(scanned images\?\)$"),
    Case("docx-no-paragraphs", "blank.docx", lambda: docx_bytes([]),
         r"^no text could be extracted"),
    # Renamed executables.
    Case("elf-named-txt", "notes.txt", lambda: ELF,
         r"^unsupported file type: looks like a Linux executable \(ELF\)$", refusable=True),
    Case("exe-named-pdf", "invoice.pdf", lambda: MZ,
         r"^file is named \.pdf but its content is not a PDF \(looks like a Windows executable\)$",
         refusable=True),
]
