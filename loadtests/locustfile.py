"""Locust scenario for Sluice: people who upload documents, watch them, and search.

    SLUICE_API_KEYS=k1,k2,... locust -f loadtests/locustfile.py --headless --host URL

Each simulated user has its own API key (user n takes key n mod len(keys)) and
follows its own seeded schedule, independent of how fast the server is (open
loop, so a slow server gets the same offered load as a fast one):

* uploads a corpus document every SLUICE_UPLOAD_INTERVAL s on average
  (exponential gaps; the corpus order is global, so two runs upload the same
  files in the same order), with a fresh nonce in its bytes;
* polls each of its pending uploads every SLUICE_POLL_INTERVAL s until it is
  done or failed; for half the files that end done, searches for a sentence of
  that file restricted to it and fails the request if the file is not found;
* searches every SLUICE_SEARCH_INTERVAL s on average: a realistic question or
  a sentence from one of its own documents; SLUICE_CORPUS_SHARE of searches use
  SLUICE_CORPUS_KEY (a user with a large pre-loaded corpus) when it is set.

The shape (StagedShape) is SLUICE_SHAPE = "users:ramp_s:hold_s,..." times
SLUICE_SHAPE_SCALE. Every acknowledged upload goes to the ledger
(SLUICE_LEDGER, JSONL: ack, then final when seen); every request goes to
SLUICE_REQUEST_LOG (JSONL) when set. Other knobs: SLUICE_API_KEYS_FILE (one key
a line), SLUICE_CORPUS_DIR, SLUICE_SEED, SLUICE_RUN_LABEL.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import shapes
from corpus import CORPUS_DIR, MEDIA_TYPES, PLACEHOLDER
from corpus import load as load_corpus
from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment
from queries import QUERIES
from shapes import DEFAULT_SHAPE, parse_shape


def _f(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


UPLOAD_INTERVAL = _f("SLUICE_UPLOAD_INTERVAL", 300)
SEARCH_INTERVAL = _f("SLUICE_SEARCH_INTERVAL", 20)
POLL_INTERVAL = _f("SLUICE_POLL_INTERVAL", 5)
CORPUS_SHARE = _f("SLUICE_CORPUS_SHARE", 0.3)
VERIFY_SHARE = _f("SLUICE_VERIFY_SHARE", 0.5)
SEED = int(_f("SLUICE_SEED", 1))
RUN_LABEL = os.environ.get("SLUICE_RUN_LABEL", "run")
STAGES = parse_shape(os.environ.get("SLUICE_SHAPE", DEFAULT_SHAPE),
                     _f("SLUICE_SHAPE_SCALE", 1.0))


def stage_at(t: float) -> str:
    return shapes.stage_at(STAGES, t)


class StagedShape(LoadTestShape):
    """Ramp to each stage's user count, hold it, go on; stop after the last hold."""

    def tick(self) -> tuple[int, float] | None:
        t, end, prev = self.get_run_time(), 0.0, 0
        for users, ramp, hold in STAGES:
            end += ramp + hold
            if t < end:
                return users, max(abs(users - prev) / ramp, 1.0)
            prev = users
        return None


class _Jsonl:
    def __init__(self, path: str | None):
        self._out = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._out = open(path, "a", buffering=1)  # closed at test_stop

    def write(self, **record: Any) -> None:
        if self._out is not None:
            self._out.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


_default_ledger = Path(__file__).parent / "reports" / f"ledger-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
LEDGER = _Jsonl(os.environ.get("SLUICE_LEDGER") or str(_default_ledger))
REQUESTS = _Jsonl(os.environ.get("SLUICE_REQUEST_LOG"))
KEYS: list[str] = []
FILES: list[dict[str, Any]] = []
CORPUS_FILES_DIR = Path(os.environ.get("SLUICE_CORPUS_DIR", CORPUS_DIR)) / "files"
_user_numbers = itertools.count()
_upload_numbers = itertools.count()
_bytes_cache: dict[str, bytes] = {}
_shape: LoadTestShape | None = None


