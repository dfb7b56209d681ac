"""The burst's prediction: unit times measured live on the stack under test, then the
capacity model (`shared.ops.capacity.predict_burst`) for the burst's own files.

Why live and not `make bench`'s file: the stack under test (its worker count, the seed
setup's per-job model reload, how busy this machine is right now) sets the speed, and a
few documents are enough. The calibration documents are processed one at a time, each
alone on the fleet; with `--share-cpus M` every worker already runs on its 1/M share of
the cores, so a worker alone runs at about the speed it has in the burst.

One more document goes first, untimed: a fresh worker's first job pays one-off costs
(encoder arenas, the parser's forkserver) that the burst's many jobs do not.

From each calibration document: parse time (file started → parse unit done), embed time
(parse unit done → file done) and chunks. Fitted: parse = a + b·text, embed seconds per
chunk, chunks per 1,000 characters of text (per kind where the calibration had that kind).
Each burst file's work is then predicted from
its own text length, its chunks cut into `SEGMENT_CHUNKS`-sized segments.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import psycopg
from burst_docs import Doc

from shared.ops.capacity import BurstPrediction, predict_burst
from shared.ops.queueing import FileWork

_TIMES_SQL = """
SELECT f.status, extract(epoch FROM f.started_at), extract(epoch FROM f.finished_at),
       f.chunk_count,
       (SELECT extract(epoch FROM max(u.updated_at)) FROM work_units u
        WHERE u.file_id = f.id AND u.kind = 'parse')
FROM files f WHERE f.id = %s
"""


@dataclass
class Calibration:
    segment_chunks: int
    docs: list[dict[str, Any]] = field(default_factory=list)
    parse_fixed_s: float = 0.0
    parse_s_per_kchar: float = 0.0
    embed_s_per_chunk: float = 0.0
    chunks_per_kchar: float = 0.0
    # Each kind chunks its text differently (Markdown by heading, HTML by block); a burst
    # file of a kind the calibration did not see uses the pooled figure above.
    chunks_per_kchar_by_kind: dict[str, float] = field(default_factory=dict)

    def fit(self) -> None:
        xs = [d["text_chars"] / 1000 for d in self.docs]
        ys = [d["parse_s"] for d in self.docs]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0
        self.parse_s_per_kchar = max(slope, 0.0)
        self.parse_fixed_s = max(my - self.parse_s_per_kchar * mx, 0.0)
        chunks = sum(d["chunks"] for d in self.docs)
        self.embed_s_per_chunk = sum(d["embed_s"] for d in self.docs) / max(chunks, 1)
        self.chunks_per_kchar = chunks / max(sum(xs), 1e-9)
        for kind in {d["kind"] for d in self.docs}:
            same = [d for d in self.docs if d["kind"] == kind]
            self.chunks_per_kchar_by_kind[kind] = (
                sum(d["chunks"] for d in same) / max(sum(d["text_chars"] for d in same) / 1000, 1e-9))

    def chunks_of(self, doc: Doc) -> int:
        density = self.chunks_per_kchar_by_kind.get(doc.kind, self.chunks_per_kchar)
        return max(round(doc.text_chars / 1000 * density), 1)

    def work(self, doc: Doc) -> FileWork:
        chunks = self.chunks_of(doc)
        sizes = [min(self.segment_chunks, chunks - s) for s in range(0, chunks, self.segment_chunks)]
        return FileWork(self.parse_fixed_s + self.parse_s_per_kchar * doc.text_chars / 1000,
                        tuple(n * self.embed_s_per_chunk for n in sizes))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _process_one(client: httpx.AsyncClient, doc: Doc, timeout_s: float) -> str:
    r = await client.post("/api/v1/files", files={"file": (doc.name, doc.data, doc.media_type)})
    r.raise_for_status()
    file_id: str = r.json()["id"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        status = (await client.get(f"/api/v1/files/{file_id}")).json()["status"]
        if status == "done":
            return file_id
        if status == "failed":
            raise RuntimeError(f"calibration document {doc.name} failed")
        await asyncio.sleep(0.2)
    raise RuntimeError(f"calibration document {doc.name} not done in {timeout_s:.0f} s")


def calibrate(url: str, key: str, db_url: str, docs: list[Doc], segment_chunks: int,
              warm_up: Doc | None = None, timeout_s: float = 600) -> Calibration:
    """Process `docs` one at a time as one user (after `warm_up`, untimed); unit times from
    Postgres."""
    cal = Calibration(segment_chunks)

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=120,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            if warm_up is not None:  # untimed: a fresh worker's first job pays one-off costs
                await _process_one(client, warm_up, timeout_s)
            return [await _process_one(client, d, timeout_s) for d in docs]

    ids = asyncio.run(run())
    with psycopg.connect(db_url, autocommit=True) as conn:
        for doc, file_id in zip(docs, ids, strict=True):
            row = conn.execute(_TIMES_SQL, (file_id,)).fetchone()
            assert row is not None
            _, started, finished, chunks, parsed = row
            cal.docs.append({"name": doc.name, "kind": doc.kind, "bytes": len(doc.data),
                             "text_chars": doc.text_chars, "chunks": chunks,
                             "parse_s": float(parsed - started),
                             "embed_s": float(finished - parsed)})
    cal.fit()
    return cal


@dataclass(frozen=True)
class Prediction:
    workers: int
    fair: dict[str, float]  # first / p50 / p95 / all done, Sluice's units in fair turns
    whole_file: dict[str, float]  # the same with one job per file, first come first served
    predicted_chunks: int
    done_s: list[float]  # per burst file, fair model, in user order


def _four(b: Any) -> dict[str, float]:
    return {"first": b.first_done_s, "p50": b.p50_done_s, "p95": b.p95_done_s,
            "all": b.last_done_s}


def predict(cal: Calibration, docs: list[Doc], workers: int, per_owner_in_flight: int
            ) -> Prediction:
    files = [cal.work(d) for d in docs]
    p: BurstPrediction = predict_burst(files, workers, per_owner_in_flight)
    return Prediction(workers, _four(p.fair), _four(p.whole_file),
                      sum(cal.chunks_of(d) for d in docs), list(p.fair.done_s))
