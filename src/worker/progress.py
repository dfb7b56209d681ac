"""Report a file's stage: in Postgres at stage boundaries, on Redis pub/sub always."""

from __future__ import annotations

import logging
import uuid

from redis import Redis
from redis.exceptions import RedisError

from shared.events import EVENTS_CHANNEL, file_event

log = logging.getLogger("sluice.worker")


def publish(
    redis: Redis, *, file_id: uuid.UUID, owner_id: uuid.UUID, status: str,
    stage: str | None = None, progress: float = 0.0, **extra: object,
) -> None:
    """Best effort: listeners are a convenience, Postgres holds the truth."""
    try:
        redis.publish(
            EVENTS_CHANNEL,
            file_event(
                file_id=file_id, owner_id=owner_id, status=status, stage=stage,
                progress=progress, **extra,
            ),
        )
    except RedisError as err:
        log.warning("file.event_not_published file_id=%s error=%s", file_id, err)
