"""`GET /api/v1/events`: the caller's own file events as Server-Sent Events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from shared.events import parse_stream_id
from webui.deps import CurrentUser, StateDep
from webui.events import RESYNC
from webui.limits import event_stream_slot

router = APIRouter(tags=["events"])
HEARTBEAT_S = 15.0


def _frame(event_id: str, event: str, data: str) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


@router.get("/events", response_class=StreamingResponse)
async def events(request: Request, user: CurrentUser, state: StateDep) -> StreamingResponse:
    """Stream `file` events (status, stage, progress) for your files; `resync` means
    "refetch your files' status" (after a gap the server cannot fill)."""
    hub = state.events
    user_id = str(user.id)
    # Held for the stream's life (released in `stream`'s finally): one user's
    # forgotten tabs or a reconnect loop cannot take every slot of the process.
    slot = AsyncExitStack()
    await slot.enter_async_context(
        event_stream_slot(state.aredis, user.id, state.settings.event_streams_per_user)
    )
    # Subscribed before the replay is read, so nothing falls between the two; what both
    # deliver is sent once (ids are the stream's, ordered the same on every replica).
    sub = hub.subscribe(user_id)
    state.metrics.event_streams.inc()
    try:
        missed = await hub.replay(user_id, request.headers.get("last-event-id"))
    except BaseException:
        hub.unsubscribe(sub)
        state.metrics.event_streams.dec()
        await slot.aclose()
        raise
    # After a resync the client starts over: every live event is news to it.
    seen = None if missed is None else parse_stream_id(
        missed[-1][0] if missed else request.headers.get("last-event-id"))

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 3000\n\n"
            if missed is None:
                yield _frame("", RESYNC, "{}")
            else:
                for item in missed:
                    yield _frame(*item)
            while True:
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=HEARTBEAT_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": heartbeat\n\n"
                    continue
                event_id = parse_stream_id(item[0])
                if seen is not None and event_id is not None and event_id <= seen:
                    continue  # already sent by the replay
                yield _frame(*item)
        finally:
            hub.unsubscribe(sub)
            state.metrics.event_streams.dec()
            await slot.aclose()

    return StreamingResponse(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
