"""Run detect + extract on untrusted bytes in a resource-limited child process.

Parser libraries can be made to loop, balloon or segfault by hostile files.
Running them in a child with rlimits means such a file fails its job with a
human reason while the worker, with its loaded embedding model, survives.

Children come from a multiprocessing *forkserver*: a fresh interpreter that
preloads only the parser modules, so each child is a cheap fork of a small
process and never inherits the worker's model, threads or sockets.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shared.document_errors import (
    DocumentRejected,
    ParserCrashed,
    ParserLimitExceeded,
    ParserOutOfWallTime,
)

PRELOAD = ["worker.pipeline.parse", "shared.detect", "worker.pipeline.isolated"]
CPU_HARD_EXTRA_S = 5
"""SIGXCPU at the soft limit; the kernel SIGKILLs at soft + this."""
MAX_FILE_WRITE_BYTES = 1024 * 1024
"""RLIMIT_FSIZE in the child: parsers have no business writing files."""
WALL_FACTOR = 2.0
"""Wall-clock allowance = this x the CPU-time limit: a parse that only runs out of wall
time was starved (a busy node) and is retried; one that uses its CPU time is rejected."""
EXIT_GRACE_S = 5.0
"""How long a child that already answered may take to exit before SIGKILL."""


@dataclass(frozen=True)
class ParsedDocument:
    """Plain text of a document and the kind it was detected as."""

    text: str
    kind: str


def _context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # only has effect before the server starts
    return ctx


def start_parser_server() -> None:
    """Start the forkserver now; call at worker boot, before loading the model.

    Starting it is not required for correctness (the server is an exec'd
    fresh interpreter either way), but doing it at boot keeps the first job
    from paying the start-up and preload cost.
    """
    _context()
    forkserver.ensure_running()


def _forget_inherited_forkserver() -> None:
    """After os.fork(), drop the parent's forkserver handle.

    ``forkserver.ensure_running()`` waitpid()s the server, which fails with
    ChildProcessError in a forked copy (e.g. an RQ work horse) because the
    server is not our child.  Forgetting it makes this process start its own
    server on first use; it exits when this process does.
    """
    server: Any = forkserver._forkserver  # no public API for this
    if getattr(server, "_forkserver_pid", None) is None:
        return
    alive_fd = server._forkserver_alive_fd
    server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None
    if alive_fd is not None:
        try:
            os.close(alive_fd)
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_inherited_forkserver)


def parse_isolated(
    path: Path, filename: str, *, timeout_s: float, memory_mb: int
) -> ParsedDocument:
    """Detect and extract ``path`` in a child limited to ``timeout_s`` seconds of CPU
    (``WALL_FACTOR`` times that of wall clock) and ``memory_mb`` MiB of address space.

    Raises ``DocumentRejected`` (including ``ParserLimitExceeded``) for a
    document that cannot be parsed, ``ParserCrashed`` for an unexplained death,
    ``ParserOutOfWallTime`` when the node was too busy to finish in time.
    """
    text, kind = _run_child(
        _detect_and_extract, (str(path), filename), timeout_s=timeout_s, memory_mb=memory_mb
    )
    return ParsedDocument(text=text, kind=kind)


def _detect_and_extract(path: str, filename: str) -> tuple[str, str]:
    """The real child target (module-level so the forkserver can unpickle it)."""
    from shared.detect import detect_type
    from worker.pipeline.parse import extract_text

    kind = detect_type(Path(path), filename)
    return extract_text(Path(path), kind), kind


def _run_child(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    timeout_s: float,
    memory_mb: int,
    cpu_s: int | None = None,
) -> Any:
    """Run ``target(*args)`` in a limited forkserver child and return its result.

    ``target`` must be picklable by reference (a module-level function or a
    builtin).  ``cpu_s`` defaults to ``ceil(timeout_s)``; tests lower it to
    exercise the SIGXCPU path independently of the wall-clock timeout.
    """
    cpu_limit = cpu_s if cpu_s is not None else max(1, math.ceil(timeout_s))
    wall_s = timeout_s * WALL_FACTOR
    ctx = _context()
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child_main,
        args=(writer, target, args, memory_mb, cpu_limit),
        name="sluice-parser",
        daemon=True,
    )
    message: tuple[Any, ...] | None = None
    timed_out = False
    exitcode: int | None = None
    started = False
    try:
        proc.start()
        started = True
        writer.close()  # so a dead child reads as EOF, not as a hang
        # Read before joining: a large result fills the pipe buffer and the
        # child cannot exit until we drain it.
        if reader.poll(wall_s):
            try:
                message = reader.recv()
            except (EOFError, OSError):
                message = None  # died without (fully) answering
        else:
            timed_out = True
            proc.kill()
        proc.join(EXIT_GRACE_S)
    finally:
        if proc.is_alive():
            proc.kill()
        if started:
            proc.join()
            exitcode = proc.exitcode
            proc.close()
        reader.close()
        writer.close()
    if timed_out:
        raise ParserOutOfWallTime(
            f"parser ran out of wall-clock time ({wall_s:g} s) before its {cpu_limit} s of CPU")
    return _interpret(message, exitcode=exitcode, cpu_limit=cpu_limit, memory_mb=memory_mb)


def _interpret(
    message: tuple[Any, ...] | None, *, exitcode: int | None, cpu_limit: int, memory_mb: int
) -> Any:
    """Turn the child's answer, or its manner of death, into a result or error."""
    if message is not None:
        status = message[0]
        if status == "ok":
            return message[1]
        if status == "rejected":
            raise DocumentRejected(str(message[1]))
        if status == "limit":
            raise ParserLimitExceeded(f"parser exceeded its {memory_mb} MB memory limit", "memory")
        raise ParserCrashed(f"parser failed unexpectedly ({message[1]})")
    code = exitcode
    if code == -signal.SIGXCPU:
        raise ParserLimitExceeded(f"parser exceeded its {cpu_limit} s time limit", "time")
    if code == -signal.SIGXFSZ:
        raise ParserCrashed("parser tried to write a file and was stopped")
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        raise ParserCrashed(f"parser was killed by signal {name}")
    raise ParserCrashed(f"parser exited with status {code} without a result")


