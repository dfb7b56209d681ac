"""POST /v1/embeddings as Open WebUI's `RAG_EMBEDDING_ENGINE=openai` calls it: order,
shape, the same vectors as the query encoder, bad input, auth, and 429 beyond the
bounded pool while search keeps answering."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from shared.embedding import Embedder
from shared.encoders import load_embedder
from shared.settings import Settings
from tests.support.stack import ApiUser, Stack
from webui.query_encoder import QueryEncoder

TEXTS = ["the pump manual says to bleed the valve", "invoice 4471 is overdue",
         "a recipe for bread", "the pump manual says to bleed the valve"]


@pytest.fixture(scope="module")
def embedder(settings: Settings) -> Embedder:
    return load_embedder(settings, 1)


def _embed(client: httpx.Client, payload: Any) -> httpx.Response:
    return client.post("/v1/embeddings", json=payload)


def test_shape_order_and_usage(client: httpx.Client) -> None:
    r = _embed(client, {"input": TEXTS, "model": "text-embedding-3-small"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # Input order: equal texts sit at 0 and 3, and differ from their neighbours.
    assert float(vectors[0] @ vectors[3]) > 0.9999
    assert float(vectors[0] @ vectors[1]) < 0.9
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > len(TEXTS)
    single = _embed(client, {"input": TEXTS[2], "model": "x"}).json()
    assert len(single["data"]) == 1
    assert np.allclose(single["data"][0]["embedding"], vectors[2], atol=1e-4)


def test_same_vectors_as_the_query_encoder(client: httpx.Client, embedder: Embedder) -> None:
    async def encode_all() -> list[np.ndarray]:
        encoder = QueryEncoder(embedder, max_batch=16, max_wait_s=0.005)
        await encoder.start()
        try:
            return list(await asyncio.gather(*(encoder.encode(t) for t in TEXTS)))
        finally:
            await encoder.stop()

    expected = np.array(asyncio.run(encode_all()))
    got = np.array([d["embedding"] for d in _embed(client, {"input": TEXTS}).json()["data"]])
    # Batch-mates pad differently; that moves values by float noise only.
    assert np.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(("payload", "phrase"), [
    ({"input": []}, "input is empty"),
    ({"input": ["ok", "  "]}, "input 1 is empty"),
    ({"input": ["x"] * 65}, "too many inputs: 65"),
    ({"input": ["y" * 20_001]}, "input 0 is too long"),
    ({"input": "a", "encoding_format": "base64"}, "only 'float'"),
    ({"input": "a", "dimensions": 1536}, "384 dimensions"),
    ({"input": [[1, 2, 3]]}, "input"),
    ({"model": "m"}, "input"),
])
def test_bad_input_is_a_4xx_sentence(client: httpx.Client, payload: Any, phrase: str) -> None:
    r = _embed(client, payload)
    assert r.status_code in (400, 422), r.text
    assert phrase in r.json()["detail"]


def test_needs_a_sluice_key(stack: Stack) -> None:
    r = httpx.post(f"{stack.url}/v1/embeddings", json={"input": "a"}, timeout=30)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = httpx.post(f"{stack.url}/v1/embeddings", json={"input": "a"}, timeout=30,
                   headers={"Authorization": "Bearer sk-not-a-sluice-key"})
    assert r.status_code == 401


def test_429_beyond_capacity_and_search_keeps_answering(stack: Stack, user: ApiUser) -> None:
    """Default pool: 1 encoding + 8 waiting per process. 14 requests at once of 24
    inputs each (a batch takes long enough that they all overlap): some must be refused
    at once with Retry-After, none fail otherwise, and a search sent meanwhile is not
    queued behind them."""
    long_inputs = [f"{uuid.uuid4().hex} " + "pump valve manual overdue invoice " * 8
                   for _ in range(24)]
    headers = {"Authorization": f"Bearer {user.key}"}
    start = threading.Barrier(15)
    results: list[tuple[int, dict[str, str], float]] = []
    lock = threading.Lock()

    def call() -> None:
        with httpx.Client(base_url=stack.url, headers=headers, timeout=300) as c:
            start.wait()
            r = c.post("/v1/embeddings", json={"input": long_inputs})
            with lock:
                results.append((r.status_code, dict(r.headers), time.monotonic()))

    threads = [threading.Thread(target=call) for _ in range(14)]
    for t in threads:
        t.start()
    with httpx.Client(base_url=stack.url, headers=headers, timeout=300) as c:
        start.wait()
        time.sleep(0.5)  # the burst is admitted and encoding
        s = c.post("/api/v1/search", json={"query": "pump valve", "top_k": 3})
        search_done = time.monotonic()
    for t in threads:
        t.join()
    codes = sorted(code for code, _, _ in results)
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    assert all(h.get("retry-after") for code, h, _ in results if code == 429)
    assert s.status_code == 200, s.text
    last_embedding = max(at for code, _, at in results if code == 200)
    assert search_done < last_embedding, "search waited for the whole embeddings backlog"
