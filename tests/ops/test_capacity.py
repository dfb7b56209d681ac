"""`sluice capacity`: the queueing math on cases with known answers, and the seed's scenario."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from shared.ops.budget import Group, max_connections_for, postgres_budget
from shared.ops.capacity import Demand, plan, predict_burst
from shared.ops.capacity_cli import duration, histogram_stats, job_time
from shared.ops.queueing import (
    FileWork,
    JobTime,
    erlang_c,
    simulate_burst,
    simulate_fair_burst,
    steady_state,
    workers_for_burst,
)


def erlang_c_direct(c: int, a: float) -> float:
    """The textbook formula, with factorials: an independent check of the recursion."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(("c", "a", "expected"), [
    (1, 0.7, 0.7),  # M/M/1: P(wait) = ρ
    (2, 1.0, 1 / 3),  # M/M/2: 2ρ²/(1+ρ) with ρ = 0.5
    (3, 2.0, 4 / 9),  # by hand: (8/6 · 3) / (1 + 2 + 2 + 4)
    (12, 10.0, 0.4494),  # the classic call-centre example
])
def test_erlang_c_known_values(c: int, a: float, expected: float) -> None:
    assert erlang_c(c, a) == pytest.approx(expected, abs=5e-5)
    assert erlang_c(c, a) == pytest.approx(erlang_c_direct(c, a), rel=1e-9)


def test_erlang_c_edges() -> None:
    assert erlang_c(5, 0) == 0.0
    assert erlang_c(5, 5) == 1.0  # saturated: everyone waits
    assert erlang_c(50, 40) == pytest.approx(erlang_c_direct(50, 40), rel=1e-9)


def test_mm1_waits_and_littles_law() -> None:
    lam, mu = 0.5, 1.0
    s = steady_state(lam, 1, JobTime.exponential(1 / mu))
    assert s.mean_wait_s == pytest.approx((lam / mu) / (mu - lam))  # Wq = ρ/(μ−λ)
    assert s.queue_length == pytest.approx(lam * s.mean_wait_s)  # Little: Lq = λ·Wq
    assert s.queue_length == pytest.approx(0.5**2 / (1 - 0.5))  # = ρ²/(1−ρ)
    # M/M/1 time in system is Exp(μ−λ): its p95 is ln(20)/(μ−λ)
    assert s.p95_total_s == pytest.approx(math.log(20) / (mu - lam), rel=1e-3)


def test_mmc_littles_law_and_wait_tail() -> None:
    lam, mean, c = 2.0, 2.0, 6  # a = 4 Erlangs
    s = steady_state(lam, c, JobTime.exponential(mean))
    pw = erlang_c_direct(c, 4.0)
    assert s.mean_wait_s == pytest.approx(pw * mean / (c - 4.0))  # Wq = C/(cμ−λ)
    assert s.queue_length == pytest.approx(pw * 4.0 / (c - 4.0))  # Lq = C·a/(c−a)
    assert s.p95_wait_s == pytest.approx(mean / (c - 4.0) * math.log(pw / 0.05))
    assert steady_state(lam, 4, JobTime.exponential(mean)).p95_total_s == math.inf  # a = c: unstable


def test_a_burst_as_sluice_runs_it_parses_everything_before_any_segment() -> None:
    # Two users, one file each: parse 1 s, one 2 s segment, one worker. Fair turns run
    # parse A, parse B (B never had a turn), segment A, segment B: done at 4 and 6. Whole-file
    # FIFO would say 3 and 6, which is what the old model predicts for the first file.
    two = [FileWork(1, (2,)), FileWork(1, (2,))]
    b = simulate_fair_burst(two, 1)
    assert b.done_s == (4, 6)
    assert (b.first_done_s, b.p50_done_s, b.p95_done_s, b.last_done_s) == (4, 4, 6, 6)
    assert simulate_burst(2, 1, JobTime.fixed(3)).first_done_s == 3
    # One big file spreads over the fleet: 1 s parse, then 4 segments of 1 s on 4 workers.
    big = [FileWork(1, (1, 1, 1, 1))]
    assert simulate_fair_burst(big, 4).done_s == (2,)
    assert simulate_fair_burst(big, 4, per_owner_in_flight=2).done_s == (3,)  # two at a time
    # A small file behind a big one takes turns with it instead of waiting for all of it:
    # 1 worker; parses (1 s each) then big seg, small seg, big, big.
    b = simulate_fair_burst([FileWork(1, (1, 1, 1)), FileWork(1, (1,))], 1)
    assert b.done_s == (6, 4)
    # A file with no segments (nothing to embed) is done when its parse is.
    assert simulate_fair_burst([FileWork(2)], 3).done_s == (2,)


