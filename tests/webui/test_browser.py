"""The page in a real browser (Debian's Chromium, driven by Playwright) against the
real webui and worker: a clean console signed out and signed in, upload three
types, watch them finish, search, delete, refusals as sentences, events that
arrive before the upload's reply, a row whose events were lost, phone width and
touch wording, axe-core. Screenshots go to test-artifacts/browser."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Route, expect

from shared.settings import Settings
from tests.support.browser import (
    PHONE,
    assert_accessible,
    assert_targets_at_least_24px,
    browsing,
    shot,
    shots,
    sign_in,
)
from tests.support.helpers import upload, wait_for_status
from tests.support.samples import make_docx_bytes, make_pdf
from tests.support.stack import ApiUser, Stack


def test_signed_out_visit_has_a_clean_console(browser: Browser, stack: Stack, user: ApiUser) -> None:
    with browsing(browser) as (_, page, console):
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(stack.url)
        expect(page.get_by_label("API key")).to_be_visible()
        expect(page.get_by_label("API key")).to_be_focused()
        page.wait_for_load_state("networkidle")
        assert not [u for u in requests if u.endswith("/favicon.ico")], "favicon.ico requested"
        assert_accessible(page)
        shots(page, "01-sign-in")
        # A wrong key is refused with a sentence, still without a 401 in the console.
        page.get_by_label("API key").fill("slk_000000000000_wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#sign-in-error")).to_contain_text("not valid")
        expect(page.locator("#sign-in-error")).to_contain_text("sign in again")
        page.get_by_label("API key").fill(user.key)
        page.keyboard.press("Enter")
        expect(page.locator("#user-email")).to_have_text(user.email)
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("API key")).to_be_visible()
        page.reload()
        expect(page.get_by_label("API key")).to_be_visible()
        assert console.messages == [], console.messages


def test_upload_watch_search_delete(browser: Browser, stack: Stack, user: ApiUser,
                                   tmp_path: Path, settings: Settings) -> None:
    with browsing(browser) as (_, page, _console):
        sign_in(page, stack.url, user.key)
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
        expect(page.locator("#batch-summary")).to_contain_text("3 of 3 done", timeout=90_000)
        expect(page.locator("#upload-list .state-done")).to_have_count(3)
        # Status icons are inline SVG (no emoji that render as boxes without an emoji font).
        assert page.locator("#upload-list .state svg").count() == 3
        assert not re.search(r"[\u2300-\u27bf\U0001f300-\U0001faff]", page.locator("body").inner_text())
        expect(page.locator("#files-table tbody tr")).to_have_count(3)
        expect(page.locator("#drop-zone")).to_have_accessible_name(re.compile(r"press Enter to choose files"))
        assert_accessible(page)
        assert_targets_at_least_24px(page)
        shots(page, "02-all-done")

        page.get_by_role("searchbox").fill("how do I calibrate the tide gauge")
        page.get_by_role("button", name="Search", exact=True).click()
        first = page.locator("#search-results > li").first
        expect(first).to_contain_text("guide.md")
        expect(first.locator(".meta").first).to_contain_text(re.compile(r"(Strong|Partial) match"))
        expect(page.locator("#search-results")).not_to_contain_text("%")
        marks = [m.lower() for m in first.locator("mark").all_inner_texts()]
        assert marks and not {"the", "how", "do", "i"} & set(marks), marks
        shots(page, "03-search")
        first.get_by_role("button", name="guide.md").click()
        expect(page.locator("#details")).to_be_visible()
        expect(page.locator("#details-list")).to_contain_text("done")
        page.get_by_role("button", name="Close").click()

        page.once("dialog", lambda d: d.accept())
        page.get_by_role("button", name="Delete field-notes.txt").click()
        expect(page.locator("#files-table tbody tr")).to_have_count(2)
        # Focus moved to the Delete button of a neighbouring row, not to <body>.
        expect(page.locator("#files-table button[data-role=delete]:focus")).to_have_count(1)
        expect(page.locator("#announcer")).to_have_text("Deleted field-notes.txt.")

        # Phone width: nothing scrolls sideways, names start at the left, targets ≥ 24 px.
        page.set_viewport_size(PHONE)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        name_cell = page.locator("#files-table .name").first
        assert name_cell.evaluate("(e) => getComputedStyle(e).textAlign") in ("left", "start")
        assert_targets_at_least_24px(page)
        shot(page, "04-files-phone")

        big = tmp_path / "huge.pdf"
        big.write_bytes(make_pdf([["big"]]) + b"0" * (settings.max_upload_bytes + 10))
        page.locator("#file-input").set_input_files(str(big))
        row = page.locator("#upload-list li", has_text="huge.pdf")
        expect(row).to_contain_text(re.compile(r"larger than the \d+ MB upload limit\. Split or compress"))
        expect(row.locator(".state")).to_have_text("Not uploaded")
        expect(page.locator("#batch-summary")).to_contain_text("1 not uploaded")
        expect(page.locator("#batch-summary")).not_to_contain_text("failed")
        page.get_by_role("button", name="Clear finished").click()
        expect(page.locator("#upload-list li")).to_have_count(0)
        expect(page.locator("#drop-zone")).to_be_focused()


def test_refusals_are_sentences_with_what_to_do(browser: Browser, stack: Stack, user: ApiUser,
                                                tmp_path: Path) -> None:
    with browsing(browser) as (_, page, console):
        console.allow(r"status of 415")  # the refusals this test provokes
        sign_in(page, stack.url, user.key)
        empty = tmp_path / "empty.txt"
        empty.write_bytes(b"")
        fake = tmp_path / "fake.pdf"
        fake.write_bytes(b"MZ\x90\x00 not really a pdf " + uuid.uuid4().bytes)
        scan = tmp_path / "scan.pdf"
        scan.write_bytes(make_pdf([[]]) + f"%{uuid.uuid4()}".encode())
        page.set_viewport_size({"width": 1100, "height": 500})
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # the uploads out of view
        assert page.locator("#drop-zone").evaluate("(e) => e.getBoundingClientRect().bottom < 0")
        page.locator("#file-input").set_input_files([str(empty), str(fake), str(scan)])
        row = page.locator("#upload-list li", has_text="empty.txt")
        expect(row).to_contain_text("This file is empty.")
        expect(row).not_to_contain_text("{")
        row = page.locator("#upload-list li", has_text="fake.pdf")
        expect(row.locator(".state")).to_have_text("Not uploaded")
        expect(row).to_contain_text(re.compile(
            r"This file is named \.pdf but its content is not a PDF.*"
            r"Upload a PDF, Word \(\.docx\), HTML, Markdown, text, CSV or JSON file\."))
        row = page.locator("#upload-list li", has_text="scan.pdf")
        expect(row.locator(".state")).to_have_text("Failed", timeout=60_000)
        expect(row.locator(".message")).to_have_text(
            "PDF has no extractable text (scanned images?). "
            "Upload a version with selectable text (not a scan).")
        expect(row.get_by_role("button", name="Retry scan.pdf")).to_be_visible()
        expect(page.locator("#batch-summary")).to_contain_text("0 of 1 done · 1 failed · 2 not uploaded")
        # The first refusal of the batch was scrolled into view.
        in_view = page.locator("#upload-list li").evaluate_all(
            "(rows) => rows.filter((e) => e.querySelector('.state-rejected, .state-failed'))"
            ".some((e) => { const r = e.getBoundingClientRect();"
            " return r.top >= 0 && r.bottom <= innerHeight; })")
        assert in_view, "no failure was scrolled into view"
        shot(page, "05-refusals")


def _late_reply(client: httpx.Client, doc: Path, held: list[str]) -> Callable[[Route], None]:
    """A route handler for the page's upload: the server gets the same bytes for the
    same user (Playwright cannot forward a multipart file body itself), and the
    page gets the server's reply only once the file is done, after all its events."""
    def handler(route: Route) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        reply = upload(client, doc.name, doc.read_bytes())
        assert reply.status_code == 202, reply.text
        wait_for_status(client, reply.json()["id"])
        held.append(reply.json()["id"])
        route.fulfill(status=202, content_type="application/json", body=reply.text)
    return handler


