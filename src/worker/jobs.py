"""The RQ job: `worker.jobs.run_unit(unit_id, attempt)`, ids only, JSON-serialised.

Claim the unit in Postgres (compare-and-set; a stale, duplicate or late delivery,
or one for a deleted or finished file, claims nothing and returns quietly), hold it
while the heartbeat renews its lease, run it (`worker.units`), and on an error
record the outcome in Postgres through the same fence: a rejection fails the file
at once; anything else goes back to the backlog for a retry after JOB_RETRY_DELAY,
until JOB_MAX_RETRIES are spent. The job itself never raises for a unit's failure:
retries are scheduled from Postgres, not by RQ.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from shared.document_errors import DocumentRejected
from shared.models import UnitKind
from shared.work import Claim, claim, fail_unit, fence, retry_later, wake
from worker.errors import user_reason
from worker.progress import publish
from worker.reembed import run_reembed
from worker.runtime import Runtime, get_runtime
from worker.units import run_parse, run_segment

log = logging.getLogger("sluice.worker")


def run_unit(unit_id: int, attempt: int) -> dict[str, Any]:
    rt = get_runtime()
    with rt.session_factory() as session:
        c = claim(session, int(unit_id), int(attempt), rt.name, rt.settings.lease_seconds)
    if c is None:
        log.info("unit.skipped unit=%s attempt=%s reason=not_claimable", unit_id, attempt)
        return {"outcome": "skipped", "reason": "not_claimable"}
    _wake(rt)  # a place in RQ just freed up
    rt.hold(c)
    try:
        run = {UnitKind.parse.value: run_parse, UnitKind.reembed.value: run_reembed}.get(
            c.kind, run_segment)
        result = run(rt, c)
        if result["outcome"] == "done":
            rt.counters["units_done"] += 1
        return result
    except Exception as err:
        return _failed(rt, c, err)
    finally:
        rt.hold(None)
        _wake(rt)


def _failed(rt: Runtime, c: Claim, err: Exception) -> dict[str, Any]:
    settings = rt.settings
    reason = user_reason(err, settings)
    final = isinstance(err, DocumentRejected) or c.tries > settings.job_max_retries
    # Technical detail for operators, with the file id; the user gets `reason`.
    log.warning("file.attempt_failed file_id=%s final=%s reason=%s: %s unit=%s kind=%s try=%d",
                c.file_id, final, type(err).__name__, str(err)[:300], c.unit_id, c.kind, c.tries,
                exc_info=not isinstance(err, DocumentRejected))
    try:
        with rt.session_factory() as session:
            fenced = fence(session, c)
            if fenced is None:
                return {"outcome": "skipped", "reason": "stale_or_deleted"}
            unit, file = fenced
            if final:
                fail_unit(session, unit, file, reason)
            else:
                retry_later(session, unit, file, reason, settings.job_retry_delay)
            status, error = file.status, file.error
            session.commit()
    except Exception:  # e.g. Postgres is down: the lease runs out and the unit is re-offered
        log.exception("file.status_not_saved file_id=%s", c.file_id)
        return {"outcome": "retried"}
    rt.counters["units_failed"] += 1
    if c.kind == UnitKind.reembed.value:  # nothing the file's owner needs to hear about
        return {"outcome": "failed" if final else "retried"}
    publish(rt.redis, file_id=c.file_id, owner_id=c.owner_id, status=status, error=error)
    if final:
        return {"outcome": "rejected" if isinstance(err, DocumentRejected) else "failed"}
    return {"outcome": "retried"}


def _wake(rt: Runtime) -> None:
    try:
        wake(rt.redis)
    except RedisError as err:  # the dispatcher also runs on a timer
        log.debug("dispatch.wake_failed error=%s", err)
