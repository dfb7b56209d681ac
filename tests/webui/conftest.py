"""The webui tests' fixtures: one headless Chromium per test module; the side webuis
of the Open WebUI tests (one pair per session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.browser import launch
from tests.support.helpers import free_port
from tests.support.stack import SideWebuis, Stack, start_webui, wait_webui_ready

TIGHT_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="session")
def side(env: dict[str, str], stack: Stack, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[SideWebuis]:
    """Both boot at once, beside the stack's webui (see SideWebuis)."""
    logs = tmp_path_factory.mktemp("side-webuis")
    ports = free_port(), free_port()
    procs = [
        start_webui({**env, "OPENAI_EMBED_IN_FLIGHT": "2",
                     "OPENAI_EMBED_TIMEOUT": str(TIGHT_TIMEOUT_S)},
                    logs / "tight.log", ports[0], wait=False),
        start_webui({**env, "QUEUE_NAME": "openwebui-test-no-workers"},
                    logs / "lonely.log", ports[1], wait=False),
    ]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for proc, url in zip(procs, urls, strict=True):
            wait_webui_ready(proc, url)
        yield SideWebuis(urls[0], urls[1], tight_timeout_s=TIGHT_TIMEOUT_S)
    finally:
        for proc in procs:
            proc.stop()
