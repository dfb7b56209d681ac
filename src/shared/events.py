"""Progress events: workers publish, webui processes fan them out to their clients."""

from __future__ import annotations

import json
import uuid
from typing import Any

EVENTS_CHANNEL = "sluice:events"


def file_event(
    *, file_id: uuid.UUID, owner_id: uuid.UUID, status: str, stage: str | None = None,
    progress: float = 0.0, **extra: Any,
) -> bytes:
    """One JSON event; `owner_id` lets each subscriber route it to its own user only."""
    body = {
        "file_id": str(file_id), "owner_id": str(owner_id), "status": status,
        "stage": stage, "progress": round(progress, 3), **extra,
    }
    return json.dumps(body).encode()
