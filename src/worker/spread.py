"""An idle fleet embeds a new file together, and finishes a started file first.

A file's chunks are cut into segments of SEGMENT_CHUNKS, so a file smaller than that
(most documents) is one segment: one worker embeds it while the others, after a
quiet spell, start on the next files, and the first file gets a share of the CPUs
instead of all of them. So:

- A parse that finds no segment dispatched or running anywhere cuts its file into
  one segment per live worker (each at least SPREAD_MIN_CHUNKS chunks). Its job goes
  on to embed one of them (`worker.jobs`); a dispatch pass hands the others out.
- A job that finishes (a parse, or a part it embedded) while such a file has parts
  done or embedding and others still waiting goes on to the waiting ones, the oldest
  such file's, rather than taking new work: the file is done sooner. Two parses that
  cut their files at the same moment (both saw the fleet idle) finish each other's.

On the `make compare` burst (two workers, 2 CPUs; `make bench-first`, two sessions) the
first file is done in a median 2.86 / 2.44 s against 3.76 / 3.38 s without this and the
oldest-first uploads (`webui.admission`), 2.79 / 2.78 s with this alone
(loadtests/results/2026-12-02-first-file.md). On a cluster, where each worker has its
own CPUs, a lone file on an idle fleet is embedded by all of them at once. Only files
parsed while nothing is embedding are cut finer, so a busy fleet pays nothing for it.
"""

from __future__ import annotations

import math
import uuid

from rq import Worker
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from shared.models import File, UnitKind, UnitState, WorkUnit
from worker.fill import fleet_is_embedding
from worker.runtime import Runtime


def spread_parts(chunks: int, workers: int, min_chunks: int) -> int:
    """How many segments to cut a file of `chunks` into for `workers` idle workers
    (1: no spreading; each part has at least `min_chunks`; 0 = off)."""
    if min_chunks <= 0 or workers <= 1:
        return 1
    return max(1, min(workers, chunks // min_chunks))


def segment_size(rt: Runtime, chunks: int) -> int:
    """SEGMENT_CHUNKS, or one live worker's share of this file's chunks if no segment is
    dispatched or running anywhere (whichever is smaller)."""
    size = rt.settings.segment_chunks
    if rt.settings.spread_min_chunks <= 0 or chunks < 2 * rt.settings.spread_min_chunks:
        return size  # too small to cut: not worth a query
    with rt.session_factory() as session:
        if fleet_is_embedding(session):
            return size
    parts = spread_parts(chunks, Worker.count(connection=rt.redis, queue=rt.queue),
                         rt.settings.spread_min_chunks)
    return min(size, math.ceil(chunks / parts))


def spread_file_waiting(session: Session, segment_chunks: int) -> uuid.UUID | None:
    """The oldest file cut for an idle fleet (its first segment is smaller than
    SEGMENT_CHUNKS) that is started (a segment done or embedding) and has another
    segment ready. Only such files: a big file's segments keep taking fair turns with
    everyone else's work, so no one user's file can hold the helpers."""
    first, started = aliased(WorkUnit), aliased(WorkUnit)
    same_file = [WorkUnit.file_id == first.file_id, first.kind == UnitKind.segment.value]
    return session.scalar(
        select(WorkUnit.file_id).join(File, File.id == WorkUnit.file_id).where(
            WorkUnit.kind == UnitKind.segment.value, WorkUnit.state == UnitState.pending.value,
            WorkUnit.not_before <= func.now(),
            exists().where(*same_file, first.ordinal == 0,
                           first.chunk_end - first.chunk_start < segment_chunks),
            exists().where(started.file_id == WorkUnit.file_id,
                           started.kind == UnitKind.segment.value,
                           started.state != UnitState.pending.value))
        .order_by(File.created_at, WorkUnit.file_id).limit(1))
