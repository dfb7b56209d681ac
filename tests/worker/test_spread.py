"""An idle fleet embeds a new file together; a parse goes on to a started file's waiting
segments first (worker.spread, worker.jobs._go_on)."""

from __future__ import annotations

import re
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from rq import Queue
from sqlalchemy import text

from shared.db import sync_session_factory
from shared.work import Claim, claim
from tests.faults.stack import FaultStack, WebUI, long_text
from tests.support.helpers import upload, wait_for_status, wait_until
from tests.support.segments import file_texts, queue_segments
from worker import jobs
from worker.spread import segment_size, spread_parts

SEG = 8
FAULT_ENV = {
    "SPREAD_MIN_CHUNKS": "4",  # small files, so the tests stay quick
    "EMBED_FILL_CHUNKS": "96",
    "USER_UNITS_IN_FLIGHT": "100",
}


@pytest.mark.parametrize(("chunks", "workers", "min_chunks", "parts"), [
    (52, 2, 16, 2),    # the compare burst's first file, two workers: two halves
    (52, 4, 16, 3),    # never a part under the minimum
    (31, 2, 16, 1),    # too small to be worth cutting
    (52, 1, 16, 1),    # one worker: nothing to spread over
    (52, 0, 16, 1),    # none registered (yet): as one
    (52, 2, 0, 1),     # SPREAD_MIN_CHUNKS=0: off
    (1000, 8, 16, 8),  # one part per worker at most
])
def test_spread_parts(chunks: int, workers: int, min_chunks: int, parts: int) -> None:
    assert spread_parts(chunks, workers, min_chunks) == parts


def _rt(fs: FaultStack, name: str) -> Any:
    return SimpleNamespace(settings=fs.settings, name=name, redis=fs.rc,
                           session_factory=sync_session_factory(fs.db),
                           queue=Queue(fs.settings.queue_name, connection=fs.rc))


def _claim(fs: FaultStack, file_id: str, ordinal: int, worker: str) -> Claim:
    """Deliver and claim one segment, as the dispatcher and a job would."""
    with fs.db.begin() as conn:
        uid = conn.execute(text(
            "UPDATE work_units SET state = 'dispatched', attempt = attempt + 1 "
            "WHERE file_id = :f AND ordinal = :o RETURNING id"),
            {"f": uuid.UUID(file_id), "o": ordinal}).scalar_one()
    with sync_session_factory(fs.db)() as session:
        c = claim(session, uid, 1, worker, fs.settings.lease_seconds)
    assert c is not None
    return c


def _forget(fs: FaultStack, owners: list[str]) -> None:
    with fs.db.begin() as conn:
        conn.execute(text("DELETE FROM files WHERE owner_id = ANY(:o)"),
                     {"o": [uuid.UUID(o) for o in owners]})


def _parsed(file_id: str, owner_id: str) -> Claim:
    return Claim(0, 1, uuid.UUID(file_id), uuid.UUID(owner_id), "parse", 0, 0, 0, 1)


# --- against Postgres, no worker running -------------------------------------------------


def test_a_parse_goes_on_to_the_waiting_segments_of_a_started_file(
    fault_stack: FaultStack
) -> None:
    assert not fault_stack.live_workers()  # these tests claim by hand
    a, b = fault_stack.user("started"), fault_stack.user("other")
    (big,) = queue_segments(fault_stack.db, a.id, [file_texts(3 * SEG, 1)], SEG)
    (small,) = queue_segments(fault_stack.db, b.id, [file_texts(SEG, 2)], SEG)
    rt = _rt(fault_stack, "w-help")
    try:
        _claim(fault_stack, big, 0, "w-other")  # another worker embeds the big file's first part
        went_on = jobs._go_on(rt, _parsed(small, b.id), {"outcome": "done"})
        # The started file's waiting parts, in order, and nothing else: the other owner's
        # ready file waits for its turn (a dispatch, a fill).
        assert [(str(c.file_id), c.ordinal) for c in went_on] == [(big, 1), (big, 2)]
        assert fault_stack.sql("SELECT state FROM work_units WHERE file_id = :f",
                               f=uuid.UUID(small)) == [("pending",)]
        held = fault_stack.sql("SELECT ordinal, worker FROM work_units WHERE file_id = :f "
                               "ORDER BY ordinal", f=uuid.UUID(big))
        assert held == [(0, "w-other"), (1, "w-help"), (2, "w-help")]
    finally:
        _forget(fault_stack, [a.id, b.id])


def test_a_parse_stays_a_parse_while_only_whole_files_are_embedding(
    fault_stack: FaultStack
) -> None:
    a, b = fault_stack.user("whole"), fault_stack.user("ready")
    (running,) = queue_segments(fault_stack.db, a.id, [file_texts(SEG, 3)], SEG)
    (ready,) = queue_segments(fault_stack.db, b.id, [file_texts(2 * SEG, 4)], SEG)
    try:
        _claim(fault_stack, running, 0, "w-other")
        assert jobs._go_on(_rt(fault_stack, "w-parse"), _parsed(ready, b.id),
                           {"outcome": "done"}) == []
        assert fault_stack.sql("SELECT DISTINCT state FROM work_units WHERE file_id = :f",
                               f=uuid.UUID(ready)) == [("pending",)]
    finally:
        _forget(fault_stack, [a.id, b.id])


