"""Work in units tracked in Postgres: a parse unit per file, then segments of chunks.

`work_units` is the backlog and the record of who works on what (state, attempt as
fencing token, lease); `owner_turns` remembers whose turn it was; `files` gets its
segment progress. Files that were queued or processing under the old model (one RQ
job per file) get a parse unit, so the dispatcher picks them up after the upgrade.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("segments_total", sa.Integer, nullable=False,
                                     server_default="0"))
    op.add_column("files", sa.Column("segments_done", sa.Integer, nullable=False,
                                     server_default="0"))
    op.create_table(
        "work_units",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("file_id", UUID(as_uuid=True), sa.ForeignKey("files.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("owner_id", UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False, server_default="0"),
        sa.Column("chunk_start", sa.Integer, nullable=False, server_default="0"),
        sa.Column("chunk_end", sa.Integer, nullable=False, server_default="0"),
        sa.Column("payload", JSONB),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker", sa.String(200)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("dispatched_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.UniqueConstraint("file_id", "kind", "ordinal", name="uq_work_units_file_kind_ordinal"),
        sa.CheckConstraint("state IN ('pending', 'dispatched', 'running', 'done', 'failed')",
                           name="ck_work_units_state"),
        sa.CheckConstraint("kind IN ('parse', 'segment')", name="ck_work_units_kind"),
    )
    op.create_index("ix_work_units_state_not_before", "work_units", ["state", "not_before"])
    op.create_index("ix_work_units_owner_state", "work_units", ["owner_id", "state"])
    op.create_index("ix_work_units_file", "work_units", ["file_id"])
    op.create_table(
        "owner_turns",
        sa.Column("owner_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("last_turn_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO work_units (file_id, owner_id, kind, ordinal, state) "
        "SELECT id, owner_id, 'parse', 0, 'pending' FROM files "
        "WHERE status IN ('queued', 'processing')"
    )
    op.execute("UPDATE files SET segments_total = 1, segments_done = 1 WHERE status = 'done'")


def downgrade() -> None:
    op.drop_table("owner_turns")
    op.drop_table("work_units")
    op.drop_column("files", "segments_done")
    op.drop_column("files", "segments_total")
