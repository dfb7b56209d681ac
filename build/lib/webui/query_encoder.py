"""The webui's query encoder: concurrent queries are encoded together in small batches.

One model, one intra-op thread (the webui's CPU belongs to request handling).
`QueryEncoder` collects what arrives while the model is busy (or for at most
QUERY_BATCH_WAIT_MS when it is idle), up to QUERY_BATCH_MAX, and encodes them in
one worker-thread call, sorted by length in small groups (see SUB_BATCH).
Searches await their vector *before* they touch the database, so nobody holds a
pooled connection while waiting here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio
import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from shared.embedding import Embedder

log = logging.getLogger("sluice.webui")


# One padded batch of queries of mixed length costs more than encoding them one by
# one (every query is padded to the longest; measured here: 15-18 vs 21-31 queries/s
# on one thread). Sorted by length and encoded in groups of this size, the same
# queries ran at 21-33/s: the batch still makes one thread hop, with little padding.
SUB_BATCH = 4


def encode_by_length(embedder: Embedder, texts: list[str], sub_batch: int = SUB_BATCH) -> np.ndarray:
    """Vectors of `texts` in their order, encoded in groups of similar length."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(texts)
    for start in range(0, len(order), sub_batch):
        group = order[start:start + sub_batch]
        vectors = embedder.encode([texts[i] for i in group], batch_size=len(group))
        for i, vector in zip(group, vectors, strict=True):
            out[i] = vector
    return np.stack(out)


class QueryEncoder:
    def __init__(self, embedder: Embedder, *, max_batch: int, max_wait_s: float,
                 registry: CollectorRegistry | None = None) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: asyncio.Queue[tuple[str, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batch_sizes = Histogram(
            "sluice_query_batch_size", "queries encoded together by the webui's query encoder",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry,
        )
        self.wait_seconds = Histogram(
            "sluice_query_encode_seconds", "from a query's arrival at the encoder to its vector",
            registry=registry,
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="query-encoder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("the query encoder is shutting down"))

    async def encode(self, query: str) -> np.ndarray:
        """The normalised query vector (waits for a batch slot; holds nothing meanwhile)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the query encoder is not running")
        started = time.perf_counter()
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((query, fut))
        vector = await fut
        self.wait_seconds.observe(time.perf_counter() - started)
        return vector

    async def _next_batch(self) -> list[tuple[str, asyncio.Future[np.ndarray]]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():  # queued while the model was busy: no wait
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [(q, f) for q, f in batch if not f.done()]  # drop queries whose client left

    def _encode(self, texts: list[str]) -> np.ndarray:
        return encode_by_length(self.embedder, texts)

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            texts = [q for q, _ in batch]
            try:
                vectors = await anyio.to_thread.run_sync(self._encode, texts)
            except Exception as err:  # every waiting search gets the error, the loop lives on
                log.exception("query_encoder.failed batch=%d", len(texts))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.batch_sizes.observe(len(texts))
            for (_, fut), vector in zip(batch, vectors, strict=True):
                if not fut.done():
                    fut.set_result(vector)
