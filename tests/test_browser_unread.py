"""Unread badges, read markers and notifications on the web page, in a real
browser (headless Chromium).

A mention and a private message that come while the page is hidden raise
browser notifications, and a click on one brings its conversation on screen.
Two pages logged in to one account show the same badges, and reading a room
on one clears its badge on the other. The daemon, the browser and the rules
(skipped without Chromium or playwright, a failure on CI; any console error
or uncaught exception on a page fails the test) are those of
:mod:`tests.test_browser`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from chatd.daemon.server import Server
from tests.conftest import StartServer
from tests.helpers import open_json
from tests.test_browser import (
    PASSWORD,
    WAIT_MS,
    Pages,
    browser_pages,
    dm,
    login,
    message,
    said,
    say,
)

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

with contextlib.suppress(ImportError):  # without the dev extra the fixture skips
    from playwright.async_api import expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

#: Run before the page's own script: the page can be made hidden on demand
#: (``setHidden``), and every notification it raises is recorded
#: (``notified``) after the browser's own constructor made it.
HIDE_AND_RECORD = """
(() => {
  let hidden = false;
  Object.defineProperty(Document.prototype, 'hidden', {
    configurable: true, get: () => hidden,
  });
  Object.defineProperty(Document.prototype, 'visibilityState', {
    configurable: true, get: () => (hidden ? 'hidden' : 'visible'),
  });
  window.setHidden = (value) => {
    hidden = value;
    document.dispatchEvent(new Event('visibilitychange'));
  };
  const Real = window.Notification;
  window.notified = [];
  window.Notification = class extends Real {
    constructor(title, options = {}) {
      super(title, options);
      window.notified.push({ title, body: options.body, tag: options.tag, shown: this });
    }
    static get permission() { return Real.permission; }
  };
})();
"""

NOTIFIED = "window.notified.map(({ title, body, tag }) => ({ title, body, tag }))"


@pytest.fixture
async def web_server(start_server: StartServer) -> Server:
    """A daemon with its web port (and its plain TCP port for the raw clients)."""
    return await start_server(http_port=0, db=":memory:")


@pytest.fixture
async def pages(web_server: Server) -> AsyncIterator[Pages]:
    """A headless Chromium to open the daemon's page in (as in test_browser)."""
    async with browser_pages(web_server) as opened:
        yield opened


def room_item(page: Page, room: str) -> Locator:
    return page.locator(f"[data-testid=room][data-room={room}]")


def dm_item(page: Page, peer: str) -> Locator:
    return page.locator(f"[data-testid=dm][data-peer={peer}]")