def _read_keys() -> list[str]:
    raw = os.environ.get("SLUICE_API_KEYS", "")
    if path := os.environ.get("SLUICE_API_KEYS_FILE"):
        raw += "," + Path(path).read_text().replace("\n", ",")
    return [k.strip() for k in raw.split(",") if k.strip()]


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _shape
    KEYS.extend(_read_keys())
    if not KEYS:
        sys.exit("set SLUICE_API_KEYS (comma-separated) or SLUICE_API_KEYS_FILE")
    corpus_dir = Path(os.environ.get("SLUICE_CORPUS_DIR", CORPUS_DIR))
    FILES.extend(load_corpus(corpus_dir)["files"])  # type: ignore[arg-type]
    _shape = environment.shape_class


@events.request.add_listener
def _on_request(request_type: str, name: str, response_time: float, exception: Any,
                start_time: float | None = None, response: Any = None, **_: Any) -> None:
    t = _shape.get_run_time() if _shape is not None else 0.0
    took = None  # the server's own time for a search (query encoding + SQL)
    if name.startswith("POST /search") and exception is None and response is not None:
        try:
            took = response.json().get("took_ms")
        except (ValueError, AttributeError):
            pass
    REQUESTS.write(t=start_time or time.time(), name=name, ms=round(response_time, 2),
                   ok=exception is None, err=str(exception)[:200] if exception else None,
                   stage=stage_at(t) if _shape is not None else "all", run=RUN_LABEL,
                   took_ms=took)


@events.test_stop.add_listener
def _on_stop(**_: Any) -> None:
    LEDGER.close()
    REQUESTS.close()


def _stage() -> str:
    return stage_at(_shape.get_run_time()) if _shape is not None else "all"


