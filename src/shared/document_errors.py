"""Exceptions raised by the parse step.

The split matters to the job runner: a ``DocumentRejected`` is a property of
the uploaded bytes, so the job fails permanently and the reason is shown to
the user; a ``ParserCrashed`` is unexplained and may be retried.  Reasons are
short human sentences and must never contain document contents or secrets.
"""

from __future__ import annotations


class DocumentRejected(Exception):
    """The document itself is unusable; retrying the same bytes cannot help.

    ``reason`` is user-facing text, e.g. ``"file is empty"`` or
    ``"PDF has no extractable text (scanned images?)"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ParserLimitExceeded(DocumentRejected):
    """The isolated parser hit a resource limit while reading this document.

    Limits are hit deterministically by the same bytes (a decompression bomb,
    a pathological PDF), so this is a rejection, not a retryable crash.
    ``limit`` is ``"time"`` or ``"memory"``.
    """

    def __init__(self, reason: str, limit: str) -> None:
        super().__init__(reason)
        self.limit = limit
        # Keep args in constructor order so pickling (e.g. by a job queue)
        # round-trips.
        self.args = (reason, limit)


class ParserCrashed(Exception):
    """The isolated parser died without an explanation (signal, bad exit).

    Not a ``DocumentRejected``: it may be an environmental problem (OOM
    killer, a bug), so the job runner may retry it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ParserOutOfWallTime(Exception):
    """The parser ran out of wall-clock time without using up its CPU time.

    The node was busy (or the parser was starved of CPU), which says nothing about
    the document: the job runner retries it. A parser that uses up its CPU time
    is a ``ParserLimitExceeded`` instead (rejected).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason
