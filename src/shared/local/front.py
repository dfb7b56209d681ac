"""A tiny TCP front for `sluice up --webui N`: one public port, N webui processes behind it.

Per-connection round robin with no stickiness: each new client connection goes to
the next webui in turn, and every byte of that connection (all its keep-alive
requests) goes to that webui. A webui that refuses the connection (crashed,
restarting) is skipped for the next one. Consecutive connections of one client
therefore land on different replicas, which exercises what must hold across
replicas: rate limits and quotas in Redis, events through the Redis stream,
leases in Postgres. It is the local stand-in for the cluster's Service; it
does no HTTP, no health checks and no TLS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

log = logging.getLogger("sluice.front")
_CHUNK = 64 * 1024


class RoundRobin:
    """The backends in the order one new connection should try them."""

    def __init__(self, backends: Sequence[tuple[str, int]]):
        if not backends:
            raise ValueError("the front needs at least one backend")
        self.backends = list(backends)
        self._next = 0

    def order(self) -> list[tuple[str, int]]:
        start = self._next
        self._next = (start + 1) % len(self.backends)  # one step per connection, skips or not
        return self.backends[start:] + self.backends[:start]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on (an HTTP client may still be reading)."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


class Front:
    def __init__(self, backends: Sequence[tuple[str, int]]):
        self.turns = RoundRobin(backends)
        self._open: set[asyncio.StreamWriter] = set()  # closed when serving stops

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._open.add(client_w)
        try:
            await self._relay(client_r, client_w)
        finally:
            self._open.discard(client_w)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for host, port in self.turns.order():
            try:
                backend_r, backend_w = await asyncio.open_connection(host, port)
                break
            except OSError:
                log.warning("front.backend_refused %s:%d", host, port)
        else:  # every webui refused: the client sees a closed connection, as with no server
            await _close(client_w)
            return
        upstream = asyncio.create_task(_pipe(client_r, backend_w))
        try:
            # The webui ends the connection (keep-alive timeout, `Connection: close`, a crash):
            # then the client's side goes too, as it would if it were connected directly.
            await _pipe(backend_r, client_w)
        finally:
            upstream.cancel()
            await _close(backend_w)
            await _close(client_w)

    async def serve(self, host: str, port: int) -> None:
        server = await asyncio.start_server(self.handle, host, port, backlog=1024)
        try:
            async with server:
                log.info("front.serving %s:%d → %s", host, port,
                         ", ".join(f"{h}:{p}" for h, p in self.turns.backends))
                await server.serve_forever()
        finally:
            for writer in list(self._open):
                writer.close()


def parse_backend(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def run(host: str, port: int, backends: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(Front([parse_backend(b) for b in backends]).serve(host, port))
    return 0
