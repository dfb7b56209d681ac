"""Chunks are measured in the model's own tokens and never exceed what it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from shared.embedding import model_path
from shared.settings import load_settings
from worker.pipeline.chunk import Chunker

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
