"""Report a file's stage: in Postgres at stage boundaries, on the Redis event stream always."""

from __future__ import annotations

import logging
import uuid

from redis import Redis
from redis.exceptions import RedisError

from shared.events import EVENTS_MAXLEN, EVENTS_STREAM, file_event

log = logging.getLogger("sluice.worker")


def publish(
    redis: Redis, *, file_id: uuid.UUID, owner_id: uuid.UUID, status: str,
    stage: str | None = None, progress: float = 0.0, **extra: object,
) -> None:
    """Best effort: listeners are a convenience, Postgres holds the truth."""
    try:
        event = file_event(file_id=file_id, owner_id=owner_id, status=status, stage=stage,
                           progress=progress, **extra)
        redis.xadd(EVENTS_STREAM, {"data": event}, maxlen=EVENTS_MAXLEN, approximate=True)
    except RedisError as err:
        log.warning("file.event_not_published file_id=%s error=%s", file_id, err)
