"""The seed's burst from the users' side: every user uploads one document at the same
instant with their own key, watches it by polling, and once it is done searches for a
phrase from it until the file comes back as a hit (time to searchable).

Polling, not the event stream: 100 users polling every `poll_s` (2 s) cost the webui a
few requests a second, and the client-side times are then at most `poll_s` late; the
report puts the server's own finish time (files.finished_at) beside them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from burst_docs import Doc

SEARCH_GIVE_UP_S = 60.0

@dataclass
class UserResult:
    user: int
    file: str
    kind: str
    bytes: int
    file_id: str | None = None
    upload_s: float | None = None  # the upload request, sent → answered
    done_seen_s: float | None = None  # since the burst's instant, as the user saw it
    searchable_s: float | None = None  # since the burst's instant: the search found the file
    status: str = "not uploaded"
    searches: int = 0
    upload_429s: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _user(i: int, key: str, doc: Doc, url: str, go: asyncio.Event, t0: list[float],
                poll_s: float, timeout_s: float) -> UserResult:
    res = UserResult(i, doc.name, doc.kind, len(doc.data))
    # One connection per user, as separate people have.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        await go.wait()
        try:
            while True:
                sent = time.perf_counter()
                r = await c.post("/api/v1/files",
                                 files={"file": (doc.name, doc.data, doc.media_type)})
                if r.status_code != 429:
                    break
                res.upload_429s += 1
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            res.upload_s = time.perf_counter() - sent
            if r.status_code not in (200, 202):
                res.error = f"upload answered {r.status_code}: {r.text[:200]}"
                return res
            res.file_id = r.json()["id"]
            res.status = "queued"
            deadline = t0[0] + timeout_s
            while res.status not in ("done", "failed"):
                if time.perf_counter() > deadline:
                    res.error = f"not done after {timeout_s:.0f} s"
                    return res
                await asyncio.sleep(poll_s)
                r = await c.get(f"/api/v1/files/{res.file_id}")
                if r.status_code == 200:
                    res.status = r.json()["status"]
            res.done_seen_s = time.perf_counter() - t0[0]
            if res.status == "failed":
                res.error = "processing failed: " + str(r.json().get("error"))
                return res
            # A done file is searchable at once (its chunks commit with `done`), so give up
            # after SEARCH_GIVE_UP_S rather than at the burst's deadline; an error answer
            # ends the user at once, with its status, instead of being retried for an hour.
            give_up = min(deadline, time.perf_counter() + SEARCH_GIVE_UP_S)
            while time.perf_counter() < give_up:
                res.searches += 1
                r = await c.post("/api/v1/search", json={"query": doc.phrase, "top_k": 5})
                if r.status_code != 200 and r.status_code != 429:
                    res.error = f"search answered {r.status_code}: {r.text[:200]}"
                    return res
                if r.status_code == 200 and any(
                        h["file_id"] == res.file_id for h in r.json()["hits"]):
                    res.searchable_s = time.perf_counter() - t0[0]
                    return res
                await asyncio.sleep(poll_s)
            res.error = f"done but not found by its phrase within {SEARCH_GIVE_UP_S:.0f} s"
        except httpx.HTTPError as err:
            res.error = f"{type(err).__name__}: {err}"
    return res


async def _all(url: str, keys: list[str], docs: list[Doc], poll_s: float, timeout_s: float
               ) -> tuple[float, list[UserResult]]:
    go, t0 = asyncio.Event(), [0.0]
    tasks = [asyncio.create_task(_user(i, k, d, url, go, t0, poll_s, timeout_s))
             for i, (k, d) in enumerate(zip(keys, docs, strict=True))]
    await asyncio.sleep(0.5)  # every user's client is waiting on the same instant
    wall = time.time()
    t0[0] = time.perf_counter()
    go.set()
    return wall, list(await asyncio.gather(*tasks))


def run_users(url: str, keys: list[str], docs: list[Doc], poll_s: float = 2.0,
              timeout_s: float = 3600) -> tuple[float, list[UserResult]]:
    """(wall-clock time of the burst's instant, one result per user)."""
    return asyncio.run(_all(url, keys, docs, poll_s, timeout_s))
