"""`sluice openwebui setup|settings`: the read-only role for Open WebUI's external
pgvector knowledge source, and the exact settings to paste into Open WebUI.

Setting names are Open WebUI's own (checked against open-webui 0.12.4):
config.py (`RAG_EMBEDDING_ENGINE`, `RAG_OPENAI_API_BASE_URL`, ...),
retrieval/loaders/external_document.py (`PUT {url}/process`),
utils/tools.py (`TOOL_SERVER_CONNECTIONS`), retrieval/external.py and
routers/knowledge.py (external pgvector connections and knowledge bases).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from shared.settings import Settings

VIEW = "openwebui_chunks"  # migration 0005
DEFAULT_ROLE = "sluice_openwebui"
TOOL_SPEC_PATH = "/api/v1/openwebui/tools.json"  # webui/tool_server.py
# The view's columns, as Open WebUI's source config names them.
SOURCE_CONFIG = {
    "table_name": VIEW, "collection_field": "collection", "content_field": "text",
    "vector_field": "vector", "metadata_field": "metadata", "document_id_field": "id",
}
_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_role_name(role: str) -> str:
    if not _ROLE_RE.fullmatch(role):
        raise ValueError(f"{role!r} is not a plain role name (lower case, digits, _)")
    return role


def setup_role(session: Session, role: str) -> str:
    """Create or reset the role: LOGIN with a new password, SELECT on the view only.

    Re-running it rotates the password. Identifiers and the password go into DDL
    (no bind parameters there), so both are restricted to safe characters.
    """
    role = check_role_name(role)
    password = secrets.token_urlsafe(32)  # [A-Za-z0-9_-] only: safe inside quotes
    exists = session.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    verb = "ALTER" if exists else "CREATE"
    session.execute(text(
        f"{verb} ROLE {role} LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE "
        "NOINHERIT NOREPLICATION CONNECTION LIMIT 16"))
    database = session.scalar(text("SELECT current_database()"))
    schema = session.scalar(text("SELECT current_schema()"))
    # Belt and braces: reads only, and one slow similarity scan cannot run for ever.
    session.execute(text(f"ALTER ROLE {role} SET default_transaction_read_only = on"))
    session.execute(text(f"ALTER ROLE {role} SET statement_timeout = '15s'"))
    session.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {role}'))
    session.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}'))
    session.execute(text(f"GRANT SELECT ON {VIEW} TO {role}"))
    return password


def exported_collections(session: Session) -> list[tuple[str, str, str]]:
    """(id, name, owner email) of every exported collection."""
    rows = session.execute(text(
        "SELECT c.id::text, c.name, u.email FROM collections c JOIN users u ON u.id = c.owner_id "
        "WHERE c.exported ORDER BY u.email, c.name"))
    return [(r[0], r[1], r[2]) for r in rows]


def reader_dsn(database_url: str, role: str, password: str | None) -> str:
    """Sluice's database URL with the reader role's credentials, as libpq takes it."""
    url = make_url(database_url).set(drivername="postgresql", username=role,
                                     password=password or "PASSWORD-FROM-SETUP")
    return url.render_as_string(hide_password=False)


def render(settings: Settings, *, sluice_url: str, dsn: str,
           collections: list[tuple[str, str, str]]) -> str:
    """What an Open WebUI admin pastes: environment, tool server, knowledge bodies."""
    base = sluice_url.rstrip("/")
    key = "SLUICE_API_KEY"  # a per-user key from `sluice keys create`; never printed here
    batch = min(32, settings.openai_embed_max_inputs)
    tool = [{"type": "openapi", "url": base, "path": TOOL_SPEC_PATH, "spec_type": "url",
             "auth_type": "bearer", "key": f"<{key}>", "config": {"enable": True},
             "info": {"id": "sluice", "name": "Sluice search",
                      "description": "Search documents ingested by Sluice"}}]
    connection = {"name": "Sluice", "provider": "pgvector", "endpoint": dsn, "enabled": True}
    out = [
        "# Open WebUI environment (Sluice embeds and extracts)",
        "RAG_EMBEDDING_ENGINE=openai",
        f"RAG_OPENAI_API_BASE_URL={base}/v1",
        f"RAG_OPENAI_API_KEY=<{key}>",
        "RAG_EMBEDDING_MODEL=all-MiniLM-L6-v2",
        f"RAG_EMBEDDING_BATCH_SIZE={batch}",
        "RAG_EMBEDDING_CONCURRENT_REQUESTS=2",
        "CONTENT_EXTRACTION_ENGINE=external",
        f"EXTERNAL_DOCUMENT_LOADER_URL={base}",
        f"EXTERNAL_DOCUMENT_LOADER_API_KEY=<{key}>",
        f"TOOL_SERVER_CONNECTIONS='{json.dumps(tool)}'",
        "",
        "# External knowledge source (admin API of Open WebUI >= 0.10, or Admin > Knowledge)",
        "# 1. POST /api/v1/knowledge/external/connections",
        json.dumps(connection),
        "# 2. POST /api/v1/knowledge/external/knowledge/create, one per exported collection",
        "#    (connection_id: the id answered by step 1)",
    ]
    for cid, name, owner in collections or [("<collection id>", "<name>", "<owner>")]:
        body: dict[str, Any] = {
            "name": name, "description": f"Sluice collection of {owner}",
            "connection_id": "<connection id>",
            "source": {"type": "collection", "name": cid, "config": SOURCE_CONFIG},
        }
        out.append(json.dumps(body))
    if not collections:
        out.append("# (no collection is exported yet: PATCH /api/v1/collections/{id} "
                   '{"exported": true} as its owner)')
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="openwebui_cmd", required=True)
    for name, help_text in (
        ("setup", "create the read-only database role (or rotate its password) and print "
                  "the settings"),
        ("settings", "print the settings to paste into Open WebUI (no password)"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--url", default="http://127.0.0.1:8000",
                         help="Sluice's URL as Open WebUI reaches it")
        cmd.add_argument("--database-url",
                         help="Sluice's Postgres as Open WebUI reaches it (default DATABASE_URL)")
        cmd.add_argument("--role", default=DEFAULT_ROLE)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from shared.db import one_off_session

    with one_off_session(settings) as session:
        password = setup_role(session, args.role) if args.openwebui_cmd == "setup" else None
        collections = exported_collections(session)
    dsn = reader_dsn(args.database_url or settings.database_url, args.role, password)
    print(render(settings, sluice_url=args.url, dsn=dsn, collections=collections))
    return 0
