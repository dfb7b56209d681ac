"""The upload use case: quota, receive, sniff, deduplicate, store, commit, queue.

The route (`routes/files.py`) only calls `upload_file`. Receiving the multipart
stream is `webui.receive` (the wire format); this module is the decisions, and
its commit is the request's one commit point, before the answer leaves.

Order matters:
* A cheap quota pre-check refuses a user already at the quota before a byte is read.
* The phases that use Postgres wait for their turn, oldest upload first
  (`webui.admission`), so a burst is answered in the order it came.
* No database connection is held while the body streams in (minutes, for a big file).
* The quota check, the duplicate check and the insert run in one transaction under
  a per-user advisory lock, so two concurrent uploads cannot both slip past the quota.
* Commit first, enqueue second: a worker never sees an uncommitted file. If Redis is
  down the file stays `queued` in Postgres and the reconciler enqueues it later.
"""

from __future__ import annotations

import errno
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from redis.exceptions import RedisError
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.concurrency import run_in_threadpool

from shared.document_errors import DocumentRejected
from shared.models import File, FileStatus
from shared.storage import new_storage_key, stored_path
from shared.work import new_parse_unit, wake_async
from webui.admission import arrival
from webui.collections import add_files, collection_for_upload
from webui.errors import ApiError
from webui.limits import upload_slot
from webui.receive import ReceivedUpload, discard, move_into_place, receive_upload
from webui.sniff import sniff_type
from webui.state import AppState

log = logging.getLogger("sluice.webui")

# pg_advisory_xact_lock(class, key): the class keeps these locks apart from any other
# advisory lock in the database; the key is the owner's id hashed to 32 bits (a rare
# collision only makes two users' uploads wait for each other, never wrong).
_QUOTA_LOCK_CLASS = 0x51CE
_LOCK_SQL = text("SELECT pg_advisory_xact_lock(:cls, hashtext(:owner))")


@dataclass
class UploadResult:
    file: File
    created: bool  # False: the same bytes were already uploaded by this user


async def upload_file(
    request: Request, session: AsyncSession, owner_id: uuid.UUID, state: AppState
) -> UploadResult:
    settings = state.settings
    quota = settings.user_quota_mb * 1024 * 1024
    arrived = arrival(request.scope)  # its turns at the database come by this (webui.admission)
    async with state.admission.slot(arrived):
        if await _stored_bytes(session, owner_id) >= quota:
            raise _over_quota(settings.user_quota_mb)
        await session.rollback()  # end the read: no pooled connection held while the body streams
    async with upload_slot(state.aredis, owner_id, settings.uploads_in_flight_per_user):
        received = await _receive(request, state)
    try:
        kind = await run_in_threadpool(sniff_type, received.temp_path, received.filename)
    except DocumentRejected as err:
        await discard(received.temp_path)
        raise ApiError(415, "unsupported_type", str(err)) from None
    except BaseException:
        await discard(received.temp_path)
        raise
    async with state.admission.slot(arrived):
        result = await _store(session, owner_id, received, kind, quota, state)
    if result.created:
        await wake_dispatcher(state, result.file.id)
        log.info("file.uploaded file_id=%s size=%d", result.file.id, result.file.size_bytes)
    return result


async def _receive(request: Request, state: AppState) -> ReceivedUpload:
    settings = state.settings
    try:
        return await receive_upload(
            request, settings.upload_dir, settings.max_upload_bytes, settings.upload_max_parts
        )
    except OSError as err:
        raise _storage_error(state, err) from None


async def _store(
    session: AsyncSession, owner_id: uuid.UUID, received: ReceivedUpload, kind: str,
    quota: int, state: AppState,
) -> UploadResult:
    """Deduplicate, check the quota and insert under the owner's lock; commit."""
    final_path: Path | None = None
    try:
        await session.execute(_LOCK_SQL, {"cls": _QUOTA_LOCK_CLASS, "owner": str(owner_id)})
        # Optional form field `collection_id`: the file goes into that collection too.
        collection = await collection_for_upload(session, owner_id, received.fields)
        existing = await session.scalar(
            select(File).where(File.owner_id == owner_id, File.sha256 == received.sha256)
        )
        if existing is not None:
            if collection is not None:
                await add_files(session, collection, [existing.id])
            await session.commit()  # ends the transaction and its lock
            await discard(received.temp_path)
            return UploadResult(existing, created=False)
        if await _stored_bytes(session, owner_id) + received.size > quota:
            raise _over_quota(state.settings.user_quota_mb)
        storage_key = new_storage_key()
        final_path = stored_path(state.settings.upload_dir, storage_key)
        try:
            await move_into_place(received.temp_path, final_path)
        except OSError as err:
            raise _storage_error(state, err) from None
        file = File(
            owner_id=owner_id, filename=received.filename, declared_type=received.declared_type,
            size_bytes=received.size, sha256=received.sha256, storage_key=storage_key,
            status=FileStatus.queued.value, kind=kind,
        )
        session.add(file)
        await session.flush()  # the file's id, for its first unit of work (same commit)
        session.add(new_parse_unit(file.id, owner_id))
        if collection is not None:
            await add_files(session, collection, [file.id])
        await session.commit()  # the commit point: durable before the 202 leaves
        return UploadResult(file, created=True)
    except BaseException:
        await session.rollback()
        await discard(received.temp_path)
        if final_path is not None:
            await discard(final_path)
        raise


async def _stored_bytes(session: AsyncSession, owner_id: uuid.UUID) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(File.size_bytes), 0)).where(File.owner_id == owner_id)
    )
    return int(total or 0)


def _over_quota(quota_mb: int) -> ApiError:
    # 413, not 429: waiting does not help, deleting files does.
    return ApiError(
        413, "quota_exceeded",
        f"this upload would take you past your {quota_mb} MB storage quota; delete some files first",
    )


def _storage_error(state: AppState, err: OSError) -> ApiError:
    """The upload volume refused a write: full (507) or misconfigured (500). Not 503:
    retrying will not help until an operator acts, and the metric lets an alert say so."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = "full" if full else "unwritable"
    state.metrics.upload_storage_errors.labels(reason=reason).inc()
    log.error("upload.storage_error reason=%s errno=%s error=%s", reason, err.errno, err)
    if full:
        return ApiError(507, "storage_full",
                        "the server's upload storage is full; try again later or tell the operator")
    return ApiError(500, "storage_error",
                    "the server could not write your upload to its storage; tell the operator")


async def wake_dispatcher(state: AppState, file_id: uuid.UUID) -> None:
    """After the commit: the file's parse unit waits in the Postgres backlog; ask a
    dispatcher for a pass now. If Redis is down, dispatchers still pass every
    DISPATCH_INTERVAL: the upload is not lost."""
    try:
        await wake_async(state.aredis)
    except RedisError as err:
        log.warning("file.wake_deferred file_id=%s error=%s", file_id, err)
