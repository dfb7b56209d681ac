"""The isolated parser child: real parses, and every way a child can fail.

Failure paths go through the internal ``_run_child`` with *stdlib* callables
as targets (``time.sleep``, ``bytearray``, ``signal.raise_signal``...): they
pickle by reference and import in the forkserver child without this test
module having to be importable there, and production code needs no hooks.
"""

from __future__ import annotations

import multiprocessing
import operator
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docx
import pytest

from shared.document_errors import (
    DocumentRejected,
    ParserCrashed,
    ParserLimitExceeded,
    ParserOutOfWallTime,
)
from worker.pipeline.isolated import (
    WALL_FACTOR,
    ParsedDocument,
    _run_child,
    parse_isolated,
    start_parser_server,
)


def parse(path: Path, name: str) -> ParsedDocument:
    return parse_isolated(path, name, timeout_s=20, memory_mb=1024)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module", autouse=True)
def parser_server() -> None:
    start_parser_server()


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Every run must leave no child process and no extra file descriptor."""
    _run_child(len, ("warm-up",), timeout_s=20, memory_mb=512)  # lazily opened fds
    before = open_fds()
    yield
    assert multiprocessing.active_children() == []
    assert open_fds() == before


def test_parses_text_in_child(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("hello from the child\n")
    assert parse(path, "a.txt") == ParsedDocument(text="hello from the child", kind="text")


def test_parses_docx_in_child(tmp_path: Path) -> None:
    path = tmp_path / "r.docx"
    document = docx.Document()
    document.add_paragraph("Isolated docx paragraph")
    document.save(str(path))
    result = parse(path, "r.docx")
    assert result.kind == "docx"
    assert "Isolated docx paragraph" in result.text


def test_large_text_crosses_the_pipe(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = "searchable words in a large document 0123456789\n"
    path.write_text(line * (20_000_000 // len(line) + 1))
    result = parse(path, "big.txt")
    assert len(result.text) > 20_000_000 - len(line)
    assert result.text.startswith("searchable words")


def test_rejection_crosses_the_pipe(tmp_path: Path) -> None:
    path = tmp_path / "invoice.pdf"
    path.write_bytes(b"MZ" + os.urandom(4096))
    with pytest.raises(DocumentRejected, match=r"named \.pdf but its content is not a PDF") as info:
        parse(path, "invoice.pdf")
    assert not isinstance(info.value, ParserLimitExceeded)


def test_zip_bomb_is_rejected_in_child(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("word/document.xml", b"\x00" * (20 * 1024 * 1024))
    with pytest.raises(DocumentRejected, match="zip bomb"):
        parse(path, "bomb.docx")


def test_empty_file_is_rejected_in_child(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.touch()
    with pytest.raises(DocumentRejected, match="file is empty"):
        parse(path, "empty.pdf")


def test_hang_is_stopped_at_the_wall_clock_limit_as_retryable() -> None:
    """No CPU used, wall time gone (a starved or blocked parser): not the document's
    fault, so not a rejection; the job runner retries it."""
    started = time.monotonic()
    with pytest.raises(ParserOutOfWallTime, match="wall-clock time") as info:
        _run_child(time.sleep, (60,), timeout_s=1, memory_mb=512)
    assert not isinstance(info.value, DocumentRejected)
    assert time.monotonic() - started < 2 * WALL_FACTOR + 2


def test_cpu_limit_maps_sigxcpu_to_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(ParserLimitExceeded, match="exceeded its 1 s time limit") as info:
        _run_child(sum, (range(10**14),), timeout_s=30, memory_mb=512, cpu_s=1)
    assert info.value.limit == "time"
    assert time.monotonic() - started < 15


def test_memory_limit() -> None:
    with pytest.raises(ParserLimitExceeded, match="exceeded its 512 MB memory limit") as info:
        _run_child(bytearray, (4 * 1024**3,), timeout_s=20, memory_mb=512)
    assert info.value.limit == "memory"
    assert isinstance(info.value, DocumentRejected)


def test_segfault_is_a_crash_not_a_rejection() -> None:
    with pytest.raises(ParserCrashed, match="killed by signal SIGSEGV") as info:
        _run_child(signal.raise_signal, (signal.SIGSEGV,), timeout_s=20, memory_mb=512)
    assert not isinstance(info.value, DocumentRejected)


def test_sigkill_is_a_crash() -> None:
    with pytest.raises(ParserCrashed, match="killed by signal SIGKILL"):
        _run_child(signal.raise_signal, (signal.SIGKILL,), timeout_s=20, memory_mb=512)


def test_exit_without_result_is_a_crash() -> None:
    with pytest.raises(ParserCrashed, match="exited with status 3"):
        _run_child(os._exit, (3,), timeout_s=20, memory_mb=512)


def test_unexpected_exception_names_only_its_type() -> None:
    with pytest.raises(ParserCrashed, match=r"failed unexpectedly \(ValueError\)") as info:
        _run_child(int, ("secret-document-content",), timeout_s=20, memory_mb=512)
    assert "secret" not in str(info.value)


def test_child_cannot_write_big_files(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(ParserCrashed, match=r"failed unexpectedly \(OSError\)"):
        _run_child(
            Path.write_bytes, (target, b"x" * (4 * 1024 * 1024)), timeout_s=20, memory_mb=512
        )
    assert target.stat().st_size <= 1024 * 1024


def test_works_in_a_forked_copy_of_the_worker(tmp_path: Path) -> None:
    """RQ's default Worker forks a work horse per job after boot started the
    forkserver; the horse must still be able to parse."""
    path = tmp_path / "a.txt"
    path.write_text("from the horse\n")
    assert _run_child(operator.add, (1, 2), timeout_s=20, memory_mb=512) == 3
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked copy
        code = 1
        try:
            code = 0 if parse(path, "a.txt").text == "from the horse" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parse(path, "a.txt").text == "from the horse"


def test_a_child_of_the_sluice_script_does_not_import_the_app(tmp_path: Path) -> None:
    """Every forkserver child runs the parent's main script again before its target (Python
    ignores "__main__" in the forkserver's preload list). In a worker that script is
    `sluice`'s, so `shared.cli` must import nothing heavy: pydantic there cost each parsed
    file ~0.2 s of CPU."""
    script = tmp_path / "sluice_like.py"
    script.write_text(
        "import sys\n"
        "from shared.cli import main  # what the `sluice` console script does\n"
        "if __name__ == '__main__':\n"
        "    from worker.pipeline.isolated import _run_child, start_parser_server\n"
        "    start_parser_server()\n"
        "    probe = \"sorted(m for m in ('pydantic', 'sqlalchemy', 'shared.settings', "
        "'shared.cli') if m in __import__('sys').modules)\"\n"
        "    print(_run_child(eval, (probe,), timeout_s=20, memory_mb=1024))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    # shared.cli was run again (as the child's __mp_main__), and pulled in nothing heavy.
    assert out == "['shared.cli']", out