def test_a_parse_that_spread_its_file_goes_on_to_one_part(fault_stack: FaultStack) -> None:
    a = fault_stack.user("spread")
    (fid,) = queue_segments(fault_stack.db, a.id, [file_texts(3 * SEG, 5)], SEG)
    try:
        went_on = jobs._go_on(_rt(fault_stack, "w-one"), _parsed(fid, a.id),
                              {"outcome": "done", "spread": SEG})
        assert [(str(c.file_id), c.ordinal) for c in went_on] == [(fid, 0)]
        # The next parse to finish finds that file started with parts waiting: it helps.
        helped = jobs._go_on(_rt(fault_stack, "w-two"), _parsed(fid, a.id), {"outcome": "done"})
        assert [(str(c.file_id), c.ordinal) for c in helped] == [(fid, 1), (fid, 2)]
    finally:
        _forget(fault_stack, [a.id])


def test_a_job_helps_a_cut_file_whose_other_part_is_done(fault_stack: FaultStack) -> None:
    """Two parses cut their files at the same moment; each embeds one part. The worker
    done first goes on to the oldest such file's waiting part, not to new work."""
    a = fault_stack.user("race")
    (older,) = queue_segments(fault_stack.db, a.id, [file_texts(2 * SEG, 7)], SEG)
    (newer,) = queue_segments(fault_stack.db, a.id, [file_texts(2 * SEG, 8)], SEG)
    try:
        mine = _claim(fault_stack, older, 0, "w-fast")
        _claim(fault_stack, newer, 0, "w-slow")
        with fault_stack.db.begin() as conn:  # w-fast stored its part
            conn.execute(text("UPDATE work_units SET state = 'done' WHERE id = :u"),
                         {"u": mine.unit_id})
        helped = jobs._help(_rt(fault_stack, "w-fast"), mine)
        assert [(str(c.file_id), c.ordinal) for c in helped] == [(older, 1)]
        again = jobs._help(_rt(fault_stack, "w-other"), mine)
        assert [(str(c.file_id), c.ordinal) for c in again] == [(newer, 1)]
        assert jobs._help(_rt(fault_stack, "w-none"), mine) == []
    finally:
        _forget(fault_stack, [a.id])


def test_a_big_files_segments_keep_their_fair_turns(fault_stack: FaultStack) -> None:
    """A file cut at SEGMENT_CHUNKS (not for an idle fleet) is not helped: its segments
    wait their turns with everyone else's work, so one user's big file cannot hold the
    workers."""
    a = fault_stack.user("big")
    (big,) = queue_segments(fault_stack.db, a.id, [file_texts(3 * SEG, 9)], SEG)
    rt = _rt(fault_stack, "w-fair")
    rt.settings = fault_stack.settings.model_copy(update={"segment_chunks": SEG})
    try:
        first = _claim(fault_stack, big, 0, "w-other")
        assert jobs._help(rt, first) == []
        assert jobs._go_on(rt, _parsed(big, a.id), {"outcome": "done"}) == []
        # The same file cut finer than SEGMENT_CHUNKS (as for an idle fleet) is helped.
        assert len(jobs._help(_rt(fault_stack, "w-cut"), first)) == 2
    finally:
        _forget(fault_stack, [a.id])


# --- real workers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(fault_stack: FaultStack) -> WebUI:
    return fault_stack.start(workers=2)


def test_a_file_is_cut_for_an_idle_fleet_only(fault_stack: FaultStack, web: WebUI) -> None:
    wait_until(lambda: len(fault_stack.live_workers()) == 2 and Queue(
        fault_stack.settings.queue_name, connection=fault_stack.rc).count == 0 and not
        fault_stack.sql("SELECT 1 FROM work_units WHERE state IN ('dispatched', 'running')"),
        60, "two idle workers", 0.2)
    rt = _rt(fault_stack, "w-plan")
    assert segment_size(rt, 40) == 20  # two live workers, nothing embedding: halves
    assert segment_size(rt, 7) == fault_stack.settings.segment_chunks  # under 2 × 4: whole
    a = fault_stack.user("busy")
    (other,) = queue_segments(fault_stack.db, a.id, [file_texts(SEG, 6)], SEG)
    try:
        with fault_stack.db.begin() as conn:  # a segment runs somewhere: not idle
            conn.execute(text("UPDATE work_units SET state = 'running', worker = 'elsewhere', "
                              "lease_expires_at = now() + interval '1 hour' WHERE file_id = :f"),
                         {"f": uuid.UUID(other)})
        assert segment_size(rt, 40) == fault_stack.settings.segment_chunks
    finally:
        _forget(fault_stack, [a.id])


def test_an_idle_fleet_embeds_a_new_file_together(fault_stack: FaultStack, web: WebUI) -> None:
    fault_stack.wait_quiet()
    user = fault_stack.user("together")
    with fault_stack.client(user, web) as client:
        fid = upload(client, "lone.txt", long_text(24, "together"), "text/plain").json()["id"]
        wait_for_status(client, fid, {"done"}, timeout=120)
    units = fault_stack.sql("SELECT kind, ordinal, chunk_end - chunk_start, state, tries, worker "
                            "FROM work_units WHERE file_id = :f ORDER BY kind, ordinal",
                            f=uuid.UUID(fid))
    parse, *segments = units
    assert parse[0] == "parse" and parse[3:5] == ("done", 1)
    assert [s[0] for s in segments] == ["segment", "segment"], units
    sizes = [s[2] for s in segments]
    assert abs(sizes[0] - sizes[1]) <= 1, units  # two halves
    assert {s[3:5] for s in segments} == {("done", 1)}
    # One half embedded by the parse's own job, the other by the other worker.
    assert len({s[5] for s in segments}) == 2, units
    assert fault_stack.chunk_facts(fid) == (sum(sizes),) * 3
    logs = "".join(p.log() for p in fault_stack.procs if "worker" in p.argv)
    assert re.search(rf"parse\.go_on unit=\d+ file_id={fid} segments=1 files=1", logs)
