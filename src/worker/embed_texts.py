"""Embedding jobs for Open WebUI's `RAG_EMBEDDING_ENGINE=openai` (`POST /v1/embeddings`).

The webui validates the request and enqueues `worker.embed_texts.embed_texts` by name
(shared/embed_queue.py) on the interactive queue, then waits. This encodes the texts
with the worker's loaded model, in batches of the pipeline's `embed_batch_size` (the
app_config value, as for documents), and returns the vectors in input order in the
wire format of shared/embed_queue.py. Nothing is written to the database.

Workers take from the interactive queue before the ingest queue, so ingest units wait
behind these jobs: intended, since a person (an Open WebUI upload, a question) waits on
each one while a unit's file is already accepted and queued. Each job is small (at most
OPENAI_EMBED_MAX_INPUTS texts, truncated by the model at max_seq_length tokens) and each
webui lets at most OPENAI_EMBED_IN_FLIGHT of them wait, so ingestion is delayed, never
starved. Among themselves, interactive jobs (these and `/process`'s) run first in first
out, so in a burst the earliest request is answered first and none is overtaken into
OPENAI_EMBED_TIMEOUT (504) by later ones.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.embed_queue import vectors_to_wire
from worker.runtime import get_runtime

log = logging.getLogger("sluice.worker")


def embed_texts(texts: list[str]) -> dict[str, Any]:
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise TypeError("embed_texts takes a list of strings")
    rt = get_runtime()
    embedder = rt.embedder
    started = time.perf_counter()
    tokens_before = embedder.stats.tokens  # one job at a time in a worker: the difference is ours
    vectors = embedder.encode(texts, batch_size=rt.config.embed_batch_size)
    tokens = embedder.stats.tokens - tokens_before
    took = time.perf_counter() - started
    log.info("embed_texts.done texts=%d tokens=%d seconds=%.3f", len(texts), tokens, took)
    return {"vectors": vectors_to_wire(vectors), "count": len(texts), "dim": embedder.dim,
            "tokens": tokens, "model": embedder.name}
