"""Files whose segments are ready to embed, committed at once (as many small files parsed
while the workers were busy would leave them), for the tests of filled encoder batches."""

from __future__ import annotations

import random
import uuid

from sqlalchemy import Engine, insert

from shared.models import File, WorkUnit


def file_texts(n_chunks: int, seed: int) -> list[str]:
    """Chunk texts of varied length (3 to ~180 tokens), unique per call."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    return [f"{tag} part {i}: " + " ".join(
        f"the tide {rng.randint(0, 999)} reached gate {rng.randint(0, 99)}."
        for _ in range(rng.randint(0, 25))) for i in range(n_chunks)]


def queue_segments(
    db: Engine, owner_id: str, files: list[list[str]], segment_chunks: int,
    *, corrupt: frozenset[int] = frozenset(),
) -> list[str]:
    """One `processing` file per entry of `files` (its chunk texts), split into pending
    segment units of `segment_chunks`, all in one transaction. A file whose index is in
    `corrupt` gets segments whose payload lacks a token count. Returns the file ids."""
    ids = []
    with db.begin() as conn:
        for n, texts in enumerate(files):
            fid = uuid.uuid4()
            starts = range(0, len(texts), segment_chunks)
            conn.execute(insert(File).values(
                id=fid, owner_id=uuid.UUID(owner_id), filename=f"small-{n}.txt", size_bytes=10,
                sha256=uuid.uuid4().hex * 2, storage_key=uuid.uuid4().hex, status="processing",
                stage="embed", kind="text", attempts=1, segments_total=len(starts)))
            for ordinal, start in enumerate(starts):
                part = texts[start:start + segment_chunks]
                tokens = [len(t.split()) for t in part]
                if n in corrupt:
                    tokens = tokens[1:]
                conn.execute(insert(WorkUnit).values(
                    file_id=fid, owner_id=uuid.UUID(owner_id), kind="segment", ordinal=ordinal,
                    chunk_start=start, chunk_end=start + len(part), state="pending",
                    payload={"texts": part, "tokens": tokens}))
            ids.append(str(fid))
    return ids
