"""Embed and store segment units: the job's segment and those claimed to fill it.

The job's segment and those claimed with it (`worker.fill`) are read in one short
transaction. An encoder that batches (torch) gets them in one `Embedder.encode` call,
which groups texts of similar length into batches, so across files little is padding;
one that runs texts alone (the ONNX backends, or torch with EMBED_BATCH_SIZE=1) pads
nothing, so each segment is embedded and stored in turn, in fair order, and its
file is done without waiting for the rest of the fill. Each segment is stored in its
own fenced transaction: one whose file was deleted or whose lease was lost is skipped
quietly, one whose payload or store fails is retried (or failed) alone, and the others
are stored anyway. Only an encoder failure, which no one segment can be blamed for,
sends all of those not yet stored back to the backlog.

Stores run after the call, not in a thread overlapping the next segment's
embedding: storing took 5-11% of the embedding time (0.21 s against 4.04 s for
96 chunks; 8.9 s against 82.5 s on the `make compare` burst, mostly Postgres
inserting into the HNSW index), and a thread would take its CPU from the lanes.
Two worker processes sharing the CPUs overlap one's storing, parsing and chunking
with the other's embedding without any of that (`sluice up` starts two).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from shared.embedding import Embedder
from shared.models import FileStatus, UnitState, WorkUnit
from shared.work import Claim, fence
from worker.failure import record_failure
from worker.pipeline.store import store_segment
from worker.progress import publish
from worker.runtime import Runtime, load_embedder
from worker.units import Result, skipped, unit_done

log = logging.getLogger("sluice.worker")


class CorruptPayload(ValueError):
    """A segment's stored chunks are not what `plan_segments` writes."""


@dataclass
class Batch:
    """What one call did: each unit's outcome, and what the encoder was fed."""

    results: dict[int, Result] = field(default_factory=dict)
    units: int = 0
    files: int = 0
    chunks: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    embed_s: float = 0.0
    store_s: float = 0.0

    @property
    def padding_ratio(self) -> float:
        return self.padded_tokens / self.tokens if self.tokens else 1.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.embed_s if self.embed_s else 0.0

    def encode_facts(self) -> dict[str, float]:
        return {"units": self.units, "files": self.files, "chunks": self.chunks,
                "tokens": self.tokens, "padded_tokens": self.padded_tokens,
                "seconds": self.embed_s}


def run_segments(rt: Runtime, claims: list[Claim]) -> Batch:
    """Embed and store the claimed segments; every claim is let go when done with."""
    batch = Batch()
    try:
        _run(rt, claims, batch)
    except Exception as err:  # e.g. Postgres gone while reading: what is left goes back
        for c in claims:
            if c.unit_id not in batch.results:
                batch.results[c.unit_id] = record_failure(rt, c, err)
                rt.let_go(c)
    return batch


def _run(rt: Runtime, claims: list[Claim], batch: Batch) -> None:
    loaded = _load(rt, claims, batch)
    if not loaded:
        return
    batch.units = len(loaded)
    batch.chunks = sum(len(ts) for _, ts, _ in loaded)
    batch.files = len({c.file_id for c, _, _ in loaded})
    embedder = rt.embedder
    if rt.settings.bench_reload_model_per_job:  # benchmark-only: the seed's per-job reload
        embedder = load_embedder(rt.settings)
    batch_size = rt.config.embed_batch_size
    # Batches of one pad nothing, so there is nothing to gain from one call across the
    # segments: embed and store them one by one, in fair order, and a file is done as soon
    # as its own chunks are (not when the whole fill is).
    calls = ([[u] for u in loaded] if embedder.batch_size_for(batch_size) == 1 else [loaded])
    for n, call in enumerate(calls):
        err = _embed_and_store(rt, embedder, call, batch)
        if err is not None:  # the encoder failed: no one segment is to blame, the rest go back
            for c, _, _ in (u for rest in calls[n:] for u in rest):
                batch.results[c.unit_id] = record_failure(rt, c, err)
                rt.let_go(c)
            break
    log.info("segment.batch units=%d files=%d chunks=%d calls=%d tokens=%d padded_tokens=%d "
             "padding=%.3f tokens_per_s=%.0f embed=%.2fs store=%.2fs", batch.units, batch.files,
             batch.chunks, len(calls), batch.tokens, batch.padded_tokens, batch.padding_ratio,
             batch.tokens_per_s, batch.embed_s, batch.store_s)