async def test_a_mention_or_a_private_message_in_the_background_raises_a_notification(
    web_server: Server, pages: Pages
) -> None:
    tom = await open_json(web_server.port, "tom")
    try:
        page = await pages.open()
        origin = pages.url.rstrip("/")
        await page.context.grant_permissions(["notifications"], origin=origin)
        await page.add_init_script(HIDE_AND_RECORD)
        await page.reload()
        # Allowed already: the page has nothing to ask.
        await expect(page.get_by_test_id("notify-button")).to_be_hidden(timeout=WAIT_MS)

        await page.get_by_test_id("nick-input").fill("ann")
        await page.get_by_test_id("join-button").click()
        await expect(page.get_by_test_id("current-title")).to_have_text("#general", timeout=WAIT_MS)
        await expect(page.locator("[data-testid=member][data-nick=tom]")).to_be_visible(
            timeout=WAIT_MS
        )

        await page.evaluate("window.setHidden(true)")
        await tom.send("nothing for anyone", "ann: the build is red", "/msg ann call me")
        await tom.expect(dm("tom", "ann", "call me"))
        await page.wait_for_function("window.notified.length >= 2", timeout=WAIT_MS)
        # The plain message came first and raised none.
        notified: list[dict[str, Any]] = await page.evaluate(NOTIFIED)
        assert notified == [
            {"title": "tom in #general", "body": "ann: the build is red", "tag": "#general"},
            {"title": "tom (private message)", "body": "call me", "tag": "@tom"},
        ]

        # The room on screen counts too while the page is hidden; a mention stands out.
        general = room_item(page, "general")
        await expect(general.get_by_test_id("unread")).to_have_text("2", timeout=WAIT_MS)
        await expect(general.get_by_test_id("mentions")).to_have_text("@1", timeout=WAIT_MS)
        await expect(dm_item(page, "tom").get_by_test_id("unread")).to_have_text(
            "1", timeout=WAIT_MS
        )

        # A click on the private message's notification opens that conversation;
        # seen, it is read, and the room is still unread.
        await page.evaluate("window.notified[1].shown.dispatchEvent(new Event('click'))")
        await expect(page.get_by_test_id("current-title")).to_have_text("@tom", timeout=WAIT_MS)
        await page.evaluate("window.setHidden(false)")
        await expect(dm_item(page, "tom").get_by_test_id("unread")).to_have_count(
            0, timeout=WAIT_MS
        )
        await expect(general.get_by_test_id("unread")).to_have_text("2", timeout=WAIT_MS)

        # In front, a private message on screen raises nothing and counts nothing;
        # a mention elsewhere is counted without a notification.
        await tom.send("/msg ann are you there?", "ann?")
        await tom.expect(said("general", "tom", "ann?"))
        await expect(general.get_by_test_id("mentions")).to_have_text("@2", timeout=WAIT_MS)
        await expect(message(page, "are you there?")).to_be_visible(timeout=WAIT_MS)
        await expect(dm_item(page, "tom").get_by_test_id("unread")).to_have_count(0)
        assert len(await page.evaluate(NOTIFIED)) == 2
    finally:
        tom.close()
    pages.assert_clean()


async def test_reading_a_room_on_one_page_clears_its_badge_on_another(
    web_server: Server, pages: Pages
) -> None:
    ann = await open_json(web_server.port, "ann")
    await ann.send(f"/register {PASSWORD}")
    await ann.expect(lambda e: e["type"] == "registered" and e["account"])
    ann.close()
    tom = await open_json(web_server.port, "tom")
    try:
        laptop = await login(pages, "ann", PASSWORD)
        phone = await login(pages, "ann", PASSWORD)
        await expect(laptop.get_by_test_id("current-title")).to_have_text(
            "#general", timeout=WAIT_MS
        )
        await expect(phone.get_by_test_id("current-title")).to_have_text(
            "#general", timeout=WAIT_MS
        )

        # A room made on the laptop is the account's: the phone is in it too and
        # stays where it was. The laptop goes back to general.
        await laptop.get_by_test_id("create-room-button").click()
        await laptop.get_by_test_id("create-room-input").fill("lab")
        await laptop.get_by_test_id("create-room-input").press("Enter")
        await expect(laptop.get_by_test_id("current-title")).to_have_text("#lab", timeout=WAIT_MS)
        await expect(room_item(phone, "lab")).to_have_class(
            re.compile(r"\bitem--joined\b"), timeout=WAIT_MS
        )
        await room_item(laptop, "general").click()
        await expect(laptop.get_by_test_id("current-title")).to_have_text(
            "#general", timeout=WAIT_MS
        )
        await expect(phone.get_by_test_id("current-title")).to_have_text("#general")

        # Someone talks in lab, where neither page looks: both count it.
        await tom.send("/join lab")
        await tom.expect(lambda e: e["type"] == "current" and e["room"] == "lab")
        await tom.send("hello lab", "ann, can you look?")
        await tom.expect(said("lab", "tom", "ann, can you look?"))
        for page in (laptop, phone):
            lab = room_item(page, "lab")
            await expect(lab.get_by_test_id("unread")).to_have_text("2", timeout=WAIT_MS)
            await expect(lab.get_by_test_id("mentions")).to_have_text("@1", timeout=WAIT_MS)

        # The laptop opens lab and reads it: the phone's badges go.
        await room_item(laptop, "lab").click()
        await expect(laptop.get_by_test_id("current-title")).to_have_text("#lab", timeout=WAIT_MS)
        phone_lab = room_item(phone, "lab")
        await expect(phone_lab.get_by_test_id("unread")).to_have_count(0, timeout=WAIT_MS)
        await expect(phone_lab.get_by_test_id("mentions")).to_have_count(0, timeout=WAIT_MS)
        await expect(phone.get_by_test_id("current-title")).to_have_text("#general")

        # The account's own message counts nowhere; the next one of tom's counts from one.
        await say(laptop, "on it")
        await tom.expect(said("lab", "ann", "on it"))
        await room_item(laptop, "general").click()
        await expect(laptop.get_by_test_id("current-title")).to_have_text(
            "#general", timeout=WAIT_MS
        )
        await tom.send("thanks")
        for page in (laptop, phone):
            lab = room_item(page, "lab")
            await expect(lab.get_by_test_id("unread")).to_have_text("1", timeout=WAIT_MS)
            await expect(lab.get_by_test_id("mentions")).to_have_count(0)

        # A page that logs in later starts from the account's markers (/unread).
        tablet = await login(pages, "ann", PASSWORD)
        await expect(tablet.get_by_test_id("current-title")).to_have_text(
            "#general", timeout=WAIT_MS
        )
        await expect(room_item(tablet, "lab").get_by_test_id("unread")).to_have_text(
            "1", timeout=WAIT_MS
        )
    finally:
        tom.close()
    pages.assert_clean()


