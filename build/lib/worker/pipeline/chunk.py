"""Split text into chunks measured in the embedding model's own tokens.

semantic-text-splitter (Rust) fills each chunk with the largest semantic units
(paragraphs, sentences, words) that fit; counting with the model's tokenizer
means no chunk is ever longer than the model reads (all-MiniLM-L6-v2 silently
truncates past 256 tokens, so a longer chunk would lose text from the index).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer

# [CLS] and [SEP] are added around every input and count against the limit.
SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class TextChunk:
    text: str
    token_count: int  # including the special tokens, i.e. what the model sees


class Chunker:
    def __init__(self, tokenizer_file: Path, *, chunk_size: int, overlap: int, model_max: int):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.capacity = min(chunk_size, model_max) - SPECIAL_TOKENS
        self.overlap = min(overlap, self.capacity // 2)
        self._text = TextSplitter.from_huggingface_tokenizer(
            self.tokenizer, self.capacity, overlap=self.overlap
        )
        self._markdown = MarkdownSplitter.from_huggingface_tokenizer(
            self.tokenizer, self.capacity, overlap=self.overlap
        )

    def split(self, text: str, kind: str = "text") -> list[TextChunk]:
        splitter = self._markdown if kind == "markdown" else self._text
        pieces = [p for p in splitter.chunks(text) if p.strip()]
        encodings = self.tokenizer.encode_batch(pieces, add_special_tokens=True)
        return [TextChunk(p, len(e.ids)) for p, e in zip(pieces, encodings, strict=True)]