def test_burst_with_fixed_job_times_runs_in_waves() -> None:
    five = JobTime.fixed(300)
    assert simulate_burst(100, 100, five).p95_done_s == 300
    b = simulate_burst(100, 50, five)
    assert (b.p95_done_s, b.last_done_s, b.p95_wait_s) == (600, 600, 300)
    b = simulate_burst(100, 20, JobTime.fixed(210))  # file #95 is in wave ⌊94/20⌋ + 1 = 5
    assert (b.p95_done_s, b.last_done_s) == (1050, 1050)
    assert (b.first_done_s, b.p50_done_s) == (210, 630)  # file #50 is in wave ⌊49/20⌋ + 1 = 3
    assert workers_for_burst(100, five, 300) == 95  # a 5-min job leaves no room to wait
    assert workers_for_burst(100, JobTime.fixed(150), 300) == 48  # two waves: ⌈95/2⌉
    assert workers_for_burst(100, JobTime.fixed(301), 300) is None  # no worker count helps


def test_seed_scenario_100_uploads_2_to_5_minutes_5_minute_target() -> None:
    job = JobTime.uniform(120, 300)
    p = plan(Demand(users=100, job=job, target_p95_s=300, burst=100))
    assert p.workers is not None and 90 <= p.workers <= 100
    text = "\n".join(p.reasoning)
    assert "c=40" in text and "c=20" in text  # the seed's numbers, with what they really give
    assert simulate_burst(100, 40, job).p95_done_s > 540  # the seed's "40 workers": ~10 min
    assert simulate_burst(100, 20, job).p95_done_s > 900  # its "10–20 workers": 18+ min
    needed = postgres_budget([Group("webui", p.webui_replicas, p.webui_pool_size + p.webui_max_overflow, 10),
                              Group("worker", p.workers, 2, 8)], 0).needed
    assert needed is not None and needed <= p.max_connections
    slow = plan(Demand(users=100, job=JobTime.uniform(240, 360), target_p95_s=300, burst=100))
    assert slow.workers is None and "cannot be met by adding workers" in "\n".join(slow.reasoning)


def test_steady_plan_is_the_fewest_workers_that_meet_the_target() -> None:
    job = JobTime.uniform(120, 300)
    d = Demand(users=100, job=job, target_p95_s=300, uploads_per_user_hour=2)
    p = plan(d)
    assert p.workers is not None
    rate = 100 * 2 / 3600
    assert steady_state(rate, p.workers, job).p95_total_s <= 300
    assert steady_state(rate, p.workers - 1, job).p95_total_s > 300
    assert p.workers > rate * job.mean  # more than the offered load


def test_lognormal_fit_keeps_mean_and_p95() -> None:
    job = JobTime.from_mean_p95(210, 290)
    assert job.mean == pytest.approx(210)
    assert job.quantile(0.95) == pytest.approx(290)
    assert JobTime.from_mean_p95(10, 5).kind == "fixed"


def test_histogram_p95_like_histogram_quantile() -> None:
    text = "\n".join([
        "# TYPE sluice_job_stage_duration_seconds histogram",
        *[f'sluice_job_stage_duration_seconds_bucket{{stage="total",le="{le}"}} {n}'
          for le, n in (("1.0", 50), ("2.0", 90), ("5.0", 100), ("+Inf", 100))],
        'sluice_job_stage_duration_seconds_count{stage="total"} 100',
        'sluice_job_stage_duration_seconds_sum{stage="total"} 150',
    ]) + "\n"
    count, mean, p95 = histogram_stats(text)
    assert (count, mean) == (100, 1.5)
    assert p95 == pytest.approx(3.5)  # 2 + 3 × (95−90)/(100−90)


def test_parsing_and_budget_helpers() -> None:
    assert duration("90") == duration("1.5m") == 90
    assert duration("1h") == 3600
    assert job_time("2m..5m") == JobTime.uniform(120, 300)
    assert max_connections_for([Group("webui", 2, 15, 20), Group("worker", 10, 2, 8)]) == 70  # 56 × 1.2


def test_cli_prints_the_plan() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "capacity", "--burst", "100", "--job-time", "2m..5m",
         "--target-p95", "5m"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Reasoning:" in done.stdout and "Postgres max_connections" in done.stdout


def test_predict_burst_puts_sluices_units_beside_one_job_per_file() -> None:
    files = [FileWork(1, (2,)), FileWork(1, (2,))]
    p = predict_burst(files, 1)
    assert p.fair.done_s == (4, 6)
    assert p.whole_file.done_s == (3, 6)  # each file one 3 s job, in upload order
