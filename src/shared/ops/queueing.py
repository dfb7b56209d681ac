"""Queueing math for `sluice capacity`: pure functions, no I/O.

Steady arrivals: M/M/c (Erlang C) for the chance of waiting and the wait's
exponential tail, with the Allen–Cunneen correction (1 + Cs²)/2 when job times
are not exponential (M/G/c). A burst of N uploads at once: c workers take jobs
greedily in upload order; the finish time of each file is simulated with job
times drawn from the distribution (exact for fixed job times: ⌈N/c⌉ waves).
That treats a file as one job; `simulate_fair_burst` runs it as Sluice does
(a parse unit, then segment units, fair turns across users), for predicting a
measured burst from measured unit times.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from statistics import NormalDist

_Z95 = NormalDist().inv_cdf(0.95)  # 1.645


@dataclass(frozen=True)
class JobTime:
    """Distribution of one job's duration (seconds)."""

    kind: str  # fixed | uniform | exponential | lognormal
    a: float  # fixed: d; uniform: low; exponential: mean; lognormal: mu
    b: float = 0.0  # uniform: high; lognormal: sigma

    @classmethod
    def fixed(cls, seconds: float) -> JobTime:
        return cls("fixed", seconds)

    @classmethod
    def uniform(cls, low: float, high: float) -> JobTime:
        if not 0 <= low <= high:
            raise ValueError("job time range must be 0 <= low <= high")
        return cls("uniform", low, high) if high > low else cls.fixed(low)

    @classmethod
    def exponential(cls, mean: float) -> JobTime:
        return cls("exponential", mean)

    @classmethod
    def from_mean_p95(cls, mean: float, p95: float) -> JobTime:
        """A lognormal with this mean and 95th percentile (fixed if p95 <= mean).

        ln p95 = mu + 1.645 sigma and ln mean = mu + sigma²/2 give
        sigma = 1.645 - sqrt(1.645² - 2 ln(p95/mean)); a p95 above ~3.9 × mean
        has no lognormal fit and is capped there.
        """
        if mean <= 0:
            raise ValueError("mean job time must be > 0")
        if p95 <= mean:
            return cls.fixed(mean)
        gap = min(math.log(p95 / mean), _Z95**2 / 2)
        sigma = _Z95 - math.sqrt(_Z95**2 - 2 * gap)
        return cls("lognormal", math.log(mean) - sigma**2 / 2, sigma)

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        if self.kind == "lognormal":
            return math.exp(self.a + self.b**2 / 2)
        return self.a

    @property
    def scv(self) -> float:
        """Squared coefficient of variation Var/mean² (0 fixed, 1 exponential)."""
        if self.kind == "uniform":
            return ((self.b - self.a) ** 2 / 12) / self.mean**2
        if self.kind == "exponential":
            return 1.0
        if self.kind == "lognormal":
            return math.exp(self.b**2) - 1
        return 0.0

    def quantile(self, q: float) -> float:
        q = min(max(q, 0.0), 1.0 - 1e-12)
        if self.kind == "uniform":
            return self.a + q * (self.b - self.a)
        if self.kind == "exponential":
            return -self.a * math.log(1 - q)
        if self.kind == "lognormal":
            return math.exp(self.a + self.b * NormalDist().inv_cdf(max(q, 1e-12)))
        return self.a

    def sf(self, t: float) -> float:
        """P(duration > t)."""
        if t < 0:
            return 1.0
        if self.kind == "uniform":
            return min(max((self.b - t) / (self.b - self.a), 0.0), 1.0)
        if self.kind == "exponential":
            return math.exp(-t / self.a)
        if self.kind == "lognormal":
            return 1.0 if t == 0 else 1 - NormalDist(self.a, self.b).cdf(math.log(t))
        return 1.0 if t < self.a else 0.0

    def describe(self) -> str:
        if self.kind == "uniform":
            return f"uniform {self.a / 60:.1f}–{self.b / 60:.1f} min"
        return f"{self.kind}, mean {fmt_s(self.mean)}, p95 {fmt_s(self.quantile(0.95))}"


