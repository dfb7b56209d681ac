"""Parse-only jobs for Open WebUI's external document loader (`PUT /process`).

The webui stores the request's bytes on the shared volume and enqueues
`worker.extract.extract_stored` by name; this runs the very same isolated
parser (forkserver child, rlimits, PARSE_TIMEOUT, PARSE_MEMORY_MB) as an
ingest job and returns the text. Nothing is written to the database: Open
WebUI keeps the document, Sluice only extracts it.

A rejected document is a final answer, not a failure to retry, so it is
returned as `{"rejected": reason}` for the webui to turn into a 422 sentence;
anything unexpected raises, and the job fails (the webui answers 503).
"""

from __future__ import annotations

import logging

from shared.document_errors import DocumentRejected, ParserCrashed
from shared.storage import stored_path
from worker.pipeline.isolated import parse_isolated
from worker.runtime import get_runtime

log = logging.getLogger("sluice.worker")


def extract_stored(storage_key: str, filename: str) -> dict[str, str]:
    settings = get_runtime().settings
    path = stored_path(settings.upload_dir, storage_key)
    if not path.exists():
        raise FileNotFoundError(f"stored bytes {storage_key} are gone")
    try:
        parsed = parse_isolated(path, filename, timeout_s=settings.parse_timeout,
                                memory_mb=settings.parse_memory_mb)
    except (DocumentRejected, ParserCrashed) as err:
        log.info("extract.rejected key=%s reason=%s", storage_key, err)
        return {"rejected": str(err)}
    log.info("extract.done key=%s kind=%s chars=%d", storage_key, parsed.kind, len(parsed.text))
    return {"text": parsed.text, "kind": parsed.kind}
