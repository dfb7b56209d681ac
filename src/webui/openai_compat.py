"""OpenAI-compatible embeddings (`POST /v1/embeddings`) for Open WebUI's
`RAG_EMBEDDING_ENGINE=openai`, served from a bounded pool beside search.

Open WebUI sends `{"input": [...], "model": ...}` and reads `data[i].embedding`
in list order (it does not look at `index`), so the answer keeps input order.

Why not through the query encoder: its queue is first come, first served, so a
document's 64 chunks queued in front of a search would make the search wait for
them. Here at most OPENAI_EMBED_CONCURRENCY requests encode at once (in worker
threads, on the same loaded model), OPENAI_EMBED_QUEUE more may wait for a
slot, and anything beyond is answered 429 with Retry-After at once, before any
work; searches keep their own encoder and never queue behind these.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import anyio
import numpy as np
from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from shared.embedding import Embedder
from shared.settings import Settings
from webui.errors import ApiError

log = logging.getLogger("sluice.webui")

RETRY_AFTER_S = 1


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


class EmbeddingPool:
    """Admission (concurrency + a short wait list) and encoding for /v1/embeddings."""

    def __init__(self, embedder: Embedder, settings: Settings) -> None:
        self.embedder = embedder
        self.max_inputs = settings.openai_embed_max_inputs
        self.max_chars = settings.openai_embed_max_chars
        self.batch_size = settings.embed_batch_size
        self._slots = asyncio.Semaphore(settings.openai_embed_concurrency)
        self._admit_limit = settings.openai_embed_concurrency + settings.openai_embed_queue
        self._admitted = 0
        # Token counts for `usage`, truncated as the model truncates.
        self._tokenizer = Tokenizer.from_file(str(embedder.tokenizer_file))
        self._tokenizer.enable_truncation(max_length=embedder.max_seq_length)
        self._tokenizer.no_padding()

    def validate(self, body: EmbeddingsRequest) -> list[str]:
        """The texts to encode, or a 400 that says what to change."""
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
        if body.dimensions is not None and body.dimensions != self.embedder.dim:
            raise _bad(f"dimensions: this model answers {self.embedder.dim} dimensions only")
        return texts

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, int]:
        tokens = sum(len(e.ids) for e in self._tokenizer.encode_batch(texts))
        return self.embedder.encode(texts, batch_size=self.batch_size), tokens

    async def embed(self, body: EmbeddingsRequest) -> EmbeddingsResponse:
        texts = self.validate(body)
        if self._admitted >= self._admit_limit:
            log.info("embeddings.busy admitted=%d inputs=%d", self._admitted, len(texts))
            raise ApiError(429, "busy", "the embeddings pool is full; retry shortly",
                           {"Retry-After": str(RETRY_AFTER_S)})
        self._admitted += 1  # one event loop: no lock needed between check and count
        try:
            async with self._slots:
                vectors, tokens = await anyio.to_thread.run_sync(self._encode, texts)
        finally:
            self._admitted -= 1
        return EmbeddingsResponse(
            data=[EmbeddingItem(embedding=v.tolist(), index=i) for i, v in enumerate(vectors)],
            model=self.embedder.name,
            usage=EmbeddingsUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
