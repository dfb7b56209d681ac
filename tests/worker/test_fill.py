"""Filled encoder calls: a segment's job also claims other ready segments (fair order,
within EMBED_FILL_CHUNKS and USER_UNITS_IN_FLIGHT). The ONNX backends (texts run alone)
embed and store them one by one; a batching encoder (torch) embeds them in one call.
Either way each is stored alone, in order, with the vectors it would have had alone."""

from __future__ import annotations

import re
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from rq.suspension import resume, suspend
from sqlalchemy import text
from sqlalchemy.orm import Session

from shared.db import sync_session_factory
from shared.dispatch import fair_picks
from shared.encoders import load_embedder
from shared.settings import Settings
from shared.work import Claim, claim, wake
from tests.faults.stack import FaultStack, WebUI, long_text
from tests.support.helpers import upload, wait_for_status, wait_until
from tests.support.segments import file_texts, queue_segments
from tests.support.stack import insert_file
from worker import jobs
from worker.fill import claim_fill

FILL = 96
SEG = 8  # chunks per segment unit in these tests
FAULT_ENV = {
    "EMBED_FILL_CHUNKS": str(FILL),
    "USER_UNITS_IN_FLIGHT": "100",
    "JOB_MONITORING_INTERVAL": "1",
    "UNIT_LEASE_SECONDS": "2",  # 3 s (2 beats + 1): shorter than a filled call's embedding
    "WORKER_HEARTBEAT_GRACE": "4",
    "WORKER_MAINTENANCE_INTERVAL": "2",
    "RECONCILE_INTERVAL": "1",
    "JOB_RETRY_DELAY": "1",
    "JOB_MAX_RETRIES": "2",
}
_BATCH = re.compile(r"segment\.batch units=(\d+) files=(\d+) chunks=(\d+) calls=(\d+)")


# --- the claim itself, against Postgres, no worker running ------------------------------


def _session(fs: FaultStack) -> Session:
    return sync_session_factory(fs.db)()


def _claim_one(fs: FaultStack, file_id: str, worker: str) -> Claim:
    """Deliver and claim the file's first segment, as the dispatcher and a job would."""
    with fs.db.begin() as conn:
        uid = conn.execute(text(
            "UPDATE work_units SET state = 'dispatched', attempt = attempt + 1 "
            "WHERE file_id = :f AND ordinal = 0 RETURNING id"), {"f": uuid.UUID(file_id)}).scalar_one()
    with _session(fs) as session:
        c = claim(session, uid, 1, worker, fs.settings.lease_seconds)
    assert c is not None
    return c


def _owners(fs: FaultStack, n: int, files: int, chunks: int = SEG) -> list[tuple[str, list[str]]]:
    users = [fs.user(f"fill{k}") for k in range(n)]
    return [(u.id, queue_segments(fs.db, u.id, [file_texts(chunks, i) for i in range(files)], SEG))
            for u in users]


def _forget(fs: FaultStack, owners: list[tuple[str, list[str]]]) -> None:
    with fs.db.begin() as conn:
        conn.execute(text("DELETE FROM files WHERE owner_id = ANY(:o)"),
                     {"o": [uuid.UUID(o) for o, _ in owners]})


def test_a_fill_stays_within_its_budget_in_fair_turns(fault_stack: FaultStack) -> None:
    assert not fault_stack.live_workers()  # these tests claim by hand
    owners = _owners(fault_stack, 3, 10)
    try:
        own = _claim_one(fault_stack, owners[0][1][0], "w-test")
        with _session(fault_stack) as session:
            got = claim_fill(session, own, fault_stack.settings, "w-test")
        assert sum(c.chunk_end - c.chunk_start for c in got) <= FILL - SEG
        assert len(got) == (FILL - SEG) // SEG  # 29 ready, room for 11
        per_owner = [sum(c.owner_id == uuid.UUID(o) for c in got) for o, _ in owners]
        assert max(per_owner) - min(per_owner) <= 1, per_owner  # round robin across owners
        rows = fault_stack.sql(
            "SELECT id, state, attempt, tries, worker, lease_expires_at > now(), "
            "dispatched_at IS NOT NULL FROM work_units WHERE id = ANY(:ids)",
            ids=[c.unit_id for c in got])
        # Exactly what a delivered and claimed unit looks like.
        assert {tuple(r[1:]) for r in rows} == {("running", 1, 1, "w-test", True, True)}
        assert {c.attempt for c in got} == {1}
    finally:
        _forget(fault_stack, owners)


