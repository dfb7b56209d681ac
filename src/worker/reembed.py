"""The `reembed` unit: encode a window of a done file's chunks with this worker's backend
into the running re-embed's target space (`chunk_vectors`; see shared/reembed.py).

Like a segment: read in a short transaction, encode holding no connection, write through
`fence`. The write is an upsert on (chunk, space), so a unit redone after a lost lease
overwrites and never duplicates; chunks deleted meanwhile (the file deleted or re-stored)
are skipped. A worker whose backend is in another space (a mixed fleet during a rollout)
gives the unit back untouched, for a worker of the target space.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import text

from shared import reembed
from shared.embedding import compatible_backends
from shared.work import Claim, fence
from worker.runtime import Runtime
from worker.units import Result, skipped, unit_done

log = logging.getLogger("sluice.worker")

_TODO_SQL = text("""
SELECT c.id, c.text FROM chunks c
WHERE c.file_id = :file AND c.idx >= :start AND c.idx < :end
  AND NOT (c.embedding_backend = ANY(:backends))
  AND NOT EXISTS (SELECT 1 FROM chunk_vectors v WHERE v.chunk_id = c.id AND v.space = :space)
ORDER BY c.idx
""")
_UPSERT_SQL = text("""
INSERT INTO chunk_vectors (chunk_id, space, backend, embedding)
SELECT c.id, :space, :backend, CAST(:vec AS vector) FROM chunks c WHERE c.id = :id
ON CONFLICT (chunk_id, space) DO UPDATE SET embedding = excluded.embedding,
                                            backend = excluded.backend
""")


def run_reembed(rt: Runtime, c: Claim) -> Result:
    embedder = rt.embedder
    space = embedder.space
    with rt.session_factory() as session:
        target = reembed.running_target(session)
        rows = session.execute(_TODO_SQL, {
            "file": c.file_id, "start": c.chunk_start, "end": c.chunk_end, "space": space,
            "backends": compatible_backends(embedder.backend)}).all() if target == space else []
    if target is not None and target != space:
        return _give_back(rt, c, target)
    if not rows:  # switched, cancelled, or nothing left in this window: done, nothing to write
        return _finish(rt, c, [], None, space)
    t0 = time.perf_counter()
    vectors = embedder.encode([r.text for r in rows], batch_size=rt.config.embed_batch_size)
    t1 = time.perf_counter()
    result = _finish(rt, c, rows, vectors, space)
    if result["outcome"] == "done":
        result["timings"] = {"embed": t1 - t0, "store": time.perf_counter() - t1}
    return result


def _finish(rt: Runtime, c: Claim, rows: Sequence[Any], vectors: np.ndarray | None,
            space: str) -> Result:
    with rt.session_factory() as session:
        fenced = fence(session, c)
        if fenced is None:
            return skipped(c, "stale_or_deleted")
        unit, _ = fenced
        # Written only if that re-embed is still the one running (not switched or cancelled).
        if vectors is not None and reembed.running_target(session) == space:
            session.execute(_UPSERT_SQL, [
                {"id": r.id, "space": space, "backend": rt.embedder.backend,
                 "vec": str(v.tolist())} for r, v in zip(rows, vectors, strict=True)])
        unit_done(unit)
        session.commit()
        switched = reembed.try_switch(session)
        session.commit()
    log.info("reembed.stored file_id=%s chunks=%d-%d vectors=%d space=%s switched=%s",
             c.file_id, c.chunk_start, c.chunk_end, len(rows), space, switched)
    return {"outcome": "done"}


def _give_back(rt: Runtime, c: Claim, target: str) -> Result:
    """Not this worker's space: back to the backlog, this claim not counted as a try."""
    with rt.session_factory() as session:
        fenced = fence(session, c)
        if fenced is None:
            return skipped(c, "stale_or_deleted")
        unit, _ = fenced
        unit.state, unit.lease_expires_at, unit.tries = "pending", None, unit.tries - 1
        unit.not_before = datetime.now(UTC) + timedelta(seconds=rt.settings.job_retry_delay)
        session.commit()
    log.info("reembed.given_back unit=%s target_space=%s worker_space=%s", c.unit_id, target,
             rt.embedder.space)
    return {"outcome": "skipped", "reason": "other_space"}
