"""Store a file's chunks: replace them in one transaction, so a rerun never duplicates."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from shared.models import Chunk
from worker.pipeline.chunk import TextChunk


def replace_chunks(
    session: Session,
    *,
    file_id: uuid.UUID,
    owner_id: uuid.UUID,
    chunks: Sequence[TextChunk],
    vectors: np.ndarray,
    embedding_backend: str,
) -> int:
    """Delete the file's old chunks and bulk-insert the new ones (caller commits)."""
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    session.execute(delete(Chunk).where(Chunk.file_id == file_id))
    if chunks:
        session.execute(
            insert(Chunk),
            [
                {
                    "file_id": file_id, "owner_id": owner_id, "idx": i, "text": c.text,
                    "token_count": c.token_count, "embedding": v,
                    "embedding_backend": embedding_backend,
                }
                for i, (c, v) in enumerate(zip(chunks, vectors, strict=True))
            ],
        )
    return len(chunks)
