"""A read-only view of exported collections' chunks for Open WebUI's external
pgvector knowledge source (issue 15).

Open WebUI (≥ 0.10) runs, with the column names an admin configures:

    SELECT <id> AS id, <content> AS content, <metadata> AS metadata,
           <vector> <=> %s AS distance
    FROM <table> WHERE <collection> = %s ORDER BY distance ASC LIMIT %s

`openwebui_chunks` answers that shape: one row per chunk per exported
collection it is in (a file may be in several), `collection` = the collection's
id as text (names are unique per owner only, ids everywhere), the 384-dim
vectors as stored. Only chunks in the fp32 embedding space (torch, onnx) appear:
Open WebUI embeds the question with sentence-transformers, and int8 vectors
live in another space (shared/embedding.py).

The view runs with its owner's rights, so a role granted SELECT on it and
nothing else reads these rows and nothing more. That role is made by
`sluice openwebui setup` (it needs CREATEROLE, and a generated password is no
business of a migration).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

VIEW = "openwebui_chunks"


def upgrade() -> None:
    op.execute(f"""
CREATE VIEW {VIEW} AS
SELECT c.id,
       c.text,
       c.embedding AS vector,
       col.id::text AS collection,
       col.name AS collection_name,
       jsonb_build_object(
         'source', f.filename, 'name', f.filename, 'sluice_file_id', f.id::text,
         'collection', col.name, 'collection_id', col.id::text, 'chunk_index', c.idx
       ) AS metadata
FROM collections col
JOIN collection_files cf ON cf.collection_id = col.id
JOIN files f ON f.id = cf.file_id
JOIN chunks c ON c.file_id = f.id
WHERE col.exported AND c.embedding_backend IN ('torch', 'onnx')
""")


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {VIEW}")
