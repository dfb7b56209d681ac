"""Replay across replicas: a client that reconnects with Last-Event-ID to another webui
process gets exactly the events it missed, never a `resync`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine

from shared.events import EVENTS_STREAM, parse_stream_id
from tests.support.helpers import free_port
from tests.support.stack import Stack, make_user, start_webui
from worker.progress import publish

Event = tuple[str, str, dict[str, object]]  # (id, event, data)


@pytest.fixture(scope="module")
def second_webui(env: dict[str, str], stack: Stack, tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[str]:
    """Another webui process on the same Postgres and Redis, like a second replica."""
    port = free_port()
    proc = start_webui(env, tmp_path_factory.mktemp("webui-b") / "webui.log", port)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def _events(lines: Iterator[str]) -> Iterator[Event]:
    event_id, event = "", ""
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event_id, event, json.loads(line[6:])
            event_id, event = "", ""


def _emit(redis: Redis, owner: str, file_id: uuid.UUID, progress: float) -> None:
    publish(redis, file_id=file_id, owner_id=uuid.UUID(owner), status="processing",
            stage="embed", progress=progress)


def test_reconnect_to_another_webui_replays_exactly_what_was_missed(
    stack: Stack, second_webui: str, db_engine: Engine, redis_client: Redis, tmp_path: Path,
) -> None:
    me, other = make_user(db_engine, "replay"), make_user(db_engine, "replay-other")
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    timeout = httpx.Timeout(10, read=10)

    # Connected to webui A: two events arrive, then the connection drops.
    with httpx.Client(timeout=timeout) as c, c.stream(
        "GET", f"{stack.url}/api/v1/events", headers={"Authorization": f"Bearer {me.key}"},
    ) as r:
        assert r.status_code == 200
        _emit(redis_client, me.id, mine, 0.1)
        _emit(redis_client, other.id, theirs, 0.1)
        _emit(redis_client, me.id, mine, 0.2)
        seen: list[Event] = []
        for ev in _events(r.iter_lines()):
            seen.append(ev)
            if ev[2]["progress"] == 0.2:
                break
    assert [e[2]["progress"] for e in seen] == [0.1, 0.2]
    last_id = seen[-1][0]

    # While away: two more of mine, one of someone else's.
    _emit(redis_client, me.id, mine, 0.3)
    _emit(redis_client, other.id, theirs, 0.5)
    _emit(redis_client, me.id, mine, 0.4)

    # Reconnected, to webui B: the two missed events, then live ones, each once.
    with httpx.Client(timeout=timeout) as c, c.stream(
        "GET", f"{second_webui}/api/v1/events",
        headers={"Authorization": f"Bearer {me.key}", "Last-Event-ID": last_id},
    ) as r:
        assert r.status_code == 200
        got: list[Event] = []
        for ev in _events(r.iter_lines()):
            got.append(ev)
            if ev[2].get("progress") == 0.4:
                _emit(redis_client, me.id, mine, 0.9)  # live, after the replay
            if ev[2].get("progress") == 0.9:
                break
    assert [e[1] for e in got] == ["file"] * 3, f"expected no resync: {got}"
    assert [e[2]["progress"] for e in got] == [0.3, 0.4, 0.9]
    assert {e[2]["file_id"] for e in got} == {str(mine)}
    parsed = [parse_stream_id(e[0]) for e in got]
    ids = [i for i in parsed if i is not None]
    after = parse_stream_id(last_id)
    assert after is not None
    assert len(ids) == len(parsed) and all(i > after for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 3


@pytest.mark.parametrize("case", ["trimmed", "unknown"])
def test_an_id_the_stream_cannot_answer_asks_for_a_resync(
    case: str, stack: Stack, db_engine: Engine, redis_client: Redis,
) -> None:
    """Older than what the stream keeps (trimmed away), or newer than anything it holds."""
    u = make_user(db_engine, "replay-gap")
    if case == "trimmed":
        _emit(redis_client, u.id, uuid.uuid4(), 0.1)
        # decode_responses=False: entry ids come back as bytes.
        newest = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_client.xrevrange(EVENTS_STREAM, count=1))
        first_kept = newest[0][0].decode()
        redis_client.xtrim(EVENTS_STREAM, maxlen=1, approximate=False)
        ms, _, seq = first_kept.partition("-")
        last_id = f"{int(ms) - 1}-{seq}"  # an event before the oldest one kept
    else:
        last_id = "99999999999999-0"
    with httpx.Client(timeout=httpx.Timeout(10, read=10)) as c, c.stream(
        "GET", f"{stack.url}/api/v1/events",
        headers={"Authorization": f"Bearer {u.key}", "Last-Event-ID": last_id},
    ) as r:
        first = next(_events(r.iter_lines()))
    assert first[1] == "resync"
