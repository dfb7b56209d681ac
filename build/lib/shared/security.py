"""API keys: random, shown once, stored as a SHA-256 hash with a visible prefix.

Keys carry 256 bits of randomness, so a fast hash is enough (no password
stretching needed); the prefix finds the row, a constant-time compare checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_SCHEME = "slk"


def generate_api_key() -> tuple[str, str, str]:
    """Returns (full_key, prefix, hash). Only the prefix and the hash are stored."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = f"{KEY_SCHEME}_{prefix}_{secret}"
    return key, prefix, hash_api_key(key)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_prefix(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != 12:
        return None
    return parts[1]


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)
