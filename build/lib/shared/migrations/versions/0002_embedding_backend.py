"""Record the embedding backend with every chunk (and on its file, for a cheap check).

`chunks.embedding_backend` is the strict record: each row says which backend
(torch, onnx, onnx-int8; see shared/embedding.py) computed its vector. Every
row that exists before this revision was computed by torch, and so is every
row an older worker inserts during a rollout, hence the default (a constant
default is metadata-only in PostgreSQL ≥ 11: no table rewrite).

`files.embedding_backend` repeats it per file, written in the same transaction
as the file's chunks, so search can check "are all of this user's chunks in
the query encoder's space?" by reading the user's files (index on owner_id),
not their chunks. NULL there means written before this revision: torch.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "chunks",
        sa.Column("embedding_backend", sa.String(16), nullable=False, server_default="torch"),
    )
    op.add_column("files", sa.Column("embedding_backend", sa.String(16)))


def downgrade() -> None:
    op.drop_column("files", "embedding_backend")
    op.drop_column("chunks", "embedding_backend")
