"""Fill a job: with a segment, claim other ready segments to embed in the same job.

Every job costs a round of RQ, claim and dispatch work (on the `make compare` burst,
one job per segment took 7 % longer than filled jobs), and a batching encoder (torch)
pads a small file's lone batch to its longest text. So a worker that claimed a segment
also claims pending, due segments of any file and owner, in the dispatcher's fair order
and within USER_UNITS_IN_FLIGHT (`shared.dispatch.fair_picks`, under the dispatch lock,
so no pass or other fill picks the same units meanwhile), until EMBED_FILL_CHUNKS chunks
in all. Each goes `pending` → `running` with attempt + 1, a lease and this worker's name:
the state a delivered and claimed unit is in, so the heartbeat renews it, the
reconciler recovers it if this worker dies, and `shared.work.fence` guards its write.

A parse job that finds no segment dispatched or running anywhere claims ready segments
the same way, up to EMBED_FILL_CHUNKS, once its file is planned (`worker.jobs`): the first
file after a quiet spell starts embedding at once, not behind the parses already waiting
in RQ (the `make compare` burst, two workers: first file 3.3-3.6 s, 3.8-3.9 s without).
While anything is embedding, parses stay parses: they keep running ahead, fills stay full
(except to finish a file cut for the idle fleet, and a parse that cut its file takes one
part: `worker.spread`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from shared.dispatch import DISPATCH_LOCK, fair_picks, take_turns
from shared.models import File, FileStatus, UnitKind, UnitState, WorkUnit
from shared.settings import Settings
from shared.work import Claim, lease_expiry

log = logging.getLogger("sluice.worker")


def fill_budget(c: Claim, settings: Settings) -> int:
    """Chunks that other segments may add to `c`'s encode call (0: no fill)."""
    if c.kind != UnitKind.segment.value:
        return 0
    return max(settings.embed_fill_chunks - (c.chunk_end - c.chunk_start), 0)


def claim_fill(session: Session, c: Claim, settings: Settings, worker: str) -> list[Claim]:
    """Claim ready segments of at most `fill_budget(c)` chunks in all; commits."""
    return claim_ready(session, settings, worker, fill_budget(c, settings))


def fleet_is_embedding(session: Session) -> bool:
    """Whether any segment is dispatched or running, anywhere in the fleet."""
    return bool(session.scalar(select(exists().where(
        WorkUnit.kind == UnitKind.segment.value,
        WorkUnit.state.in_([UnitState.dispatched.value, UnitState.running.value])))))


def claim_ready(session: Session, settings: Settings, worker: str, budget: int,
                files: Collection[uuid.UUID] | None = None) -> list[Claim]:
    """Claim ready segments of at most `budget` chunks in all (only of `files`, if
    given); commits.

    Picks in fair order and skips a unit that does not fit in what is left of the
    budget (it waits for the dispatcher or a later fill), so the batch stays bounded.
    """
    if budget <= 0:
        return []
    # Blocks for at most one dispatch pass (milliseconds). Taken before any row lock,
    # like the dispatcher, so lock order is the same everywhere: no deadlock.
    session.execute(select(func.pg_advisory_xact_lock(DISPATCH_LOCK)))
    picks = fair_picks(session, cap=settings.user_units_in_flight, room=budget,
                       lookahead=settings.embed_fill_chunks, kind=UnitKind.segment.value)
    chosen, left = [], budget
    for p in picks:
        if 0 < p.chunks <= left and (files is None or p.file_id in files):
            chosen.append(p)
            left -= p.chunks
    if not chosen:
        session.rollback()
        return []
    ids = [p.unit_id for p in chosen]
    # File rows first, then units, in one order (as `claim` and a file's delete do).
    files = session.scalars(
        select(File.id).where(File.id.in_(
            select(WorkUnit.file_id).where(WorkUnit.id.in_(ids))))
        .order_by(File.id).with_for_update()).all()
    rows = session.execute(
        update(WorkUnit)
        .where(WorkUnit.id.in_(ids), WorkUnit.file_id.in_(files),
               WorkUnit.state == UnitState.pending.value)
        .values(state=UnitState.running.value, attempt=WorkUnit.attempt + 1,
                tries=WorkUnit.tries + 1, worker=worker,
                lease_expires_at=lease_expiry(settings.lease_seconds),
                dispatched_at=func.now(), updated_at=func.now())
        .returning(WorkUnit.id, WorkUnit.attempt, WorkUnit.file_id, WorkUnit.owner_id,
                   WorkUnit.kind, WorkUnit.ordinal, WorkUnit.chunk_start, WorkUnit.chunk_end,
                   WorkUnit.tries)
    ).all()
    claims = sorted((Claim(*row) for row in rows), key=lambda x: ids.index(x.unit_id))
    for f in {x.file_id for x in claims}:
        tries = max(x.tries for x in claims if x.file_id == f)
        session.execute(update(File).where(File.id == f).values(
            status=FileStatus.processing.value, attempts=func.greatest(File.attempts, tries)))
    take_turns(session, [x.owner_id for x in claims])  # a fill is a turn, as a dispatch is
    session.commit()
    return claims
