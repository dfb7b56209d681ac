"""Files: upload, list, status, original bytes, delete, retry. Always the caller's own."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import delete, func, select
from starlette.concurrency import run_in_threadpool

from shared.models import File, FileStatus
from shared.storage import remove_stored, stored_path
from shared.work import clear_work_statements, new_parse_unit
from webui.access import readable_file
from webui.deps import CurrentUser, SessionDep, StateDep
from webui.errors import ApiError, not_found
from webui.schemas import FileList, FileRead, FileStatuses, Status, StatusQuery
from webui.upload import upload_file, wake_dispatcher

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


@router.post(
    "", status_code=202, response_model=FileRead,
    responses={200: {"description": "the same bytes were already uploaded by you"},
               413: {"description": "file too large"}},
)
async def upload(
    request: Request, session: SessionDep, user: CurrentUser, state: StateDep
) -> Response | File:
    """Upload one file (multipart field `file`). 202: queued for processing."""
    result = await upload_file(request, session, user.id, state)
    if not result.created:
        return JSONResponse(FileRead.model_validate(result.file).model_dump(mode="json"))
    return result.file


@router.post("/status", response_model=FileStatuses)
async def statuses(body: StatusQuery, session: SessionDep, user: CurrentUser) -> FileStatuses:
    """The state of many of your files in one request: follow a batch of uploads
    without one poll per file (ids that are not yours, or gone, are `missing`)."""
    rows = list(await session.scalars(
        select(File).where(File.owner_id == user.id, File.id.in_(body.ids))
    ))
    found = {f.id for f in rows}
    return FileStatuses(items=[FileRead.model_validate(f) for f in rows],
                        missing=[i for i in dict.fromkeys(body.ids) if i not in found])


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
    """Yours, or in a collection shared with you."""
    return await readable_file(session, user.id, file_id)


@router.get("/{file_id}/content", response_class=FileResponse)
async def get_content(
    file_id: uuid.UUID, session: SessionDep, user: CurrentUser, state: StateDep
) -> FileResponse:
    """The original bytes, as an attachment (RFC 6266 `filename*` for any name)."""
    file = await readable_file(session, user.id, file_id)
    path = stored_path(state.settings.upload_dir, file.storage_key)
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
    await wake_dispatcher(state, file.id)
    return file
