"""The page in a real browser (Debian's Chromium, driven by Playwright) against the
real webui and worker: sign in, upload three types, watch them finish, search,
delete, and see an oversized file refused. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from shared.settings import Settings
from tests.support.samples import make_docx_bytes, make_pdf
from tests.support.stack import ApiUser, Stack

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    yield pg
    context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, stack: Stack, key: str) -> None:
    page.goto(stack.url)
    expect(page.get_by_label("API key")).to_be_visible()
    shot(page, "01-sign-in")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#app")).to_be_visible()


def test_upload_watch_search_delete(
    page: Page, stack: Stack, user: ApiUser, tmp_path: Path, settings: Settings
) -> None:
    sign_in(page, stack, user.key)
    expect(page.locator("#user-email")).to_have_text(user.email)

    nonce = uuid.uuid4().hex
    files = {
        "field-notes.txt": f"Field notes {nonce}. The lighthouse keeper logged storm petrels.".encode(),
        "guide.md": f"# Guide {nonce}\n\nCalibrate the tide gauge every spring equinox.".encode(),
        "memo.docx": make_docx_bytes([f"Memo {nonce}", "The turbine inspection found rust."]),
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    page.locator("#file-input").set_input_files(paths)
    expect(page.locator("#upload-list li")).to_have_count(3)
    shot(page, "02-uploading")
    expect(page.locator("#batch-summary")).to_contain_text("3 of 3 done", timeout=90_000)
    expect(page.locator("#upload-list .state-done")).to_have_count(3)
    shot(page, "03-all-done")

    page.get_by_role("searchbox").fill("tide gauge calibration")
    page.get_by_role("button", name="Search").click()
    first = page.locator("#search-results li").first
    expect(first).to_contain_text("guide.md")
    expect(first.locator("mark").first).to_be_visible()
    shot(page, "04-search")
    first.get_by_role("button", name="guide.md").click()
    expect(page.locator("#details")).to_be_visible()
    expect(page.locator("#details-list")).to_contain_text("done")
    shot(page, "05-details")
    page.get_by_role("button", name="Close").click()

    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#files-table tbody tr")).to_have_count(3)
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete field-notes.txt").click()
    expect(page.locator("#files-table tbody tr")).to_have_count(2)
    expect(page.locator("#files-table")).not_to_contain_text("field-notes.txt")
    shot(page, "06-deleted")

    big = tmp_path / "huge.pdf"
    big.write_bytes(make_pdf([["big"]]) + b"0" * (settings.max_upload_bytes + 10))
    page.locator("#file-input").set_input_files(str(big))
    row = page.locator("#upload-list li", has_text="huge.pdf")
    expect(row).to_contain_text(re.compile(r"larger than the \d+ MB upload limit"))
    expect(row.locator(".state")).to_have_text("Not uploaded")
    shot(page, "07-too-large")


def test_server_refusal_is_shown_readably(page: Page, stack: Stack, user: ApiUser, tmp_path: Path) -> None:
    sign_in(page, stack, user.key)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    page.locator("#file-input").set_input_files(str(empty))
    row = page.locator("#upload-list li", has_text="empty.txt")
    expect(row).to_contain_text("the file is empty")
    expect(row).not_to_contain_text("{")
    fake = tmp_path / "fake.pdf"
    fake.write_bytes(b"MZ\x90\x00 not really a pdf " + uuid.uuid4().bytes)
    page.locator("#file-input").set_input_files(str(fake))
    row = page.locator("#upload-list li", has_text="fake.pdf")
    expect(row.locator(".state")).to_have_text("Not uploaded")
    expect(row).to_contain_text("not a PDF")
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(make_pdf([[]]) + f"%{uuid.uuid4()}".encode())
    page.locator("#file-input").set_input_files(str(scan))
    row = page.locator("#upload-list li", has_text="scan.pdf")
    expect(row.locator(".state")).to_have_text("Failed", timeout=60_000)
    expect(row).to_contain_text("text")
    expect(row.get_by_role("button", name="Retry")).to_be_visible()
    shot(page, "08-failed-with-reason")


def test_wrong_key_is_refused_and_phone_width_works(page: Page, stack: Stack, user: ApiUser) -> None:
    page.goto(stack.url)
    page.get_by_label("API key").fill("slk_000000000000_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("not valid")
    page.set_viewport_size({"width": 375, "height": 800})
    page.get_by_label("API key").fill(user.key)
    page.keyboard.press("Enter")
    expect(page.locator("#drop-zone")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "the page scrolls sideways at phone width"
    page.locator("#drop-zone").focus()
    expect(page.locator("#drop-zone")).to_be_focused()
    shot(page, "09-phone")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
