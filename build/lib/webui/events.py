"""Live file events for browsers: one Redis stream reader per webui process.

Workers append every file event to one bounded Redis stream. Each webui
process holds exactly one reader on it (one pinned connection in an
``XREAD BLOCK`` loop, never one Redis connection per browser tab) and fans
events out to its Server-Sent-Events clients, each of which only ever receives
its own user's events. The SSE id of an event is its stream entry id, the same
on every replica, so a client that reconnects with `Last-Event-ID` to any
replica is answered from the stream (``XRANGE``) with exactly what it missed.
If the gap is older than the stream keeps (or the id is not one of ours), the
client is told to `resync`, i.e. refetch its files' status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError, ResponseError

from shared.events import EVENTS_MAXLEN, EVENTS_STREAM, parse_stream_id

log = logging.getLogger("sluice.events")
_CLIENT_QUEUE = 256
_BLOCK_MS = 5_000
_READ_COUNT = 500
REPLAY_MAX = EVENTS_MAXLEN  # entries a replay may scan; a longer gap is a resync
RESYNC = "resync"
Item = tuple[str, str, str]  # (SSE id, SSE event, data)


@dataclass(eq=False)
class Subscriber:
    user_id: str
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(maxsize=_CLIENT_QUEUE))


def _entry(fields: dict[bytes, bytes]) -> tuple[str, str] | None:
    """(owner id, JSON without the owner) of one stream entry, None if malformed."""
    try:
        event = json.loads(fields[b"data"])
        return str(event.pop("owner_id")), json.dumps(event)
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("events.bad_message")
        return None


def _entries(raw: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XRANGE/XREAD entries as redis-py returns them without decode_responses."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], raw or [])


def _trimmed_after(info: dict[str, object], after: tuple[int, int]) -> bool:
    """Whether entries newer than `after` may have been trimmed from the stream."""
    deleted = parse_stream_id(info.get("max-deleted-entry-id"))  # type: ignore[arg-type]
    if deleted is not None:  # Redis 7 knows exactly
        return deleted > after
    first = info.get("first-entry")  # Redis 6.2: ids are not dense, so be conservative
    oldest = parse_stream_id(first[0]) if isinstance(first, list | tuple) and first else None
    return oldest is not None and oldest > after


class EventHub:
    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis  # the process's async pool: replays borrow from it briefly
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_id = b"0-0"
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

    async def replay(self, user_id: str, last_event_id: str | None) -> list[Item] | None:
        """This user's events after `last_event_id`, from the shared stream; None if they
        cannot be known (unknown id, gap trimmed away, Redis unreachable)."""
        if not last_event_id:
            return []
        after = parse_stream_id(last_event_id)
        if after is None:
            return None
        try:
            info = await self._redis.xinfo_stream(EVENTS_STREAM)
            entries = _entries(await self._redis.xrange(
                EVENTS_STREAM, min=f"({after[0]}-{after[1]}", max="+", count=REPLAY_MAX))
        except ResponseError:  # no such stream: nothing was ever published here
            return None
        except RedisError as err:
            log.warning("events.replay_failed error=%s", err)
            return None
        newest = parse_stream_id(info.get("last-generated-id"))
        if newest is None or after > newest:
            return None  # not an id of this stream (another Redis, or made up)
        if _trimmed_after(info, after) or len(entries) >= REPLAY_MAX:
            return None
        missed: list[Item] = []
        for entry_id, fields in entries:
            parsed = _entry(fields)
            if parsed is not None and parsed[0] == user_id:
                missed.append((entry_id.decode(), "file", parsed[1]))
        return missed

    def _dispatch(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        parsed = _entry(fields)
        if parsed is None:
            return
        user_id, data = parsed
        item = (entry_id.decode(), "file", data)
        for sub in list(self._subscribers):
            if sub.user_id == user_id:
                self._offer(sub, item)

    def _offer(self, sub: Subscriber, item: Item) -> None:
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

    async def _position(self, reader: AsyncRedis, resumed: bool) -> None:
        """Where to read from: the stream's end at start; after an outage, where we were,
        unless the stream moved on without us (trimmed past us, or reset)."""
        try:
            info = await reader.xinfo_stream(EVENTS_STREAM)
        except ResponseError:  # no stream yet: read from the beginning of the one to come
            info = {"last-generated-id": b"0-0", "first-entry": None}
        tip = info.get("last-generated-id") or b"0-0"
        if not resumed:
            self._last_id = tip if isinstance(tip, bytes) else str(tip).encode()
            return
        ours, newest = parse_stream_id(self._last_id), parse_stream_id(tip)
        if ours is None or newest is None or ours > newest or _trimmed_after(info, ours):
            self._resync_all()  # events may have been missed
            self._last_id = tip if isinstance(tip, bytes) else str(tip).encode()

    async def _run(self) -> None:
        backoff = 0.5
        resumed = False
        while True:
            # One connection pinned for this process's reader, as a subscription would be.
            reader = AsyncRedis(connection_pool=self._redis.connection_pool,
                                single_connection_client=True)
            try:
                await self._position(reader, resumed)
                self.connected.set()
                backoff = 0.5
                while True:
                    batches: Any = await reader.xread(
                        {EVENTS_STREAM: self._last_id}, count=_READ_COUNT, block=_BLOCK_MS)
                    for _stream, entries in batches or []:
                        for entry_id, fields in _entries(entries):
                            self._last_id = entry_id
                            self._dispatch(entry_id, fields)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                log.warning("events.reader_lost error=%s retry_in=%.1fs", err, backoff)
                resumed = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await reader.aclose()
