"""Live file events for browsers: one Redis subscription per webui process.

Workers publish every file event on one Redis channel. Each webui process
holds exactly one subscription to it (never one Redis connection per browser
tab) and fans events out to its Server-Sent-Events clients, each of which only
ever receives its own user's events. A short ring buffer lets a client that
reconnects with `Last-Event-ID` catch up; if the gap is too old (or Redis
dropped us) the client is told to `resync`, i.e. refetch its files' status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from shared.events import EVENTS_CHANNEL

log = logging.getLogger("sluice.events")
_BUFFER = 2000
_CLIENT_QUEUE = 256
RESYNC = "resync"


@dataclass(eq=False)
class Subscriber:
    user_id: str
    queue: asyncio.Queue[tuple[str, str, str]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=_CLIENT_QUEUE)
    )


class EventHub:
    def __init__(self, redis: AsyncRedis) -> None:
        # The subscription pins one connection of the process's async pool for life.
        self._redis = redis
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._buffer: deque[tuple[int, str, str]] = deque(maxlen=_BUFFER)
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def client_count(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sluice-event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self, user_id: str) -> Subscriber:
        sub = Subscriber(user_id)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def replay(self, user_id: str, last_event_id: str | None) -> list[tuple[str, str, str]] | None:
        """Events after `last_event_id` for this user, or None if they cannot be known."""
        if not last_event_id:
            return []
        epoch, _, seq_text = last_event_id.partition("-")
        if epoch != self.epoch or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if self._buffer and seq < self._buffer[0][0] - 1:
            return None
        return [(f"{self.epoch}-{s}", "file", data) for s, uid, data in self._buffer
                if s > seq and uid == user_id]

    def _dispatch(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
            user_id = str(event.pop("owner_id"))
        except (ValueError, KeyError, TypeError):
            log.warning("events.bad_message")
            return
        self._seq += 1
        data = json.dumps(event)
        self._buffer.append((self._seq, user_id, data))
        item = (f"{self.epoch}-{self._seq}", "file", data)
        for sub in list(self._subscribers):
            if sub.user_id == user_id:
                self._offer(sub, item)

    def _offer(self, sub: Subscriber, item: tuple[str, str, str]) -> None:
        try:
            sub.queue.put_nowait(item)
        except asyncio.QueueFull:
            # A slow client: drop what it has and tell it to refetch instead.
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait(("", RESYNC, "{}"))

    def _resync_all(self) -> None:
        for sub in list(self._subscribers):
            self._offer(sub, ("", RESYNC, "{}"))

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(EVENTS_CHANNEL)
                    if not self.connected.is_set():
                        self.connected.set()
                    else:
                        self._resync_all()  # we were away: events may have been missed
                    backoff = 0.5
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                log.warning("events.subscription_lost error=%s retry_in=%.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
