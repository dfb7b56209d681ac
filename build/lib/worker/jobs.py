"""RQ job functions. Enqueued by name (`worker.jobs.ingest_file`) with the file id only.

A job: load the row (quietly return if it was deleted) → processing → parse
(isolated child) → chunk → embed → store chunks and mark done in one
transaction. A document that can never succeed (wrong type, no text, a bomb)
is marked failed at once: retrying cannot help. Anything else raises, so RQ's
Retry runs it again; the last attempt marks the file failed with the reason.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

from rq import get_current_job
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.document_errors import DocumentRejected
from shared.models import File, FileStatus
from shared.storage import stored_path
from worker.pipeline.isolated import parse_isolated
from worker.pipeline.store import replace_chunks
from worker.progress import publish
from worker.runtime import Runtime, get_runtime, load_embedder

log = logging.getLogger("sluice.worker")


class StoredBytesMissing(RuntimeError):
    """The upload's bytes are not (yet) visible on the shared volume; may be transient."""


def ingest_file(file_id: str) -> dict[str, object]:
    rt = get_runtime()
    fid = uuid.UUID(file_id)
    with rt.session_factory() as session:  # one session per job, closed on exit
        file = session.get(File, fid)
        if file is None:
            log.info("file.skipped file_id=%s reason=deleted", fid)
            return {"file_id": file_id, "skipped": "deleted"}
        owner_id = file.owner_id
        _mark(session, file, status=FileStatus.processing, stage="parse", started=True)
        publish(rt.redis, file_id=fid, owner_id=owner_id, status="processing", stage="parse")
        try:
            return _run_pipeline(rt, session, file)
        except DocumentRejected as err:
            session.rollback()
            _finish_failed(rt, session, fid, owner_id, str(err), final=True)
            log.info("file.rejected file_id=%s reason=%s", fid, err)
            return {"file_id": file_id, "failed": str(err)}
        except Exception as err:
            session.rollback()
            job = get_current_job()
            final = job is None or not job.retries_left
            reason = f"{type(err).__name__}: {str(err)[:300]}"
            try:
                _finish_failed(rt, session, fid, owner_id, reason, final=final)
            except Exception:  # e.g. Postgres is down: the reconciler will notice
                log.exception("file.status_not_saved file_id=%s", fid)
            log.warning("file.attempt_failed file_id=%s final=%s reason=%s", fid, final, reason)
            raise


def _run_pipeline(rt: Runtime, session: Session, file: File) -> dict[str, object]:
    settings, fid, owner_id = rt.settings, file.id, file.owner_id
    timings: dict[str, float] = {}
    path = stored_path(settings.upload_dir, file.storage_key)
    if not path.exists():
        raise StoredBytesMissing("the uploaded bytes are not on the shared volume")

    t = time.perf_counter()
    parsed = parse_isolated(
        path, file.filename, timeout_s=settings.parse_timeout, memory_mb=settings.parse_memory_mb
    )
    timings["parse"] = time.perf_counter() - t

    _mark(session, file, stage="chunk", kind=parsed.kind)
    t = time.perf_counter()
    chunks = rt.chunker.split(parsed.text, parsed.kind)
    timings["chunk"] = time.perf_counter() - t
    if not chunks:
        raise DocumentRejected("no text could be extracted from this file")

    _mark(session, file, stage="embed")
    embedder = rt.embedder
    if settings.bench_reload_model_per_job:  # benchmark-only: the seed's per-job reload
        embedder = load_embedder(settings)
        rt.counters["model_loads"] += 1

    def on_batch(done: int, total: int) -> None:
        publish(
            rt.redis, file_id=fid, owner_id=owner_id, status="processing", stage="embed",
            progress=done / total,
        )

    t = time.perf_counter()
    vectors = embedder.encode(
        [c.text for c in chunks], batch_size=rt.config.embed_batch_size, on_batch=on_batch
    )
    timings["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    # Lock the row: it may have been deleted meanwhile, and a duplicate delivery of
    # this job must not interleave its chunks with ours.
    locked = session.scalar(select(File).where(File.id == fid).with_for_update())
    if locked is None:
        session.rollback()
        log.info("file.skipped file_id=%s reason=deleted_during_processing", fid)
        return {"file_id": str(fid), "skipped": "deleted"}
    count = replace_chunks(
        session, file_id=fid, owner_id=owner_id, chunks=chunks, vectors=vectors,
        embedding_backend=embedder.backend,
    )
    locked.status = FileStatus.done.value
    locked.stage, locked.progress, locked.error = None, 1.0, None
    locked.chunk_count = count
    locked.embedding_model = embedder.name
    locked.embedding_backend = embedder.backend
    locked.finished_at = datetime.now(UTC)
    session.commit()
    timings["store"] = time.perf_counter() - t

    rt.counters["jobs_done"] = rt.counters.get("jobs_done", 0) + 1
    publish(rt.redis, file_id=fid, owner_id=owner_id, status="done", progress=1.0, chunks=count)
    log.info(
        "file.processed file_id=%s kind=%s chunks=%d parse=%.2fs chunk=%.2fs embed=%.2fs "
        "store=%.2fs", fid, parsed.kind, count, timings["parse"], timings["chunk"],
        timings["embed"], timings["store"],
    )
    return {"file_id": str(fid), "chunks": count, "timings": timings}


def _mark(
    session: Session, file: File, *, status: FileStatus | None = None,
    stage: str | None = None, kind: str | None = None, started: bool = False,
) -> None:
    if status is not None:
        file.status = status.value
    if started:
        file.attempts += 1
        file.started_at = datetime.now(UTC)
        file.error = None
        file.progress = 0.0
    if kind is not None:
        file.kind = kind
    file.stage = stage
    session.commit()


def _finish_failed(
    rt: Runtime, session: Session, fid: uuid.UUID, owner_id: uuid.UUID, reason: str,
    *, final: bool,
) -> None:
    file = session.get(File, fid)
    if file is None:
        return
    if final:
        file.status = FileStatus.failed.value
        file.error = reason
        file.finished_at = datetime.now(UTC)
        rt.counters["jobs_failed"] = rt.counters.get("jobs_failed", 0) + 1
    else:
        # RQ's scheduler runs the job again after JOB_RETRY_DELAY.
        file.status = FileStatus.queued.value
        file.error = f"attempt {file.attempts} failed, retrying: {reason}"
        file.queued_at = datetime.now(UTC)
    file.stage = None
    session.commit()
    publish(
        rt.redis, file_id=fid, owner_id=owner_id, status=file.status, error=file.error
    )
