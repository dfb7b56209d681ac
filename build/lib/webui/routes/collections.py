"""Collections and sharing. Thin: the use cases are in webui/collections.py."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from shared.storage import remove_stored
from webui import collections as uc
from webui.deps import AdminUser, CurrentUser, SessionDep, StateDep
from webui.schemas import (
    AdminShareRead,
    CollectionCreate,
    CollectionFilesAdd,
    CollectionList,
    CollectionRead,
    CollectionUpdate,
    FileList,
    ShareCreate,
    ShareRead,
)

router = APIRouter(prefix="/collections", tags=["collections"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such collection, or not yours and not shared with you"}}
_OWNER_ONLY: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND, 403: {"description": "shared with you read-only"}}


@router.post("", status_code=201, response_model=CollectionRead, operation_id="create_collection",
             responses={409: {"description": "you already have a collection with this name"}})
async def create_collection(body: CollectionCreate, session: SessionDep, user: CurrentUser
                            ) -> CollectionRead:
    """Create an empty collection (names are unique per user)."""
    return await uc.create(session, user.id, body.name)


@router.get("", response_model=CollectionList, operation_id="list_collections")
async def list_collections(session: SessionDep, user: CurrentUser) -> CollectionList:
    """Your collections and those shared with you (role `reader`), with file counts."""
    return CollectionList(items=await uc.list_collections(session, user.id))


@router.get("/{collection_id}", response_model=CollectionRead, operation_id="get_collection",
            responses=_NOT_FOUND)
async def get_collection(collection_id: uuid.UUID, session: SessionDep, user: CurrentUser
                         ) -> CollectionRead:
    return await uc.get(session, user.id, collection_id)


@router.patch("/{collection_id}", response_model=CollectionRead, operation_id="update_collection",
              responses=_OWNER_ONLY)
async def update_collection(collection_id: uuid.UUID, body: CollectionUpdate, session: SessionDep,
                            user: CurrentUser) -> CollectionRead:
    """Rename, or mark for export to an external reader."""
    return await uc.update(session, user.id, collection_id, body)


@router.delete("/{collection_id}", status_code=204, operation_id="delete_collection",
               responses=_OWNER_ONLY)
async def delete_collection(
    collection_id: uuid.UUID, session: SessionDep, user: CurrentUser, state: StateDep,
    delete_files: Annotated[bool, Query(description="also delete its files (everywhere)")] = False,
) -> Response:
    """Delete the collection. Its files are kept unless `delete_files=true`."""
    keys = await uc.delete_collection(session, user.id, collection_id, delete_files=delete_files)
    for key in keys:
        await run_in_threadpool(remove_stored, state.settings.upload_dir, key)
    return Response(status_code=204)


@router.get("/{collection_id}/files", response_model=FileList, operation_id="list_collection_files",
            responses=_NOT_FOUND)
async def list_collection_files(
    collection_id: uuid.UUID, session: SessionDep, user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50, offset: Annotated[int, Query(ge=0)] = 0,
) -> FileList:
    return await uc.list_files(session, user.id, collection_id, limit, offset)


@router.post("/{collection_id}/files", response_model=CollectionRead,
             operation_id="add_collection_files", responses=_OWNER_ONLY)
async def add_collection_files(collection_id: uuid.UUID, body: CollectionFilesAdd,
                               session: SessionDep, user: CurrentUser) -> CollectionRead:
    """Add your files (a file may be in several collections)."""
    return await uc.add(session, user.id, collection_id, body.file_ids)


@router.delete("/{collection_id}/files/{file_id}", status_code=204,
               operation_id="remove_collection_file", responses=_OWNER_ONLY)
async def remove_collection_file(collection_id: uuid.UUID, file_id: uuid.UUID,
                                 session: SessionDep, user: CurrentUser) -> Response:
    """Take the file out of the collection (the file itself stays)."""
    await uc.remove(session, user.id, collection_id, file_id)
    return Response(status_code=204)


@router.get("/{collection_id}/shares", response_model=list[ShareRead],
            operation_id="list_collection_shares", responses=_OWNER_ONLY)
async def list_shares(collection_id: uuid.UUID, session: SessionDep, user: CurrentUser
                      ) -> list[ShareRead]:
    return await uc.list_shares(session, user.id, collection_id)


@router.post("/{collection_id}/shares", status_code=201, response_model=ShareRead,
             operation_id="share_collection", responses=_OWNER_ONLY)
async def share_collection(collection_id: uuid.UUID, body: ShareCreate, session: SessionDep,
                           user: CurrentUser) -> ShareRead:
    """Share read-only with the user who has this email: they can search it and read its
    files, and change nothing."""
    return await uc.share(session, user.id, collection_id, body.email)


@router.delete("/{collection_id}/shares/{reader_id}", status_code=204,
               operation_id="revoke_collection_share", responses=_OWNER_ONLY)
async def revoke_share(collection_id: uuid.UUID, reader_id: uuid.UUID, session: SessionDep,
                       user: CurrentUser) -> Response:
    """Revoke a reader's access; effective on their next request."""
    await uc.revoke(session, user.id, collection_id, reader_id)
    return Response(status_code=204)


@admin_router.get("/shares", response_model=list[AdminShareRead], operation_id="admin_list_shares")
async def admin_list_shares(
    session: SessionDep, _: AdminUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
) -> list[AdminShareRead]:
    """Who shares which collection with whom (admins only)."""
    return await uc.all_shares(session, limit, offset)
