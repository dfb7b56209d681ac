"""`Embedder.encode` returns each text's own vector, in input order, whatever it was
encoded with.

torch batches texts of similar token length together (little padding); padding is
masked out, so its vectors agree with input-order batches and with each text alone to
float noise. The ONNX backends run each text alone on one-thread lanes (nothing padded):
their vectors are those of the text alone *exactly*. For onnx-int8 that is the point:
dynamic quantization scales activations by the whole run's range, so batched (before),
a text's vector moved with its batch mates (min cosine 0.980-0.990 on these texts).
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

ATOL = 1e-5


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
    e = embedders["torch"]
    tok = Tokenizer.from_file(str(e.tokenizer_file))
    tok.enable_truncation(max_length=e.max_seq_length)
    tok.no_padding()
    return [len(enc.ids) for enc in tok.encode_batch(_mixed_texts())]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_row_is_its_text_alone_whatever_its_batch(
    embedders: dict[str, Embedder], backend: str
) -> None:
    e, texts = embedders[backend], _mixed_texts()
    grouped = e.encode(texts, batch_size=8)
    in_order = e.encode(texts, batch_size=8, group_by_length=False)
    assert grouped.shape == (len(texts), 384) and grouped.dtype == np.float32
    assert np.abs(grouped - in_order).max() < ATOL
    # Each row is its own text's vector (encoded alone: no batch mates at all)...
    alone = np.stack([e.encode([t], batch_size=1)[0] for t in texts])
    assert np.abs(grouped - alone).max() < ATOL
    # ...and not a neighbour's: rows of different texts are far apart.
    assert (grouped[:-1] * alone[1:]).sum(axis=1).min() < 0.95


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_onnx_runs_texts_alone_on_lanes(
    embedders: dict[str, Embedder], token_lengths: list[int], backend: str
) -> None:
    settings = load_settings(embedding_backend=backend)
    two = load_embedder(settings, 2)
    runner = two.runner  # type: ignore[attr-defined]
    assert runner.lanes == 2
    assert runner.session.get_session_options().intra_op_num_threads == 1
    texts = _mixed_texts()
    before = dataclasses.replace(two.stats)
    got = two.encode(texts, batch_size=32)
    used = two.stats.minus(before)
    assert (used.texts, used.batches) == (len(texts), len(texts))
    assert used.padded_tokens == used.tokens == sum(token_lengths)  # nothing padded
    # Two lanes at once give what one gives, row for row.
    assert np.abs(got - embedders[backend].encode(texts, batch_size=32)).max() < ATOL


def test_grouping_cuts_padding(embedders: dict[str, Embedder], token_lengths: list[int]) -> None:
    e, texts, batch = embedders["torch"], _mixed_texts(), 8

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


def test_empty_and_single(embedders: dict[str, Embedder]) -> None:
    for e in embedders.values():
        assert e.encode([], batch_size=8).shape == (0, 384)
        one = e.encode(["ok"], batch_size=8)
        assert one.shape == (1, 384)
        assert np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-4)
