"""A corpus of real text encodings, each with the text it must come back as.

Every sample is encoded the way the tool that writes it would (Windows
Notepad's "ANSI" is cp1252, old Unix tools Latin-1, Excel's "Unicode text" is
UTF-16 with a BOM, Japanese Windows Shift-JIS). Short samples are the hard
ones: with a dozen bytes to go on, detectors guess, and Western text came back
as Baltic ("Crčme brūlée") or as Chinese.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.charsets import looks_western
from shared.detect import decode_text
from worker.pipeline.parse import extract_text

WESTERN = [
    "Crème brûlée",
    "CRÈME BRÛLÉE",
    "Über",
    "résumé",
    "Açaí",
    "Ålborg",
    "Menu du jour : crème brûlée, 5 €",
    "Québec, Montréal, Trois-Rivières",
    "Dès Noël où un zéphyr haï me vêt de glaçons würmiens je dîne d’exquis rôtis de bœuf"
    " au kir à l’aÿ d’âge mûr & cætera !",
    "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.",
    "El pingüino Wenceslao hizo kilómetros bajo exhaustiva lluvia y frío, añoraba a su"
    " querido cachorro.",
    "Æble og Øl på Åland; smørrebrød til frokost.",
    "Þórður Guðmundsson býr í Reykjavík.",
    "A última edição do relatório está disponível em São Paulo.",
    "Il caffè è più buono così, perché l’acqua è calda.",
    "Rapport annuel 2023\r\n\r\nLe chiffre d’affaires a progressé de 12 % — une hausse « notable ».\r\n"
    "Prochaine étape : l’expansion à Genève et à Zürich.\r\n",
]
# cp1252 only: € and typographic quotes are not in Latin-1.
LATIN1 = [t for t in WESTERN if all(ord(c) < 0x100 for c in t)]
JAPANESE = [
    "東京",
    "カタカナテキスト",
    "今日は良い天気ですね",
    "これは日本語のテキストです。東京は日本の首都です。",
    "ソフトウェアのバージョンは3.2です。詳細はマニュアルを参照してください。",
]
UNICODE = [
    "Crème brûlée",
    "Grüße aus Köln — naïve café",
    "Пример текста на русском языке.",
    "日本語とEnglishの混在テキスト",
    "emoji 🎉 and math ∑ ∫",
]

CORPUS = (
    [pytest.param("cp1252", t, id=f"cp1252-{i}") for i, t in enumerate(WESTERN)]
    + [pytest.param("latin-1", t, id=f"latin1-{i}") for i, t in enumerate(LATIN1)]
    + [pytest.param("shift_jis", t, id=f"sjis-{i}") for i, t in enumerate(JAPANESE)]
    + [pytest.param("utf-16", t, id=f"utf16bom-{i}") for i, t in enumerate(UNICODE)]
    + [pytest.param("utf-8", t, id=f"utf8-{i}") for i, t in enumerate(UNICODE)]
)


@pytest.mark.parametrize(("encoding", "text"), CORPUS)
def test_decode_text_returns_the_written_text(encoding: str, text: str) -> None:
    data = text.encode(encoding)  # Python's utf-16 codec writes a BOM, as Windows does
    if encoding == "utf-16":
        assert data[:2] in (b"\xff\xfe", b"\xfe\xff")
    assert decode_text(data) == text


@pytest.mark.parametrize(("encoding", "text"), CORPUS)
def test_plain_text_upload_is_stored_right(encoding: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode(encoding))
    assert extract_text(path, "text") == text.replace("\r\n", "\n").strip()


@pytest.mark.parametrize("text", WESTERN[:8])
def test_html_without_a_charset_is_read_as_western(text: str, tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_bytes(b"<html><body><p>" + text.encode("cp1252") + b"</p></body></html>")
    assert extract_text(path, "html") == text


def test_html_declared_charset_still_wins(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    page = '<html><head><meta charset="shift_jis"></head><body><p>東京</p></body></html>'
    path.write_bytes(page.encode("shift_jis"))
    assert extract_text(path, "html") == "東京"


@pytest.mark.parametrize(
    ("encoding", "text"),
    [("shift_jis", t) for t in JAPANESE[2:]] + [("cp1251", "Пример текста на русском языке.")],
)
def test_other_legacy_text_does_not_look_western(encoding: str, text: str) -> None:
    """Read as cp1252 these are mojibake that must not pass for Western text."""
    mojibake = text.encode(encoding).decode("cp1252", errors="ignore")
    assert not looks_western(mojibake)
    assert decode_text(text.encode(encoding)) == text