def _embed_and_store(rt: Runtime, embedder: Embedder,
                     call: list[tuple[Claim, list[str], list[int]]], batch: Batch
                     ) -> Exception | None:
    """One encode call for `call`'s segments, then each stored in its own transaction;
    the encoder's error if it failed (then nothing of `call` was stored or let go)."""
    texts = [t for _, ts, _ in call for t in ts]
    before = dataclasses.replace(embedder.stats)
    t0 = time.perf_counter()
    try:
        vectors = embedder.encode(texts, batch_size=rt.config.embed_batch_size)
    except Exception as err:
        return err
    batch.embed_s += time.perf_counter() - t0
    used = embedder.stats.minus(before)
    batch.tokens += used.tokens
    batch.padded_tokens += used.padded_tokens
    offset = 0
    for c, ts, tokens in call:
        mine = vectors[offset:offset + len(ts)]
        offset += len(ts)
        t1 = time.perf_counter()
        try:
            batch.results[c.unit_id] = _store(rt, c, ts, tokens, mine, embedder)
        except Exception as err:
            batch.results[c.unit_id] = record_failure(rt, c, err)
        finally:
            rt.let_go(c)
            batch.store_s += time.perf_counter() - t1
    return None


def _load(rt: Runtime, claims: list[Claim], batch: Batch
          ) -> list[tuple[Claim, list[str], list[int]]]:
    """Each claim's chunks, read for its attempt; a stale or corrupt one is dealt with
    (skipped, or failed alone) and let go here."""
    with rt.session_factory() as session:
        payloads = {(uid, attempt): payload for uid, attempt, payload in session.execute(
            select(WorkUnit.id, WorkUnit.attempt, WorkUnit.payload).where(
                WorkUnit.id.in_([c.unit_id for c in claims]),
                WorkUnit.state == UnitState.running.value))}
    loaded = []
    for c in claims:
        payload = payloads.get((c.unit_id, c.attempt))
        if not payload:
            batch.results[c.unit_id] = skipped(c, "stale_or_deleted")
            rt.let_go(c)
            continue
        try:
            texts, tokens = _chunks_of(c, payload)
        except CorruptPayload as err:
            batch.results[c.unit_id] = record_failure(rt, c, err)
            rt.let_go(c)
            continue
        loaded.append((c, texts, tokens))
    return loaded


def _chunks_of(c: Claim, payload: Any) -> tuple[list[str], list[int]]:
    texts = payload.get("texts") if isinstance(payload, dict) else None
    tokens = payload.get("tokens") if isinstance(payload, dict) else None
    if (not isinstance(texts, list) or not isinstance(tokens, list)
            or not len(texts) == len(tokens) == c.chunk_end - c.chunk_start
            or not all(isinstance(t, str) for t in texts)
            or not all(isinstance(n, int) for n in tokens)):
        raise CorruptPayload(f"segment {c.unit_id} payload does not hold chunks "
                             f"{c.chunk_start}..{c.chunk_end}")
    return texts, tokens


def _store(rt: Runtime, c: Claim, texts: list[str], tokens: list[int], vectors: np.ndarray,
           embedder: Embedder) -> Result:
    """One segment's chunks, in its own fenced transaction (commits)."""
    with rt.session_factory() as session:
        fenced = fence(session, c)
        if fenced is None:
            return skipped(c, "stale_or_deleted")
        unit, file = fenced
        store_segment(session, file_id=c.file_id, owner_id=c.owner_id, start=c.chunk_start,
                      texts=texts, tokens=tokens, vectors=vectors,
                      embedding_backend=embedder.backend)
        unit_done(unit)
        file.segments_done += 1
        file.chunk_count += len(texts)
        file.embedding_model, file.embedding_backend = embedder.name, embedder.backend
        finished = file.segments_done >= file.segments_total
        file.progress = 1.0 if finished else file.segments_done / max(file.segments_total, 1)
        if finished:
            file.status, file.stage, file.error = FileStatus.done.value, None, None
            file.finished_at = datetime.now(UTC)
        done, total, count = file.segments_done, file.segments_total, file.chunk_count
        session.commit()
    rt.counters["units_done"] += 1
    if finished:
        rt.counters["files_done"] += 1
        publish(rt.redis, file_id=c.file_id, owner_id=c.owner_id, status="done", progress=1.0,
                chunks=count, segments_done=done, segments_total=total)
        log.info("file.processed file_id=%s chunks=%d segments=%d", c.file_id, count, total)
    else:
        publish(rt.redis, file_id=c.file_id, owner_id=c.owner_id, status="processing",
                stage="embed", progress=done / total, segments_done=done, segments_total=total)
    log.info("segment.stored file_id=%s segment=%d/%d chunks=%d", c.file_id, c.ordinal + 1,
             total, len(texts))
    return {"outcome": "done"}
