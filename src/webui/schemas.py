"""Request and response bodies of the public API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Status = Literal["queued", "processing", "done", "failed"]


def _no_control_characters(value: str) -> str:
    # PostgreSQL text cannot hold NUL, a lone surrogate cannot be encoded as UTF-8, and
    # no name or query needs control characters.
    for ch in value:
        code = ord(ch)
        if (code < 32 and ch not in "\t\n\r") or code == 127:
            raise ValueError("must not contain control characters")
        if 0xD800 <= code <= 0xDFFF:
            raise ValueError("must be valid Unicode text (a lone surrogate was sent)")
    return value


CleanText = Annotated[str, AfterValidator(_no_control_characters)]


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


class StatusQuery(BaseModel):
    ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class FileStatuses(BaseModel):
    items: list[FileRead]
    missing: list[uuid.UUID] = Field(description="ids that are not (or no longer) your files")
SearchMode = Literal["hybrid", "vector", "text"]


class SearchRequest(BaseModel):
    query: CleanText = Field(min_length=1, max_length=2000)
    top_k: int = Field(default=10, ge=1)
    file_ids: list[uuid.UUID] | None = Field(
        default=None, max_length=1000, description="only these files"
    )
    collection_ids: list[uuid.UUID] | None = Field(
        default=None, max_length=100,
        description="search these collections (yours or shared with you) instead of your files",
    )
    mode: SearchMode = Field(
        default="hybrid",
        description="hybrid: full-text and vector results fused (the default, best in `make "
                    "eval`); vector: semantic only; text: full-text only",
    )
    group_by_file: bool = Field(default=False, description="also return hits grouped by file")
    include_weak: bool = Field(
        default=False, description="keep hits below the relevance threshold, flagged 'weak'"
    )


class SearchHit(BaseModel):
    file_id: uuid.UUID
    filename: str
    chunk_index: int
    text: str = Field(description="the whole passage")
    snippet: str = Field(description="a few lines around the matching words")
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) character offsets of matching words in `snippet`"
    )
    matched: Literal["vector", "text", "both"] = Field(
        description="which half found it: semantic similarity, the full-text query, or both"
    )
    score: float = Field(
        description="calibrated relevance: the estimated probability (0-1) that the hit "
                    "answers the query"
    )
    strength: Literal["strong", "partial", "weak"]
    similarity: float = Field(description="cosine similarity of passage and query")
    collection_ids: list[uuid.UUID] = Field(
        default_factory=list, description="searched collections that hold the file"
    )


class SearchGroup(BaseModel):
    file_id: uuid.UUID
    filename: str
    score: float = Field(description="best hit's score")
    hits: list[SearchHit]


class SearchResponse(BaseModel):
    query: str
    mode: SearchMode
    hits: list[SearchHit] = Field(description="in ranked order (reciprocal rank fusion)")
    groups: list[SearchGroup] | None = None
    threshold: float = Field(
        description="SEARCH_MIN_RELEVANCE: unless the best hit reaches it, no hit is returned")
    hit_threshold: float = Field(
        description="SEARCH_HIT_MIN_RELEVANCE: weaker hits are dropped")
    no_close_match: bool = Field(description="passages were found, but none is a close match")
    below_threshold: int = Field(description="hits dropped (or flagged 'weak') as too weak")
    took_ms: float
    encode_ms: float = Field(description="of took_ms, waiting for the query encoder")


class CollectionCreate(BaseModel):
    name: CleanText = Field(min_length=1, max_length=200)


class CollectionUpdate(BaseModel):
    name: CleanText | None = Field(default=None, min_length=1, max_length=200)
    exported: bool | None = Field(
        default=None, description="let an external reader (Open WebUI knowledge source) see it"
    )


class CollectionRead(BaseModel):
    id: uuid.UUID
    name: str
    role: Literal["owner", "reader"] = Field(description="reader: shared with you read-only")
    owner_email: str
    exported: bool
    file_count: int
    chunk_count: int
    shared_with: int = Field(description="how many people it is shared with (0 for readers)")
    created_at: datetime
    updated_at: datetime


class CollectionList(BaseModel):
    items: list[CollectionRead]


class CollectionFilesAdd(BaseModel):
    file_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class ShareCreate(BaseModel):
    email: CleanText = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)


class ShareRead(BaseModel):
    collection_id: uuid.UUID
    reader_id: uuid.UUID
    reader_email: str
    created_at: datetime


class AdminShareRead(ShareRead):
    collection_name: str
    owner_id: uuid.UUID
    owner_email: str
