"""Collections: named groups of a user's files, shared read-only with other users.

The use cases of routes/collections.py. Each public coroutine that changes
something commits before it returns (one commit per request, before the answer
leaves), except `add_files`, which the upload flow calls inside its own
transaction. Access rules are in webui/access.py.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Collection, CollectionFile, CollectionShare, File, User
from webui.access import collection_for
from webui.errors import ApiError, not_found
from webui.schemas import (
    AdminShareRead,
    CollectionRead,
    CollectionUpdate,
    FileList,
    FileRead,
    ShareRead,
)

# Counts per collection in one statement; `where` selects which collections.
_SUMMARY_SQL = """
SELECT c.id, c.name, c.owner_id, u.email AS owner_email, c.exported, c.created_at, c.updated_at,
       (SELECT count(*) FROM collection_files cf WHERE cf.collection_id = c.id) AS file_count,
       (SELECT coalesce(sum(f.chunk_count), 0) FROM collection_files cf
         JOIN files f ON f.id = cf.file_id WHERE cf.collection_id = c.id) AS chunk_count,
       (SELECT count(*) FROM collection_shares s WHERE s.collection_id = c.id) AS shared_with
FROM collections c JOIN users u ON u.id = c.owner_id
WHERE {where}
ORDER BY lower(c.name), c.id
"""


async def _summaries(
    session: AsyncSession, user_id: uuid.UUID, where: str, **params: Any
) -> list[CollectionRead]:
    rows = await session.execute(text(_SUMMARY_SQL.format(where=where)), {"user": user_id, **params})
    out = []
    for r in rows:
        owner = r.owner_id == user_id
        out.append(CollectionRead(
            id=r.id, name=r.name, role="owner" if owner else "reader", owner_email=r.owner_email,
            exported=r.exported, file_count=r.file_count, chunk_count=int(r.chunk_count),
            shared_with=r.shared_with if owner else 0, created_at=r.created_at,
            updated_at=r.updated_at,
        ))
    return out


async def _summary(session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID) -> CollectionRead:
    return (await _summaries(session, user_id, "c.id = :cid", cid=cid))[0]


def _name_taken(name: str) -> ApiError:
    return ApiError(409, "exists", f"you already have a collection named {name!r}")


async def list_collections(session: AsyncSession, user_id: uuid.UUID) -> list[CollectionRead]:
    """The caller's own collections and those shared with them, with counts."""
    return await _summaries(
        session, user_id,
        "c.owner_id = :user OR c.id IN "
        "(SELECT collection_id FROM collection_shares WHERE reader_id = :user)",
    )


async def create(session: AsyncSession, user_id: uuid.UUID, name: str) -> CollectionRead:
    name = name.strip()
    if not name:
        raise ApiError(422, "invalid_request", "name: must not be blank")
    collection = Collection(owner_id=user_id, name=name)
    session.add(collection)
    try:
        await session.flush()
    except IntegrityError:
        raise _name_taken(name) from None
    summary = await _summary(session, user_id, collection.id)
    await session.commit()
    return summary


async def get(session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID) -> CollectionRead:
    await collection_for(session, user_id, cid, write=False)
    return await _summary(session, user_id, cid)


async def update(
    session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID, body: CollectionUpdate
) -> CollectionRead:
    collection, _ = await collection_for(session, user_id, cid, write=True)
    name = collection.name if body.name is None else body.name.strip()
    if not name:
        raise ApiError(422, "invalid_request", "name: must not be blank")
    collection.name = name
    if body.exported is not None:
        collection.exported = body.exported
    try:
        await session.flush()
    except IntegrityError:
        raise _name_taken(name) from None
    summary = await _summary(session, user_id, cid)
    await session.commit()
    return summary


async def delete_collection(
    session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID, *, delete_files: bool
) -> list[str]:
    """Delete the collection; its files stay unless `delete_files`. Returns the storage
    keys of deleted files, whose bytes the caller removes after this commit."""
    await collection_for(session, user_id, cid, write=True)
    keys: list[str] = []
    if delete_files:
        in_collection = select(CollectionFile.file_id).where(CollectionFile.collection_id == cid)
        keys = list(await session.scalars(
            delete(File).where(File.id.in_(in_collection), File.owner_id == user_id)
            .returning(File.storage_key)
        ))
    await session.execute(delete(Collection).where(Collection.id == cid,
                                                   Collection.owner_id == user_id))
    await session.commit()
    return keys


async def list_files(
    session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID, limit: int, offset: int
) -> FileList:
    await collection_for(session, user_id, cid, write=False)
    member = File.id.in_(select(CollectionFile.file_id).where(CollectionFile.collection_id == cid))
    total = await session.scalar(select(func.count()).select_from(File).where(member)) or 0
    rows = await session.scalars(
        select(File).where(member).order_by(File.created_at.desc(), File.id).limit(limit).offset(offset)
    )
    return FileList(items=[FileRead.model_validate(f) for f in rows], total=total, limit=limit,
                    offset=offset)