class SluiceUser(FastHttpUser):
    network_timeout = 120.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        n = next(_user_numbers)
        self.number = n
        self.auth = {"Authorization": f"Bearer {KEYS[n % len(KEYS)]}"}
        corpus_key = os.environ.get("SLUICE_CORPUS_KEY")
        self.corpus_auth = {"Authorization": f"Bearer {corpus_key}"} if corpus_key else None
        self.rng = random.Random(SEED * 1_000_003 + n)
        now = time.time()
        self.next_upload = now + self.rng.expovariate(1 / UPLOAD_INTERVAL)
        self.next_search = now + self.rng.expovariate(1 / SEARCH_INTERVAL)
        self.pending: dict[str, dict[str, Any]] = {}
        self.probes: list[str] = []  # sentences of this user's documents that are done
        self.done = 0

    def wait_time(self) -> float:
        due = [self.next_upload, self.next_search, *(p["next_poll"] for p in self.pending.values())]
        # At most 4 s idle: uvicorn closes keep-alive connections idle for 5 s, and a POST
        # sent on a connection the server is closing at that instant fails with status 0.
        return min(max(min(due) - time.time(), 0.05), 4.0)

    @task
    def step(self) -> None:
        now = time.time()
        poll = min(self.pending.items(), key=lambda kv: kv[1]["next_poll"], default=None)
        if now >= self.next_upload:
            self.next_upload = now + self.rng.expovariate(1 / UPLOAD_INTERVAL)
            self.upload()
        elif poll is not None and poll[1]["next_poll"] <= now:
            self.poll(poll[0], poll[1])
        elif now >= self.next_search:
            self.next_search = now + self.rng.expovariate(1 / SEARCH_INTERVAL)
            self.search()

    def upload(self) -> None:
        entry = FILES[next(_upload_numbers) % len(FILES)]
        name = entry["name"]
        if name not in _bytes_cache:
            _bytes_cache[name] = (CORPUS_FILES_DIR / name).read_bytes()
        data = bytearray(_bytes_cache[name])
        offset = entry["nonce_offset"]
        assert data[offset : offset + 16] == PLACEHOLDER
        data[offset : offset + 16] = uuid.uuid4().hex[:16].encode()
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: {MEDIA_TYPES[entry['kind']]}\r\n\r\n"
                ).encode() + bytes(data) + f"\r\n--{boundary}--\r\n".encode()
        headers = {**self.auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        stage, sent = _stage(), time.time()
        with self.client.post("/api/v1/files", data=body, headers=headers, name="POST /files",
                              catch_response=True) as r:
            acked = time.time()
            if r.status_code == 202:
                file_id = r.json()["id"]
                LEDGER.write(event="ack", run=RUN_LABEL, id=file_id, user=self.number, file=name,
                             kind=entry["kind"], bytes=len(data), t_sent=sent, t_ack=acked,
                             stage=stage)
                self.pending[file_id] = {"next_poll": acked + POLL_INTERVAL, "entry": entry}
                r.success()
            else:
                LEDGER.write(event="upload_error", run=RUN_LABEL, user=self.number, file=name,
                             t_sent=sent, t_end=acked, code=r.status_code, stage=stage,
                             body=(r.text or "")[:300])
                r.failure(f"{r.status_code}: {(r.text or '')[:120]}")

    def poll(self, file_id: str, info: dict[str, Any]) -> None:
        with self.client.get(f"/api/v1/files/{file_id}", headers=self.auth,
                             name="GET /files/{id}", catch_response=True) as r:
            if r.status_code != 200:
                info["next_poll"] = time.time() + POLL_INTERVAL
                r.failure(f"{r.status_code}: {(r.text or '')[:120]}")
                return
            body = r.json()
            status = body["status"]
            if status not in ("done", "failed"):
                info["next_poll"] = time.time() + POLL_INTERVAL
                return
        del self.pending[file_id]
        LEDGER.write(event="final", run=RUN_LABEL, id=file_id, status=status, t_seen=time.time(),
                     error=body.get("error"), chunks=body.get("chunk_count"))
        if status == "done":
            self.done += 1
            probes = info["entry"]["probes"]
            self.probes.extend(probes)
            if probes and self.rng.random() < VERIFY_SHARE:
                self.verify(file_id, self.rng.choice(probes))

    def verify(self, file_id: str, sentence: str) -> None:
        """A file reported done must be found by a search restricted to it."""
        # include_weak: this checks indexing, not relevance (the thresholds are make eval's).
        payload = {"query": sentence, "top_k": 3, "file_ids": [file_id], "include_weak": True}
        with self.client.post("/api/v1/search", json=payload, headers=self.auth,
                              name="POST /search (just-done check)", catch_response=True) as r:
            found = r.status_code == 200 and any(h["file_id"] == file_id for h in r.json()["hits"])
            LEDGER.write(event="verify", run=RUN_LABEL, id=file_id, found=found, t=time.time())
            if not found:
                r.failure(f"file {file_id} is done but search did not return it ({r.status_code})")

    def search(self) -> None:
        corpus = self.corpus_auth is not None and self.rng.random() < CORPUS_SHARE
        if self.probes and not corpus and self.rng.random() < 0.3:
            query = self.rng.choice(self.probes)
        else:
            query = self.rng.choice(QUERIES)
        payload = {"query": query, "top_k": self.rng.choice([5, 10, 10, 20])}
        auth = self.corpus_auth if corpus and self.corpus_auth else self.auth
        name = "POST /search (bulk corpus)" if corpus else "POST /search (own files)"
        with self.client.post("/api/v1/search", json=payload, headers=auth, name=name,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {(r.text or '')[:120]}")
            elif not r.json()["hits"] and not r.json().get("no_close_match") and (corpus or self.done):
                # "No close match" is an answer; no passage at all is not.
                r.failure("0 hits although the caller has indexed documents")
