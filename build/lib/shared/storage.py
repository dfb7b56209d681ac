"""Where uploaded bytes live: UPLOAD_DIR (an RWX volume shared by webui and workers).

Bytes are stored under a server-generated key, never under the user's file name.
"""

from __future__ import annotations

import uuid
from pathlib import Path


def new_storage_key() -> str:
    return uuid.uuid4().hex


def stored_path(upload_dir: Path, storage_key: str) -> Path:
    if len(storage_key) != 32 or not all(c in "0123456789abcdef" for c in storage_key):
        raise ValueError("invalid storage key")
    return upload_dir / storage_key[:2] / storage_key


def incoming_dir(upload_dir: Path) -> Path:
    """Partial uploads are written here and renamed into place when complete."""
    return upload_dir / ".incoming"


def remove_stored(upload_dir: Path, storage_key: str) -> None:
    stored_path(upload_dir, storage_key).unlink(missing_ok=True)
