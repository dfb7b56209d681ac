"""webui.admission: at most N holders, waiters served oldest arrival first, no place lost
to a caller that goes away. Pure asyncio: no server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from webui.admission import Admission, arrival, mark_arrival


async def _hold(adm: Admission, arrived: float, log: list[float], release: asyncio.Event) -> None:
    async with adm.slot(arrived):
        log.append(arrived)
        await release.wait()


async def test_never_more_than_the_slots_at_once() -> None:
    adm = Admission(3)
    inside = peak = 0

    async def one(n: int) -> None:
        nonlocal inside, peak
        async with adm.slot(float(n)):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(one(n) for n in range(40)))
    assert peak == 3
    assert inside == 0 and adm.waiting == 0


async def test_waiters_go_by_arrival_not_by_when_they_began_to_wait() -> None:
    """The upload that came first goes first, even if it asks last (it was receiving
    its body while later uploads queued for authentication)."""
    adm = Admission(1)
    order: list[float] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(adm, 0.0, order, release))
    await asyncio.sleep(0)
    later = [asyncio.create_task(_hold(adm, t, order, release)) for t in (5.0, 3.0, 4.0)]
    await asyncio.sleep(0)
    oldest = asyncio.create_task(_hold(adm, 1.0, order, release))  # asks last
    await asyncio.sleep(0)
    assert adm.waiting == 4
    release.set()
    await asyncio.gather(holder, *later, oldest)
    assert order == [0.0, 1.0, 3.0, 4.0, 5.0]


async def test_same_arrival_keeps_the_order_of_asking() -> None:
    adm = Admission(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def one(name: str) -> None:
        async with adm.slot(7.0):
            order.append(name)
            await gate.wait()

    tasks = [asyncio.create_task(one(name)) for name in "abcd"]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert order == list("abcd")


async def test_a_waiter_that_goes_away_loses_no_place() -> None:
    adm = Admission(1)
    order: list[float] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(adm, 0.0, order, release))
    await asyncio.sleep(0)
    gone = asyncio.create_task(_hold(adm, 1.0, order, release))
    stays = asyncio.create_task(_hold(adm, 2.0, order, release))
    await asyncio.sleep(0)
    gone.cancel()  # the client disconnected while waiting
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert adm.waiting == 1
    release.set()
    await asyncio.gather(holder, stays)
    assert order == [0.0, 2.0]
    async with adm.slot(9.0):  # the place came back: no one waits for a ghost
        assert adm.waiting == 0


async def test_a_place_handed_over_as_the_caller_goes_away_is_passed_on() -> None:
    """The holder leaves and hands its place to a waiter that is cancelled before it
    runs: that place goes to the next waiter, it is not lost."""
    adm = Admission(1)
    order: list[float] = []
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(adm, 0.0, order, release))
    await asyncio.sleep(0)
    handed = asyncio.create_task(_hold(adm, 1.0, order, release))
    nxt = asyncio.create_task(_hold(adm, 2.0, order, release))
    await asyncio.sleep(0)
    release.set()
    await asyncio.sleep(0)  # the holder runs and leaves; `handed` is woken, not yet run
    assert holder.done() and not handed.done()
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    await asyncio.wait_for(nxt, 1)
    assert order == [0.0, 2.0]
    assert adm.waiting == 0


async def test_an_error_inside_gives_the_place_back() -> None:
    adm = Admission(1)
    with pytest.raises(RuntimeError):
        async with adm.slot(0.0):
            raise RuntimeError("quota check failed")
    async with asyncio.timeout(1), adm.slot(1.0):
        pass


def test_arrival_is_marked_once_per_request() -> None:
    scope: dict[str, Any] = {}
    mark_arrival(scope)
    assert arrival(scope) == scope["state"]["arrived"]
    assert arrival({}) > 0  # a scope the guard never saw: now
