"""`Embedder.encode` batches texts of similar token length together (little padding) and
returns the vectors in input order, equal to what input-order batching gives.

fp32 backends (torch, onnx) must agree to float noise: padding is masked out.
onnx-int8 quantizes activations per batch (dynamic quantization), so its vectors
move slightly with their batch mates whatever the grouping: on these texts the
min cosine between batch orders, or against each text encoded alone, measured
0.980-0.990; asserted ≥ 0.97 (a misplaced row measures < 0.95).
"""

from __future__ import annotations

import dataclasses
import inspect
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from shared.embedding import BACKENDS, Embedder
from shared.encoders import load_embedder
from shared.settings import load_settings

FP32_ATOL = 1e-5
INT8_MIN_COSINE = 0.97


def _mixed_texts() -> list[str]:
    """30 real-prose texts of very different lengths (a few tokens to past 256), shuffled."""
    docs = [inspect.getdoc(obj) or "" for obj in (
        random.Random, random.Random.shuffle, np.argsort, np.concatenate, inspect.getdoc,
        inspect.signature, str.split, str.join, dict.get, sorted, open, print, zip, map,
        pytest.approx,
    )]
    rng = random.Random(19)
    texts = []
    for d in docs:
        texts.append(d[: rng.randint(5, 60)])
        texts.append(d[: rng.randint(200, 2500)])
    rng.shuffle(texts)
    return texts


@pytest.fixture(scope="module")
def embedders() -> dict[str, Embedder]:
    settings = load_settings()
    return {b: load_embedder(settings.model_copy(update={"embedding_backend": b}), 1)
            for b in BACKENDS}


@pytest.fixture(scope="module")
def token_lengths(embedders: dict[str, Embedder]) -> list[int]:
    e = embedders["onnx"]
    tok = Tokenizer.from_file(str(e.tokenizer_file))
    tok.enable_truncation(max_length=e.max_seq_length)
    tok.no_padding()
    return [len(enc.ids) for enc in tok.encode_batch(_mixed_texts())]


def _assert_same(backend: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    if backend == "onnx-int8":
        assert (got * want).sum(axis=1).min() >= INT8_MIN_COSINE
    else:
        assert np.abs(got - want).max() < FP32_ATOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_batches_give_the_input_order_vectors(
    embedders: dict[str, Embedder], backend: str
) -> None:
    e, texts = embedders[backend], _mixed_texts()
    grouped = e.encode(texts, batch_size=8)
    in_order = e.encode(texts, batch_size=8, group_by_length=False)
    _assert_same(backend, grouped, in_order)
    # Each row is its own text's vector (encoded alone: no batch mates at all).
    alone = np.stack([e.encode([t], batch_size=1)[0] for t in texts])
    _assert_same(backend, grouped, alone)
    # ...and not a neighbour's: rows of different texts are far apart.
    assert (grouped[:-1] * alone[1:]).sum(axis=1).min() < 0.95


def test_grouping_cuts_padding(embedders: dict[str, Embedder], token_lengths: list[int]) -> None:
    e, texts, batch = embedders["onnx"], _mixed_texts(), 8

    def padded(order: list[int]) -> int:
        return sum(max(token_lengths[i] for i in order[s : s + batch]) * len(order[s : s + batch])
                   for s in range(0, len(order), batch))

    by_length = sorted(range(len(texts)), key=lambda i: -token_lengths[i])
    for group, expected in ((False, padded(list(range(len(texts))))), (True, padded(by_length))):
        before = dataclasses.replace(e.stats)
        e.encode(texts, batch_size=batch, group_by_length=group)
        used = e.stats.minus(before)
        assert (used.texts, used.batches) == (len(texts), -(-len(texts) // batch))
        assert used.tokens == sum(token_lengths)
        assert used.padded_tokens == expected
    assert padded(by_length) < 0.7 * padded(list(range(len(texts))))  # the input is mixed


def test_progress_counts_texts_done(embedders: dict[str, Embedder]) -> None:
    calls: list[tuple[int, int]] = []
    out = embedders["onnx"].encode(_mixed_texts()[:20], batch_size=8,
                                   on_batch=lambda d, t: calls.append((d, t)))
    assert calls == [(8, 20), (16, 20), (20, 20)]
    assert out.shape == (20, 384)


def test_empty_and_single(embedders: dict[str, Embedder]) -> None:
    for e in embedders.values():
        assert e.encode([], batch_size=8).shape == (0, 384)
        one = e.encode(["ok"], batch_size=8)
        assert one.shape == (1, 384)
        assert np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-4)
