"""Open WebUI's external document loader: `PUT /process` → `{"page_content", "metadata"}`.

Open WebUI (≥ 0.10, `CONTENT_EXTRACTION_ENGINE=external`) PUTs the raw file as
the body with `Content-Type` and a url-quoted `X-Filename`, and reads back one
document. The bytes are parsed by the worker fleet, not here: the webui stores
them on the shared volume (as uploads are), enqueues a parse-only job on the
interactive queue (shared/extract_queue.py) and waits for its answer
(webui/fleet_jobs.py). So the same isolated parser, limits and file-type
detection apply as for uploads, the webui never loads parser libraries or
imports `worker`, and parse capacity is the fleet's. Nothing is kept: the
stored bytes are removed when the answer leaves. With no live worker the answer is
503 at once, before the body is read (as for /v1/embeddings).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio
from fastapi import Request
from rq import Queue
from starlette.concurrency import run_in_threadpool

from shared.extract_queue import enqueue_extract, extract_job_id
from shared.settings import Settings
from shared.storage import incoming_dir, new_storage_key, remove_stored, stored_path
from webui.errors import ApiError
from webui.fleet_jobs import InFlightGate, LiveWorkerCheck, forget_job, wait_for_job
from webui.receive import clean_filename, discard, move_into_place

if TYPE_CHECKING:  # state.py holds the FleetLoader
    from webui.state import AppState

log = logging.getLogger("sluice.webui")

# Time a parse-only job may wait for a free worker on top of its own parse limit.
QUEUE_WAIT_S = 60.0


@dataclass
class FleetLoader:
    """What `PUT /process` needs besides the app: the interactive queue, at most
    LOADER_CONCURRENCY documents in flight per webui process (then 429), and the
    live-worker check (503)."""
    queue: Queue
    gate: InFlightGate
    live: LiveWorkerCheck


def fleet_loader(queue: Queue, settings: Settings) -> FleetLoader:
    return FleetLoader(
        queue,
        InFlightGate(settings.loader_concurrency,
                     "too many documents are being extracted; retry shortly", retry_after_s=2),
        LiveWorkerCheck(queue, settings, "no worker is running to extract documents; start "
                        "one (or wait for one to come back) and retry"),
    )


def filename_from(request: Request) -> str:
    raw = request.headers.get("x-filename", "").strip()
    if not raw:
        raise ApiError(400, "missing_filename", "send the file name in the X-Filename header")
    return clean_filename(unquote(raw))


async def _receive(request: Request, state: AppState) -> tuple[str, int]:
    """Stream the body to the shared volume; (storage key, size). 413 past MAX_UPLOAD_MB."""
    settings = state.settings
    folder = incoming_dir(settings.upload_dir)
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    temp = folder / f"process-{uuid.uuid4().hex}"
    size = 0
    try:
        async with await anyio.open_file(temp, "wb") as out:
            async for piece in request.stream():
                size += len(piece)
                if size > settings.max_upload_bytes:
                    raise ApiError(413, "file_too_large", f"the file is larger than the "
                                   f"{settings.max_upload_mb} MB upload limit")
                await out.write(piece)
        if size == 0:
            raise ApiError(400, "empty_body", "the request body is empty: send the file's bytes")
        key = new_storage_key()
        await move_into_place(temp, stored_path(settings.upload_dir, key))
        return key, size
    except BaseException:
        await discard(temp)
        raise


async def process(request: Request, state: AppState, fleet: FleetLoader) -> dict[str, Any]:
    """Extract one document's text through the worker fleet (the route's whole work)."""
    filename = filename_from(request)
    content_type = request.headers.get("content-type", "")
    settings = state.settings
    try:
        await fleet.live.require()
    except ApiError:
        log.warning("loader.no_worker queue=%s", fleet.queue.name)
        raise
    gate, queue = fleet.gate, fleet.queue
    gate.enter()
    key: str | None = None
    try:
        key, size = await _receive(request, state)
        job_timeout = int(settings.parse_timeout) + 30
        await run_in_threadpool(enqueue_extract, queue, key, filename, timeout_s=job_timeout)
        job_id = extract_job_id(key)
        status, result = await wait_for_job(queue, job_id, job_timeout + QUEUE_WAIT_S)
        await forget_job(queue, job_id)
    finally:
        gate.leave()
        if key is not None:
            await run_in_threadpool(remove_stored, settings.upload_dir, key)
    if status != "finished" or not isinstance(result, dict):
        log.warning("loader.failed filename_len=%d status=%s", len(filename), status)
        raise ApiError(503, "extract_unavailable", "the document could not be extracted right "
                       "now (no worker answered in time); try again shortly", {"Retry-After": "10"})
    if "rejected" in result:
        raise ApiError(422, "document_rejected", f"{filename}: {result['rejected']}")
    log.info("loader.done kind=%s size=%d chars=%d", result["kind"], size, len(result["text"]))
    return {
        "page_content": result["text"],
        "metadata": {"source": filename, "name": filename, "kind": result["kind"],
                     "content_type": content_type, "size_bytes": size, "extracted_by": "sluice"},
    }
