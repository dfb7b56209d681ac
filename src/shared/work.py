"""The work protocol: units in Postgres, claimed by compare-and-set, fenced by attempt.

A file's work is a parse unit, then segment units (see `shared.models.WorkUnit`).
The dispatcher (`shared.dispatch`) hands a pending unit to RQ as `(id, attempt)`
after incrementing `attempt`. A worker `claim`s it only if it is still
`dispatched` with that attempt, so a duplicate, stale or late delivery, or one for
a deleted file, finds nothing to claim. Every later write of the attempt goes
through `fence`, which locks the unit row and checks it is still `running` with the
same attempt: a worker whose lease ran out (and whose unit was offered again) can no
longer change anything. The webui only creates parse units and wakes the dispatcher.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Delete, delete, func, null, select, text, update
from sqlalchemy.orm import Session

from shared.models import Chunk, File, FileStatus, UnitKind, UnitState, WorkUnit

WAKE_KEY = "sluice:dispatch:wake"
LIVE_STATES = (UnitState.pending.value, UnitState.dispatched.value, UnitState.running.value)


def new_parse_unit(file_id: uuid.UUID, owner_id: uuid.UUID) -> WorkUnit:
    """The first unit of a file; add it in the transaction that commits the file."""
    return WorkUnit(file_id=file_id, owner_id=owner_id, kind=UnitKind.parse.value, ordinal=0,
                    state=UnitState.pending.value)


def clear_work_statements(file_id: uuid.UUID) -> list[Delete]:
    """Statements that drop a file's units and chunks (before it starts over)."""
    return [delete(WorkUnit).where(WorkUnit.file_id == file_id),
            delete(Chunk).where(Chunk.file_id == file_id)]


def wake(redis: Redis) -> None:
    """Ask a dispatcher for a pass now (it also runs every DISPATCH_INTERVAL)."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(WAKE_KEY, 1)
        pipe.ltrim(WAKE_KEY, -1, -1)  # one pending wake-up is enough
        pipe.expire(WAKE_KEY, 60)
        pipe.execute()


async def wake_async(redis: AsyncRedis) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(WAKE_KEY, 1)
        pipe.ltrim(WAKE_KEY, -1, -1)
        pipe.expire(WAKE_KEY, 60)
        await pipe.execute()


@dataclass(frozen=True)
class Claim:
    """A unit this worker holds: every write of it is fenced by `(unit_id, attempt)`."""

    unit_id: int
    attempt: int
    file_id: uuid.UUID
    owner_id: uuid.UUID
    kind: str
    ordinal: int
    chunk_start: int
    chunk_end: int
    tries: int


def lease_expiry(seconds: int) -> Any:
    return func.now() + text(f"interval '{int(seconds)} seconds'")


def claim(session: Session, unit_id: int, attempt: int, worker: str, lease_s: int) -> Claim | None:
    """Compare-and-set `dispatched`/attempt → `running` with a lease; commits. None: the
    delivery is stale, duplicated or for work that is gone; nothing was changed."""
    file_id = session.scalar(select(WorkUnit.file_id).where(WorkUnit.id == unit_id))
    # Rows are locked file first, then unit, everywhere (a file's delete cascades in that
    # order): no deadlock between a delete and a worker.
    if file_id is None or session.scalar(
            select(File.id).where(File.id == file_id).with_for_update()) is None:
        session.rollback()
        return None
    row = session.execute(
        update(WorkUnit)
        .where(WorkUnit.id == unit_id, WorkUnit.attempt == attempt,
               WorkUnit.state == UnitState.dispatched.value)
        .values(state=UnitState.running.value, tries=WorkUnit.tries + 1, worker=worker,
                lease_expires_at=lease_expiry(lease_s), updated_at=func.now())
        .returning(WorkUnit.file_id, WorkUnit.owner_id, WorkUnit.kind, WorkUnit.ordinal,
                   WorkUnit.chunk_start, WorkUnit.chunk_end, WorkUnit.tries)
    ).first()
    if row is None:
        session.rollback()
        return None
    c = Claim(unit_id, attempt, *row)
    if c.kind == UnitKind.reembed.value:  # a done file's background work: its status stays
        session.commit()
        return c
    values: dict[str, Any] = {"status": FileStatus.processing.value,
                              "attempts": func.greatest(File.attempts, c.tries)}
    if c.kind == UnitKind.parse.value:
        values |= {"stage": "parse", "started_at": func.now()}
    session.execute(update(File).where(File.id == c.file_id).values(**values))
    session.commit()
    return c


def renew_lease(session: Session, unit_id: int, attempt: int, lease_s: int) -> bool:
    """Extend the lease; False once the unit is no longer this attempt's (commits)."""
    n = session.execute(
        update(WorkUnit)
        .where(WorkUnit.id == unit_id, WorkUnit.attempt == attempt,
               WorkUnit.state == UnitState.running.value)
        .values(lease_expires_at=lease_expiry(lease_s))
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return bool(n)


def fence(session: Session, c: Claim) -> tuple[WorkUnit, File] | None:
    """Lock the unit and its file for this attempt's write. None (nothing locked that
    matters): the attempt is stale, or the file was deleted. The caller commits."""
    file = session.scalar(select(File).where(File.id == c.file_id).with_for_update())
    if file is None:
        return None
    unit = session.scalar(select(WorkUnit).where(WorkUnit.id == c.unit_id).with_for_update())
    if unit is None or unit.state != UnitState.running.value or unit.attempt != c.attempt:
        return None
    return unit, file


def fail_unit(session: Session, unit: WorkUnit, file: File, reason: str) -> None:
    """A unit that will not be tried again: its file fails, unless it is a reembed unit
    (the file stays done and searchable; the re-embed waits, see shared/reembed.py)."""
    if unit.kind == UnitKind.reembed.value:
        unit.state, unit.error, unit.lease_expires_at = UnitState.failed.value, reason, None
        return
    fail_file(session, file, reason)
    unit.error = reason


def fail_file(session: Session, file: File, reason: str) -> None:
    """The file ends `failed` with `reason`: its other units stop (their fences fail),
    and no chunk of it stays. The caller commits."""
    session.execute(
        update(WorkUnit)
        .where(WorkUnit.file_id == file.id, WorkUnit.state != UnitState.done.value)
        .values(state=UnitState.failed.value, payload=null(), lease_expires_at=None)
    )
    session.execute(delete(Chunk).where(Chunk.file_id == file.id))
    file.status = FileStatus.failed.value
    file.error = reason
    file.stage = None
    file.chunk_count = 0
    file.finished_at = datetime.now(UTC)


def retry_later(session: Session, unit: WorkUnit, file: File, reason: str, delay_s: int) -> None:
    """Back to the backlog, offered again after `delay_s` (the caller commits)."""
    unit.state = UnitState.pending.value
    unit.error = reason
    unit.lease_expires_at = None
    unit.not_before = datetime.now(UTC) + timedelta(seconds=delay_s)
    if unit.kind == UnitKind.reembed.value:
        return  # the file is done and searchable; its re-embed is the admin's business
    if unit.kind == UnitKind.parse.value:
        file.status = FileStatus.queued.value
        file.stage = None
    file.error = f"attempt {unit.tries} failed, retrying: {reason}"

