"""Browser-test building blocks: Debian's Chromium driven by Playwright, a console
guard (no errors or warnings unless a test names them), screenshots kept as
artifacts, axe-core accessibility checks and keyboard helpers.

axe-core comes from npm, pinned, installed on first use into `.sluice/npm`
(gitignored), so a fresh clone needs only `npm` and the registry once; its
licence (MPL-2.0) stays in the installed package and the file's header.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, ViewportSize, expect

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"  # gitignored; CI can keep it
AXE_VERSION = "4.10.3"
AXE_DIR = ROOT / ".sluice" / "npm"
AXE_FILE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP: ViewportSize = {"width": 1100, "height": 900}
PHONE: ViewportSize = {"width": 375, "height": 800}


def launch(p: Playwright) -> Browser:
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )


class Console:
    """Collects console errors and warnings and uncaught exceptions of one page.

    A test that provokes an error on purpose (an upload the server refuses shows
    as "Failed to load resource: … status of 415") names it with `allow`.
    """

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        self._allowed: list[re.Pattern[str]] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda err: self.messages.append(f"pageerror: {err}"))

    def _on_console(self, msg: Any) -> None:
        if msg.type in ("error", "warning"):
            self.messages.append(f"{msg.type}: {msg.text} ({msg.location.get('url', '')})")

    def allow(self, pattern: str) -> None:
        self._allowed.append(re.compile(pattern))

    def problems(self) -> list[str]:
        return [m for m in self.messages if not any(p.search(m) for p in self._allowed)]

    def assert_clean(self) -> None:
        assert not self.problems(), f"console not clean: {self.problems()}"


@contextmanager
def browsing(browser: Browser, **context_args: Any) -> Iterator[tuple[BrowserContext, Page, Console]]:
    """A fresh context and page whose console must be clean at the end."""
    context = browser.new_context(viewport=DESKTOP, **context_args)
    page = context.new_page()
    console = Console(page)
    try:
        yield context, page, console
        console.assert_clean()
    finally:
        context.close()


def shot(page: Page, name: str) -> None:
    """A full-page screenshot, kept under test-artifacts/browser."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def shots(page: Page, name: str) -> None:
    """Screenshots at desktop and phone width (back to desktop after)."""
    shot(page, f"{name}-desktop")
    page.set_viewport_size(PHONE)
    shot(page, f"{name}-phone")
    page.set_viewport_size(DESKTOP)


def axe_source() -> str:
    if not AXE_FILE.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed once to install axe-core for the accessibility checks"
        subprocess.run(
            [npm, "install", "--prefix", str(AXE_DIR), "--no-save", "--no-package-lock",
             "--no-audit", "--no-fund", f"axe-core@{AXE_VERSION}"],
            check=True, timeout=300, capture_output=True,
        )
    return AXE_FILE.read_text()


def assert_accessible(page: Page) -> None:
    """axe-core on the page as it is now: no serious or critical violations of
    WCAG 2.0/2.1/2.2 A and AA (target size included)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=axe_source())
    result = page.evaluate(
        """() => axe.run(document, {runOnly: {type: 'tag',
             values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})"""
    )
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:5])
           for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"accessibility violations: {bad}"


def assert_targets_at_least_24px(page: Page) -> None:
    """Every visible button, link, checkbox and select is at least 24 px tall and wide."""
    small = page.evaluate(
        """() => [...document.querySelectorAll('button, a[href], input[type=checkbox], select')]
             .filter((e) => e.offsetParent !== null && !e.closest('dialog:not([open])'))
             .map((e) => [e.getAttribute('aria-label') || e.textContent.trim() || e.id,
                          e.getBoundingClientRect()])
             .filter(([, r]) => r.height < 24 || r.width < 24)
             .map(([n, r]) => `${n}: ${Math.round(r.width)}x${Math.round(r.height)}`)"""
    )
    assert not small, f"targets under 24 px: {small}"


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(url)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-events", "open")


def tab_to(page: Page, target: Locator, limit: int = 60) -> None:
    """Press Tab until `target` has focus, as a keyboard user would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("(e) => e === document.activeElement"):
            return
    raise AssertionError(f"{target} not reached with Tab in {limit} presses")


# Records every moment focus falls to <body> while the page changes itself:
# checked after every DOM mutation inside #app, i.e. after every live update.
WATCH_FOCUS = """() => {
  window.__focusLost = [];
  new MutationObserver(() => {
    if (document.activeElement === document.body || !document.activeElement)
      window.__focusLost.push(new Date().toISOString());
  }).observe(document.getElementById('app'),
             {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def focus_losses(page: Page) -> list[str]:
    losses: list[str] = page.evaluate("window.__focusLost")
    return losses
