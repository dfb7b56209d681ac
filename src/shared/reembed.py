"""Switching the encoder without downtime: re-embed every chunk into a new embedding space
in the background, then switch in one transaction (issue 14; README "Switching the encoder").

State lives in `app_config`: `embedding.active_space` is the space `chunks.embedding`
holds (what search reads, unchanged on its hot path); `reembed` is the current or last
re-embed: `{state: running|done|cancelled, target_space, backend, started_at, finished_at}`.

While one runs, `reembed` units (a SEGMENT_CHUNKS window of one done file's chunks, through
the same dispatcher, claim, lease and fence as any unit) are encoded by workers whose
backend is in the target space and written to `chunk_vectors`. A chunk is *done* when it
is already in the target space (a file ingested meanwhile by a new-backend worker) or has
a side-table row in it. When every chunk is done, `advance` switches: copies the side
vectors into `chunks`, records their backend on chunks and files, sets the active space,
and empties the side table, all in one transaction (old vectors are overwritten only
there). Everything that changes this state runs under one advisory lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.embedding import backends_in, space_of
from shared.models import AppConfig, UnitKind, UnitState, WorkUnit

log = logging.getLogger("sluice.reembed")

ACTIVE_SPACE_KEY = "embedding.active_space"
REEMBED_KEY = "reembed"
REEMBED_LOCK = 0x51CE_2EEB
"""pg advisory lock key: starting, planning and switching, one process at a time."""
_PLAN_BATCH = 500

# A chunk still to do: not in the target space, no side-table row in it.
_MISSING = """
NOT (c.embedding_backend = ANY(:backends))
AND NOT EXISTS (SELECT 1 FROM chunk_vectors v WHERE v.chunk_id = c.id AND v.space = :space)
"""

# Windows of done files with chunks to do and no reembed unit that is live or failed
# (a failed one stops the switch until `sluice reembed start` clears it).
_PLAN_SQL = text(f"""
SELECT c.file_id, c.owner_id, c.idx / :size AS w
FROM chunks c JOIN files f ON f.id = c.file_id
WHERE f.status = 'done' AND {_MISSING}
  AND NOT EXISTS (SELECT 1 FROM work_units u WHERE u.file_id = c.file_id AND u.kind = 'reembed'
                  AND u.state IN ('pending', 'dispatched', 'running', 'failed'))
GROUP BY 1, 2, 3 ORDER BY 1, 3 LIMIT :batch
""")

_ANY_MISSING_SQL = text(f"SELECT EXISTS (SELECT 1 FROM chunks c WHERE {_MISSING})")

PROGRESS_SQL = text(f"""
WITH per_file AS (
  SELECT c.file_id, count(*) AS total,
         count(*) FILTER (WHERE NOT ({_MISSING})) AS done
  FROM chunks c GROUP BY c.file_id)
SELECT coalesce(sum(total), 0) AS chunks_total, coalesce(sum(done), 0) AS chunks_done,
       count(*) AS files_total, count(*) FILTER (WHERE done = total) AS files_done
