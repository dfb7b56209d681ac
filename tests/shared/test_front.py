"""`sluice up --webui N`'s front: each new connection goes to the next backend in turn, every
byte of a connection to the same one, and a backend that refuses connections is skipped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from shared.local.front import Front, RoundRobin
from tests.support.helpers import free_port


async def _backend(name: bytes) -> asyncio.Server:
    """Answers every line with `name: line`, so a reply says which backend it came from."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(name + b": " + line)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def backends() -> AsyncIterator[list[asyncio.Server]]:
    servers = [await _backend(b"a"), await _backend(b"b")]
    yield servers
    for s in servers:
        s.close()
        await s.wait_closed()


async def _ask(port: int, lines: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    for line in lines:
        writer.write(line + b"\n")
        await writer.drain()
        replies.append((await asyncio.wait_for(reader.readline(), 5)).strip())
    writer.close()
    await writer.wait_closed()
    return replies


async def _serve(backend_ports: list[int]) -> tuple[asyncio.Task[None], int]:
    port = free_port()
    task = asyncio.create_task(Front([("127.0.0.1", p) for p in backend_ports]).serve(
        "127.0.0.1", port))
    for _ in range(100):  # until it listens
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            break
        except OSError:
            await asyncio.sleep(0.02)
    return task, port


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # the relays see their connections closed and finish


async def test_connections_alternate_and_a_connection_stays_on_its_backend(
    backends: list[asyncio.Server],
) -> None:
    # The readiness probe in _serve took one turn (backend a), so connections start at b.
    task, port = await _serve([_port(s) for s in backends])
    try:
        seen = [await _ask(port, [b"one", b"two"]) for _ in range(4)]
    finally:
        await _stop(task)
    assert seen == [[b"b: one", b"b: two"], [b"a: one", b"a: two"]] * 2


async def test_a_backend_that_refuses_is_skipped(backends: list[asyncio.Server]) -> None:
    dead = free_port()  # nothing listens there
    task, port = await _serve([_port(backends[0]), dead, _port(backends[1])])
    try:
        seen = [(await _ask(port, [b"x"]))[0] for _ in range(6)]
    finally:
        await _stop(task)
    # Turns go a, dead, b, a, …: the dead one's turn goes on to the next, b.
    assert seen.count(b"a: x") == 2 and seen.count(b"b: x") == 4
    assert all(reply in (b"a: x", b"b: x") for reply in seen)


async def test_every_backend_down_closes_the_client() -> None:
    task, port = await _serve([free_port()])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
    finally:
        await _stop(task)


def test_round_robin_moves_one_step_per_connection() -> None:
    rr = RoundRobin([("h", 1), ("h", 2), ("h", 3)])
    assert [rr.order()[0][1] for _ in range(4)] == [1, 2, 3, 1]
    assert rr.order() == [("h", 2), ("h", 3), ("h", 1)]
    with pytest.raises(ValueError, match="at least one backend"):
        RoundRobin([])
