"""The Open WebUI view follows the active embedding space instead of fp32 alone.

0005 showed only fp32 chunks (torch, onnx) because Open WebUI was expected to
embed questions with its own sentence-transformers. `sluice openwebui settings`
points Open WebUI's embeddings at Sluice (`RAG_EMBEDDING_ENGINE=openai`), whose
`/v1/embeddings` the workers answer in their backend's space, and after a
background re-embed (0006) that space is `app_config['embedding.active_space']`.
So the view shows the chunks whose vectors are in the active space (fp32 when
the key is missing), and a switch to onnx-int8 no longer empties it.

The space of a backend is spelled here as in shared/embedding.py (`_SPACES`):
onnx-int8 → int8, everything else (torch, onnx) → fp32.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

VIEW = "openwebui_chunks"
CONTRACT = (
    "the view is replaced with the same columns; only which chunks it shows changes, "
    "so an older image reading it still works"
)


def _view(where_space: str) -> str:
    return f"""
CREATE OR REPLACE VIEW {VIEW} AS
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
WHERE col.exported AND {where_space}
"""


def upgrade() -> None:
    op.execute(_view(
        "(CASE c.embedding_backend WHEN 'onnx-int8' THEN 'int8' ELSE 'fp32' END) = coalesce("
        "(SELECT value #>> '{}' FROM app_config WHERE key = 'embedding.active_space'), 'fp32')"
    ))


def downgrade() -> None:
    op.execute(_view("c.embedding_backend IN ('torch', 'onnx')"))
