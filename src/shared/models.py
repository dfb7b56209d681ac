"""SQLAlchemy 2 typed models. Postgres is the source of truth for every file's status."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The packaged all-MiniLM-L6-v2 produces 384-d vectors; a model with another
# dimension needs a migration (the column type is fixed in the schema).
EMBEDDING_DIM = 384


class Base(DeclarativeBase):
    pass


def _now() -> Any:
    return func.now()


class FileStatus(enum.StrEnum):
    queued = "queued"
    processing = "processing"
    done = "done"
    failed = "failed"


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("owner_id", "sha256", name="uq_files_owner_sha256"),
        CheckConstraint(
            "status IN ('queued', 'processing', 'done', 'failed')", name="ck_files_status"
        ),
        Index("ix_files_owner_created", "owner_id", "created_at"),
        Index("ix_files_status_updated", "status", "updated_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    declared_type: Mapped[str] = mapped_column(String(255), default="")
    kind: Mapped[str | None] = mapped_column(String(32))  # detected from content by the worker
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.queued.value)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    embedding_model: Mapped[str | None] = mapped_column(String(200))
    # Backend that embedded this file's chunks (same transaction); NULL = before 0002 = torch.
    embedding_backend: Mapped[str | None] = mapped_column(String(16))
    # Progress: segments stored / segments the parse unit made (0 / 0 before parsing).
    segments_total: Mapped[int] = mapped_column(Integer, default=0)
    segments_done: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), server_default=_now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("file_id", "idx", name="uq_chunks_file_idx"),
        Index(
            "ix_chunks_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    file_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    # Denormalised owner so search filters by owner inside the vector query.
    owner_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIM))
    # torch | onnx | onnx-int8 (shared/embedding.py): search refuses another space.
    embedding_backend: Mapped[str] = mapped_column(String(16), server_default="torch")
    # Generated by Postgres (migration 0004, SEARCH_TEXT_CONFIG); never written by us.
    tsv: Mapped[Any] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english'::regconfig, text)", persisted=True),
        deferred=True,
    )


class ChunkVector(Base):
    """A chunk's vector in an embedding space that is not active yet (migration 0006):
    filled by `reembed` units while `chunks.embedding` keeps serving search, copied into
    `chunks` by the switch and then deleted (shared/reembed.py). Never searched."""

    __tablename__ = "chunk_vectors"

    chunk_id: Mapped[int] = mapped_column(
        ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True)
    space: Mapped[str] = mapped_column(String(16), primary_key=True)
    backend: Mapped[str] = mapped_column(String(16))
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIM))


class Collection(Base):
    """A named group of files, owned by one user, optionally shared read-only."""

    __tablename__ = "collections"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_collections_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    # Visible to an external reader (Open WebUI's knowledge source, issue 15).
    exported: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class CollectionFile(Base):
    __tablename__ = "collection_files"
    __table_args__ = (Index("ix_collection_files_file", "file_id"),)

    collection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    file_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class CollectionShare(Base):
    """Read-only access to a collection for another user."""

    __tablename__ = "collection_shares"
    __table_args__ = (Index("ix_collection_shares_reader", "reader_id"),)

    collection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    reader_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class UnitState(enum.StrEnum):
    pending = "pending"  # in the Postgres backlog, waiting for its turn (and `not_before`)
    dispatched = "dispatched"  # handed to RQ as job `unit-<id>-<attempt>`, not yet claimed
    running = "running"  # claimed by `worker`; its lease must be renewed
    done = "done"
    failed = "failed"  # its file failed (this unit's reason, or a sibling's)


class UnitKind(enum.StrEnum):
    parse = "parse"  # bytes → text → chunks → segment units
    segment = "segment"  # chunks [chunk_start, chunk_end) → embeddings → chunk rows
    # chunks [chunk_start, chunk_end) of a done file → vectors in the re-embed's target
    # space (chunk_vectors); no payload: the target is in app_config (shared/reembed.py)
    reembed = "reembed"


class WorkUnit(Base):
    """One job's worth of a file's work; Postgres, not RQ, says what is left to do.

    `attempt` is the fencing token: the dispatcher increments it each time it hands the
    unit to RQ, a worker claims `(id, attempt)` by compare-and-set, and every write of
    that attempt checks it is still `running` with that attempt. `tries` counts claims.
    """

    __tablename__ = "work_units"
    __table_args__ = (
        UniqueConstraint("file_id", "kind", "ordinal", name="uq_work_units_file_kind_ordinal"),
        CheckConstraint(
            "state IN ('pending', 'dispatched', 'running', 'done', 'failed')",
            name="ck_work_units_state",
        ),
        CheckConstraint("kind IN ('parse', 'segment', 'reembed')", name="ck_work_units_kind"),
        Index("ix_work_units_state_not_before", "state", "not_before"),
        Index("ix_work_units_owner_state", "owner_id", "state"),
        Index("ix_work_units_file", "file_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    file_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    owner_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    kind: Mapped[str] = mapped_column(String(16))
    ordinal: Mapped[int] = mapped_column(Integer, default=0)
    chunk_start: Mapped[int] = mapped_column(Integer, default=0)
    chunk_end: Mapped[int] = mapped_column(Integer, default=0)
    # A segment's chunks (texts and token counts) between parsing and storing.
    payload: Mapped[Any] = mapped_column(JSONB, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=UnitState.pending.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )


class OwnerTurn(Base):
    """When each user last got a turn from the dispatcher (round robin across owners)."""

    __tablename__ = "owner_turns"

    owner_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    last_turn_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AppConfig(Base):
    """Runtime settings an admin may change without a redeploy (read by workers at boot)."""

    __tablename__ = "app_config"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), onupdate=_now()
    )
