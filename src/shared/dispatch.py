"""The dispatcher: hands pending units from the Postgres backlog to RQ, in fair turns.

RQ is kept shallow (DISPATCH_PER_WORKER units waiting per live worker); everything
else waits in Postgres, where a pass picks, for each free place, the next unit in
round-robin order across owners (whoever had a turn longest ago first), oldest file
first within an owner (a background re-embed's units after the owner's ingests), and
never more than USER_UNITS_IN_FLIGHT of one owner dispatched or running. Within an
owner, parse units go first while the owner has fewer than EMBED_FILL_CHUNKS chunks
of segments ready: parsing (fast) runs a little ahead of embedding, so a worker can
fill its encode calls across the owner's small files (`worker.fill`) instead of
embedding each file's few chunks alone. One pass at a time fleet-wide (a
transaction-scoped advisory lock: a process killed mid-pass releases it with its
connection).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from shared.models import OwnerTurn, UnitState, WorkUnit
from shared.queue import enqueue_unit
from shared.settings import Settings

log = logging.getLogger("sluice.dispatch")
DISPATCH_LOCK = 0x51CE_D15
"""pg advisory lock key of the dispatch pass."""

_FAIR = text("""
WITH inflight AS (
    SELECT owner_id, count(*) AS n FROM work_units
    WHERE state IN ('dispatched', 'running') GROUP BY owner_id
), ready AS (
    SELECT owner_id, sum(chunk_end - chunk_start) AS chunks FROM work_units
    WHERE state = 'pending' AND kind = 'segment' AND not_before <= now() GROUP BY owner_id
), ranked AS (
    SELECT u.id, u.owner_id, u.file_id, u.chunk_end - u.chunk_start AS chunks,
           f.created_at AS file_created,
           row_number() OVER (PARTITION BY u.owner_id
                              ORDER BY u.kind = 'reembed',
                                       u.kind = 'parse' AND coalesce(rd.chunks, 0) < :lookahead
                                       DESC, f.created_at, u.file_id, u.ordinal) AS rn
    FROM work_units u JOIN files f ON f.id = u.file_id
    LEFT JOIN ready rd ON rd.owner_id = u.owner_id
    WHERE u.state = 'pending' AND u.not_before <= now()
      AND (CAST(:kind AS text) IS NULL OR u.kind = CAST(:kind AS text))
)
SELECT r.id, r.owner_id, r.file_id, r.chunks FROM ranked r
LEFT JOIN inflight i ON i.owner_id = r.owner_id
LEFT JOIN owner_turns t ON t.owner_id = r.owner_id
WHERE r.rn <= :cap - coalesce(i.n, 0)
ORDER BY r.rn, t.last_turn_at NULLS FIRST, r.file_created, r.id
LIMIT :room
""")


@dataclass(frozen=True)
class Pick:
    unit_id: int
    owner_id: uuid.UUID
    file_id: uuid.UUID
    chunks: int


def parse_lookahead(settings: Settings) -> int:
    """Chunks of an owner's segments ready before its next parse waits for them: a quarter
    of a fill. Enough for a filled call to find other files' segments, few enough that the
    first file is not held behind many parses. On the `make compare` burst (one worker,
    2026-12-01): a whole fill (256) ahead gave the first file at 3.3 s, a quarter 2.8 s,
    none 2.5 s but 7 % less throughput (more, smaller jobs)."""
    return settings.embed_fill_chunks // 4


def fair_picks(
    session: Session, *, cap: int, room: int, lookahead: int, kind: str | None = None
) -> list[Pick]:
    """The next `room` pending units in fair order (round robin across owners, oldest
    file first, parses first while fewer than `lookahead` chunks of the owner's segments
    are ready, at most `cap` of an owner dispatched or running), only of `kind` if
    given. The caller holds DISPATCH_LOCK, so no other pass or fill picks meanwhile."""
    rows = session.execute(_FAIR, {"cap": cap, "room": room, "kind": kind,
                                   "lookahead": lookahead}).all()
    return [Pick(int(uid), owner, file_id, int(chunks)) for uid, owner, file_id, chunks in rows]


def dispatch_once(
    session_factory: sessionmaker[Session], queue: Queue, settings: Settings, live_workers: int
) -> int:
    """One pass; returns how many units were handed to RQ. Safe to call from anywhere."""
    target = settings.dispatch_per_worker * max(1, live_workers)
    with session_factory() as session:
        if not session.scalar(select(func.pg_try_advisory_xact_lock(DISPATCH_LOCK))):
            return 0  # another process is dispatching right now
        waiting = session.scalar(select(func.count()).select_from(WorkUnit).where(
            WorkUnit.state == UnitState.dispatched.value)) or 0
        room = target - waiting
        if room <= 0:
            return 0
        picked = fair_picks(session, cap=settings.user_units_in_flight, room=room,
                            lookahead=parse_lookahead(settings))
        if not picked:
            return 0
        ids = [p.unit_id for p in picked]
        attempts = dict(session.execute(
            update(WorkUnit)
            .where(WorkUnit.id.in_(ids), WorkUnit.state == UnitState.pending.value)
            .values(state=UnitState.dispatched.value, attempt=WorkUnit.attempt + 1,
                    dispatched_at=func.now(), updated_at=func.now())
            .returning(WorkUnit.id, WorkUnit.attempt)
        ).tuples().all())
        take_turns(session, [p.owner_id for p in picked])
        session.commit()
    to_send = [(uid, attempts[uid]) for uid in ids if uid in attempts]
    for k, (uid, attempt) in enumerate(to_send):
        try:
            enqueue_unit(queue, settings, uid, attempt)
        except RedisError as err:
            # Back to the backlog now; the reconciler would also find it (no RQ job).
            log.warning("dispatch.enqueue_failed unit=%s error=%s", uid, err)
            _undispatch(session_factory, dict(to_send[k:]))
            return k
    return len(to_send)


def take_turns(session: Session, owners: list[uuid.UUID]) -> None:
    """Record the turns in pick order (clock_timestamp() rises within the pass)."""
    seen: set[uuid.UUID] = set()
    for owner in owners:
        if owner in seen:
            continue
        seen.add(owner)
        stmt = insert(OwnerTurn).values(owner_id=owner, last_turn_at=func.clock_timestamp())
        session.execute(stmt.on_conflict_do_update(
            index_elements=[OwnerTurn.owner_id], set_={"last_turn_at": stmt.excluded.last_turn_at}))


def _undispatch(session_factory: sessionmaker[Session], attempts: dict[int, int]) -> None:
    with session_factory() as session, session.begin():
        for uid, attempt in attempts.items():
            session.execute(
                update(WorkUnit)
                .where(WorkUnit.id == uid, WorkUnit.attempt == attempt,
                       WorkUnit.state == UnitState.dispatched.value)
                .values(state=UnitState.pending.value, dispatched_at=None)
            )


BACKLOG_SQL = text("""
SELECT owner_id,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'dispatched') AS dispatched,
       count(*) FILTER (WHERE state = 'running') AS running,
       min(created_at) FILTER (WHERE state = 'pending') AS oldest_pending_at
FROM work_units WHERE state IN ('pending', 'dispatched', 'running')
GROUP BY owner_id ORDER BY pending DESC, owner_id
""")
"""Per owner, for the admin API."""

WAITING_SQL = text(
    "SELECT count(*) FROM work_units WHERE state = 'dispatched' "
    "OR (state = 'pending' AND not_before <= now())"
)
"""Units waiting for a worker now: the backlog the autoscaler reads."""


UNITS_BY_STATE_SQL = text(
    "SELECT state, count(*) FROM work_units WHERE state IN ('pending', 'dispatched', 'running') "
    "GROUP BY state"
)

