"""POST /v1/embeddings as Open WebUI's `RAG_EMBEDDING_ENGINE=openai` calls it, encoded by
the worker fleet: order, shape, the model's own vectors, computed by the worker (not the
webui), nothing left in Redis, bad input, auth; 429 beyond OPENAI_EMBED_IN_FLIGHT and 504
when no worker answers in time (while search keeps answering), 503 when no worker runs."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from redis import Redis

from shared.embedding import Embedder
from shared.encoders import load_embedder
from shared.settings import Settings
from tests.support.helpers import wait_until
from tests.support.metrics import scrape, value
from tests.support.stack import ApiUser, SideWebuis, Stack

TEXTS = ["the pump manual says to bleed the valve", "invoice 4471 is overdue",
         "a recipe for bread", "the pump manual says to bleed the valve"]


@pytest.fixture(scope="module")
def embedder(settings: Settings) -> Embedder:
    return load_embedder(settings, 1)


def _embed(client: httpx.Client, payload: Any) -> httpx.Response:
    return client.post("/v1/embeddings", json=payload)


def _vectors(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def _embed_keys(redis: Redis) -> set[bytes | str]:
    """What embedding jobs keep in Redis: the job hashes and their result streams."""
    return set(redis.keys("rq:job:embed-*")) | set(redis.keys("rq:results:embed-*"))


def test_shape_order_and_usage(client: httpx.Client) -> None:
    r = _embed(client, {"input": TEXTS, "model": "text-embedding-3-small"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    vectors = _vectors(r)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # Input order: equal texts sit at 0 and 3, and differ from their neighbours.
    assert float(vectors[0] @ vectors[3]) > 0.9999
    assert float(vectors[0] @ vectors[1]) < 0.9
    usage = body["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > len(TEXTS)
    single = _embed(client, {"input": TEXTS[2], "model": "x"}).json()
    assert len(single["data"]) == 1
    assert np.allclose(single["data"][0]["embedding"], vectors[2], atol=1e-4)


def test_same_vectors_as_the_model_and_the_query_encoder(
    client: httpx.Client, embedder: Embedder, settings: Settings
) -> None:
    got = _vectors(_embed(client, {"input": TEXTS}))
    # Batch-mates pad differently; that moves values by float noise only.
    assert np.allclose(got, embedder.encode(TEXTS, batch_size=settings.embed_batch_size),
                       atol=1e-4)
    # ...and a search's query vector for the same text is the same vector.
    assert np.allclose(got, np.array([embedder.encode_query(t) for t in TEXTS]), atol=1e-4)


def test_computed_by_the_worker_and_nothing_left_in_redis(
    stack: Stack, client: httpx.Client, redis_client: Redis
) -> None:
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 3)]
    web_before, wk_before = scrape(stack.webui_metrics_url), scrape(stack.worker_metrics_url)
    keys_before = _embed_keys(redis_client)
    assert len(_vectors(_embed(client, {"input": texts}))) == len(texts)

    def worker_counted() -> bool:
        wk = scrape(stack.worker_metrics_url)
        return (value(wk, "sluice_openai_embed_texts_total")
                - value(wk_before, "sluice_openai_embed_texts_total") == len(texts)
                and value(wk, "sluice_openai_embed_jobs_total", outcome="done")
                - value(wk_before, "sluice_openai_embed_jobs_total", outcome="done") == 1)

    # The worker records a job just after the webui can read its answer.
    wait_until(worker_counted, 10, "the worker to count the embedding job")
    # The webui's only model is its query encoder, and it encoded nothing for this.
    web_after = scrape(stack.webui_metrics_url)
    assert (value(web_after, "sluice_query_batch_size_count")
            == value(web_before, "sluice_query_batch_size_count"))
    # The answer was read once and deleted: no job hash, no result stream left behind.
    wait_until(lambda: _embed_keys(redis_client) <= keys_before, 5, "the job to be deleted")


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


@pytest.mark.parametrize("texts", [
    ["a" * 20_000] * 64,  # every cap met, 1.25 MB together
    ["é" * 4_000] * 50,  # 200,000 characters, 1.2 MB as the job carries them (\u00e9)
])
def test_inputs_too_large_for_one_job_are_413(
    client: httpx.Client, redis_client: Redis, texts: list[str]
) -> None:
    keys_before = _embed_keys(redis_client)
    r = _embed(client, {"input": texts})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "input_too_large" and "at most 1024 KB" in r.json()["detail"]
    assert _embed_keys(redis_client) <= keys_before  # refused before any job


def test_needs_a_sluice_key(stack: Stack) -> None:
    r = httpx.post(f"{stack.url}/v1/embeddings", json={"input": "a"}, timeout=30)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    r = httpx.post(f"{stack.url}/v1/embeddings", json={"input": "a"}, timeout=30,
                   headers={"Authorization": "Bearer sk-not-a-sluice-key"})
    assert r.status_code == 401


def test_no_worker_is_503_at_once(side: SideWebuis, user: ApiUser) -> None:
    started = time.monotonic()
    r = httpx.post(f"{side.lonely}/v1/embeddings", json={"input": TEXTS}, timeout=30,
                   headers={"Authorization": f"Bearer {user.key}"})
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "no_worker" and "no worker is running" in r.json()["detail"]
    assert r.headers["retry-after"]
    assert time.monotonic() - started < 5, "waited for a worker that does not exist"


def test_beyond_in_flight_429_and_504_when_no_worker_answers(
    stack: Stack, side: SideWebuis, user: ApiUser, redis_client: Redis
) -> None:
    """The stack's worker is frozen (SIGSTOP): alive by its heartbeat, answering nothing.
    Two requests fill the tight webui's OPENAI_EMBED_IN_FLIGHT=2 and wait; a third is
    refused at once; a search still answers; the two get 504 after the timeout, and their
    jobs are gone from Redis (not run later for nobody)."""
    headers = {"Authorization": f"Bearer {user.key}"}
    keys_before = _embed_keys(redis_client)
    waiting: list[httpx.Response] = []

    def call() -> None:
        r = httpx.post(f"{side.tight}/v1/embeddings", json={"input": TEXTS}, headers=headers,
                       timeout=60)
        waiting.append(r)

    os.kill(stack.worker.pid, signal.SIGSTOP)
    try:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: len(set(redis_client.keys("rq:job:embed-*")) - keys_before) == 2, 10,
                   "two embedding jobs waiting")
        with httpx.Client(base_url=side.tight, headers=headers, timeout=30) as c:
            started = time.monotonic()
            refused = _embed(c, {"input": TEXTS})
            refused_after = time.monotonic() - started
            search = c.post("/api/v1/search", json={"query": "pump valve", "top_k": 3})
        for t in threads:
            t.join(timeout=side.tight_timeout_s + 30)
    finally:
        os.kill(stack.worker.pid, signal.SIGCONT)
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "busy" and refused.headers["retry-after"]
    assert refused_after < 2, f"the refusal took {refused_after:.1f} s"
    assert search.status_code == 200, search.text
    assert [r.status_code for r in waiting] == [504, 504], [r.text for r in waiting]
    assert all(r.json()["code"] == "embeddings_timeout" for r in waiting)
    assert _embed_keys(redis_client) <= keys_before
    # The worker is back and serves the next request.
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as c:
        assert len(_vectors(_embed(c, {"input": TEXTS}))) == len(TEXTS)
