"""Collections (named groups of files), read-only sharing, and a full-text column on chunks.

- `collections`: owned by one user, name unique per owner; `exported` marks a
  collection its owner allows an external reader (Open WebUI, issue 15) to see.
- `collection_files`: many-to-many; a file may be in several collections, and
  deleting a collection never deletes its files (the use case does, if asked).
- `collection_shares`: a collection shared read-only with another user.
- `chunks.tsv`: a STORED generated `tsvector` with a GIN index for the
  full-text half of hybrid search. A generated column needs a fixed regconfig,
  so the configuration (SEARCH_TEXT_CONFIG, default 'english') is baked in
  here; adding the column rewrites `chunks` once. To change the configuration
  later, rebuild the column (README, "Search"); the webui reads the one the
  column was built with, so queries and column never disagree.

Revision ID: 0004
Revises: 0002 (rewired by the lead at merge to follow 0003)
"""

import re

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _text_config() -> str:
    settings = context.config.attributes.get("settings")
    name = getattr(settings, "search_text_config", "english")
    # Goes into DDL: only a plain identifier (the setting's pattern says the same).
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"SEARCH_TEXT_CONFIG: {name!r} is not a text search configuration name")
    return str(name)


def _ts(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    config = _text_config()
    # Fails with "text search configuration ... does not exist" before anything changes.
    op.execute(f"SELECT '{config}'::regconfig")
    op.create_table(
        "collections",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("owner_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("exported", sa.Boolean, nullable=False, server_default=sa.false()),
        _ts("created_at"),
        _ts("updated_at"),
        sa.UniqueConstraint("owner_id", "name", name="uq_collections_owner_name"),
    )
    op.create_table(
        "collection_files",
        sa.Column("collection_id", UUID(as_uuid=True),
                  sa.ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("file_id", UUID(as_uuid=True), sa.ForeignKey("files.id", ondelete="CASCADE"),
                  primary_key=True),
        _ts("added_at"),
    )
    op.create_index("ix_collection_files_file", "collection_files", ["file_id"])
    op.create_table(
        "collection_shares",
        sa.Column("collection_id", UUID(as_uuid=True),
                  sa.ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("reader_id", UUID(as_uuid=True), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  primary_key=True),
        _ts("created_at"),
    )
    op.create_index("ix_collection_shares_reader", "collection_shares", ["reader_id"])
    op.execute(
        f"ALTER TABLE chunks ADD COLUMN tsv tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('{config}'::regconfig, text)) STORED"
    )
    op.execute("CREATE INDEX ix_chunks_tsv ON chunks USING gin (tsv)")
    # Filtering chunks by file (search within collections) uses uq_chunks_file_idx.


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_chunks_tsv")
    op.execute("ALTER TABLE chunks DROP COLUMN IF EXISTS tsv")
    op.drop_table("collection_shares")
    op.drop_table("collection_files")
    op.drop_table("collections")
