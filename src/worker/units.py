"""The parse unit: a file into segments (segments are embedded by `worker.segments`).

Each step reads what it needs in a short transaction, does the slow part (parse,
embed) holding no connection, then writes through `shared.work.fence`, so the write
happens only if this attempt still owns the unit and the file still exists.
Returns the job's outcome for the metrics: done | skipped.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import delete

from shared.document_errors import DocumentRejected
from shared.models import Chunk, File, UnitKind, UnitState, WorkUnit
from shared.storage import stored_path
from shared.work import Claim, fence
from worker.errors import StoredBytesMissing, TooManyChunks
from worker.pipeline.chunk import TextChunk
from worker.pipeline.isolated import parse_isolated
from worker.progress import publish
from worker.runtime import Runtime
from worker.spread import segment_size

log = logging.getLogger("sluice.worker")
Result = dict[str, Any]


def plan_segments(chunks: list[TextChunk], size: int) -> list[WorkUnit]:
    """Segment units of at most `size` chunks, carrying their chunks until stored."""
    return [
        WorkUnit(kind=UnitKind.segment.value, ordinal=n, chunk_start=start,
                 chunk_end=min(start + size, len(chunks)), state=UnitState.pending.value,
                 payload={"texts": [c.text for c in chunks[start:start + size]],
                          "tokens": [c.token_count for c in chunks[start:start + size]]})
        for n, start in enumerate(range(0, len(chunks), size))
    ]


def run_parse(rt: Runtime, c: Claim) -> Result:
    settings = rt.settings
    with rt.session_factory() as session:
        file = session.get(File, c.file_id)
        if file is None:
            return skipped(c, "deleted")
        storage_key, filename = file.storage_key, file.filename
    publish(rt.redis, file_id=c.file_id, owner_id=c.owner_id, status="processing", stage="parse")
    path = stored_path(settings.upload_dir, storage_key)
    if not path.exists():
        raise StoredBytesMissing("the uploaded bytes are not on the shared volume")
    t0 = time.perf_counter()
    parsed = parse_isolated(path, filename, timeout_s=settings.parse_timeout,
                            memory_mb=settings.parse_memory_mb)
    t1 = time.perf_counter()
    chunks = rt.chunker.split(parsed.text, parsed.kind)
    if not chunks:
        raise DocumentRejected("no text could be extracted from this file")
    if len(chunks) > settings.max_chunks_per_file:
        raise TooManyChunks(len(chunks), settings.max_chunks_per_file)
    size = segment_size(rt, len(chunks))
    segments = plan_segments(chunks, size)
    t2 = time.perf_counter()
    with rt.session_factory() as session:
        fenced = fence(session, c)
        if fenced is None:
            return skipped(c, "stale_or_deleted")
        unit, file = fenced
        # A parse that ran before (and lost its lease after writing nothing) left nothing;
        # clear anyway, so this write alone defines the file's segments.
        session.execute(delete(WorkUnit).where(WorkUnit.file_id == c.file_id,
                                               WorkUnit.kind == UnitKind.segment.value))
        session.execute(delete(Chunk).where(Chunk.file_id == c.file_id))
        for seg in segments:
            seg.file_id, seg.owner_id = c.file_id, c.owner_id
        session.add_all(segments)
        unit_done(unit)
        file.kind, file.stage, file.error = parsed.kind, "embed", None
        file.segments_total, file.segments_done = len(segments), 0
        file.chunk_count, file.progress = 0, 0.0
        session.commit()
    publish(rt.redis, file_id=c.file_id, owner_id=c.owner_id, status="processing", stage="embed",
            progress=0.0, segments_done=0, segments_total=len(segments))
    log.info("file.parsed file_id=%s kind=%s chunks=%d segments=%d segment_chunks=%d "
             "parse=%.2fs chunk=%.2fs", c.file_id, parsed.kind, len(chunks), len(segments),
             size, t1 - t0, t2 - t1)
    result: Result = {"outcome": "done", "timings": {"parse": t1 - t0, "chunk": t2 - t1}}
    if size < settings.segment_chunks and len(segments) > 1:
        result["spread"] = size  # cut for an idle fleet: this job goes on to one part
    return result


def unit_done(unit: WorkUnit) -> None:
    unit.state, unit.payload, unit.lease_expires_at, unit.error = (
        UnitState.done.value, None, None, None)


def skipped(c: Claim, why: str) -> Result:
    log.info("file.skipped file_id=%s unit=%s attempt=%s reason=%s", c.file_id, c.unit_id,
             c.attempt, why)
    return {"outcome": "skipped", "reason": why}
