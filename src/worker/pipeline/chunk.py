"""Split text into chunks measured in the embedding model's own tokens.

semantic-text-splitter (Rust) fills each chunk with the largest semantic units
(paragraphs, sentences, words) that fit; counting with the model's tokenizer
means no chunk is ever longer than the model reads (all-MiniLM-L6-v2 silently
truncates past 256 tokens, so a longer chunk would lose text from the index).

Counting is most of the cost: the splitter measures ~6 candidate texts per chunk
it makes, and tokenizing a 1 KB candidate takes ~0.5 ms here, so chunking took
~3.2 ms of CPU per chunk, a tenth of all the CPU a burst needs. For a BERT-style
tokenizer a text's token count is the sum of its pieces' counts when it is cut at
ASCII spaces, tabs and line breaks (the normalizer works character by character,
the pre-tokenizer splits there and WordPiece runs on each word), so `PieceCounter`
tokenizes each distinct piece once and adds cached counts: the same chunks for
~0.45 ms per chunk (the `make compare` Markdown). Any other tokenizer is measured
whole, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer

# [CLS] and [SEP] are added around every input and count against the limit.
SPECIAL_TOKENS = 2

# Where a BERT tokenizer's count adds up: these characters are whitespace to both
# Python and the tokenizer, which neither drops nor joins them. Other Unicode spaces
# (e.g. U+00A0, or U+001C, which the normalizer deletes) stay inside a piece.
_PIECE_BREAKS = re.compile(r"[ \t\n\r]+")
_ADDITIVE_NORMALIZERS = {"BertNormalizer", "NoneType"}
_ADDITIVE_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_ADDITIVE_MODELS = {"WordPiece"}
# A piece is measured ~7 times (once per candidate chunk holding it), so even long ones
# (URLs, table rows) are kept; longer than this they are rare and counted each time.
_CACHED_PIECE_CHARS = 256
_CACHE_LIMIT = 100_000  # pieces: ~10 MB typical, ~35 MB at most, then it starts over


@dataclass(frozen=True)
class TextChunk:
    text: str
    token_count: int  # including the special tokens, i.e. what the model sees


def counts_add_up(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer`'s count of a text is the sum of its pieces' (see module doc)."""
    return (type(tokenizer.normalizer).__name__ in _ADDITIVE_NORMALIZERS
            and type(tokenizer.pre_tokenizer).__name__ in _ADDITIVE_PRE_TOKENIZERS
            and type(tokenizer.model).__name__ in _ADDITIVE_MODELS)


class PieceCounter(dict[str, int]):
    """Tokens in a text (without special tokens), from cached counts of its pieces.

    `tokenizer` must neither truncate nor pad (all-MiniLM-L6-v2's file does both, at 128).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        return sum(map(self.__getitem__, _PIECE_BREAKS.split(text)))

    def __missing__(self, piece: str) -> int:
        n = len(self._tokenizer.encode(piece, add_special_tokens=False).ids)
        if len(piece) <= _CACHED_PIECE_CHARS:
            if len(self) >= _CACHE_LIMIT:
                self.clear()
            self[piece] = n
        return n


class Chunker:
    def __init__(self, tokenizer_file: Path, *, chunk_size: int, overlap: int, model_max: int):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.capacity = min(chunk_size, model_max) - SPECIAL_TOKENS
        self.overlap = min(overlap, self.capacity // 2)
        self._count: Callable[[str], int]
        if counts_add_up(self.tokenizer):
            self._count = PieceCounter(self.tokenizer)
            self._text = TextSplitter.from_callback(self._count, self.capacity,
                                                    overlap=self.overlap)
            self._markdown = MarkdownSplitter.from_callback(self._count, self.capacity,
                                                            overlap=self.overlap)
        else:
            self._count = self._count_whole
            self._text = TextSplitter.from_huggingface_tokenizer(
                self.tokenizer, self.capacity, overlap=self.overlap)
            self._markdown = MarkdownSplitter.from_huggingface_tokenizer(
                self.tokenizer, self.capacity, overlap=self.overlap)

    def split(self, text: str, kind: str = "text") -> list[TextChunk]:
        splitter = self._markdown if kind == "markdown" else self._text
        return [TextChunk(p, self._count(p) + SPECIAL_TOKENS)
                for p in splitter.chunks(text) if p.strip()]

    def _count_whole(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
