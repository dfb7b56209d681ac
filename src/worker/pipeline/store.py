"""Store one segment's chunks: replace its index range, so a rerun never duplicates."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from shared.models import Chunk
from worker.pipeline.chunk import TextChunk


def store_segment(
    session: Session,
    *,
    file_id: uuid.UUID,
    owner_id: uuid.UUID,
    start: int,
    texts: Sequence[str],
    tokens: Sequence[int],
    vectors: np.ndarray,
    embedding_backend: str,
) -> int:
    """Replace chunks `start .. start + len(texts)` of the file (the caller commits)."""
    if not len(texts) == len(tokens) == len(vectors):
        raise ValueError(f"{len(texts)} chunks, {len(tokens)} counts, {len(vectors)} vectors")
    session.execute(delete(Chunk).where(
        Chunk.file_id == file_id, Chunk.idx >= start, Chunk.idx < start + len(texts)))
    if texts:
        session.execute(
            insert(Chunk),
            [
                {
                    "file_id": file_id, "owner_id": owner_id, "idx": start + i, "text": t,
                    "token_count": n, "embedding": v, "embedding_backend": embedding_backend,
                }
                for i, (t, n, v) in enumerate(zip(texts, tokens, vectors, strict=True))
            ],
        )
    return len(texts)


def replace_chunks(
    session: Session, *, file_id: uuid.UUID, owner_id: uuid.UUID, chunks: Sequence[TextChunk],
    vectors: np.ndarray, embedding_backend: str,
) -> int:
    """All of a file's chunks at once (tools that load a corpus; the caller commits)."""
    session.execute(delete(Chunk).where(Chunk.file_id == file_id))
    return store_segment(session, file_id=file_id, owner_id=owner_id, start=0,
                         texts=[c.text for c in chunks], tokens=[c.token_count for c in chunks],
                         vectors=vectors, embedding_backend=embedding_backend)
