"""Progress events: workers append them to one bounded Redis stream; every webui
process reads it (one reader each) and fans events out to its clients.

A stream rather than pub/sub because a reconnecting browser may reach any
webui replica: the stream is the one shared history that answers
`Last-Event-ID`, by stream entry id, wherever the client lands.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

EVENTS_STREAM = "sluice:events:stream"
EVENTS_MAXLEN = 10_000
"""Entries kept (approximately: XADD MAXLEN ~ trims whole nodes, cheaply). At a few
events per file, the last few thousand files' worth: minutes of history at full load,
far more than a reconnect needs. Older gaps are answered with `resync`."""

_STREAM_ID = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")


def file_event(
    *, file_id: uuid.UUID, owner_id: uuid.UUID, status: str, stage: str | None = None,
    progress: float = 0.0, **extra: Any,
) -> bytes:
    """One JSON event; `owner_id` lets each reader route it to its own user only."""
    body = {
        "file_id": str(file_id), "owner_id": str(owner_id), "status": status,
        "stage": stage, "progress": round(progress, 3), **extra,
    }
    return json.dumps(body).encode()


def parse_stream_id(text: str | bytes | None) -> tuple[int, int] | None:
    """A stream entry id ("1700000000000-3") as a comparable pair, or None if malformed."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    match = _STREAM_ID.match(text or "")
    return (int(match[1]), int(match[2])) if match else None
