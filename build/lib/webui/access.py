"""Who may read what: a user reads their own files and the files of collections shared
with them; they change only their own. Anything else answers 404, like a missing id.

Every check is a query made in the request's own transaction, never a cached
answer, so a revoked share stops working on the very next request.
"""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import ColumnElement, Select, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Collection, CollectionFile, CollectionShare, File
from webui.errors import ApiError, not_found

Role = Literal["owner", "reader"]


def shared_with(user_id: uuid.UUID) -> Select[uuid.UUID]:
    """Ids of the collections shared with `user_id`."""
    return select(CollectionShare.collection_id).where(CollectionShare.reader_id == user_id)


def readable_collections(user_id: uuid.UUID) -> Select[uuid.UUID]:
    """Ids of the collections `user_id` owns or was given read access to."""
    return select(Collection.id).where(
        or_(Collection.owner_id == user_id, Collection.id.in_(shared_with(user_id)))
    )


def readable_file_clause(user_id: uuid.UUID) -> ColumnElement[bool]:
    """A WHERE clause on `File`: owned by the user, or in a collection shared with them."""
    in_shared = exists().where(
        CollectionFile.file_id == File.id,
        CollectionFile.collection_id.in_(shared_with(user_id)),
    )
    return or_(File.owner_id == user_id, in_shared)


async def readable_file(session: AsyncSession, user_id: uuid.UUID, file_id: uuid.UUID) -> File:
    file = await session.scalar(select(File).where(File.id == file_id, readable_file_clause(user_id)))
    if file is None:
        raise not_found()
    return file


async def collection_for(
    session: AsyncSession, user_id: uuid.UUID, collection_id: uuid.UUID, *, write: bool
) -> tuple[Collection, Role]:
    """The collection and the caller's role. 404 unless owned or shared; a reader
    asking to change it gets 403 (they know it exists; they may not change it)."""
    row = (await session.execute(
        select(Collection, CollectionShare.reader_id)
        .outerjoin(CollectionShare, (CollectionShare.collection_id == Collection.id)
                   & (CollectionShare.reader_id == user_id))
        .where(Collection.id == collection_id)
    )).first()
    if row is None:
        raise not_found("collection")
    collection, reader = row
    if collection.owner_id == user_id:
        return collection, "owner"
    if reader is None:
        raise not_found("collection")
    if write:
        raise ApiError(403, "read_only",
                       "this collection was shared with you read-only; only its owner can change it")
    return collection, "reader"


async def check_readable_collections(
    session: AsyncSession, user_id: uuid.UUID, collection_ids: list[uuid.UUID]
) -> list[uuid.UUID]:
    """The ids, deduplicated, or 404 if any is neither owned nor shared with the caller."""
    wanted = list(dict.fromkeys(collection_ids))
    found = set(await session.scalars(
        readable_collections(user_id).where(Collection.id.in_(wanted))
    ))
    if len(found) != len(wanted):
        raise not_found("collection")
    return wanted
