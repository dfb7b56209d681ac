"""What a measurement cost and what else ran meanwhile: CPU of process trees, the
machine's other load (/proc/stat), peak memory. Used by the benchmarks."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU seconds (user + system, with reaped children) of `roots` and their descendants."""
    total = 0.0
    for root in roots:
        try:
            procs = [psutil.Process(root)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue  # exited meanwhile: its time moves to its parent's children_*
            total += t.user + t.system + t.children_user + t.children_system
    return total


def tree_rss_bytes(roots: list[int]) -> int:
    total = 0
    for root in roots:
        try:
            procs = [psutil.Process(root)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    return total


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How much CPU *other* work took during a measurement: the machine's busy time
    minus that of `roots` (default: this process) and their descendants.

    `ours` and `others` are in cores (CPU seconds per wall second)."""

    def __init__(self, roots: list[int] | None = None):
        self.roots = roots if roots is not None else [os.getpid()]

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.busy0, self.ours0 = machine_busy_seconds(), tree_cpu_seconds(self.roots)
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.ours_s = tree_cpu_seconds(self.roots) - self.ours0
        self.ours = self.ours_s / self.wall
        self.others = max(0.0, (machine_busy_seconds() - self.busy0) / self.wall - self.ours)
        self.load1 = os.getloadavg()[0]


class PeakRss:
    """Samples the summed RSS of process trees every `interval` s in a thread; `.peak`."""

    def __init__(self, roots: list[int], interval: float = 0.5):
        self.roots, self.interval, self.peak = roots, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.roots))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(self.roots))
