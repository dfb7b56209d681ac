"""Generated secrets for the embedded servers, kept in their data folder, owner-only.

The embedded Postgres and Redis listen on 127.0.0.1, which every local user
can reach. So neither trusts a connection: Postgres asks for a password
(SCRAM) on TCP and on its unix socket, Redis for `requirepass`. The secrets
are random, made on first start and kept (mode 0600) next to the data they
protect, so a restart and the next `sluice up` find them.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def secret_file(path: Path) -> str:
    """The secret kept in `path`, created (random, URL-safe, mode 0600) if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)  # tightened if someone loosened it
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write `text` to `path` readable by its owner only (`owner`: uid, gid to hand it to)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    if owner is not None:
        os.fchown(fd, *owner)
    with os.fdopen(fd, "w") as out:
        out.write(text)