async def test_private_messages_from_before_login_are_counted_and_load_when_opened(
    web_server: Server, pages: Pages
) -> None:
    quinn = await open_json(web_server.port, "quinn")
    pia = await open_json(web_server.port, "pia")
    try:
        for client in (quinn, pia):
            await client.send(f"/register {PASSWORD}")
            await client.expect(lambda e: e["type"] == "registered" and e["account"])
        await quinn.send(*(f"/msg pia note {i:02}" for i in range(1, 61)))
        await pia.expect(dm("quinn", "pia", "note 60"))
        pia.close()

        # The conversation is in the sidebar at once, with its count from /unread.
        page = await login(pages, "pia", PASSWORD)
        entry = dm_item(page, "quinn")
        await expect(entry.get_by_test_id("unread")).to_have_text("60", timeout=WAIT_MS)
        await quinn.send("/msg pia note 61")
        newest = await quinn.expect(dm("quinn", "pia", "note 61"))
        await expect(entry.get_by_test_id("unread")).to_have_text("61", timeout=WAIT_MS)

        # Another session of the account hears of what the page reads.
        pia = await open_json(web_server.port)
        await pia.send(f"/login pia {PASSWORD}")
        await pia.expect(lambda e: e["type"] == "registered" and e["account"])

        # Opened, it shows its newest messages, is read up to the newest, and
        # reaches back to the first.
        await entry.click()
        await expect(page.get_by_test_id("current-title")).to_have_text("@quinn", timeout=WAIT_MS)
        read = await pia.expect(lambda e: e["type"] == "read" and e["peer"] == "quinn")
        assert read == {"type": "read", "room": None, "peer": "quinn", "id": newest["id"]}
        await expect(entry.get_by_test_id("unread")).to_have_count(0, timeout=WAIT_MS)
        shown = page.get_by_test_id("messages").get_by_test_id("message")
        await expect(shown).to_have_count(51, timeout=WAIT_MS)  # a page of 50 before note 61
        await page.get_by_test_id("messages").evaluate("(box) => { box.scrollTop = 0; }")
        await expect(page.get_by_test_id("history-start")).to_be_visible(timeout=WAIT_MS)
        await expect(shown).to_have_count(61, timeout=WAIT_MS)
        texts = await page.get_by_test_id("messages").locator(".msg__text").all_inner_texts()
        assert texts == [f"note {i:02}" for i in range(1, 62)]
    finally:
        quinn.close()
        pia.close()
    pages.assert_clean()
