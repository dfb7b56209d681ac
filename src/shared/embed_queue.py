"""Embedding jobs (`POST /v1/embeddings`): the name, the enqueue, the payload's size and
the vectors' wire format.

Shared because the webui enqueues and waits while the worker runs the function;
the webui never imports `worker` (the function is enqueued by name). Waiting and
dropping are shared with parse-only jobs (shared/interactive_jobs.py).

Wire format of the answer: the vectors as one base64 string of little-endian
float32, row after row (`count` rows of `dim`). That is 4 bytes a value (5.3 in
base64) where JSON floats take about 20: 64 texts are ~130 KB in Redis, not ~500 KB.
float32 is what the model computes, so nothing is lost on the way.
"""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np
from rq import Queue

EMBED_FUNC = "worker.embed_texts.embed_texts"
# Read once by the waiting webui and deleted then; this only bounds what a webui
# that died while waiting leaves in Redis.
RESULT_TTL_S = 30
FAILURE_TTL_S = 300
_WIRE_DTYPE = np.dtype("<f4")


def new_embed_job_id() -> str:
    return f"embed-{uuid.uuid4().hex}"


def job_payload_bytes(texts: list[str]) -> int:
    """Size of the texts as the job carries them (RQ's JSON serializer: ASCII-escaped)."""
    return len(json.dumps(texts))


def enqueue_embed(queue: Queue, job_id: str, texts: list[str], *, timeout_s: int) -> None:
    """Enqueue on the interactive queue (shared/queue.py), in arrival order: someone is
    waiting on the vectors, so the next free worker takes it before any ingest unit, and
    the oldest such request first. No retries: the caller (Open WebUI) sees the failure
    and may try again. `ttl`: a job still queued when the caller has stopped waiting is
    discarded, never run for nobody."""
    queue.enqueue_call(
        EMBED_FUNC, args=(texts,), job_id=job_id, timeout=timeout_s, ttl=timeout_s,
        result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S,
        description=f"embed {len(texts)} texts",
    )


def vectors_to_wire(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype=_WIRE_DTYPE).tobytes()).decode()


def vectors_from_wire(data: str, count: int, dim: int) -> np.ndarray:
    """The (count, dim) float32 matrix; ValueError if the sizes do not match."""
    flat = np.frombuffer(base64.b64decode(data, validate=True), dtype=_WIRE_DTYPE)
    if flat.size != count * dim:
        raise ValueError(f"{flat.size} values for {count} vectors of {dim}")
    return flat.reshape(count, dim).astype(np.float32)