def fmt_s(seconds: float) -> str:
    if seconds == math.inf:
        return "∞"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


# --- steady arrivals: M/M/c and M/G/c ---------------------------------------------


def erlang_c(c: int, a: float) -> float:
    """Probability an arriving job waits, with c servers and offered load a = λ·E[S] (Erlangs)."""
    if c <= 0:
        raise ValueError("c must be >= 1")
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = 1.0  # Erlang B by the stable recursion B(k) = a·B(k-1) / (k + a·B(k-1))
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1 - b))


@dataclass(frozen=True)
class Steady:
    c: int
    load: float  # offered load a (Erlangs)
    utilization: float  # a / c
    p_wait: float  # Erlang C
    mean_wait_s: float  # Wq (M/M/c × Allen–Cunneen)
    wait_scale_s: float  # θ: P(W > t) ≈ p_wait · exp(-t/θ)
    p95_wait_s: float
    p95_total_s: float  # wait + processing: time from upload to searchable
    queue_length: float  # Lq = λ·Wq (Little's law)


def steady_state(rate_per_s: float, c: int, job: JobTime, q: float = 0.95) -> Steady:
    a = rate_per_s * job.mean
    if a >= c:
        inf = math.inf
        return Steady(c, a, a / c, 1.0, inf, inf, inf, inf, inf)
    pw = erlang_c(c, a)
    theta = job.mean / (c - a) * (1 + job.scv) / 2
    wq = pw * theta
    p_wait_q = 0.0 if pw <= 1 - q else theta * math.log(pw / (1 - q))
    return Steady(c, a, a / c, pw, wq, theta, p_wait_q, total_quantile(pw, theta, job, q),
                  rate_per_s * wq)


def total_quantile(p_wait: float, theta: float, job: JobTime, q: float = 0.95) -> float:
    """q-quantile of wait + job time, the wait being 0 or Exp(θ) with probability p_wait."""

    def tail(t: float) -> float:
        if p_wait == 0 or theta == 0:
            return job.sf(t)
        n = 400  # P(W+S > t) = (1-p)·S(t) + p·[e^(-t/θ) + ∫0^t e^(-w/θ)/θ · S(t-w) dw]
        h = t / n
        integral = sum(
            (0.5 if i in (0, n) else 1.0) * math.exp(-i * h / theta) / theta * job.sf(t - i * h)
            for i in range(n + 1)
        ) * h
        return (1 - p_wait) * job.sf(t) + p_wait * (math.exp(-t / theta) + integral)

    lo, hi = 0.0, job.quantile(0.9999) + theta * math.log(max(p_wait, 1e-9) / (1 - q) + 1) * 2 + 1
    while tail(hi) > 1 - q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) > 1 - q else (lo, mid)
    return hi


# --- a burst of N at once ----------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    n: int
    c: int
    p95_done_s: float  # 95 % of the files are searchable by then
    p95_wait_s: float  # and 95 % had started by then
    last_done_s: float  # the whole burst is done (makespan)
    first_done_s: float = 0.0  # the first file is searchable
    p50_done_s: float = 0.0  # half of them are


