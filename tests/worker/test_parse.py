"""Detection and in-process extraction, on files the tests build themselves."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import docx
import pytest

from shared.detect import detect_type
from shared.document_errors import DocumentRejected
from tests.support.samples import make_pdf
from worker.pipeline.parse import extract_text, normalize_text


def make_docx(path: Path) -> None:
    document = docx.Document()
    document.add_paragraph("Quarterly sluice report")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Gate"
    table.cell(0, 1).text = "Flow"
    table.cell(1, 0).text = "North"
    table.cell(1, 1).text = "42 m3/s"
    document.add_paragraph("Closing remarks after the table")
    document.save(str(path))


def parse(path: Path, name: str | None = None) -> tuple[str, str]:
    kind = detect_type(path, name or path.name)
    return kind, extract_text(path, kind)


def write(tmp_path: Path, name: str, data: bytes | str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return path


def test_pdf_text_is_extracted(tmp_path: Path) -> None:
    path = write(
        tmp_path, "doc.pdf", make_pdf([["Hello phrase", "second line"], ["Page two words"]])
    )
    kind, text = parse(path)
    assert kind == "pdf"
    assert "Hello phrase" in text
    assert "Page two words" in text


def test_pdf_without_text_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "scan.pdf", make_pdf([[]]))
    with pytest.raises(DocumentRejected, match="no extractable text"):
        parse(path)


def test_damaged_pdf_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.pdf", b"%PDF-1.7\n" + b"\x00garbage" * 50)
    with pytest.raises(DocumentRejected):
        parse(path)


def test_docx_paragraphs_and_tables_in_order(tmp_path: Path) -> None:
    path = tmp_path / "report.docx"
    make_docx(path)
    kind, text = parse(path)
    assert kind == "docx"
    assert (
        text.index("Quarterly")
        < text.index("Gate | Flow")
        < text.index("North | 42 m3/s")
        < text.index("Closing")
    )


def test_docx_zip_bomb_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", b"\x00" * (20 * 1024 * 1024))
    assert detect_type(path, "bomb.docx") == "docx"
    with pytest.raises(DocumentRejected, match="zip bomb"):
        extract_text(path, "docx")


def test_zip_with_too_many_entries_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "many.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>")
        for i in range(10_001):
            zf.writestr(f"x/{i}", "")
    with pytest.raises(DocumentRejected, match="zip bomb"):
        extract_text(path, "docx")


def test_html_drops_scripts_and_styles(tmp_path: Path) -> None:
    html = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Title here</title>"
        "<style>body{color:red}</style><script>alert('x')</script></head>"
        "<body><p>First para</p><noscript>enable js</noscript><template><p>tpl</p></template>"
        "<div>Café <b>bold</b></div></body></html>"
    )
    kind, text = parse(write(tmp_path, "page.txt", html))
    assert kind == "html"  # content wins over the .txt name
    assert "First para" in text
    assert "Café" in text
    assert "Title here" in text
    for hidden in ("alert", "color:red", "enable js", "tpl"):
        assert hidden not in text


def test_json_becomes_key_value_lines(tmp_path: Path) -> None:
    data = {
        "customer": {"name": "Ada", "orders": [{"id": 7, "total": 19.5}]},
        "active": True,
        "note": None,
    }
    kind, text = parse(write(tmp_path, "data.bin", json.dumps(data)))
    assert kind == "json"
    assert "name: Ada" in text
    assert "id: 7" in text
    assert "total: 19.5" in text
    assert "active: true" in text
    assert "note: null" in text


def test_deeply_nested_json_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DocumentRejected, match="nested"):
        parse(write(tmp_path, "deep.json", "[" * 150 + "]" * 150))
    with pytest.raises(DocumentRejected, match="nested"):
        parse(write(tmp_path, "deeper.json", "[" * 100_000 + "]" * 100_000))


def test_csv_keeps_header(tmp_path: Path) -> None:
    kind, text = parse(
        write(tmp_path, "t.csv", 'city,population\nParis,2100000\n"Lyon, FR",520000\n')
    )
    assert kind == "csv"
    assert text.splitlines() == ["city | population", "Paris | 2100000", "Lyon, FR | 520000"]


def test_csv_detected_from_content(tmp_path: Path) -> None:
    rows = "\n".join(f"{i};item {i};{i * 3}" for i in range(10))
    kind, text = parse(write(tmp_path, "export", "id;name;qty\n" + rows + "\n"))
    assert kind == "csv"
    assert "id | name | qty" in text


def test_markdown_and_text(tmp_path: Path) -> None:
    assert parse(write(tmp_path, "notes.md", "# Title\n\nSome *text*, here.\n")) == (
        "markdown",
        "# Title\n\nSome *text*, here.",
    )
    assert (
        parse(write(tmp_path, "notes", "Just prose, with a comma.\nAnother line.\n"))[0] == "text"
    )


def test_latin1_text(tmp_path: Path) -> None:
    prose = (
        "Le café était très animé ce matin-là; la naïve cliente a commandé une crème brûlée.\n" * 3
    )
    kind, text = parse(write(tmp_path, "fr.txt", prose, "latin-1"))
    assert kind == "text"
    assert "café était très animé" in text
    assert "crème brûlée" in text


def test_utf16_with_bom(tmp_path: Path) -> None:
    kind, text = parse(write(tmp_path, "wide.txt", "Grüße aus Köln\nzweite Zeile\n", "utf-16"))
    assert kind == "text"
    assert text == "Grüße aus Köln\nzweite Zeile"


def test_invalid_utf8_does_not_crash(tmp_path: Path) -> None:
    data = b"valid start " + b"\xff\xfe\xc3\x28 mixed \xe2\x82 bytes " * 20
    kind, text = parse(write(tmp_path, "odd.txt", data))
    assert kind == "text"
    assert "valid start" in text


def test_normalize_strips_controls_and_blank_runs() -> None:
    raw = "a\x00b\x07c\r\n\r\n\r\n\r\nd  \t\n\x0cnext\ud800"
    assert normalize_text(raw) == "abc\n\nd\n\nnext"


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.txt", b"")
    with pytest.raises(DocumentRejected, match="file is empty"):
        detect_type(path, "empty.txt")
    with pytest.raises(DocumentRejected, match="file is empty"):
        extract_text(path, "text")


def test_whitespace_only_file_has_no_text(tmp_path: Path) -> None:
    with pytest.raises(DocumentRejected, match="no text could be extracted"):
        parse(write(tmp_path, "blank.txt", "  \n\n\t\n"))


def test_exe_named_pdf_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "invoice.pdf", b"MZ\x90\x00" + bytes(range(256)) * 8)
    with pytest.raises(
        DocumentRejected, match=r"named \.pdf but its content is not a PDF.*Windows executable"
    ):
        detect_type(path, "invoice.pdf")
    with pytest.raises(
        DocumentRejected, match="unsupported file type: looks like a Windows executable"
    ):
        detect_type(path, "setup.bin")


def test_text_named_pdf_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "fake.pdf", "this is not a pdf at all\n")
    with pytest.raises(DocumentRejected, match=r"file is named \.pdf but its content is not a PDF"):
        detect_type(path, "fake.pdf")


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image (PNG)"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 64, "Linux executable"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "legacy Microsoft Office"),
    ],
)
def test_binary_formats_are_rejected(tmp_path: Path, data: bytes, phrase: str) -> None:
    with pytest.raises(DocumentRejected, match="unsupported file type") as info:
        detect_type(write(tmp_path, "upload", data), "upload")
    assert phrase in info.value.reason


def test_non_word_zips_are_rejected(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(DocumentRejected, match="Excel workbook"):
        detect_type(write(tmp_path, "book.docx", buf.getvalue()), "book.docx")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    with pytest.raises(DocumentRejected, match="ZIP archive"):
        detect_type(write(tmp_path, "a.zip", buf.getvalue()), "a.zip")
    with pytest.raises(DocumentRejected, match="damaged"):
        detect_type(write(tmp_path, "cut.docx", buf.getvalue()[:20]), "cut.docx")


def test_text_starting_like_a_magic_number_is_text(tmp_path: Path) -> None:
    for name, body in (("bmw.txt", "BMW annual report\n"), ("mz", "MZ-80 service manual\n")):
        assert parse(write(tmp_path, name, body)) == ("text", body.strip())


def test_rtf_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DocumentRejected, match="RTF"):
        detect_type(write(tmp_path, "memo.rtf", "{\\rtf1\\ansi Hello}"), "memo.rtf")


def test_markdown_with_inline_html_stays_markdown(tmp_path: Path) -> None:
    body = "# Notes\n\n<div>box</div>\n<p>para</p>\n<span>x</span>\n"
    assert parse(write(tmp_path, "readme.md", body))[0] == "markdown"


def test_tab_separated_values_are_sniffed(tmp_path: Path) -> None:
    body = "name\tage\tcity\n" + "".join(f"p{i}\t{20 + i}\tTown {i}\n" for i in range(5))
    kind, text = parse(write(tmp_path, "people", body))
    assert kind == "csv"
    assert text.splitlines()[:2] == ["name | age | city", "p0 | 20 | Town 0"]