def test_a_fill_honours_user_units_in_flight(fault_stack: FaultStack) -> None:
    owners = _owners(fault_stack, 2, 6)
    try:
        own = _claim_one(fault_stack, owners[0][1][0], "w-test")
        capped = fault_stack.settings.model_copy(update={"user_units_in_flight": 3})
        with _session(fault_stack) as session:
            got = claim_fill(session, own, capped, "w-test")
        per_owner = [sum(c.owner_id == uuid.UUID(o) for c in got) for o, _ in owners]
        assert per_owner == [2, 3], per_owner  # the first owner already runs one
    finally:
        _forget(fault_stack, owners)


def test_two_fills_at_once_never_claim_the_same_unit(fault_stack: FaultStack) -> None:
    owners = _owners(fault_stack, 2, 20)
    try:
        mine = [_claim_one(fault_stack, owners[k][1][0], f"w{k}") for k in (0, 1)]
        got: list[list[Claim]] = [[], []]
        start = threading.Barrier(2)

        def fill(k: int) -> None:
            with _session(fault_stack) as session:
                start.wait()
                got[k] = claim_fill(session, mine[k], fault_stack.settings, f"w{k}")

        threads = [threading.Thread(target=fill, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        ids = [{c.unit_id for c in g} for g in got]
        assert len(ids[0]) == len(ids[1]) == (FILL - SEG) // SEG
        assert not ids[0] & ids[1]
        held = dict(fault_stack.sql("SELECT id, worker FROM work_units WHERE state = 'running' "
                                    "AND id = ANY(:i)", i=list(ids[0] | ids[1])))
        assert held == {**dict.fromkeys(ids[0], "w0"), **dict.fromkeys(ids[1], "w1")}
    finally:
        _forget(fault_stack, owners)


def test_parses_run_ahead_until_a_fill_worth_of_chunks_is_ready(fault_stack: FaultStack) -> None:
    user = fault_stack.user("ahead")
    (older,) = queue_segments(fault_stack.db, user.id, [file_texts(SEG, 1)], SEG)
    newer = [insert_file(fault_stack.db, user.id, uuid.uuid4().hex)[1] for _ in range(2)]
    try:
        def first(lookahead: int) -> int:
            with _session(fault_stack) as session:
                picks = fair_picks(session, cap=100, room=3, lookahead=lookahead)
            return picks[0].unit_id

        segment = fault_stack.sql("SELECT id FROM work_units WHERE file_id = :f",
                                  f=uuid.UUID(older))[0][0]
        assert first(SEG + 1) == newer[0]  # 8 chunks ready, fewer than a fill: parse ahead
        assert first(SEG) == segment  # a fill's worth ready: oldest file first again
        assert first(0) == segment  # no fill, no lookahead
    finally:
        _forget(fault_stack, [(user.id, [])])


def test_a_parse_goes_on_to_ready_segments_only_when_nothing_is_embedding(
    fault_stack: FaultStack
) -> None:
    assert not fault_stack.live_workers()  # these tests claim by hand
    owners = _owners(fault_stack, 2, 3)
    rt: Any = SimpleNamespace(settings=fault_stack.settings, name="w-go-on",
                              session_factory=sync_session_factory(fault_stack.db),
                              redis=fault_stack.rc)
    parsed = Claim(0, 1, uuid.UUID(owners[0][1][0]), uuid.UUID(owners[0][0]), "parse", 0, 0, 0, 1)

    def running() -> list[tuple[str, str]]:
        return fault_stack.sql("SELECT file_id::text, worker FROM work_units WHERE state = "
                               "'running' AND owner_id = ANY(:o) ORDER BY id",
                               o=[uuid.UUID(o) for o, _ in owners])
    try:
        other = _claim_one(fault_stack, owners[1][1][0], "w-other")
        # Another worker is embedding: the parse stays a parse, its file waits its turn.
        assert jobs._go_on(rt, parsed, {"outcome": "done"}) == []
        assert running() == [(owners[1][1][0], "w-other")]
        with fault_stack.db.begin() as conn:  # that call ends: nothing is embedding now
            conn.execute(text("UPDATE work_units SET state = 'done' WHERE id = :u"),
                         {"u": other.unit_id})
        suspend(fault_stack.rc)  # `rq suspend`: no new work, not even this way
        try:
            assert jobs._go_on(rt, parsed, {"outcome": "done"}) == []
        finally:
            resume(fault_stack.rc)
        assert running() == []
        went_on = jobs._go_on(rt, parsed, {"outcome": "done"})
        # Ready segments in fair turns within the fill's budget, claimed for this worker
        # (leased, as a delivered unit would be); the other worker's is done.
        assert went_on and all(c.kind == "segment" for c in went_on)
        assert sum(c.chunk_end - c.chunk_start for c in went_on) <= FILL
        assert {str(c.owner_id) for c in went_on[:2]} == {owners[0][0], owners[1][0]}
        assert owners[1][1][0] not in {str(c.file_id) for c in went_on}
        assert running() == [(str(c.file_id), "w-go-on") for c in
                             sorted(went_on, key=lambda c: c.unit_id)]
    finally:
        _forget(fault_stack, owners)


# --- a real worker ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=1)


def _stored(fs: FaultStack, fid: str) -> list[tuple[int, str, int, np.ndarray]]:
    rows = fs.sql("SELECT idx, text, token_count, embedding::text FROM chunks WHERE file_id = :i "
                  "ORDER BY idx", i=uuid.UUID(fid))
    return [(int(i), t, int(n), np.array(e.strip("[]").split(","), dtype=np.float32))
            for i, t, n, e in rows]


def _statuses(fs: FaultStack, ids: list[str]) -> dict[str, str]:
    return {str(f): s for f, s in fs.sql(
        "SELECT id, status FROM files WHERE id = ANY(:i)", i=[uuid.UUID(x) for x in ids])}


def _finished(fs: FaultStack, ids: list[str], timeout: float = 240) -> dict[str, str]:
    finished: dict[str, str] = wait_until(lambda: (s := _statuses(fs, ids)) and all(
        v in ("done", "failed") for v in s.values()) and s, timeout, "the files to finish", 0.5)
    return finished


def _batches(fs: FaultStack, procs: list[Any] | None = None) -> list[tuple[int, int, int, int]]:
    """(units, files, chunks, encoder calls) of each filled job in the workers' logs."""
    logs = "".join(p.log() for p in (procs or fs.procs) if "worker" in p.argv)
    return [(int(u), int(f), int(c), int(k)) for u, f, c, k in _BATCH.findall(logs)]


def test_small_files_share_batches_and_keep_order_and_vectors(
    fault_stack: FaultStack, web: WebUI
) -> None:
    texts: dict[str, list[str]] = {}
    for k in range(3):
        user = fault_stack.user(f"many{k}")
        files = [file_texts(5 + (7 * i + 3 * k) % 26, 100 * k + i) for i in range(8)]
        texts |= dict(zip(queue_segments(fault_stack.db, user.id, files, SEG), files,
                          strict=True))
    wake(fault_stack.rc)
    assert set(_finished(fault_stack, list(texts)).values()) == {"done"}

    embedder = load_embedder(fault_stack.settings, 1)
    for fid, expected in texts.items():
        stored = _stored(fault_stack, fid)
        assert [(i, t) for i, t, _, _ in stored] == list(enumerate(expected))
        assert [n for _, _, n, _ in stored] == [len(t.split()) for t in expected]
        alone = embedder.encode(expected, batch_size=fault_stack.settings.embed_batch_size)
        assert np.allclose(np.stack([v for *_, v in stored]), alone, atol=1e-5), fid
    for fid, expected in texts.items():
        assert fault_stack.chunk_facts(fid) == (len(expected),) * 3
    progress = fault_stack.sql("SELECT DISTINCT segments_done = segments_total, progress "
                               "FROM files WHERE id = ANY(:i)", i=[uuid.UUID(f) for f in texts])
    assert progress == [(True, 1.0)]
    # Every unit ran once: the heartbeat renewed every held lease through the long calls.
    tries = fault_stack.sql("SELECT DISTINCT tries, state FROM work_units WHERE file_id = ANY(:i)",
                            i=[uuid.UUID(f) for f in texts])
    assert tries == [(1, "done")]
    batches = _batches(fault_stack)
    assert max(f for _, f, _, _ in batches) > 1, batches  # jobs really were filled across files
    assert all(c <= FILL for _, _, c, _ in batches), batches  # and never past the budget
    # Texts run alone (onnx-int8, the default): one encode call per segment, each stored
    # as soon as it is embedded.
    assert all(k == u for u, _, _, k in batches), batches


def test_a_file_deleted_mid_batch_is_skipped_and_the_rest_stored(
    fault_stack: FaultStack, web: WebUI
) -> None:
    user = fault_stack.user("delete")
    files = [file_texts(SEG, 500 + i) for i in range(12)]
    ids = queue_segments(fault_stack.db, user.id, files, SEG)
    wake(fault_stack.rc)

    def filled() -> list[Any]:
        running = fault_stack.sql("SELECT file_id FROM work_units WHERE state = 'running' AND "
                                  "file_id = ANY(:i) ORDER BY id", i=[uuid.UUID(f) for f in ids])
        return running if len(running) >= 3 else []

    victim = str(wait_until(filled, 60, "a filled batch to be embedding", 0.02)[-1][0])
    with fault_stack.db.begin() as conn:
        conn.execute(text("DELETE FROM files WHERE id = :i"), {"i": uuid.UUID(victim)})
    rest = [f for f in ids if f != victim]
    assert set(_finished(fault_stack, rest).values()) == {"done"}
    i = uuid.UUID(victim)
    assert fault_stack.sql("SELECT count(*) FROM chunks WHERE file_id = :i", i=i)[0][0] == 0
    assert fault_stack.sql("SELECT count(*) FROM work_units WHERE file_id = :i", i=i)[0][0] == 0
    for fid in rest:
        assert fault_stack.chunk_facts(fid) == (SEG, SEG, SEG)
    logs = "".join(p.log() for p in fault_stack.procs if "worker" in p.argv)
    mine = [line for line in logs.splitlines() if victim in line]
    assert any("file.skipped" in line and "stale_or_deleted" in line for line in mine), mine
    assert not any("attempt_failed" in line or "ERROR" in line for line in mine), mine


def test_a_corrupt_segment_is_retried_alone(fault_stack: FaultStack, web: WebUI) -> None:
    user = fault_stack.user("corrupt")
    files = [file_texts(SEG, 700 + i) for i in range(6)]
    ids = queue_segments(fault_stack.db, user.id, files, SEG, corrupt=frozenset({2}))
    wake(fault_stack.rc)
    status = _finished(fault_stack, ids)
    bad = ids[2]
    assert status.pop(bad) == "failed"
    assert set(status.values()) == {"done"}
    s = fault_stack.settings
    body = fault_stack.sql("SELECT attempts, error, chunk_count FROM files WHERE id = :i",
                           i=uuid.UUID(bad))[0]
    assert body[0] == s.job_max_retries + 1 and body[2] == 0, body
    assert "unexpected error" in body[1]
    tries = dict(fault_stack.sql("SELECT file_id::text, tries FROM work_units "
                                 "WHERE file_id = ANY(:i)", i=[uuid.UUID(f) for f in ids]))
    assert tries.pop(bad) == s.job_max_retries + 1
    assert set(tries.values()) == {1}, "the others were stored the first time"
    logs = "".join(p.log() for p in fault_stack.procs if "worker" in p.argv)
    failed = [line for line in logs.splitlines() if "attempt_failed" in line
              and any(f in line for f in ids)]
    assert failed and all(bad in line and "CorruptPayload" in line for line in failed), failed


def test_two_filling_workers_store_every_unit_once(fault_stack: FaultStack, web: WebUI) -> None:
    while len(fault_stack.live_workers()) < 2:
        fault_stack.start_worker()
    ids: list[str] = []
    sizes: dict[str, int] = {}
    for k in range(3):
        user = fault_stack.user(f"two{k}")
        files = [file_texts(3 + (5 * i + k) % 20, 900 + 50 * k + i) for i in range(12)]
        new = queue_segments(fault_stack.db, user.id, files, SEG)
        ids += new
        sizes |= {f: len(t) for f, t in zip(new, files, strict=True)}
    wake(fault_stack.rc)
    assert set(_finished(fault_stack, ids).values()) == {"done"}
    for fid in ids:
        assert fault_stack.chunk_facts(fid) == (sizes[fid],) * 3, fid
    units = fault_stack.sql("SELECT state, tries, attempt, count(*) FROM work_units "
                            "WHERE file_id = ANY(:i) GROUP BY 1, 2, 3",
                            i=[uuid.UUID(f) for f in ids])
    assert [tuple(u[:3]) for u in units] == [("done", 1, 1)], units
    takers = fault_stack.sql("SELECT DISTINCT worker FROM work_units WHERE file_id = ANY(:i)",
                             i=[uuid.UUID(f) for f in ids])
    assert len(takers) == 2, takers


def test_the_first_file_after_a_quiet_spell_is_embedded_by_its_parse_job(
    fault_stack: FaultStack, web: WebUI
) -> None:
    fault_stack.wait_quiet()
    user = fault_stack.user("go-on")
    with fault_stack.client(user, web) as client:
        fid = upload(client, "first.txt", long_text(3, "go on"), "text/plain").json()["id"]
        wait_for_status(client, fid, {"done"})
    logs = "".join(p.log() for p in fault_stack.procs if "worker" in p.argv)
    assert re.search(rf"parse\.go_on unit=\d+ file_id={fid} segments=1 files=1", logs), logs[-3000:]
    units = fault_stack.sql("SELECT kind, state, tries FROM work_units WHERE file_id = :f "
                            "ORDER BY kind", f=uuid.UUID(fid))
    assert units == [("parse", "done", 1), ("segment", "done", 1)]
    assert fault_stack.chunk_facts(fid)[0] > 0


def test_the_fill_can_be_turned_off(fault_stack: FaultStack) -> None:
    own = Claim(1, 1, uuid.uuid4(), uuid.uuid4(), "segment", 0, 0, SEG, 1)
    off: Settings = fault_stack.settings.model_copy(update={"embed_fill_chunks": 0})
    with _session(fault_stack) as session:
        assert claim_fill(session, own, off, "w") == []
    small = fault_stack.settings.model_copy(update={"embed_fill_chunks": SEG})
    with _session(fault_stack) as session:
        assert claim_fill(session, own, small, "w") == []


def test_a_batching_encoder_embeds_the_fill_in_one_call(
    fault_stack: FaultStack, web: WebUI
) -> None:
    for proc in fault_stack.live_workers():
        proc.stop()
    # torch pads its batches, so the fill is one grouped call; it is another space than
    # the default int8: no automatic re-embed here.
    torch_worker = fault_stack.start_worker(EMBEDDING_BACKEND="torch", REEMBED_AUTO="false")
    try:
        user = fault_stack.user("torch")
        files = [file_texts(3 + (5 * i) % 11, 1300 + i) for i in range(8)]
        texts = dict(zip(queue_segments(fault_stack.db, user.id, files, SEG), files, strict=True))
        wake(fault_stack.rc)
        assert set(_finished(fault_stack, list(texts)).values()) == {"done"}
        batches = _batches(fault_stack, [torch_worker])
        assert batches and all(k == 1 for *_, k in batches), batches
        assert max(f for _, f, _, _ in batches) > 1, batches
        embedder = load_embedder(fault_stack.settings.model_copy(
            update={"embedding_backend": "torch"}), 1)
        for fid, expected in texts.items():
            stored = _stored(fault_stack, fid)
            assert [t for _, t, _, _ in stored] == expected
            alone = embedder.encode(expected, batch_size=fault_stack.settings.embed_batch_size)
            assert np.allclose(np.stack([v for *_, v in stored]), alone, atol=1e-5), fid
    finally:
        torch_worker.stop()
        fault_stack.start_worker()