def simulate_burst(n: int, c: int, job: JobTime, runs: int = 0, seed: int = 7) -> Burst:
    """Expected p95 finish, p95 start and makespan of n jobs at once on c workers."""
    if n <= 0 or c <= 0:
        raise ValueError("n and c must be >= 1")
    if job.kind == "fixed":
        runs = 1
    runs = runs or max(20, min(200, 200_000 // n))
    rng = random.Random(seed)
    k = math.ceil(0.95 * n) - 1
    k50 = math.ceil(0.5 * n) - 1
    done = wait = last = first = median = 0.0
    for _ in range(runs):
        free = [0.0] * min(c, n)
        starts, finishes = [], []
        for _ in range(n):
            start = heapq.heappop(free)
            finish = start + job.quantile(rng.random())
            heapq.heappush(free, finish)
            starts.append(start)
            finishes.append(finish)
        finishes.sort()
        done += finishes[k]
        wait += sorted(starts)[k]
        last += finishes[-1]
        first += finishes[0]
        median += finishes[k50]
    return Burst(n, c, done / runs, wait / runs, last / runs, first / runs, median / runs)


def workers_for_burst(n: int, job: JobTime, target_s: float, max_wait_s: float | None = None) -> int | None:
    """Fewest workers whose expected p95 time-to-searchable (and p95 wait) meets the targets.

    None when even one worker per file misses them (the jobs themselves are too slow).
    """

    def ok(c: int) -> bool:
        b = simulate_burst(n, c, job)
        return b.p95_done_s <= target_s and (max_wait_s is None or b.p95_wait_s <= max_wait_s)

    if not ok(n):
        return None
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


# --- a burst as Sluice runs it: parse and segment units, fair turns ----------------


@dataclass(frozen=True)
class FileWork:
    """One uploaded file's work: a parse unit, then segment units (embed + store)."""

    parse_s: float
    segments_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class UnitBurst:
    c: int
    done_s: tuple[float, ...]  # per file, in upload order: when its last unit finished
    first_done_s: float
    p50_done_s: float
    p95_done_s: float  # the 95th-percentile file, counted as `simulate_burst` counts it
    last_done_s: float


def order_stat(values: list[float], q: float) -> float:
    """The value of the ⌈q·n⌉-th smallest (nearest rank): the file whose turn it is at q."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def simulate_fair_burst(files: list[FileWork], c: int, per_owner_in_flight: int | None = None
                        ) -> UnitBurst:
    """Finish time of each file of a burst (all uploaded at 0, one file per user) on c workers.

    Sluice does not run a file as one job: its parse unit comes first, then its segments
    become work, and the dispatcher hands the next unit to the owner whose turn was longest
    ago (never first, in upload order), at most `per_owner_in_flight` of one owner at once.
    So in a burst every parse runs before any file's segments, and big files share the fleet
    with small ones segment by segment: the first file is done only after all the parses,
    which a whole-file FIFO model (`simulate_burst`) gets wrong. Deterministic: the unit
    times are given, not drawn.
    """
    if not files or c <= 0:
        raise ValueError("need files and c >= 1")
    limit = per_owner_in_flight or math.inf
    ready: list[list[tuple[str, float]]] = [[("parse", f.parse_s)] for f in files]
    left = [len(f.segments_s) for f in files]
    in_flight = [0] * len(files)
    last_turn = [-1] * len(files)  # dispatch counter at the owner's last turn; -1: never
    done: list[float] = [math.inf] * len(files)
    events: list[tuple[float, int, int, str]] = []  # (finish, seq, file, kind)
    free, now, seq = c, 0.0, 0
    while True:
        while free:
            owners = [i for i in range(len(files)) if ready[i] and in_flight[i] < limit]
            if not owners:
                break
            i = min(owners, key=lambda k: (last_turn[k], k))
            kind, duration = ready[i].pop(0)
            seq += 1
            last_turn[i], in_flight[i], free = seq, in_flight[i] + 1, free - 1
            heapq.heappush(events, (now + duration, seq, i, kind))
        if not events:
            break
        now, _, i, kind = heapq.heappop(events)
        free, in_flight[i] = free + 1, in_flight[i] - 1
        if kind == "parse":
            ready[i].extend(("segment", s) for s in files[i].segments_s)
        else:
            left[i] -= 1
        if not left[i] and not ready[i] and not in_flight[i]:
            done[i] = now
    return UnitBurst(c, tuple(done), min(done), order_stat(done, 0.5), order_stat(done, 0.95),
                     max(done))
