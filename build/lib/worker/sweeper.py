"""Remove upload bytes nothing points to: partial uploads and stored files without a row.

Two kinds of leftovers build up on the upload volume:

* ``.incoming/*.part``: an upload is streamed there, then renamed into place.
  A webui killed mid-upload (OOM, SIGKILL, a node lost) never removes it.
* stored files (``<2 hex>/<32 hex>``) with no ``files`` row: the webui died
  between moving the bytes into place and committing the row, or a delete
  committed and then failed to remove the bytes.

Why the grace period (SWEEP_GRACE, default 1 h) makes this safe: a file's age
is taken from its inode change time (ctime), which a write *and* the rename
into place both update. The upload path is: write the ``.part`` (each flush
renews its ctime), rename it into place (renews it again), then commit the row
within the same request, seconds later. So a stored file whose ctime is older
than the grace and still has no row belongs to no request that can still
commit one; and a ``.part`` untouched for that long belongs to no upload still
streaming (one that slow, under ~300 B/s, would find its part gone and fail
cleanly). A row committed in that window is seen by the query, which runs
after the age check. Only names of the shape Sluice writes are considered.

The reconciler calls ``sweep_if_due`` on each pass; it sweeps at most every
SWEEP_INTERVAL per process. Removals are counted (files and bytes, by kind) in
``sluice_sweeper_removed_files_total`` / ``..._bytes_total`` on the worker's
``/metrics``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.models import File
from shared.settings import Settings
from shared.storage import incoming_dir

log = logging.getLogger("sluice.sweeper")
_PART = re.compile(r"\A[0-9a-f]{32}\.part\Z")
_SHARD = re.compile(r"\A[0-9a-f]{2}\Z")
_KEY = re.compile(r"\A[0-9a-f]{32}\Z")
_BATCH = 500
KINDS = ("partial", "orphan")


@dataclass
class SweepResult:
    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


class _Totals:
    """Process-wide counts since start, for the metrics collector."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result = SweepResult()
        self.last_sweep: float | None = None

    def add(self, result: SweepResult) -> None:
        with self.lock:
            for kind in KINDS:
                self.result.files[kind] += result.files[kind]
                self.result.bytes[kind] += result.bytes[kind]


TOTALS = _Totals()


class SweeperCollector(Collector):
    """``sluice_sweeper_removed_files_total`` and ``..._bytes_total``, by kind."""

    def collect(self) -> Iterable[Metric]:
        with TOTALS.lock:
            files = dict(TOTALS.result.files)
            size = dict(TOTALS.result.bytes)
        f = CounterMetricFamily("sluice_sweeper_removed_files",
                                "Leftover upload files removed by the sweeper.", labels=["kind"])
        b = CounterMetricFamily("sluice_sweeper_removed_bytes",
                                "Bytes of leftover upload files removed by the sweeper.",
                                labels=["kind"])
        for kind in KINDS:
            f.add_metric([kind], files[kind])
            b.add_metric([kind], size[kind])
        yield f
        yield b


def _old(entries: Iterable[os.DirEntry[str]], name: re.Pattern[str], before: float,
         ) -> Iterator[tuple[Path, int]]:
    for entry in entries:
        if not name.match(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
        # ctime: renewed by every write and by the rename into place (see the module doc).
        if entry.is_file(follow_symlinks=False) and max(st.st_ctime, st.st_mtime) < before:
            yield Path(entry.path), st.st_size


def _remove(path: Path, size: int, kind: str, result: SweepResult) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    result.files[kind] += 1
    result.bytes[kind] += size
    log.info("sweeper.removed kind=%s path=%s bytes=%d", kind, path, size)


def _without_rows(session: Session, candidates: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
    keys = [path.name for path, _ in candidates]
    known = set(session.scalars(select(File.storage_key).where(File.storage_key.in_(keys))))
    return [(path, size) for path, size in candidates if path.name not in known]


def sweep(session_factory: sessionmaker[Session], upload_dir: Path, grace_s: float) -> SweepResult:
    """One pass over `upload_dir`: remove `.part` files and row-less stored files whose
    last change is older than `grace_s`."""
    result = SweepResult()
    before = time.time() - grace_s
    incoming = incoming_dir(upload_dir)
    if incoming.is_dir():
        with os.scandir(incoming) as entries:
            for path, size in list(_old(entries, _PART, before)):
                _remove(path, size, "partial", result)
    if upload_dir.is_dir():
        with os.scandir(upload_dir) as shards:
            folders = [Path(s.path) for s in shards if _SHARD.match(s.name) and s.is_dir()]
        for folder in folders:
            with os.scandir(folder) as entries:
                candidates = list(_old(entries, _KEY, before))
            for i in range(0, len(candidates), _BATCH):
                with session_factory() as session:  # the age check came first: see module doc
                    orphans = _without_rows(session, candidates[i : i + _BATCH])
                for path, size in orphans:
                    _remove(path, size, "orphan", result)
    TOTALS.add(result)
    if any(result.files.values()):
        log.warning("sweeper.swept partial=%d orphan=%d bytes=%d", result.files["partial"],
                    result.files["orphan"], sum(result.bytes.values()))
    return result


def sweep_if_due(session_factory: sessionmaker[Session], settings: Settings) -> SweepResult | None:
    """Sweep if this process has not in the last SWEEP_INTERVAL; never raises (the
    reconciler's own work must go on)."""
    now = time.monotonic()
    with TOTALS.lock:
        if TOTALS.last_sweep is not None and now - TOTALS.last_sweep < settings.sweep_interval:
            return None
        TOTALS.last_sweep = now
    try:
        return sweep(session_factory, settings.upload_dir, settings.sweep_grace)
    except (OSError, SQLAlchemyError) as err:
        log.warning("sweeper.skipped error=%s", err)
        return None
