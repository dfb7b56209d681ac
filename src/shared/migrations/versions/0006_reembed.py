"""Background re-embed (issue 14): a side table for vectors of the next embedding
space, the `reembed` unit kind, and the active space in `app_config`.

`chunk_vectors` holds, per chunk, its vector in a space that is not yet active,
while `chunks.embedding` keeps serving search in the active space. Nothing
searches this table: the switch (shared/reembed.py) copies its vectors into
`chunks.embedding` in one transaction, where the HNSW index already is, and
empties it. So it has no vector index of its own (one would only slow the
writes); its primary key is what makes a redone unit overwrite, not duplicate.

`app_config['embedding.active_space']` is the space `chunks.embedding` holds:
the space most existing chunks are in. With no chunks yet it stays unset, and the
first worker records its own backend's space (shared/reembed.py `advance`), so a
fresh install on onnx-int8 never starts a re-embed of nothing.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CONTRACT = (
    "ck_work_units_kind is replaced by a wider check (parse, segment, reembed): every row "
    "an older image writes passes both, so nothing an older image does can break"
)


def upgrade() -> None:
    op.create_table(
        "chunk_vectors",
        sa.Column("chunk_id", sa.BigInteger,
                  sa.ForeignKey("chunks.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("space", sa.String(16), primary_key=True),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("embedding", Vector(384), nullable=False),
    )
    op.drop_constraint("ck_work_units_kind", "work_units", type_="check")
    op.create_check_constraint("ck_work_units_kind", "work_units",
                               "kind IN ('parse', 'segment', 'reembed')")
    op.execute("""
        INSERT INTO app_config (key, value)
        SELECT 'embedding.active_space',
               to_jsonb((SELECT CASE WHEN embedding_backend = 'onnx-int8' THEN 'int8'
                                     ELSE 'fp32' END
                         FROM chunks GROUP BY 1 ORDER BY count(*) DESC LIMIT 1))
        WHERE EXISTS (SELECT 1 FROM chunks)
        ON CONFLICT (key) DO NOTHING
    """)


def downgrade() -> None:
    op.execute("DELETE FROM work_units WHERE kind = 'reembed'")
    op.execute("DELETE FROM app_config WHERE key IN ('embedding.active_space', 'reembed')")
    op.drop_constraint("ck_work_units_kind", "work_units", type_="check")
    op.create_check_constraint("ck_work_units_kind", "work_units", "kind IN ('parse', 'segment')")
    op.drop_table("chunk_vectors")
