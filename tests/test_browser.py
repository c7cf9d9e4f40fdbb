"""The web page in a real browser (headless Chromium) against an in-process daemon.

Two pages and a raw TCP client chat in a room and privately, a late joiner
sees the history, a page gets back on its own after its WebSocket is cut,
and the phone layout works. Any console error or uncaught exception on a
page (CSP violations included) fails the test.

Without Chromium or the playwright package the tests are skipped, except on
CI (``CI=true``), where that is a failure. ``CHATD_SCREENSHOT=1`` also writes
the README's screenshot: ``CHATD_SCREENSHOT=1 ./scripts/test.sh -k browser``.

These tests run under both loops like every other async test: Playwright's
async API only needs subprocess pipes, which uvloop provides.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from chatd.daemon.server import Server
from chatd.protocol import COMMAND_HELP
from tests.conftest import StartServer
from tests.helpers import DEADLINE, Event, LineClient, open_json

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # the dev extra is not installed
    async_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page, ViewportSize, WebSocketRoute

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
#: Playwright counts in milliseconds; the same generous deadline as the helpers.
WAIT_MS = DEADLINE * 1000
DESKTOP: ViewportSize = {"width": 1100, "height": 700}
PHONE: ViewportSize = {"width": 390, "height": 844}
PASSWORD = "correct-horse"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot.png"


def _chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


class Pages:
    """Opens pages of one daemon in fresh browser contexts and collects their errors."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser = browser
        self.url = f"http://127.0.0.1:{server.http_port}/"
        self.errors: list[str] = []

    async def open(self, viewport: ViewportSize = DESKTOP, **options: Any) -> Page:
        """A new page in a context of its own: its own cookies, storage and WebSocket."""
        context = await self.browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(WAIT_MS)
        page = await context.new_page()
        page.on(
            "console",
            lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        await page.goto(self.url)
        return page

    async def join(self, nick: str) -> Page:
        """A desktop page that went through the join screen and landed in general."""
        page = await self.open()
        await page.get_by_test_id("nick-input").fill(nick)
        await page.get_by_test_id("join-button").click()
        await expect(page.get_by_test_id("status")).to_have_attribute(
            "data-state", "online", timeout=WAIT_MS
        )
        await expect(page.get_by_test_id("current-title")).to_have_text("#general", timeout=WAIT_MS)
        return page

    def assert_clean(self) -> None:
        assert self.errors == [], "console errors or uncaught exceptions on the pages"


@pytest.fixture
async def web_server(
    start_server: StartServer, request: pytest.FixtureRequest, tmp_path: Path
) -> Server:
    """A daemon with its web port (and its plain TCP port for the raw client).

    In memory, or on SQLite when parametrized indirectly with ``"sqlite"``.
    """
    store = getattr(request, "param", "memory")
    db = str(tmp_path / "chat.db") if store == "sqlite" else ":memory:"
    return await start_server(http_port=0, db=db)


@pytest.fixture
async def pages(web_server: Server) -> AsyncIterator[Pages]:
    """A headless Chromium to open the daemon's page in."""
    async with browser_pages(web_server) as opened:
        yield opened


@contextlib.asynccontextmanager
async def browser_pages(web_server: Server) -> AsyncIterator[Pages]:
    """A headless Chromium for ``web_server``'s page; a skip (a failure on
    CI) without Chromium or playwright."""
    chromium = _chromium()
    reason = None
    if async_playwright is None:
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
    elif chromium is None:
        reason = "Chromium is not installed (apt-get install chromium); the browser test needs it"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield Pages(browser, web_server)
        finally:
            await browser.close()  # before the daemon stops, so no page tries to reconnect


async def say(page: Page, text: str) -> None:
    """Type into the message box and press Enter."""
    box = page.get_by_test_id("message-input")
    await box.fill(text)
    await box.press("Enter")
    await expect(box).to_have_value("", timeout=WAIT_MS)


def message(page: Page, text: str) -> Locator:
    return page.get_by_test_id("messages").get_by_test_id("message").filter(has_text=text)


def said(room: str, sender: str, text: str, **extra: Any) -> Any:
    """A predicate for LineClient.expect: this message in this room."""

    def check(e: Event) -> bool:
        fields = {"room": room, "from": sender, "text": text, **extra}
        return e["type"] == "message" and all(e.get(k) == v for k, v in fields.items())

    return check


def dm(sender: str, to: str, text: str) -> Any:
    def check(e: Event) -> bool:
        return e["type"] == "dm" and (e["from"], e["to"], e["text"]) == (sender, to, text)

    return check


async def test_pages_and_tcp_client_chat_in_a_room_and_privately(
    web_server: Server, pages: Pages, tmp_path: Path
) -> None:
    tom = await open_json(web_server.port, "tom")  # a raw TCP client, as a program would be
    try:
        ann = await pages.join("ann")
        await expect(ann.locator("[data-testid=member][data-nick=tom]")).to_be_visible(
            timeout=WAIT_MS
        )

        # ann creates a room from the sidebar; the page follows her into it.
        await ann.get_by_test_id("create-room-button").click()
        await ann.get_by_test_id("create-room-input").fill("lobby")
        await ann.get_by_test_id("create-room-input").press("Enter")
        await expect(ann.get_by_test_id("current-title")).to_have_text("#lobby", timeout=WAIT_MS)
        lobby = ann.locator("[data-testid=room][data-room=lobby]")
        await expect(lobby).to_be_visible(timeout=WAIT_MS)

        await tom.send("/join lobby")
        await expect(ann.locator("[data-testid=member][data-nick=tom]")).to_be_visible(
            timeout=WAIT_MS
        )
        await expect(lobby).to_contain_text("2", timeout=WAIT_MS)  # member count, from /rooms
        await expect(ann.get_by_test_id("messages")).to_contain_text("tom joined", timeout=WAIT_MS)

        # Commands typed in the box are sent as they are.
        await say(ann, "/topic Shipping 0.2 on Friday")
        await tom.expect(lambda e: e["type"] == "topic" and e["topic"] == "Shipping 0.2 on Friday")
        await expect(ann.get_by_test_id("topic")).to_have_text(
            "Shipping 0.2 on Friday", timeout=WAIT_MS
        )

        # Page -> TCP, with the right sender, and TCP -> page.
        await say(ann, "Morning! Is the release build ready?")
        await tom.expect(said("lobby", "ann", "Morning! Is the release build ready?"))
        await tom.send("Almost: CI is green, the changelog still needs a pass.")
        tom_line = message(ann, "CI is green")
        await expect(tom_line).to_contain_text("tom", timeout=WAIT_MS)
        await expect(tom_line.locator("time")).to_have_text(
            re.compile(r"^\d\d:\d\d$"), timeout=WAIT_MS
        )
        await say(ann, "/me grabs a coffee")
        await tom.expect(said("lobby", "ann", "grabs a coffee", action=True))
        # "//" says a line that starts with "/".
        await say(ann, "//etc/chatd.toml has the new defaults")
        await tom.expect(said("lobby", "ann", "/etc/chatd.toml has the new defaults"))
        # A pasted block: one message per non-empty line, in order; the Send button works.
        await ann.get_by_test_id("message-input").fill("Checklist:\n\n- changelog\n- tag v0.2")
        await ann.get_by_test_id("send-button").click()
        for text in ("Checklist:", "- changelog", "- tag v0.2"):
            await tom.expect(said("lobby", "ann", text))

        # ben comes later and sees what was said, dimmed, under "earlier messages".
        ben = await pages.join("ben")
        await say(ben, "/join lobby")
        await expect(ben.get_by_test_id("current-title")).to_have_text("#lobby", timeout=WAIT_MS)
        await expect(ben.get_by_test_id("history-separator")).to_have_text(
            "earlier messages", timeout=WAIT_MS
        )
        earlier = ben.locator("[data-testid=message][data-history=true]")
        await expect(earlier.filter(has_text="Morning!")).to_contain_text("ann", timeout=WAIT_MS)
        await expect(earlier.filter(has_text="CI is green")).to_contain_text("tom", timeout=WAIT_MS)
        await expect(earlier).to_have_count(7, timeout=WAIT_MS)
        await expect(ben.get_by_test_id("topic")).to_have_text(
            "Shipping 0.2 on Friday", timeout=WAIT_MS
        )
        await say(ben, "Hi both! Catching up on the thread.")
        await tom.expect(said("lobby", "ben", "Hi both! Catching up on the thread."))
        await expect(message(ann, "Catching up")).to_contain_text("ben", timeout=WAIT_MS)
        await expect(lobby).to_contain_text("3", timeout=WAIT_MS)

        # Switching rooms by clicking them.
        await ann.locator("[data-testid=room][data-room=general]").click()
        await expect(ann.get_by_test_id("current-title")).to_have_text("#general", timeout=WAIT_MS)
        await lobby.click()
        await expect(ann.get_by_test_id("current-title")).to_have_text("#lobby", timeout=WAIT_MS)

        # ann -> tom privately: click tom in the member list.
        await ann.locator("[data-testid=member][data-nick=tom]").click()
        await expect(ann.get_by_test_id("current-title")).to_have_text("@tom", timeout=WAIT_MS)
        await say(ann, "Can you send me the release checklist?")
        await tom.expect(dm("ann", "tom", "Can you send me the release checklist?"))
        await tom.send("/msg ann Sure, sending it over now.")
        await expect(message(ann, "sending it over")).to_contain_text("tom", timeout=WAIT_MS)
        # Back in the room, a new private message shows as unread.
        await lobby.click()
        await expect(ann.get_by_test_id("current-title")).to_have_text("#lobby", timeout=WAIT_MS)
        await tom.send("/msg ann Done, it is in your inbox.")
        ann_dm = ann.locator("[data-testid=dm][data-peer=tom]")
        await expect(ann_dm.get_by_test_id("unread")).to_have_text("1", timeout=WAIT_MS)

        # tom -> ben privately: a conversation entry with a badge; reply from it.
        await tom.send("/msg ben Welcome aboard! Ping me if you need access.")
        ben_dm = ben.locator("[data-testid=dm][data-peer=tom]")
        await expect(ben_dm.get_by_test_id("unread")).to_have_text("1", timeout=WAIT_MS)
        await ben_dm.click()
        await expect(ben.get_by_test_id("current-title")).to_have_text("@tom", timeout=WAIT_MS)
        await expect(message(ben, "Welcome aboard!")).to_contain_text("tom", timeout=WAIT_MS)
        await expect(ben_dm.get_by_test_id("unread")).to_have_count(0, timeout=WAIT_MS)
        await ben.get_by_test_id("message-input").fill("Thanks, will do!")
        await ben.get_by_test_id("send-button").click()
        await tom.expect(dm("ben", "tom", "Thanks, will do!"))
        await expect(message(ben, "Thanks, will do!")).to_contain_text("ben", timeout=WAIT_MS)

        # The screenshot, mid-conversation (and for the README when asked).
        await expect(ann.locator("[data-testid=member]")).to_have_count(3, timeout=WAIT_MS)
        shot = tmp_path / "chat.png"
        await ann.screenshot(path=shot)
        assert shot.stat().st_size > 0
        if os.environ.get("CHATD_SCREENSHOT"):
            shutil.copyfile(shot, SCREENSHOT)

        # Leaving a room: back to general, and the others see it.
        await ben.locator("[data-testid=room][data-room=lobby]").click()
        await expect(ben.get_by_test_id("current-title")).to_have_text("#lobby", timeout=WAIT_MS)
        await ben.get_by_test_id("leave-button").click()
        await tom.expect(
            lambda e: e == {"type": "leave", "room": "lobby", "nick": "ben", "reason": ""}
        )
        await expect(ben.get_by_test_id("current-title")).to_have_text("#general", timeout=WAIT_MS)
        await expect(ann.get_by_test_id("messages")).to_contain_text("ben left", timeout=WAIT_MS)
        await expect(lobby).to_contain_text("2", timeout=WAIT_MS)
    finally:
        tom.close()
    pages.assert_clean()


async def test_page_reconnects_after_its_connection_is_cut(
    web_server: Server, pages: Pages
) -> None:
    tom = await open_json(web_server.port, "tom")
    try:
        ann = await pages.join("ann")
        await say(ann, "/join lobby")
        await expect(ann.get_by_test_id("current-title")).to_have_text("#lobby", timeout=WAIT_MS)
        await tom.send("/join lobby")
        await tom.expect(lambda e: e["type"] == "current")
        # Text is escaped, never markup.
        await tom.send("<b>bold</b> & <img src=x> stays text")
        line = message(ann, "stays text")
        await expect(line).to_contain_text("<b>bold</b> & <img src=x>", timeout=WAIT_MS)
        await expect(line.locator("b, img")).to_have_count(0, timeout=WAIT_MS)

        # Record every state the status bar goes through: the "reconnecting"
        # state may be shorter than one polling interval of expect().
        status = ann.get_by_test_id("status")
        await status.evaluate(
            """(status) => {
                window.statesSeen = [];
                new MutationObserver(() => window.statesSeen.push(status.dataset.state))
                    .observe(status, {attributes: true, attributeFilter: ['data-state']});
            }"""
        )
        (session,) = [s for s in web_server.sessions if s.nick == "ann"]
        session.drop("test")

        # Gone, back with the same nickname, and in the room it was in.
        await tom.expect(lambda e: e["type"] == "leave" and e["nick"] == "ann")
        await tom.expect(lambda e: e == {"type": "join", "room": "lobby", "nick": "ann"})
        await expect(status).to_have_attribute("data-state", "online", timeout=WAIT_MS)
        assert "reconnecting" in await ann.evaluate("window.statesSeen")
        messages = ann.get_by_test_id("messages")
        await expect(messages).to_contain_text("Reconnecting", timeout=WAIT_MS)
        await expect(messages).to_contain_text("Reconnected as ann", timeout=WAIT_MS)
        await expect(ann.get_by_test_id("current-title")).to_have_text("#lobby", timeout=WAIT_MS)
        # History that was already on screen is not shown twice.
        await expect(message(ann, "stays text")).to_have_count(1, timeout=WAIT_MS)

        await say(ann, "back again")
        await tom.expect(said("lobby", "ann", "back again"))
    finally:
        tom.close()
    pages.assert_clean()


async def test_phone_layout(web_server: Server, pages: Pages) -> None:
    page = await pages.open(PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    await expect(page.get_by_test_id("nick-input")).to_be_visible(timeout=WAIT_MS)
    await expect(page.get_by_test_id("join-button")).to_be_visible(timeout=WAIT_MS)
    await page.get_by_test_id("nick-input").fill("pat")
    await page.get_by_test_id("join-button").click()

    await expect(page.get_by_test_id("message-input")).to_be_visible(timeout=WAIT_MS)
    await expect(page.get_by_test_id("send-button")).to_be_visible(timeout=WAIT_MS)
    await expect(page.get_by_test_id("current-title")).to_have_text("#general", timeout=WAIT_MS)
    sidebar = page.get_by_test_id("sidebar")
    await expect(sidebar).to_be_hidden(timeout=WAIT_MS)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    # The menu button opens the drawer; picking a room closes it.
    await page.get_by_test_id("menu-button").click()
    await expect(sidebar).to_be_visible(timeout=WAIT_MS)
    general = page.locator("[data-testid=room][data-room=general]")
    await expect(general).to_be_visible(timeout=WAIT_MS)
    await general.click()
    await expect(sidebar).to_be_hidden(timeout=WAIT_MS)

    await say(page, "hello from my phone")
    await expect(message(page, "hello from my phone")).to_contain_text("pat", timeout=WAIT_MS)
    pages.assert_clean()


#: Per text node of a box: the text and its font, and whether the box holds a <pre>.
TEXT_FONTS = """(box) => {
    const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
    const fonts = [];
    while (walker.nextNode()) {
        const node = walker.currentNode;
        if (node.textContent.trim()) {
            fonts.push([node.textContent, getComputedStyle(node.parentElement).fontFamily]);
        }
    }
    return {pre: box.querySelector('pre') !== null, fonts};
}"""


async def test_help_lists_the_commands_that_work_from_the_page(
    web_server: Server, pages: Pages
) -> None:
    page = await pages.join("hal")
    await say(page, "/help")
    help_box = page.get_by_test_id("messages").locator("li").filter(has_text="/join ROOM")
    await expect(help_box).to_have_count(1, timeout=WAIT_MS)
    text = await help_box.inner_text()
    for absent in ("/format", "/ping", "/pong"):
        assert absent not in text, absent
    # Everything else the server describes is there, each command on its own row.
    wanted = [u for u, _ in COMMAND_HELP if u.split()[0] not in ("/format", "/ping", "/pong")]
    for usage, description in COMMAND_HELP:
        if usage in wanted:
            assert usage in text
            assert description in text
    assert await help_box.locator("dt").all_inner_texts() == wanted
    # Read as a list, not a monospace dump: the descriptions are in the page's font.
    found = await help_box.evaluate(TEXT_FONTS)
    assert not found["pre"]
    descriptions = [font for node, font in found["fonts"] if "join a room (created" in node]
    assert descriptions, found
    assert all("mono" not in font for font in descriptions), descriptions
    pages.assert_clean()


#: The first message in view in the timeline and the top of its box on screen.
FIRST_IN_VIEW = """(box) => {
    const top = box.getBoundingClientRect().top;
    const first = [...box.querySelectorAll('[data-testid=message]')]
        .find((n) => n.getBoundingClientRect().bottom > top);
    return [first.dataset.id, first.getBoundingClientRect().top];
}"""


@pytest.mark.parametrize("web_server", ["memory", "sqlite"], indirect=True)
async def test_scrolling_up_loads_older_messages_in_place(web_server: Server, pages: Pages) -> None:
    tom = await open_json(web_server.port, "tom")
    sue = await open_json(web_server.port, "sue")
    try:
        # 100 stored messages, two senders taking turns (each line has its header).
        for client in (tom, sue):
            await client.send("/join archive")
            await client.expect("current")
        for i in range(1, 101):
            sender = tom if i % 2 else sue
            await sender.send(f"note {i:03}")
            await sender.expect(said("archive", sender.nick or "", f"note {i:03}"))

        ann = await pages.join("ann")
        await say(ann, "/join archive")
        await expect(ann.get_by_test_id("current-title")).to_have_text("#archive", timeout=WAIT_MS)
        timeline = ann.get_by_test_id("messages")
        lines = timeline.get_by_test_id("message")
        await expect(lines).to_have_count(20, timeout=WAIT_MS)  # what a join shows
        await expect(lines.first).to_contain_text("note 081", timeout=WAIT_MS)
        # Count the loading markers shown: one may come and go between two polls.
        await timeline.evaluate(
            """(box) => {
                window.markersSeen = 0;
                new MutationObserver((records) => {
                    for (const r of records) for (const n of r.addedNodes) {
                        if (n.dataset.testid === 'history-loading') window.markersSeen++;
                    }
                }).observe(box, {childList: true});
            }"""
        )

        async def scroll_to_top_and_wait(count: int) -> None:
            """Scroll to the top; the line that was first in view must not move."""
            msg_id, top = await timeline.evaluate(
                f"(box) => {{ box.scrollTop = 0; return ({FIRST_IN_VIEW})(box); }}"
            )
            await expect(lines).to_have_count(count, timeout=WAIT_MS)
            same = timeline.locator(f"[data-testid=message][data-id='{msg_id}']")
            box = await same.bounding_box()
            assert box is not None
            assert abs(box["y"] - top) <= 3, "the timeline jumped when older messages came in"

        await scroll_to_top_and_wait(70)  # a page of 50 before the 20
        assert await ann.evaluate("window.markersSeen") == 1
        await expect(lines.first).to_contain_text("note 031", timeout=WAIT_MS)
        await expect(ann.get_by_test_id("history-loading")).to_have_count(0, timeout=WAIT_MS)
        await scroll_to_top_and_wait(100)  # the last 30: the beginning
        await expect(ann.get_by_test_id("history-start")).to_have_text(
            "Beginning of #archive", timeout=WAIT_MS
        )
        texts = await lines.locator(".msg__text").all_inner_texts()
        assert texts == [f"note {i:03}" for i in range(1, 101)]  # in order, none twice

        # At the beginning, scrolling up asks for nothing more.
        await timeline.evaluate("(box) => { box.scrollTop = 0; }")
        await tom.send("still here")
        await expect(message(ann, "still here")).to_be_visible(timeout=WAIT_MS)
        assert await ann.evaluate("window.markersSeen") == 2
        await expect(lines).to_have_count(101, timeout=WAIT_MS)
    finally:
        tom.close()
        sue.close()
    pages.assert_clean()


async def test_a_room_created_from_a_raw_client_appears_without_refreshing(
    web_server: Server, pages: Pages
) -> None:
    ann = await pages.join("ann")
    nc = await LineClient.open("127.0.0.1", web_server.port)
    try:
        await nc.line()  # the greeting
        await nc.send("ned")
        await nc.expect_line(r"^\* now talking in #general$")
        # The page has caught up with ned's arrival (and the refresh it causes).
        await expect(ann.locator("[data-testid=member][data-nick=ned]")).to_be_visible(
            timeout=WAIT_MS
        )
        general = ann.locator("[data-testid=room][data-room=general]")
        await expect(general.get_by_test_id("member-count")).to_have_attribute(
            "aria-label", "2 members", timeout=WAIT_MS
        )

        await nc.send("/create Lab")
        await nc.expect_line(r"^\* now talking in #Lab$")
        lab = ann.locator("[data-testid=room][data-room=Lab]")
        await expect(lab).to_be_visible(timeout=WAIT_MS)  # nobody clicked refresh
        count = lab.get_by_test_id("member-count")
        await expect(count).to_have_attribute("aria-label", "1 member", timeout=WAIT_MS)
        await expect(count).to_have_attribute("title", "1 member", timeout=WAIT_MS)
        await expect(lab.get_by_test_id("unread")).to_have_count(0, timeout=WAIT_MS)

        await nc.send("/leave Lab")  # the last member: the room goes
        await nc.expect_line(r"^\* ned left #Lab$")
        await expect(lab).to_have_count(0, timeout=WAIT_MS)
    finally:
        nc.close()
    pages.assert_clean()


#: Scroll a timeline to the top and wait until what that asked for is on screen:
#: a page of older messages (the loading line gone) or another marker at the top.
#: Resolves to the number of messages shown.
SCROLL_TO_TOP = """(box) => new Promise((resolve) => {
    const seen = new MutationObserver(() => {
        if (box.querySelector('[data-testid=history-loading]')) return;
        seen.disconnect();
        resolve(box.querySelectorAll('[data-testid=message]').length);
    });
    seen.observe(box, {childList: true});
    box.scrollTop = 0;
})"""


async def scroll_to_top(page: Page) -> int:
    """Scroll the timeline up once; the number of messages shown when the page came in."""
    async with asyncio.timeout(DEADLINE):
        count: int = await page.get_by_test_id("messages").evaluate(SCROLL_TO_TOP)
    return count


async def texts_shown(page: Page) -> list[str]:
    return await page.get_by_test_id("messages").locator(".msg__text").all_inner_texts()


async def login(pages: Pages, nick: str, password: str) -> Page:
    """A desktop page that logged in to an account from the join screen."""
    page = await pages.open()
    await page.get_by_test_id("nick-input").fill(nick)
    await page.get_by_test_id("password-input").fill(password)
    await page.get_by_test_id("join-button").click()
    await expect(page.get_by_test_id("status")).to_have_attribute(
        "data-state", "online", timeout=WAIT_MS
    )
    await expect(page.locator("#me-account")).to_be_visible(timeout=WAIT_MS)
    return page


async def test_a_conversation_started_by_a_message_scrolls_back(
    web_server: Server, pages: Pages
) -> None:
    quinn = await open_json(web_server.port, "quinn")
    pia = await open_json(web_server.port, "pia")
    try:
        for client in (quinn, pia):
            await client.send(f"/register {PASSWORD}")
            await client.expect(lambda e: e["type"] == "registered" and e["account"])
        for i in range(1, 101):
            await quinn.send(f"/msg pia note {i:03}")
        await pia.expect(dm("quinn", "pia", "note 100"))
        pia.close()

        # pia comes back on the page; the conversation starts with a new message.
        page = await login(pages, "pia", PASSWORD)
        await quinn.send("/msg pia note 101")
        entry = page.locator("[data-testid=dm][data-peer=quinn]")
        # All 101 are unread: the server counts them, the badge caps them.
        await expect(entry.get_by_test_id("unread")).to_have_text("99+", timeout=WAIT_MS)
        await entry.click()
        await expect(page.get_by_test_id("current-title")).to_have_text("@quinn", timeout=WAIT_MS)
        start = page.get_by_test_id("history-start")
        for _ in range(4):  # 101 messages, 50 a page: three pages at most
            if await start.count():
                break
            await scroll_to_top(page)
        await expect(start).to_have_text("Beginning of your messages with quinn", timeout=WAIT_MS)
        assert await texts_shown(page) == [f"note {i:03}" for i in range(1, 102)]
    finally:
        quinn.close()
        pia.close()
    pages.assert_clean()


async def test_a_guest_conversation_asks_for_no_history(web_server: Server, pages: Pages) -> None:
    quinn = await open_json(web_server.port, "quinn")
    try:
        page = await pages.join("gil")
        await quinn.send("/msg gil hello guest")
        await page.locator("[data-testid=dm][data-peer=quinn]").click()
        await expect(message(page, "hello guest")).to_be_visible(timeout=WAIT_MS)
        await page.get_by_test_id("messages").evaluate("(box) => { box.scrollTop = 0; }")
        # A /history from a guest would be refused (not_logged_in) before this echo.
        await say(page, "hi back")
        await expect(message(page, "hi back")).to_be_visible(timeout=WAIT_MS)
        await expect(page.get_by_test_id("notice")).to_have_count(0)
        await expect(page.get_by_test_id("history-loading")).to_have_count(0)
        await expect(page.get_by_test_id("history-start")).to_have_count(0)
    finally:
        quinn.close()
    pages.assert_clean()


@pytest.mark.parametrize("web_server", ["sqlite"], indirect=True)
async def test_messages_missed_while_away_are_reached_by_scrolling_back(
    web_server: Server, pages: Pages, start_server: StartServer
) -> None:
    async def talk(port: int, texts: list[str]) -> None:
        """tom and sue take turns in #archive (each line has its header)."""
        tom = await open_json(port, "tom")
        sue = await open_json(port, "sue")
        try:
            for client in (tom, sue):
                await client.send("/join archive")
                await client.expect("current")
            for i, text in enumerate(texts):
                sender = (tom, sue)[i % 2]
                await sender.send(text)
                await sender.expect(said("archive", sender.nick or "", text))
        finally:
            tom.close()
            sue.close()

    before = [f"before {i:02}" for i in range(1, 31)]
    await talk(web_server.port, before)
    ann = await pages.join("ann")
    await say(ann, "/join archive")
    await expect(ann.get_by_test_id("current-title")).to_have_text("#archive", timeout=WAIT_MS)
    await expect(message(ann, "before 30")).to_be_visible(timeout=WAIT_MS)
    await scroll_to_top(ann)
    await expect(ann.get_by_test_id("history-start")).to_be_visible(timeout=WAIT_MS)
    assert await texts_shown(ann) == before

    # The daemon restarts; the page cannot get back until 30 lines were said.
    back = asyncio.Event()

    async def hold(ws: WebSocketRoute) -> None:
        await back.wait()
        ws.connect_to_server()

    await ann.route_web_socket(re.compile(r"/ws$"), hold)
    port, http_port = web_server.port, web_server.http_port
    await web_server.shutdown()
    restarted = await start_server(db=web_server.settings.db, port=port, http_port=http_port)
    missed = [f"missed {i:02}" for i in range(1, 31)]
    await talk(restarted.port, missed)
    back.set()
    timeline = ann.get_by_test_id("messages")
    await expect(timeline).to_contain_text("Reconnected as ann", timeout=WAIT_MS)
    await expect(message(ann, "missed 30")).to_be_visible(timeout=WAIT_MS)

    # Scrolling back reaches every message, in order, each once.
    start = ann.get_by_test_id("history-start")
    for _ in range(3):  # 60 messages: the 20 of the join, then pages of 50
        if await start.count():
            break
        await scroll_to_top(ann)
    await expect(start).to_have_count(1, timeout=WAIT_MS)
    assert await texts_shown(ann) == before + missed

    # The same after leaving the room and joining it again.
    await say(ann, "/leave archive")
    await expect(ann.get_by_test_id("current-title")).to_have_text("#general", timeout=WAIT_MS)
    later = [f"later {i:02}" for i in range(1, 31)]
    await talk(restarted.port, later)
    await say(ann, "/join archive")
    await expect(message(ann, "later 30")).to_be_visible(timeout=WAIT_MS)
    for _ in range(3):  # 90 messages
        if await start.count():
            break
        await scroll_to_top(ann)
    await expect(start).to_have_count(1, timeout=WAIT_MS)
    assert await texts_shown(ann) == before + missed + later
    pages.assert_clean()


async def test_scrolling_back_says_where_the_page_stops_keeping_lines(
    web_server: Server, pages: Pages
) -> None:
    tom = await open_json(web_server.port, "tom")
    try:
        await tom.send("/join archive")
        await tom.expect("current")
        # More than the page keeps; actions are never grouped, so every line is tall.
        for first in range(1, 2101, 100):
            await tom.send(*(f"/me notes {i:04}" for i in range(first, first + 100)))
            await tom.expect(said("archive", "tom", f"notes {first + 99:04}"))
        ann = await pages.join("ann")
        await say(ann, "/join archive")
        await expect(message(ann, "notes 2100")).to_be_visible(timeout=WAIT_MS)
        capped = ann.get_by_test_id("history-capped")
        for _ in range(45):  # 20, then 50 a page, to about 2000 lines
            if await capped.count():
                break
            await scroll_to_top(ann)
        await expect(capped).to_contain_text("newest 2000 lines", timeout=WAIT_MS)
        await expect(capped).to_be_in_viewport(ratio=1, timeout=WAIT_MS)  # where the reader is
        await expect(ann.get_by_test_id("history-start")).to_have_count(0)
        texts = await texts_shown(ann)
        assert texts == [f"tom notes {i:04}" for i in range(2101 - len(texts), 2101)]
    finally:
        tom.close()
    pages.assert_clean()