FROM per_file
""")

UNITS_SQL = text(
    "SELECT state, count(*) FROM work_units WHERE kind = 'reembed' GROUP BY state")

_SWITCH_SQL = [
    text("UPDATE chunks c SET embedding = v.embedding, embedding_backend = v.backend "
         "FROM chunk_vectors v WHERE v.chunk_id = c.id AND v.space = :space"),
    # Files whose chunks are now all in the target space (a file still being ingested
    # records its backend with its next segment).
    text("UPDATE files f SET embedding_backend = :backend WHERE f.status = 'done' "
         "AND NOT (coalesce(f.embedding_backend, 'torch') = ANY(:backends))"),
    text("DELETE FROM chunk_vectors"),
    text("DELETE FROM work_units WHERE kind = 'reembed'"),
]


@dataclass(frozen=True)
class Progress:
    """What `GET /admin/reembed` and `sluice reembed status` show."""

    state: str  # idle | running | done | cancelled
    active_space: str | None
    target_space: str | None
    backend: str | None
    started_at: str | None
    finished_at: str | None
    chunks_total: int
    chunks_done: int
    files_total: int
    files_done: int
    units: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def read_config(session: Session, key: str) -> Any:
    return session.scalar(select(AppConfig.value).where(AppConfig.key == key))


def _write_config(session: Session, key: str, value: Any) -> None:
    stmt = insert(AppConfig).values(key=key, value=value)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[AppConfig.key], set_={"value": stmt.excluded.value, "updated_at": func.now()}))


def running_target(session: Session) -> str | None:
    """The target space of the re-embed running now, if one is."""
    state = read_config(session, REEMBED_KEY)
    if isinstance(state, dict) and state.get("state") == "running":
        return str(state["target_space"])
    return None


def _params(space: str) -> dict[str, Any]:
    return {"space": space, "backends": backends_in(space)}


def _lock(session: Session) -> bool:
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(REEMBED_LOCK))))


def start(session: Session, backend: str) -> str:
    """Start (or resume) a re-embed into `backend`'s space; the caller commits. Into the
    active space: cancels the running one. Returns what happened, in words."""
    if not _lock(session):
        return "busy: another process is changing the re-embed right now; try again"
    space = space_of(backend)
    active = read_config(session, ACTIVE_SPACE_KEY)
    # Failed units are cleared, so that their files are planned again.
    session.execute(text("DELETE FROM work_units WHERE kind = 'reembed'"))
    session.execute(text("DELETE FROM chunk_vectors WHERE space <> :space"), {"space": space})
    now = datetime.now(UTC).isoformat()
    if space == active:
        session.execute(text("DELETE FROM chunk_vectors"))
        if running_target(session) is not None:
            _write_config(session, REEMBED_KEY, {**read_config(session, REEMBED_KEY),
                                                 "state": "cancelled", "finished_at": now})
            log.warning("reembed.cancelled active_space=%s", active)
            return f"cancelled: {space} is the active space already"
        return f"nothing to do: {space} is the active space already"
    _write_config(session, REEMBED_KEY, {"state": "running", "target_space": space,
                                         "backend": backend, "started_at": now,
                                         "finished_at": None})
    log.warning("reembed.started active_space=%s target_space=%s backend=%s", active, space,
                backend)
    return f"started: re-embedding into {space} ({backend})"


def advance(session: Session, *, worker_backend: str | None, segment_chunks: int) -> bool:
    """One step, under the lock (False if another process holds it); the caller commits.
    With `worker_backend` (a worker's reconciler, REEMBED_AUTO): first record the active
    space if none is, and start a re-embed when the worker's space is not the active one
    and none is running. Then plan units for chunks still to do, or switch if none is."""
    if not _lock(session):
        return False
    active = read_config(session, ACTIVE_SPACE_KEY)
    if worker_backend is not None:
        mine = space_of(worker_backend)
        if active is None:
            _write_config(session, ACTIVE_SPACE_KEY, mine)
            active = mine
        elif mine != active and running_target(session) is None:
            start(session, worker_backend)  # the lock is re-entrant within a transaction
    target = running_target(session)
    if target is None:
        return True
    if plan(session, target, segment_chunks) == 0:
        switch_if_complete(session)
    return True


def plan(session: Session, space: str, segment_chunks: int) -> int:
    """Reembed units for windows of done files with chunks still to do (at most
    _PLAN_BATCH windows a call); returns how many were added."""
    rows = session.execute(_PLAN_SQL, {**_params(space), "size": segment_chunks,
                                       "batch": _PLAN_BATCH}).all()
    files = {r.file_id for r in rows}
    if files:
        # Done units of earlier windows of these files give their ordinals back.
        session.execute(text("DELETE FROM work_units WHERE kind = 'reembed' AND state = 'done' "
                             "AND file_id = ANY(:f)"), {"f": list(files)})
    session.add_all(
        WorkUnit(file_id=r.file_id, owner_id=r.owner_id, kind=UnitKind.reembed.value,
                 ordinal=r.w, chunk_start=r.w * segment_chunks,
                 chunk_end=(r.w + 1) * segment_chunks, state=UnitState.pending.value)
        for r in rows)
    session.flush()
    return len(rows)


def switch_if_complete(session: Session) -> bool:
    """Switch to the running re-embed's space if every chunk has a vector in it and no
    reembed unit is live or failed. Writes to `chunks` wait for the switch's lock (reads,
    i.e. searches, do not), so no chunk can be stored in the old space between the check
    and the copy. The caller holds REEMBED_LOCK and commits."""
    state = read_config(session, REEMBED_KEY)
    if not (isinstance(state, dict) and state.get("state") == "running"):
        return False
    unfinished = session.scalar(select(func.count()).select_from(WorkUnit).where(
        WorkUnit.kind == UnitKind.reembed.value,
        WorkUnit.state.in_((UnitState.pending.value, UnitState.dispatched.value,
                            UnitState.running.value, UnitState.failed.value))))
    if unfinished:
        return False
    space = state["target_space"]
    params = {**_params(space), "backend": state["backend"]}
    # Checked first without the lock: chunks of files still being ingested in the old space
    # keep the re-embed open for a while, and ingests must not wait on every such check.
    if session.scalar(_ANY_MISSING_SQL, params):
        return False
    session.execute(text("LOCK TABLE chunks IN EXCLUSIVE MODE"))
    if session.scalar(_ANY_MISSING_SQL, params):
        return False
    for stmt in _SWITCH_SQL:
        session.execute(stmt, params)
    _write_config(session, ACTIVE_SPACE_KEY, space)
    _write_config(session, REEMBED_KEY, {**state, "state": "done",
                                         "finished_at": datetime.now(UTC).isoformat()})
    log.warning("reembed.switched active_space=%s backend=%s", space, state["backend"])
    return True


def try_switch(session: Session) -> bool:
    """`switch_if_complete` under the lock, for a worker that just finished a unit."""
    return _lock(session) and switch_if_complete(session)


def progress(session: Session) -> Progress:
    # Both keys in one statement: read one after the other (READ COMMITTED), a switch
    # committing in between gave "done into fp32" with the old active space, int8.
    config: dict[str, Any] = dict(session.execute(select(AppConfig.key, AppConfig.value).where(
        AppConfig.key.in_((ACTIVE_SPACE_KEY, REEMBED_KEY)))).tuples().all())
    active, state = config.get(ACTIVE_SPACE_KEY), config.get(REEMBED_KEY)
    row = session.execute(PROGRESS_SQL, _space_params(active, state)).one()
    return _progress_from(active, state, row, dict(session.execute(UNITS_SQL).tuples().all()))


def _space_params(active: Any, state: Any) -> dict[str, Any]:
    """PROGRESS_SQL's parameters: counted against the re-embed's target, else the active space."""
    target = state.get("target_space") if isinstance(state, dict) else None
    return _params(str(target or active or "fp32"))


def _progress_from(active: Any, state: Any, row: Any, units: dict[str, int]) -> Progress:
    state = state if isinstance(state, dict) else {}
    return Progress(
        state=state.get("state", "idle"), active_space=active,
        target_space=state.get("target_space"), backend=state.get("backend"),
        started_at=state.get("started_at"), finished_at=state.get("finished_at"),
        chunks_total=int(row.chunks_total), chunks_done=int(row.chunks_done),
        files_total=int(row.files_total), files_done=int(row.files_done),
        units={str(k): int(v) for k, v in units.items()},
    )
