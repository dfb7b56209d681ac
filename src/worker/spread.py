"""An idle fleet embeds a new file together, and finishes a started file first.

A file's chunks are cut into segments of SEGMENT_CHUNKS, so a file smaller than that
(most documents) is one segment: one worker embeds it while the others, after a
quiet spell, start on the next files, and the first file gets a share of the CPUs
instead of all of them. So:

- A parse that finds no segment dispatched or running anywhere cuts its file into
  one segment per live worker (each at least SPREAD_MIN_CHUNKS chunks). Its job goes
  on to embed one of them (`worker.jobs`); a dispatch pass hands the others out.
- A parse that finishes while a file has segments embedding and others still
  waiting goes on to the waiting ones (only those), rather than parsing further
  ahead or starting another file: the started file is done sooner.

On the `make compare` burst (two workers, 2 CPUs) the first file was done in a median
2.5 s against 3.2-3.4 s without (loadtests/results/2026-12-02-first-file.md); on a cluster,
where each worker has its own CPUs, a lone file on an idle fleet is embedded by all
of them at once. Only files parsed while nothing is embedding are cut finer, so a
busy fleet pays nothing for it.
"""

from __future__ import annotations

import math
import uuid

from rq import Worker
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from shared.models import UnitKind, UnitState, WorkUnit
from worker.fill import fleet_is_embedding
from worker.runtime import Runtime

_BUSY = (UnitState.dispatched.value, UnitState.running.value)


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


def started_files_waiting(session: Session) -> set[uuid.UUID]:
    """Files with a segment dispatched or running and another one ready."""
    busy = aliased(WorkUnit)
    return set(session.scalars(select(WorkUnit.file_id).distinct().where(
        WorkUnit.kind == UnitKind.segment.value, WorkUnit.state == UnitState.pending.value,
        WorkUnit.not_before <= func.now(),
        exists().where(busy.file_id == WorkUnit.file_id, busy.kind == UnitKind.segment.value,
                       busy.state.in_(_BUSY)))))
