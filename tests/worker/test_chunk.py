"""Chunks are measured in the model's own tokens and never exceed what it reads;
counting by cached pieces gives exactly the tokenizer's counts and chunks."""

from __future__ import annotations

from pathlib import Path

import pytest
from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer

from shared.embedding import model_path
from shared.settings import load_settings
from worker.pipeline import chunk
from worker.pipeline.chunk import Chunker, PieceCounter, counts_add_up

MODEL_MAX = 256


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(model_path(load_settings()))


@pytest.mark.parametrize("chunk_size", [64, 256, 1000])
def test_no_chunk_exceeds_the_model_limit(model_dir: str, chunk_size: int) -> None:
    chunker = Chunker(Path(model_dir) / "tokenizer.json", chunk_size=chunk_size, overlap=16,
                      model_max=MODEL_MAX)
    # Long words, numbers, punctuation and no paragraph breaks: the hard cases.
    text = " ".join(
        f"Paragraph {i}: antidisestablishmentarianism {i * 7919} (µ-law, naïve café) " * 3
        for i in range(300)
    ) + "\n\n" + "x" * 5000
    chunks = chunker.split(text)
    assert len(chunks) > 5
    reference = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    limit = min(chunk_size, MODEL_MAX)
    for c in chunks:
        n = len(reference(c.text)["input_ids"])  # includes [CLS] and [SEP]
        assert n <= limit, (n, c.text[:80])
        assert c.token_count == n


def test_overlap_repeats_text_between_neighbours(model_dir: str) -> None:
    chunker = Chunker(Path(model_dir) / "tokenizer.json", chunk_size=64, overlap=16,
                      model_max=MODEL_MAX)
    words = [f"w{i}" for i in range(400)]
    chunks = chunker.split(" ".join(words))
    first, second = chunks[0].text.split(), chunks[1].text.split()
    assert set(first) & set(second), "neighbouring chunks should share the overlap"


# Pieces the BERT normalizer and pre-tokenizer treat specially: accents and combining marks
# (also at a piece's start), CJK (spaced out one by one), control and zero-width characters
# (deleted), Unicode spaces that are not piece breaks, emoji, runs past WordPiece's
# 100-character word limit ([UNK]), and every kind of break, \r\n included.
HARD_TEXT = (
    "Naïve café\u0301 \u0301accent Ünïcödé — “quotes” (parens) [brackets] e.g. a.b.c\r\n"
    "東京都 中文字符 mixed東京text 한국어 日本語のテキスト\t\tTabs\n\n"
    "ctrl\x1cjoined\x1dpieces zero\u200bwidth no\u00a0break thin\u2009space\u3000ideo "
    "emoji 🙂🚀 x" + "y" * 150 + " " + "ab-" * 60 + " https://example.com/a/b?c=d&e=f#g\n"
    "| col | col |\n|---|---|\n| 1,234.56 | $7 |\n```python\ndef f(x):\n    return x ** 2\n```\n"
)


def _untruncated(model_dir: str) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_truncation()  # the model's file truncates and pads to 128
    tokenizer.no_padding()
    return tokenizer


def _tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_piece_counts_add_up_to_the_tokenizers_count(model_dir: str) -> None:
    tokenizer = _untruncated(model_dir)
    assert counts_add_up(tokenizer)
    count = PieceCounter(tokenizer)
    lines = HARD_TEXT.splitlines(keepends=True)
    # Every span of lines and every cut inside the text, cached or not.
    for i in range(len(lines)):
        for j in range(i + 1, len(lines) + 1):
            text = "".join(lines[i:j])
            assert count(text) == _tokens(tokenizer, text), text
    for cut in range(0, len(HARD_TEXT), 7):
        for text in (HARD_TEXT[:cut], HARD_TEXT[cut:]):
            assert count(text) == _tokens(tokenizer, text), text


def test_counting_by_pieces_makes_the_same_chunks_as_the_tokenizer(model_dir: str) -> None:
    tokenizer = _untruncated(model_dir)
    chunker = Chunker(Path(model_dir) / "tokenizer.json", chunk_size=128, overlap=16,
                      model_max=MODEL_MAX)
    text = (HARD_TEXT + "\n\n## Section\n\n" + " ".join(
        f"Sentence {i} about antidisestablishmentarianism, naïve cafés and 東京." for i in
        range(120))) * 3
    for kind, splitter in (("markdown", MarkdownSplitter), ("text", TextSplitter)):
        whole = splitter.from_huggingface_tokenizer(tokenizer, chunker.capacity,
                                                    overlap=chunker.overlap)
        expected = [p for p in whole.chunks(text) if p.strip()]
        chunks = chunker.split(text, kind)
        assert [c.text for c in chunks] == expected
        assert [c.token_count for c in chunks] == [_tokens(tokenizer, p) + 2 for p in expected]


def test_the_piece_cache_is_bounded(model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk, "_CACHE_LIMIT", 50)
    tokenizer = _untruncated(model_dir)
    count = PieceCounter(tokenizer)
    text = " ".join(f"word{i}" for i in range(500)) + " " + "z" * 300
    assert count(text) == _tokens(tokenizer, text)
    assert 0 < len(count) <= 50
    assert all(len(piece) <= chunk._CACHED_PIECE_CHARS for piece in count)


def test_a_tokenizer_whose_counts_do_not_add_up_is_measured_whole(tmp_path: Path) -> None:
    # Metaspace marks where words start, so "a b" is not "a" + "b": no piece counting.
    vocab = {"[UNK]": 0, "▁a": 1, "▁b": 2, "a": 3, "b": 4, "▁": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    assert not counts_add_up(tokenizer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    chunker = Chunker(tmp_path / "tokenizer.json", chunk_size=8, overlap=0, model_max=MODEL_MAX)
    assert not isinstance(chunker._count, PieceCounter)
    chunks = chunker.split("a b " * 40)
    assert len(chunks) > 1
    assert all(c.token_count == _tokens(tokenizer, c.text) + 2 <= 8 for c in chunks)
