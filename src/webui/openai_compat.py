"""OpenAI-compatible embeddings (`POST /v1/embeddings`) for Open WebUI's
`RAG_EMBEDDING_ENGINE=openai`, encoded by the worker fleet.

Open WebUI sends `{"input": [...], "model": ...}` and reads `data[i].embedding`
in list order (it does not look at `index`), so the answer keeps input order.

The webui does no encoding here: it validates the request (API key already checked
by the guard; at most OPENAI_EMBED_MAX_INPUTS texts of OPENAI_EMBED_MAX_CHARS, else
400; texts that would make a job over OPENAI_EMBED_MAX_JOB_KB, else 413), enqueues
one job on the interactive queue (shared/embed_queue.py, run by
worker/embed_texts.py), and waits for it as `PUT /process` does (webui/fleet_jobs.py).
So embedding capacity is the fleet's and grows with workers, and searches keep the
webui's own query encoder to themselves: they never queue behind a document's chunks.

Interactive queue: workers take these jobs, oldest first, before any ingest unit, on
purpose (a person waits on each; see worker/embed_texts.py). Refusals, all JSON `{"detail", "code"}`:
- 429 + Retry-After at once, before any work, when OPENAI_EMBED_IN_FLIGHT requests of
  this process are already waiting for workers;
- 503 + Retry-After at once when no worker with a recent heartbeat listens on the
  queue (nothing would answer);
- 504 when no worker answered within OPENAI_EMBED_TIMEOUT (all busy or stuck); the
  job is dropped if it is still queued.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, Field
from rq import Queue
from starlette.concurrency import run_in_threadpool

from shared.embed_queue import (
    enqueue_embed,
    job_payload_bytes,
    new_embed_job_id,
    vectors_from_wire,
)
from shared.settings import Settings
from webui.errors import ApiError
from webui.fleet_jobs import InFlightGate, LiveWorkerCheck, forget_job, wait_for_job

log = logging.getLogger("sluice.webui")

RETRY_AFTER_BUSY_S = 1


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="one text or a list of texts")
    model: str = Field(default="", description="ignored: Sluice answers with its own model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float]
    index: int


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingsUsage


def _bad(detail: str) -> ApiError:
    return ApiError(400, "invalid_request", detail)


class FleetEmbeddings:
    """Validation, admission and the round trip to a worker for /v1/embeddings."""

    def __init__(self, queue: Queue, settings: Settings, *, dim: int) -> None:
        self.queue = queue  # the interactive queue (shared/queue.py)
        self.dim = dim
        self.max_inputs = settings.openai_embed_max_inputs
        self.max_chars = settings.openai_embed_max_chars
        self.max_job_bytes = settings.openai_embed_max_job_bytes
        self.timeout_s = settings.openai_embed_timeout
        self.gate = InFlightGate(
            settings.openai_embed_in_flight,
            "too many embedding requests are waiting for the workers; retry shortly",
            retry_after_s=RETRY_AFTER_BUSY_S,
        )
        self.live = LiveWorkerCheck(queue, settings, "no worker is running to compute "
                                    "embeddings; start one (or wait for one to come back) "
                                    "and retry")

    def validate(self, body: EmbeddingsRequest) -> list[str]:
        """The texts to encode, or a 400/413 that says what to change."""
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise _bad("input is empty: send one text or a list of texts")
        if len(texts) > self.max_inputs:
            raise _bad(f"too many inputs: {len(texts)} in one request, at most "
                       f"{self.max_inputs}; send them in several requests")
        for i, text in enumerate(texts):
            if not text.strip():
                raise _bad(f"input {i} is empty")
            if len(text) > self.max_chars:
                raise _bad(f"input {i} is too long: {len(text)} characters, at most "
                           f"{self.max_chars}")
        if body.encoding_format != "float":
            raise _bad("encoding_format: only 'float' is supported")
        if body.dimensions is not None and body.dimensions != self.dim:
            raise _bad(f"dimensions: this model answers {self.dim} dimensions only")
        size = job_payload_bytes(texts)
        if size > self.max_job_bytes:
            raise ApiError(413, "input_too_large",
                           f"the inputs are too large together: {size // 1024} KB as a job, at "
                           f"most {self.max_job_bytes // 1024} KB; send fewer or shorter texts "
                           "per request")
        return texts

    async def embed(self, body: EmbeddingsRequest) -> EmbeddingsResponse:
        texts = self.validate(body)
        self.gate.enter()
        try:
            result = await self._round_trip(texts)
        finally:
            self.gate.leave()
        vectors = vectors_from_wire(result["vectors"], len(texts), int(result["dim"]))
        tokens = int(result["tokens"])
        return EmbeddingsResponse(
            data=[EmbeddingItem(embedding=v.tolist(), index=i) for i, v in enumerate(vectors)],
            model=str(result["model"]),
            usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def _round_trip(self, texts: list[str]) -> dict[str, Any]:
        """Enqueue one job, wait for its answer, forget it (read once)."""
        try:
            await self.live.require()
        except ApiError:
            log.warning("embeddings.no_worker queue=%s inputs=%d", self.queue.name, len(texts))
            raise
        job_id = new_embed_job_id()
        await run_in_threadpool(enqueue_embed, self.queue, job_id, texts,
                                timeout_s=self.timeout_s)
        try:
            status, result = await wait_for_job(self.queue, job_id, self.timeout_s)
        finally:
            await forget_job(self.queue, job_id)
        if status == "timeout":
            log.warning("embeddings.timeout job_id=%s inputs=%d", job_id, len(texts))
            raise ApiError(504, "embeddings_timeout",
                           f"no worker computed the embeddings within {self.timeout_s} s (all "
                           "busy or stuck); retry shortly")
        if status != "finished" or not isinstance(result, dict):
            log.warning("embeddings.failed job_id=%s status=%s", job_id, status)
            raise ApiError(503, "embeddings_failed", "the worker could not compute the "
                           "embeddings; retry shortly", {"Retry-After": str(RETRY_AFTER_BUSY_S)})
        return result
