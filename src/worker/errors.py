"""What a user is told when a unit of work fails, and whether trying again can help.

Users see a sentence, never an exception class; the technical detail goes to the
log with the file id (see `worker.jobs`).
"""

from __future__ import annotations

from redis.exceptions import RedisError
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import SQLAlchemyError

from shared.document_errors import DocumentRejected, ParserCrashed, ParserOutOfWallTime
from shared.settings import Settings


class StoredBytesMissing(RuntimeError):
    """The upload's bytes are not (yet) visible on the shared volume; may be transient."""


class TooManyChunks(DocumentRejected):
    """The file's text is over MAX_CHUNKS_PER_FILE: rejected before any embedding."""

    def __init__(self, chunks: int, limit: int) -> None:
        super().__init__(
            f"this file's text splits into {chunks:,} chunks, more than the {limit:,} one file "
            "may have; split it into smaller files (or ask an admin to raise "
            "MAX_CHUNKS_PER_FILE)"
        )


def user_reason(err: BaseException, settings: Settings) -> str:
    """A sentence a person can act on, for any error a unit may end with."""
    if isinstance(err, DocumentRejected):
        return err.reason  # already written for people (shared.document_errors)
    if isinstance(err, ParserOutOfWallTime):
        return "reading this file ran out of time because the server was busy"
    if isinstance(err, ParserCrashed):
        return "the file reader stopped unexpectedly on this file"
    if isinstance(err, JobTimeoutException):
        return (f"processing a part of this file took longer than the {settings.job_timeout} "
                "seconds allowed")
    if isinstance(err, StoredBytesMissing):
        return "the uploaded bytes are not on the server's storage (yet)"
    if isinstance(err, SQLAlchemyError):
        return "the database was unavailable while this file was processed"
    if isinstance(err, RedisError):
        return "the queue was unavailable while this file was processed"
    if isinstance(err, MemoryError):
        return "the worker ran out of memory while processing this file"
    return "an unexpected error stopped the processing of this file"


def interrupted_reason(tries: int) -> str:
    return (f"processing was interrupted {tries} times (the worker handling it stopped "
            "responding); giving up")