async def add_files(session: AsyncSession, collection: Collection, file_ids: list[uuid.UUID]) -> None:
    """Put the files in the collection (already there: no change). Only the collection
    owner's own files: any other id answers 404 like a missing one. Flushes; the
    caller commits (the upload flow does it with the file row)."""
    wanted = list(dict.fromkeys(file_ids))
    owned = set(await session.scalars(
        select(File.id).where(File.id.in_(wanted), File.owner_id == collection.owner_id)
    ))
    if len(owned) != len(wanted):
        raise not_found()
    await session.execute(
        pg_insert(CollectionFile)
        .values([{"collection_id": collection.id, "file_id": f} for f in wanted])
        .on_conflict_do_nothing()
    )


async def collection_for_upload(
    session: AsyncSession, user_id: uuid.UUID, fields: dict[str, str]
) -> Collection | None:
    """The collection an upload names in its `collection_id` form field (yours), if any."""
    raw = fields.get("collection_id", "").strip()
    if not raw:
        return None
    try:
        cid = uuid.UUID(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", "collection_id: not a valid id") from None
    collection, _ = await collection_for(session, user_id, cid, write=True)
    return collection


async def add(
    session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID, file_ids: list[uuid.UUID]
) -> CollectionRead:
    collection, _ = await collection_for(session, user_id, cid, write=True)
    await add_files(session, collection, file_ids)
    summary = await _summary(session, user_id, cid)
    await session.commit()
    return summary


async def remove(session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID, fid: uuid.UUID) -> None:
    await collection_for(session, user_id, cid, write=True)
    gone = await session.scalar(
        delete(CollectionFile).where(CollectionFile.collection_id == cid,
                                     CollectionFile.file_id == fid)
        .returning(CollectionFile.file_id)
    )
    if gone is None:
        raise not_found()
    await session.commit()


async def share(session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID, email: str) -> ShareRead:
    """Give the user with `email` read-only access (sharing twice changes nothing)."""
    await collection_for(session, user_id, cid, write=True)
    reader = await session.scalar(select(User).where(User.email == email.strip().lower()))
    if reader is None or not reader.is_active:
        raise not_found("user")
    if reader.id == user_id:
        raise ApiError(422, "invalid_request", "email: you own this collection already")
    await session.execute(
        pg_insert(CollectionShare).values(collection_id=cid, reader_id=reader.id)
        .on_conflict_do_nothing()
    )
    row = await session.get_one(CollectionShare, (cid, reader.id))
    out = ShareRead(collection_id=cid, reader_id=reader.id, reader_email=reader.email,
                    created_at=row.created_at)
    await session.commit()
    return out


async def list_shares(session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID) -> list[ShareRead]:
    """Who can read the collection (its owner only may ask)."""
    await collection_for(session, user_id, cid, write=True)
    rows = await session.execute(
        select(CollectionShare, User.email).join(User, User.id == CollectionShare.reader_id)
        .where(CollectionShare.collection_id == cid).order_by(CollectionShare.created_at)
    )
    return [ShareRead(collection_id=cid, reader_id=s.reader_id, reader_email=email,
                      created_at=s.created_at) for s, email in rows]


async def revoke(session: AsyncSession, user_id: uuid.UUID, cid: uuid.UUID, reader_id: uuid.UUID) -> None:
    """Committed before the answer leaves: the reader's next request is refused."""
    await collection_for(session, user_id, cid, write=True)
    gone = await session.scalar(
        delete(CollectionShare).where(CollectionShare.collection_id == cid,
                                      CollectionShare.reader_id == reader_id)
        .returning(CollectionShare.reader_id)
    )
    if gone is None:
        raise not_found("share")
    await session.commit()


async def all_shares(session: AsyncSession, limit: int, offset: int) -> list[AdminShareRead]:
    """Every share: who shares which collection with whom (admins)."""
    owner, reader = User.__table__.alias("owner"), User.__table__.alias("reader")
    rows = await session.execute(
        select(CollectionShare.collection_id, CollectionShare.reader_id, CollectionShare.created_at,
               Collection.name, Collection.owner_id, owner.c.email.label("owner_email"),
               reader.c.email.label("reader_email"))
        .join(Collection, Collection.id == CollectionShare.collection_id)
        .join(owner, owner.c.id == Collection.owner_id)
        .join(reader, reader.c.id == CollectionShare.reader_id)
        .order_by(CollectionShare.created_at.desc()).limit(limit).offset(offset)
    )
    return [AdminShareRead(collection_id=r.collection_id, reader_id=r.reader_id,
                           reader_email=r.reader_email, created_at=r.created_at,
                           collection_name=r.name, owner_id=r.owner_id, owner_email=r.owner_email)
            for r in rows]
