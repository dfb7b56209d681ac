"""Receive one multipart upload as a stream, straight to disk.

Starlette's form parser spools files with no size limit, so we drive
python-multipart's streaming parser ourselves: bytes go to a temporary file in
UPLOAD_DIR/.incoming while being counted and hashed; past MAX_UPLOAD_MB the
request stops with 413 and the partial file is removed. Nothing is buffered
whole in memory. What to do with a received file is `webui.upload`'s business.
"""

from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from shared.storage import incoming_dir
from webui.errors import ApiError

log = logging.getLogger("sluice.webui")
MAX_FIELD_BYTES = 64 * 1024
_FLUSH_BYTES = 1024 * 1024
# Bidi overrides/isolates and other invisible formatting characters can make a
# name display as something else ("exe.pdf" shown as "fdp.exe").
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}


def clean_filename(raw: str) -> str:
    """Display name: basename only, NFC, no control, bidi or line/paragraph separator
    characters (U+2028/U+2029 break lines in logs and JavaScript), ≤ 255 chars."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(
        ch for ch in name if ch not in _BIDI and unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
    ).strip(" .")
    return name[:255] or "unnamed"


@dataclass
class ReceivedUpload:
    filename: str
    declared_type: str
    size: int
    sha256: str
    temp_path: Path
    fields: dict[str, str] = field(default_factory=dict)  # small form fields (collection_id)


@dataclass
class _State:
    parts: int = 0
    headers: dict[str, bytes] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    in_file: bool = False
    seen_file: bool = False
    field_bytes: int = 0
    filename: str = ""
    declared_type: str = ""
    pending: bytearray = field(default_factory=bytearray)
    field_name: str = ""
    fields: dict[str, bytearray] = field(default_factory=dict)


async def receive_upload(
    request: Request, upload_dir: Path, max_bytes: int, max_parts: int = 8
) -> ReceivedUpload:
    """Stream one upload to a temp file. `max_parts`: one file plus a few small fields;
    more is abuse, not a use case."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_media_type",
                       "send the file as multipart/form-data in a field named 'file'")
    declared_len = request.headers.get("content-length")
    if declared_len and declared_len.isdigit() and int(declared_len) > max_bytes + 64 * 1024:
        raise ApiError(413, "file_too_large", _too_large(max_bytes))

    state = _State()
    hasher = hashlib.sha256()
    size = 0
    folder = incoming_dir(upload_dir)
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    temp_path = folder / f"{uuid.uuid4().hex}.part"
    out: IO[bytes] = await anyio.to_thread.run_sync(lambda: open(temp_path, "wb"))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        # Kept as bytes: names are UTF-8 on the wire, not latin-1.
        state.headers[state.header_field.decode("latin-1").lower()] = bytes(state.header_value)
        state.header_field.clear()
        state.header_value.clear()

    def on_part_begin() -> None:
        state.parts += 1
        state.headers.clear()
        if state.parts > max_parts:
            raise ApiError(400, "too_many_parts", f"at most {max_parts} form parts are accepted")

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state.headers.get("content-disposition", b""))
        is_file = disp.get(b"name") == b"file" and b"filename" in disp
        if is_file and state.seen_file:
            raise ApiError(400, "one_file_per_request", "send one file per request")
        state.in_file = is_file
        state.field_name = "" if is_file else disp.get(b"name", b"").decode("utf-8", "replace")
        if is_file:
            state.seen_file = True
            state.filename = clean_filename(disp[b"filename"].decode("utf-8", "replace"))
            declared = state.headers.get("content-type", b"").decode("utf-8", "replace")
            state.declared_type = declared[:255]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal size
        if state.in_file:
            size += end - start
            if size > max_bytes:
                raise ApiError(413, "file_too_large", _too_large(max_bytes))
            state.pending += data[start:end]
        else:
            state.field_bytes += end - start
            if state.field_bytes > MAX_FIELD_BYTES:
                raise ApiError(400, "field_too_large", "form fields other than the file are too large")
            state.fields.setdefault(state.field_name, bytearray()).extend(data[start:end])

    def on_part_end() -> None:
        state.in_file = False

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
    })

    async def flush() -> None:
        if state.pending:
            data = bytes(state.pending)
            state.pending.clear()
            hasher.update(data)
            await anyio.to_thread.run_sync(out.write, data)

    try:
        async for chunk in _stream(request):
            try:
                parser.write(chunk)
            except ApiError:
                raise
            except Exception as err:  # python-multipart's parse errors
                log.info("upload.malformed error=%s", err)  # detail for us, a sentence for them
                raise ApiError(400, "malformed_upload",
                               "the upload is not valid multipart/form-data; send the file "
                               "in a form field named 'file'") from None
            if len(state.pending) >= _FLUSH_BYTES:
                await flush()
        await flush()
        parser.finalize()
        await anyio.to_thread.run_sync(out.close)
        if not state.seen_file:
            raise ApiError(400, "no_file", "no file found: send it in a form field named 'file'")
        if size == 0:
            raise ApiError(400, "empty_file", "the file is empty")
        fields = {k: v.decode("utf-8", "replace") for k, v in state.fields.items()}
        return ReceivedUpload(state.filename, state.declared_type, size, hasher.hexdigest(),
                              temp_path, fields)
    except BaseException:
        out.close()
        await anyio.to_thread.run_sync(lambda: temp_path.unlink(missing_ok=True))
        raise


async def _stream(request: Request) -> AsyncIterator[bytes]:
    """The body; a client that goes away mid-upload is the client's doing: 499
    (nginx's "client closed request"), counted as a 4xx, never a 5xx."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ApiError(499, "client_closed_request",
                       "the upload was interrupted before it was complete; send it again") from None


def _too_large(max_bytes: int) -> str:
    return f"the file is larger than the {max_bytes // (1024 * 1024)} MB upload limit"


async def discard(path: Path) -> None:
    await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


async def move_into_place(temp: Path, final: Path) -> None:
    """Rename the received bytes to their stored name (same volume: atomic)."""
    def _move() -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)

    await anyio.to_thread.run_sync(_move)
