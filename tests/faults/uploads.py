"""A background uploader that records every answer (the history the ledger checks)."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.helpers import upload


@dataclass
class Answer:
    name: str
    status: int | None  # None: no HTTP answer at all (timeout, connection error)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def clean_503(self) -> bool:
        """The outage answer: 503, JSON with the service_unavailable code, Retry-After."""
        return (self.status == 503 and isinstance(self.body, dict)
                and self.body.get("code") == "service_unavailable"
                and "retry-after" in {k.lower() for k in self.headers})

    @property
    def file_id(self) -> str | None:
        if self.status == 202 and isinstance(self.body, dict):
            return str(self.body["id"])
        return None


def record(client: httpx.Client, name: str, data: bytes) -> Answer:
    try:
        r = upload(client, name, data)
    except httpx.HTTPError as err:
        return Answer(name, None, error=f"{type(err).__name__}: {err}")
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return Answer(name, r.status_code, body, dict(r.headers))


class Uploader(threading.Thread):
    """Uploads small unique text files one after another until stopped."""

    def __init__(self, client: httpx.Client, label: str, pause: float = 0.1):
        super().__init__(name=f"uploader-{label}", daemon=True)
        self.client, self.label, self.pause = client, label, pause
        self.answers: list[Answer] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            n += 1
            data = f"{self.label} upload {n} {uuid.uuid4().hex}: tidal marsh survey\n".encode()
            self.answers.append(record(self.client, f"{self.label}-{n}.txt", data))
            self._stop_event.wait(self.pause)

    def stop(self) -> list[Answer]:
        self._stop_event.set()
        self.join(60)
        assert not self.is_alive(), "the uploader hung"
        return self.answers

    def __enter__(self) -> Uploader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()  # also when the test failed: never outlive its client
        self.join(60)
