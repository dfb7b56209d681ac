"""Record a unit's failure through its fence: fail the file (a reembed unit: only the
unit), or back to the backlog.

A rejection (a document that can never succeed) fails the file at once; anything else
puts the unit back in the backlog for a retry after JOB_RETRY_DELAY, until
JOB_MAX_RETRIES are spent. Only the failed unit is touched: the segments embedded in
the same call as it are stored or failed on their own.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.document_errors import DocumentRejected
from shared.models import UnitKind
from shared.work import Claim, fail_unit, fence, retry_later
from worker.errors import user_reason
from worker.progress import publish
from worker.runtime import Runtime

log = logging.getLogger("sluice.worker")


def record_failure(rt: Runtime, c: Claim, err: Exception) -> dict[str, Any]:
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
