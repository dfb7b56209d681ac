"""Files: upload, list, status, original bytes, delete, retry. Always the caller's own."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from shared.detect import detect_type
from shared.document_errors import DocumentRejected
from shared.models import File, FileStatus
from shared.storage import new_storage_key, remove_stored, stored_path
from shared.work import clear_work_statements, new_parse_unit, wake_async
from webui.deps import CurrentUser, SessionDep, StateDep
from webui.errors import ApiError, not_found
from webui.limits import upload_slot
from webui.schemas import FileList, FileRead, Status
from webui.state import AppState
from webui.uploads import discard, move_into_place, receive_upload

log = logging.getLogger("sluice.webui")
router = APIRouter(prefix="/files", tags=["files"])

_MEDIA_TYPES = {
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "html": "text/html", "json": "application/json", "csv": "text/csv",
    "markdown": "text/markdown", "text": "text/plain",
}


async def _own_file(session: SessionDep, user_id: uuid.UUID, file_id: uuid.UUID) -> File:
    file = await session.scalar(select(File).where(File.id == file_id, File.owner_id == user_id))
    if file is None:
        raise not_found()
    return file


async def _wake(state: AppState, file_id: uuid.UUID) -> None:
    """After commit: the file's parse unit is in the Postgres backlog; ask a dispatcher
    for a pass now. If Redis is down, dispatchers still pass every DISPATCH_INTERVAL."""
    try:
        await wake_async(state.aredis)
    except RedisError as err:
        log.warning("file.wake_deferred file_id=%s error=%s", file_id, err)


@router.post(
    "", status_code=202, response_model=FileRead,
    responses={200: {"description": "the same bytes were already uploaded by you"},
               413: {"description": "file too large"}},
)
async def upload_file(
    request: Request, session: SessionDep, user: CurrentUser, state: StateDep
) -> Response | File:
    """Upload one file (multipart field `file`). 202: queued for processing."""
    settings = state.settings
    owner_id = user.id
    quota = settings.user_quota_mb * 1024 * 1024
    if await _stored_bytes(session, owner_id) >= quota:
        raise _over_quota(settings.user_quota_mb)
    await session.commit()  # no pooled connection held while the body streams in
    async with upload_slot(state.aredis, owner_id, settings.uploads_in_flight_per_user):
        received = await receive_upload(
            request, settings.upload_dir, settings.max_upload_bytes, settings.upload_max_parts
        )
    try:
        kind = await run_in_threadpool(detect_type, received.temp_path, received.filename)
    except DocumentRejected as err:
        await discard(received.temp_path)
        raise ApiError(415, "unsupported_type", str(err)) from None
    existing = await session.scalar(
        select(File).where(File.owner_id == owner_id, File.sha256 == received.sha256)
    )
    if existing is not None:
        await discard(received.temp_path)
        return _existing(existing)
    if await _stored_bytes(session, owner_id) + received.size > quota:
        await discard(received.temp_path)
        raise _over_quota(settings.user_quota_mb)
    storage_key = new_storage_key()
    final_path = stored_path(settings.upload_dir, storage_key)
    await move_into_place(received.temp_path, final_path)
    file = File(
        owner_id=owner_id, filename=received.filename, declared_type=received.declared_type,
        size_bytes=received.size, sha256=received.sha256, storage_key=storage_key,
        status=FileStatus.queued.value, kind=kind,
    )
    session.add(file)
    try:
        await session.flush()  # the file's id, for its first unit of work (same commit)
        session.add(new_parse_unit(file.id, owner_id))
        # Commit first, wake the dispatcher second: a worker never sees an uncommitted file.
        await session.commit()
    except IntegrityError:
        # The same bytes arrived twice at once (double click): keep the first.
        await session.rollback()
        await discard(final_path)
        existing = await session.scalar(
            select(File).where(File.owner_id == owner_id, File.sha256 == received.sha256)
        )
        if existing is None:
            raise
        return _existing(existing)
    except BaseException:
        await discard(final_path)
        raise
    await _wake(state, file.id)
    log.info("file.uploaded file_id=%s size=%d", file.id, file.size_bytes)
    return file


async def _stored_bytes(session: SessionDep, owner_id: uuid.UUID) -> int:
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


def _existing(file: File) -> JSONResponse:
    return JSONResponse(FileRead.model_validate(file).model_dump(mode="json"), status_code=200)


@router.get("", response_model=FileList)
async def list_files(
    session: SessionDep, user: CurrentUser,
    status: Annotated[Status | None, Query(description="only files in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> FileList:
    where = [File.owner_id == user.id]
    if status is not None:
        where.append(File.status == status)
    total = await session.scalar(select(func.count()).select_from(File).where(*where)) or 0
    rows = await session.scalars(
        select(File).where(*where).order_by(File.created_at.desc(), File.id)
        .limit(limit).offset(offset)
    )
    items = [FileRead.model_validate(f) for f in rows]
    return FileList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{file_id}", response_model=FileRead)
async def get_file(file_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> File:
    return await _own_file(session, user.id, file_id)


@router.get("/{file_id}/content", response_class=FileResponse)
async def get_content(
    file_id: uuid.UUID, session: SessionDep, user: CurrentUser, state: StateDep
) -> FileResponse:
    """The original bytes, as an attachment (RFC 6266 `filename*` for any name)."""
    file = await _own_file(session, user.id, file_id)
    path = stored_path(state.settings.upload_dir, file.storage_key)
    # The session closes only after the response is sent: end its transaction now, so
    # a slow download does not hold a pooled connection.
    await session.commit()
    return FileResponse(
        path, media_type=_MEDIA_TYPES.get(file.kind or "", "application/octet-stream"),
        filename=file.filename, content_disposition_type="attachment",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@router.delete("/{file_id}", status_code=204)
async def delete_file(
    file_id: uuid.UUID, session: SessionDep, user: CurrentUser, state: StateDep
) -> Response:
    """Remove the file, its chunks and its bytes. A pending job finds nothing and returns."""
    file = await _own_file(session, user.id, file_id)
    storage_key = file.storage_key
    await session.execute(delete(File).where(File.id == file.id, File.owner_id == user.id))
    await session.commit()
    await run_in_threadpool(remove_stored, state.settings.upload_dir, storage_key)
    log.info("file.deleted file_id=%s", file_id)
    return Response(status_code=204)


@router.post("/{file_id}/retry", status_code=202, response_model=FileRead)
async def retry_file(
    file_id: uuid.UUID, session: SessionDep, user: CurrentUser, state: StateDep
) -> File:
    """Queue a failed file again (attempts start over, from parsing)."""
    file = await session.scalar(select(File).where(File.id == file_id, File.owner_id == user.id)
                                .with_for_update())  # one retry at a time
    if file is None:
        raise not_found()
    if file.status != FileStatus.failed.value:
        raise ApiError(409, "not_failed", f"only failed files can be retried; this one is {file.status}")
    for stmt in clear_work_statements(file.id):
        await session.execute(stmt)
    session.add(new_parse_unit(file.id, file.owner_id))
    file.status = FileStatus.queued.value
    file.attempts, file.error, file.stage, file.progress = 0, None, None, 0.0
    file.chunk_count, file.segments_total, file.segments_done = 0, 0, 0
    file.queued_at, file.finished_at = datetime.now(UTC), None
    await session.commit()
    await session.refresh(file)  # updated_at is set by the server
    await _wake(state, file.id)
    return file
