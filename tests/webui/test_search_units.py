"""Small, fast tests of the pure and in-process parts of search: snippets and their
highlight offsets, the relevance bands, and the micro-batching query encoder (with
the real model)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shared.encoders import load_embedder
from shared.settings import load_settings
from webui.query_encoder import QueryEncoder, encode_by_length
from webui.search_rank import (
    START,
    STOP,
    matched,
    parse_headline,
    relevance,
    strength,
    text_query,
)


def test_parse_headline_turns_marks_into_offsets_and_merges_adjacent_ones() -> None:
    s = parse_headline(f"near the {START}river{STOP} bank. Part {START}KX{STOP}{START}-20417{STOP} is")
    assert s.text == "near the river bank. Part KX-20417 is"
    assert [s.text[a:b] for a, b in s.highlights] == ["river", "KX-20417"]
    assert parse_headline("no marks at all").highlights == []


def test_relevance_rises_with_similarity_and_a_text_match() -> None:
    assert relevance(0.3, False, 0.3) < relevance(0.6, False, 0.6) < relevance(0.9, False, 0.9)
    assert relevance(0.5, True, 0.5) > relevance(0.5, False, 0.5)
    assert relevance(0.5, False, 0.8) < relevance(0.5, False, 0.5)  # far below the best hit
    assert all(0 < relevance(c, t, 1.0) < 1 for c in (-1.0, 0.0, 1.0) for t in (False, True))


def test_strength_bands_and_why() -> None:
    assert [strength(x) for x in (0.1, 0.4, 0.95)] == ["partial", "partial", "strong"]
    assert (matched(1, None), matched(None, 2), matched(3, 1)) == ("vector", "text", "both")


async def test_concurrent_queries_are_encoded_together_and_each_gets_its_own_vector() -> None:
    embedder = load_embedder(load_settings(), 1)
    queries = [f"question number {i} about tide gauges" for i in range(40)]
    alone = embedder.encode(queries, batch_size=1)
    encoder = QueryEncoder(embedder, max_batch=8, max_wait_s=0.01, registry=CollectorRegistry())
    await encoder.start()
    try:
        vectors = await asyncio.gather(*(encoder.encode(q) for q in queries))
    finally:
        await encoder.stop()
    cosines = [float(np.dot(v, a)) for v, a in zip(vectors, alone, strict=True)]
    assert min(cosines) > 0.999  # batching (padding) does not change a query's vector
    count = next(iter(encoder.batch_sizes.collect())).samples
    calls = next(s.value for s in count if s.name.endswith("_count"))
    assert 5 <= calls < 40  # at most 8 a batch, and fewer calls than queries


async def test_a_stopped_encoder_refuses_instead_of_hanging() -> None:
    encoder = QueryEncoder(load_embedder(load_settings(), 1), max_batch=4, max_wait_s=0.0,
                           registry=CollectorRegistry())
    with pytest.raises(RuntimeError, match="not running"):
        await encoder.encode("anything")


def test_encode_by_length_keeps_the_order_of_the_queries() -> None:
    embedder = load_embedder(load_settings(), 1)
    texts = ["a much longer question about the tide gauge at the harbour wall", "short",
             "medium length query here", "x", "another fairly long question about lighthouses"]
    grouped = encode_by_length(embedder, texts, sub_batch=2)
    alone = embedder.encode(texts, batch_size=1)
    assert [float(np.dot(a, b)) for a, b in zip(grouped, alone, strict=True)] == \
        pytest.approx([1.0] * len(texts), abs=1e-3)


@pytest.mark.parametrize(("query", "expected"), [
    ("-" * 70 + " Readonly properties", "Readonly properties"),
    ("- " * 40 + "word", "word"),
    ("---word", "word"),
    ("pumps -diesel", "pumps -diesel"),
    ("-diesel pumps", "-diesel pumps"),
    ("part-number A-1234 e-mail", "part-number A-1234 e-mail"),
    ("trailing- dash", "trailing  dash"),
])
def test_text_query_keeps_not_and_hyphens_and_drops_dash_runs(query: str, expected: str) -> None:
    assert text_query(query).split() == expected.split()
