"""Server-Sent Events: one Redis stream reader per webui process, per-user delivery,
replay by Last-Event-ID on whichever webui process a client reconnects to."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from redis import Redis
from sqlalchemy import Engine

from tests.support.stack import Stack, make_user

CLIENTS_PER_USER = 50
USERS = 4


async def _listen(url: str, key: str, got: list[dict[str, object]], ready: asyncio.Event,
                  stop: asyncio.Event, client: httpx.AsyncClient) -> None:
    async with client.stream("GET", f"{url}/api/v1/events",
                             headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        ready.set()
        event = ""
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "file":
                got.append(json.loads(line[6:]))
            if stop.is_set():
                return


def _event_readers(redis: Redis) -> int:
    """Connections of the webui's async pool that read events: reading the stream (XREAD)
    or, as before, holding a pub/sub subscription."""
    return sum(1 for c in redis.client_list()
               if c.get("name") == "sluice-webui-async"
               and (c.get("cmd") == "xread" or int(c.get("sub", 0)) > 0))


def test_200_clients_share_one_reader_and_see_only_their_events(
    stack: Stack, db_engine: Engine, redis_client: Redis
) -> None:
    users = [make_user(db_engine, f"sse{i}") for i in range(USERS)]

    Seen = list[tuple[int, list[dict[str, object]]]]

    async def scenario() -> tuple[Seen, list[str]]:
        limits = httpx.Limits(max_connections=USERS * CLIENTS_PER_USER + 10)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=None), limits=limits) as client:
            stop = asyncio.Event()
            listeners = []
            for ui, u in enumerate(users):
                for _ in range(CLIENTS_PER_USER):
                    got: list[dict[str, object]] = []
                    ready = asyncio.Event()
                    task = asyncio.create_task(_listen(stack.url, u.key, got, ready, stop, client))
                    listeners.append((ui, got, ready, task))
            await asyncio.wait_for(asyncio.gather(*(r.wait() for _, _, r, _ in listeners)), 60)
            assert _event_readers(redis_client) == 1  # 200 browsers, one Redis connection

            file_ids: list[str] = []
            for u in users:
                r = await client.post(
                    f"{stack.url}/api/v1/files", headers={"Authorization": f"Bearer {u.key}"},
                    files={"file": ("e.txt", f"event test {uuid.uuid4()}".encode())},
                )
                assert r.status_code == 202
                file_ids.append(r.json()["id"])

            async def all_done() -> None:  # polls the lists the listener tasks fill
                while not all(  # noqa: ASYNC110
                    any(e["file_id"] == file_ids[ui] and e["status"] == "done" for e in got)
                    for ui, got, _, _ in listeners
                ):
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(all_done(), 90)
            stop.set()
            for *_, task in listeners:
                task.cancel()
            await asyncio.gather(*(t for *_, t in listeners), return_exceptions=True)
            return [(ui, got) for ui, got, _, _ in listeners], file_ids

    results, file_ids = asyncio.run(scenario())
    for ui, got in results:
        seen = {e["file_id"] for e in got}
        assert seen == {file_ids[ui]}, "a client saw another user's file events"
        assert all("owner_id" not in e for e in got)
        statuses = [e["status"] for e in got]
        assert statuses[-1] == "done" and "processing" in statuses


def test_events_require_a_key(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/api/v1/events")
    assert r.status_code == 401


def test_unknown_last_event_id_asks_the_client_to_resync(stack: Stack, db_engine: Engine) -> None:
    u = make_user(db_engine, "resync")
    with httpx.Client(timeout=httpx.Timeout(10, read=5)) as c, c.stream(
        "GET", f"{stack.url}/api/v1/events",
        headers={"Authorization": f"Bearer {u.key}", "Last-Event-ID": "deadbeef-42"},
    ) as r:
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith("event: "):
                break
    assert "event: resync" in lines