def test_events_before_the_upload_reply_are_applied(browser: Browser, stack: Stack, user: ApiUser,
                                                    client: httpx.Client, tmp_path: Path) -> None:
    with browsing(browser) as (_, page, _console):
        sign_in(page, stack.url, user.key)
        held: list[str] = []
        doc = tmp_path / "slow-reply.txt"
        doc.write_text(f"Reply after the events {uuid.uuid4()}")
        page.route("**/api/v1/files", _late_reply(client, doc, held))
        page.locator("#file-input").set_input_files(str(doc))
        row = page.locator("#upload-list li", has_text="slow-reply.txt")
        # The reply came after "done": the row must not wait for a re-check (15 s) to say so.
        deadline = time.monotonic() + 90
        while not held and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert held, "the upload reply was never released"
        expect(row.locator(".state")).to_have_text("Done", timeout=4_000)
        expect(row).to_contain_text("1 passage indexed")


def test_a_row_whose_events_were_lost_is_rechecked(browser: Browser, stack: Stack, user: ApiUser,
                                                   tmp_path: Path) -> None:
    with browsing(browser) as (_, page, _console):
        # The event stream connects but never says anything (a proxy buffering it).
        page.route("**/api/v1/events", lambda route: None)
        page.goto(stack.url)
        page.get_by_label("API key").fill(user.key)
        page.keyboard.press("Enter")
        expect(page.locator("#app")).to_be_visible()
        doc = tmp_path / "silent.txt"
        doc.write_text(f"No events for this one {uuid.uuid4()}")
        page.locator("#file-input").set_input_files(str(doc))
        row = page.locator("#upload-list li", has_text="silent.txt")
        expect(row.locator(".state")).to_have_text("Queued")
        expect(row.locator(".state")).to_have_text("Done", timeout=60_000)
        tr = page.locator("#files-table tr", has_text="silent.txt")
        expect(tr.locator(".state")).to_have_text("Done", timeout=30_000)


def test_touch_screens_are_not_told_to_press_enter(browser: Browser, stack: Stack, user: ApiUser) -> None:
    with browsing(browser, has_touch=True, is_mobile=True) as (_, page, _console):
        page.set_viewport_size(PHONE)
        sign_in(page, stack.url, user.key)
        zone = page.locator("#drop-zone")
        expect(zone).to_have_accessible_name(re.compile(r"^Tap to choose files"))
        expect(zone.get_by_text("press Enter")).to_be_hidden()
        assert_targets_at_least_24px(page)
        shot(page, "06-touch-phone")
