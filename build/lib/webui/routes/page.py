"""The browser page: static HTML, CSS and JavaScript shipped in the package (no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_MODULES = ("app", "api", "collections", "events", "files", "search", "ui", "uploads")
_ASSETS = {**{f"{m}.js": "text/javascript" for m in _MODULES}, "style.css": "text/css"}
router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in _ASSETS:  # a fixed list: no path tricks possible
        raise HTTPException(404, "not found")
    return FileResponse(STATIC_DIR / name, media_type=_ASSETS[name],
                        headers={"Cache-Control": "no-cache"})
