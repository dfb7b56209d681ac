"""Request and response bodies of the public API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "processing", "done", "failed"]


class FileRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    filename: str
    size_bytes: int
    sha256: str
    kind: str | None = Field(description="type detected from the content by the worker")
    declared_type: str
    status: Status
    error: str | None = Field(description="why processing failed (or why it is being retried)")
    attempts: int
    chunk_count: int
    stage: str | None
    progress: float = Field(description="segments stored / segments_total (1.0 when done)")
    segments_total: int = Field(
        default=0, description="segments the file's chunks were split into (0 before parsing)")
    segments_done: int = Field(default=0, description="segments embedded and stored so far")
    embedding_model: str | None
    embedding_backend: str | None = Field(
        default=None, description="torch | onnx | onnx-int8; null before it was recorded (torch)"
    )
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class FileList(BaseModel):
    items: list[FileRead]
    total: int
    limit: int
    offset: int


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=10, ge=1)
    file_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000)


class SearchHit(BaseModel):
    file_id: uuid.UUID
    filename: str
    chunk_index: int
    text: str
    score: float = Field(description="cosine similarity, 1 = identical direction")


class SearchResponse(BaseModel):
    query: str
    hits: list[SearchHit]
    took_ms: float
