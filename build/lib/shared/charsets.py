"""Decode legacy (non-Unicode) text: Western European first, then charset-normalizer.

charset-normalizer ranks code pages by "chaos" and language coherence. On the
short texts people actually upload (a menu, a few names, one paragraph) the
single-byte Latin code pages tie and it picks one of them more or less at
random: "Crème brûlée" in cp1252 came back as cp1257 "Crčme brūlée", short
words even as CJK ("Über" as two Chinese characters). Western European text
is by far the most common legacy upload, and cp1252 (a superset of Latin-1's
printable range) reads it right, so we first ask a cheaper, sharper question:
do these bytes *look like* Western text when read as cp1252? Only if not do we
take charset-normalizer's guess (Shift-JIS, EUC-JP, cp1251, cp1250, ...).

"Looks like" is three linear checks on the cp1252 reading:

* every byte is defined in cp1252 (Shift-JIS punctuation uses 0x81, which is
  not), and there is no C0 control other than tab, newline, CR and form feed;
* a non-ASCII character touching an ASCII letter is a Western letter or an
  in-word mark (apostrophe, dash): accents sit inside words. Multi-byte
  encodings read as cp1252 put symbols there ("ƒJƒ^" is katakana);
* non-ASCII characters come alone or in pairs: Western words rarely hold three
  accented letters in a row, while CJK and Cyrillic read as cp1252 are long
  runs of them. A small share of longer runs is tolerated (quotes, ellipses).

The price: Central European text whose bytes also form plausible Western
words (much Czech) reads as cp1252. That is the same trade the old tie rule
made, now made on purpose and only where the reading is plausible.
"""

from __future__ import annotations

from charset_normalizer import from_bytes

# Letters of Western European languages in cp1252: Latin-1's À-ÿ minus × and ÷,
# plus Œ œ Š š Ž ž Ÿ. ƒ (0x83, the florin sign) is left out on purpose: it is
# the katakana lead byte of Shift-JIS.
_WESTERN_LETTERS = frozenset(
    [chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7)] + list("ŒœŠšŽžŸªºµ")
)
_IN_WORD_MARKS = frozenset("’‘–—·²")  # l’été, don’t, word—word, m²
_TEXT_CONTROLS = frozenset("\t\n\r\f")
_MAX_RUN = 2
_LONG_RUN_SHARE = 0.1


def looks_western(text: str) -> bool:
    """True when `text` (bytes read as cp1252) reads like Western European text."""
    non_ascii = in_long_runs = run = 0
    prev = ""
    for i, ch in enumerate(text):
        if ch < " " and ch not in _TEXT_CONTROLS:
            return False
        if ch < "\x80":
            if run > _MAX_RUN:
                in_long_runs += run
            run = 0
            prev = ch
            continue
        non_ascii += 1
        run += 1
        nxt = text[i + 1] if i + 1 < len(text) else ""
        in_word = _ascii_letter(prev) or _ascii_letter(nxt)
        if in_word and ch not in _WESTERN_LETTERS and ch not in _IN_WORD_MARKS:
            return False
        prev = ch
    if run > _MAX_RUN:
        in_long_runs += run
    return in_long_runs <= _LONG_RUN_SHARE * non_ascii


def _ascii_letter(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def decode_legacy(data: bytes) -> str:
    """Text of bytes that are neither UTF-8 nor UTF-16/32. Never raises."""
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    if western is not None and looks_western(western):
        return western
    best = from_bytes(data).best()
    if best is not None:
        return str(best)
    return data.decode("cp1252", errors="replace")
