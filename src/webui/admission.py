"""Uploads take their turns at the database oldest request first.

asyncio runs every ready task in turn, so 100 uploads arriving at once all advance
together, each at 1/100 of the pace, and even the first is answered only after most
of the others' authentication, quota and insert work is done: the first file reaches
a worker late. Here an upload's phases that use Postgres (authentication, the quota
pre-check, the checks and insert under the owner's lock) take one of
UPLOAD_ADMISSION_SLOTS places, and a waiting upload gets the next free place by its
arrival time, not by the phase it is in: the request that came first goes through
first, so uploads are answered in about the order they came, at the same throughput
(`make bench-first`, 100 uploads at once: the first answered in 0.32-0.40 s against
0.61-0.73 s, the last at the same time). Bytes arriving hold no place: a slow client
keeps nobody waiting.

Not `asyncio.Semaphore`: it serves waiters in the order they began to wait, so an
upload that finished receiving queued behind every later upload's authentication.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

ARRIVED = "arrived"
"""Key in the ASGI scope's state: when the request came in (`time.monotonic()`)."""


def mark_arrival(scope: MutableMapping[str, Any]) -> None:
    """Called first thing for every request (`webui.guard`)."""
    scope.setdefault("state", {})[ARRIVED] = time.monotonic()


def arrival(scope: Mapping[str, Any]) -> float:
    return float(scope.get("state", {}).get(ARRIVED, time.monotonic()))


class Admission:
    """At most `slots` holders at once; waiters are served lowest `arrived` first."""

    def __init__(self, slots: int):
        self._free = slots
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties (same arrival) in the order they asked

    @asynccontextmanager
    async def slot(self, arrived: float) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (arrived, next(self._order), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # the place was handed over as the caller went away
                else:
                    turn.cancel()  # left in the heap, skipped when its turn comes
                raise
        try:
            yield
        finally:
            self._release()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, turn in self._waiting if not turn.done())

    def _release(self) -> None:
        """Hand the place to the oldest caller still waiting, or free it."""
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1
