"""The RQ job: `worker.jobs.run_unit(unit_id, attempt)`, ids only, JSON-serialised.

Claim the unit in Postgres (compare-and-set; a stale, duplicate or late delivery,
or one for a deleted or finished file, claims nothing and returns quietly). A
segment also claims other ready segments to fill the encoder (`worker.fill`); a parse
that finds nothing embedding anywhere goes on to claim ready segments itself, and any
job goes on to the waiting parts of a file cut for the idle fleet (`worker.spread`). Hold
them all while the heartbeat renews their leases, run them (`worker.units`,
`worker.segments`), and on an error record the outcome in Postgres through the same
fence (`worker.failure`): a rejection fails the file at once; anything else goes
back to the backlog for a retry after JOB_RETRY_DELAY, until JOB_MAX_RETRIES are
spent. The job itself never raises for a unit's failure: retries are scheduled from
Postgres, not by RQ.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from redis.exceptions import RedisError
from rq.suspension import is_suspended
from sqlalchemy.orm import Session

from shared.models import UnitKind
from shared.work import Claim, claim, wake
from worker.failure import record_failure
from worker.fill import claim_fill, claim_ready, fill_budget, fleet_is_embedding
from worker.reembed import run_reembed
from worker.runtime import Runtime, get_runtime
from worker.segments import run_segments
from worker.spread import spread_file_waiting
from worker.units import run_parse

log = logging.getLogger("sluice.worker")


def run_unit(unit_id: int, attempt: int) -> dict[str, Any]:
    rt = get_runtime()
    with rt.session_factory() as session:
        c = claim(session, int(unit_id), int(attempt), rt.name, rt.settings.lease_seconds)
    if c is None:
        log.info("unit.skipped unit=%s attempt=%s reason=not_claimable", unit_id, attempt)
        return {"outcome": "skipped", "reason": "not_claimable"}
    claims = [c, *_fill(rt, c)]
    rt.hold(claims)
    # A place in RQ just freed up; woken after the fill, so this worker's fill, not a
    # dispatch pass, takes the segments that are ready now.
    _wake(rt)
    try:
        if c.kind in (UnitKind.parse.value, UnitKind.reembed.value):
            run = run_parse if c.kind == UnitKind.parse.value else run_reembed
            result = run(rt, c)
            if result["outcome"] != "done":
                return result
            rt.counters["units_done"] += 1
            if c.kind != UnitKind.parse.value:
                return result
            more = _go_on(rt, c, result)
        else:
            result = _segments(rt, claims)
            more = _help(rt, c)
        if more:
            rt.hold(more)
            _wake(rt)  # a file cut for the idle fleet: its other parts to the others now
            result = _combined(result, _segments(rt, more))
        return result
    except Exception as err:
        return record_failure(rt, c, err)
    finally:
        rt.hold(())
        _wake(rt)


def _fill(rt: Runtime, c: Claim) -> list[Claim]:
    """Other ready segments for the same encode call; none if that fails (the job's own
    unit is claimed already and runs alone)."""
    if fill_budget(c, rt.settings) <= 0:
        return []
    try:
        with rt.session_factory() as session:
            return claim_fill(session, c, rt.settings, rt.name)
    except Exception as err:
        log.warning("segment.fill_failed unit=%s error=%s", c.unit_id, err)
        return []


def _go_on(rt: Runtime, parsed: Claim, result: dict[str, Any]) -> list[Claim]:
    """After a parse, ready segments to embed in this job (fair order, as a fill):
    - if no segment is dispatched or running anywhere: up to EMBED_FILL_CHUNKS, or one
      part if this parse cut its file for the idle fleet (`worker.spread`), so the first
      file after a quiet spell does not wait behind the parses already in RQ;
    - otherwise the waiting parts of a file cut for the idle fleet (`_help`).
    None while the workers are suspended (`rq suspend`: no new work), or if that fails
    (the dispatcher sends them)."""
    budget = rt.settings.embed_fill_chunks
    if budget <= 0:
        return []
    try:
        if is_suspended(rt.redis):
            return []
        with rt.session_factory() as session:
            if fleet_is_embedding(session):
                claims = _spread_parts(rt, session)
            else:
                if "spread" in result:
                    budget = min(budget, result["spread"])
                session.rollback()  # the claim takes the dispatch lock in a fresh transaction
                claims = claim_ready(session, rt.settings, rt.name, budget)
    except Exception as err:
        log.warning("parse.go_on_failed unit=%s error=%s", parsed.unit_id, err)
        return []
    if claims:
        log.info("parse.go_on unit=%s file_id=%s segments=%d files=%d", parsed.unit_id,
                 parsed.file_id, len(claims), len({c.file_id for c in claims}))
    return claims


def _help(rt: Runtime, done: Claim) -> list[Claim]:
    """After a segment job: the waiting parts of a file cut for the idle fleet whose other
    parts are done or embedding, so it is finished before new work (`worker.spread`)."""
    if rt.settings.embed_fill_chunks <= 0 or rt.settings.spread_min_chunks <= 0:
        return []
    try:
        if is_suspended(rt.redis):
            return []
        with rt.session_factory() as session:
            claims = _spread_parts(rt, session)
    except Exception as err:
        log.warning("segment.help_failed unit=%s error=%s", done.unit_id, err)
        return []
    if claims:
        log.info("segment.helped unit=%s file_id=%s segments=%d", done.unit_id,
                 claims[0].file_id, len(claims))
    return claims


def _spread_parts(rt: Runtime, session: Session) -> list[Claim]:
    """Claim the ready parts of the oldest started file cut for the idle fleet; commits."""
    file_id = spread_file_waiting(session, rt.settings.segment_chunks)
    if file_id is None:
        return []
    session.rollback()  # the claim takes the dispatch lock in a fresh transaction
    return claim_ready(session, rt.settings, rt.name, rt.settings.embed_fill_chunks, {file_id})


def _combined(result: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """One result for a job that went on to embed more: its stages and encode facts added
    up, for the metrics (`worker.metrics` reads `timings` and `encode`)."""
    timings = dict(result.get("timings", {}))
    for stage, seconds in more.get("timings", {}).items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    combined = {**result, "continued": more["units"], "timings": timings}
    if "encode" in more:
        before = result.get("encode", {})
        combined["encode"] = {k: before.get(k, 0) + v for k, v in more["encode"].items()}
    return combined


def _segments(rt: Runtime, claims: list[Claim]) -> dict[str, Any]:
    """The job's result is its own unit's outcome, with what the whole call did."""
    batch = run_segments(rt, claims)
    own = batch.results.get(claims[0].unit_id, {"outcome": "skipped", "reason": "not_run"})
    result = {**own, "units": dict(Counter(r["outcome"] for r in batch.results.values()))}
    if batch.units:
        result["timings"] = {"embed": batch.embed_s, "store": batch.store_s}
        result["encode"] = batch.encode_facts()
    return result


def _wake(rt: Runtime) -> None:
    try:
        wake(rt.redis)
    except RedisError as err:  # the dispatcher also runs on a timer
        log.debug("dispatch.wake_failed error=%s", err)