def _apply_limits(memory_mb: int, cpu_s: int) -> None:
    """rlimits for the child only; lowering hard limits is fine, it is disposable."""

    def cap(kind: int, soft: int, hard: int) -> None:
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))

    memory = memory_mb * 1024 * 1024
    cap(resource.RLIMIT_AS, memory, memory)
    cap(resource.RLIMIT_CPU, cpu_s, cpu_s + CPU_HARD_EXTRA_S)
    cap(resource.RLIMIT_FSIZE, MAX_FILE_WRITE_BYTES, MAX_FILE_WRITE_BYTES)
    cap(resource.RLIMIT_CORE, 0, 0)  # no core dumps of hostile documents
    # A write past RLIMIT_FSIZE then fails with EFBIG (e.g. an ignored .pyc
    # write) instead of killing the child.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _child_main(
    conn: Connection, target: Callable[..., Any], args: tuple[Any, ...], memory_mb: int, cpu_s: int
) -> None:
    """Child entry point: apply limits, run, send exactly one message."""
    try:
        _apply_limits(memory_mb, cpu_s)
        message: tuple[Any, ...]
        try:
            message = ("ok", target(*args))
        except MemoryError:
            message = ("limit", "memory")
        except DocumentRejected as exc:
            message = ("rejected", exc.reason)
        except RecursionError:
            # Safety net for a parser path not wrapped by parse.py: the same
            # bytes always recurse the same way, so reject instead of
            # reporting a crash that the job runner would retry.
            message = ("rejected", "the document is nested too deeply to read")
        except Exception as exc:  # reported by type only, never contents
            message = ("error", type(exc).__name__)
        try:
            conn.send(message)
        except MemoryError:  # pickling a huge result can be what runs out
            message = ("limit", "memory")
            conn.send(message)
    finally:
        conn.close()
