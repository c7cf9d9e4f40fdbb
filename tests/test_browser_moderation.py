"""Room moderation from the web page, in a real browser (headless Chromium).

An op kicks a member from the page's member list and a plain TCP client in
text mode (as ``nc`` would be) reads the kick; the owner of a registered
room changes its modes in the settings dialog. The daemon, the browser and
the rules (skipped without Chromium or playwright, a failure on CI) are
those of :mod:`tests.test_browser`; any console error or uncaught exception
on a page fails the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from chatd.daemon.server import Server
from tests.conftest import StartServer
from tests.helpers import LineClient, open_json
from tests.test_browser import (
    PASSWORD,
    WAIT_MS,
    Pages,
    browser_pages,
    login,
    say,
)

if TYPE_CHECKING:
    from playwright.async_api import Page

with contextlib.suppress(ImportError):  # without the dev extra the fixture skips
    from playwright.async_api import expect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


@pytest.fixture
async def web_server(start_server: StartServer) -> Server:
    """A daemon with its web port (and its plain TCP port for the raw client),
    where the account ``root`` is a server operator."""
    return await start_server(http_port=0, db=":memory:", opers=("root",))


@pytest.fixture
async def pages(web_server: Server) -> AsyncIterator[Pages]:
    """A headless Chromium to open the daemon's page in (as in test_browser)."""
    async with browser_pages(web_server) as opened:
        yield opened


async def create_room(page: Page, room: str) -> None:
    """Create a room from the sidebar; the page follows its creator into it."""
    await page.get_by_test_id("create-room-button").click()
    await page.get_by_test_id("create-room-input").fill(room)
    await page.get_by_test_id("create-room-input").press("Enter")
    await expect(page.get_by_test_id("current-title")).to_have_text(f"#{room}", timeout=WAIT_MS)


async def text_client(port: int, nick: str, room: str) -> LineClient:
    """A plain TCP client in text mode, as nc: a nickname, then /join ROOM."""
    nc = await LineClient.open("127.0.0.1", port)
    await nc.line()  # the greeting
    await nc.send(nick)
    await nc.expect_line(r"^\* now talking in #general$")
    await nc.send(f"/join {room}")
    await nc.expect_line(rf"^\* now talking in #{room}$")
    return nc


async def test_an_op_kicks_a_member_from_the_member_list(web_server: Server, pages: Pages) -> None:
    alice = await pages.join("alice")
    await create_room(alice, "lab")  # a guest who creates a room is its op
    bob = await text_client(web_server.port, "bob", "lab")
    try:
        members = alice.get_by_test_id("members")
        me = members.locator("[data-testid=member][data-nick=alice]")
        await expect(me).to_have_attribute("data-role", "op", timeout=WAIT_MS)
        await expect(me.get_by_test_id("member-role")).to_have_text("@", timeout=WAIT_MS)
        bob_entry = members.locator("[data-testid=member][data-nick=bob]")
        await expect(bob_entry).to_have_attribute("data-role", "member", timeout=WAIT_MS)
        # The settings of the room are for its ops; an op has no menu on itself.
        await expect(alice.get_by_test_id("settings-button")).to_be_visible(timeout=WAIT_MS)
        await expect(
            members.locator("[data-testid=member-actions][data-nick=alice]")
        ).to_have_count(0)

        # The menu on bob: a real menu of buttons, opened and walked with the keyboard.
        actions = members.locator("[data-testid=member-actions][data-nick=bob]")
        await expect(actions).to_have_attribute("aria-haspopup", "menu", timeout=WAIT_MS)
        await actions.focus()
        await alice.keyboard.press("Enter")
        menu = alice.get_by_test_id("member-menu")
        await expect(menu).to_be_visible(timeout=WAIT_MS)
        await expect(actions).to_have_attribute("aria-expanded", "true", timeout=WAIT_MS)
        items = menu.get_by_role("menuitem")
        assert await items.all_inner_texts() == [
            "Make op",
            "Give voice",
            "Mute…",
            "Kick…",
            "Ban…",
        ]
        await expect(items.first).to_be_focused(timeout=WAIT_MS)
        await alice.keyboard.press("ArrowUp")  # wraps around to the last
        await expect(items.last).to_be_focused(timeout=WAIT_MS)
        await alice.keyboard.press("Escape")
        await expect(menu).to_be_hidden(timeout=WAIT_MS)
        await expect(actions).to_be_focused(timeout=WAIT_MS)

        # Kick, with a reason, through the dialog.
        await actions.click()
        await menu.get_by_role("menuitem", name="Kick…").click()
        dialog = alice.get_by_test_id("action-dialog")
        await expect(dialog).to_be_visible(timeout=WAIT_MS)
        await expect(dialog.get_by_role("heading")).to_have_text("Kick bob", timeout=WAIT_MS)
        await dialog.get_by_test_id("action-reason").fill("off topic")
        await dialog.get_by_test_id("action-confirm").click()
        await expect(dialog).to_be_hidden(timeout=WAIT_MS)

        # The kicked member reads it, in text, then that it left.
        await bob.expect_line(r"^\* alice kicked bob from #lab \(off topic\)$")
        await bob.expect_line(r"^\* bob left #lab \(kicked by alice: off topic\)$")

        # The page says it once, and bob is no longer in the list.
        timeline = alice.get_by_test_id("messages")
        await expect(timeline).to_contain_text("alice kicked bob (off topic)", timeout=WAIT_MS)
        await expect(bob_entry).to_have_count(0, timeout=WAIT_MS)

        # bob comes back (after the leave, so the page has had it: not shown, the kick said it).
        await bob.send("/join lab")
        events = timeline.get_by_test_id("event")
        await expect(events.filter(has_text="bob joined")).to_have_count(2, timeout=WAIT_MS)
        await expect(events.filter(has_text="bob left")).to_have_count(0)
        await expect(bob_entry).to_have_attribute("data-role", "member", timeout=WAIT_MS)
        # alice gives him voice from the menu: his role follows.
        await actions.click()
        await menu.get_by_role("menuitem", name="Give voice").click()
        await bob.expect_line(r"^\* bob is now voice in #lab \(by alice\)$")
        await expect(bob_entry).to_have_attribute("data-role", "voice", timeout=WAIT_MS)
        await expect(bob_entry.get_by_test_id("member-role")).to_have_text("+", timeout=WAIT_MS)
        await expect(timeline).to_contain_text("alice made bob a voiced member", timeout=WAIT_MS)
    finally:
        bob.close()
    pages.assert_clean()


async def test_the_owner_changes_the_room_modes_in_the_settings_dialog(
    web_server: Server, pages: Pages
) -> None:
    account = await open_json(web_server.port, "olga")
    await account.send(f"/register {PASSWORD}")
    await account.expect(lambda e: e["type"] == "registered" and e["account"])
    account.close()

    olga = await login(pages, "olga", PASSWORD)
    await create_room(olga, "den")  # a registered nickname's room: its owner
    nc = await text_client(web_server.port, "ned", "den")
    try:
        members = olga.get_by_test_id("members")
        me = members.locator("[data-testid=member][data-nick=olga]")
        await expect(me).to_have_attribute("data-role", "owner", timeout=WAIT_MS)
        await expect(me.get_by_test_id("member-role")).to_have_text("~", timeout=WAIT_MS)

        await olga.get_by_test_id("settings-button").click()
        dialog = olga.get_by_test_id("settings-dialog")
        await expect(dialog).to_be_visible(timeout=WAIT_MS)
        save = dialog.get_by_test_id("settings-save")
        await expect(save).to_be_enabled(timeout=WAIT_MS)  # the room's modes are in
        await expect(dialog.get_by_test_id("mode-i")).not_to_be_checked()
        await dialog.get_by_test_id("mode-m").check()
        await dialog.get_by_test_id("mode-l").fill("10")
        await save.click()
        await expect(dialog).to_be_hidden(timeout=WAIT_MS)

        await nc.expect_line(r"^\* olga set #den \+ml$")
        timeline = olga.get_by_test_id("messages")
        await expect(timeline).to_contain_text("moderated", timeout=WAIT_MS)
        await expect(timeline).to_contain_text("a member limit", timeout=WAIT_MS)

        # Opened again, it shows what the room has now; Escape closes it.
        await olga.get_by_test_id("settings-button").click()
        await expect(save).to_be_enabled(timeout=WAIT_MS)
        await expect(dialog.get_by_test_id("mode-m")).to_be_checked()
        await expect(dialog.get_by_test_id("mode-l")).to_have_value("10")
        await olga.keyboard.press("Escape")
        await expect(dialog).to_be_hidden(timeout=WAIT_MS)

        # In a moderated room ned may not speak until he has voice.
        await nc.send("hello?")
        await nc.expect_line(r"^! muted: ")
        await say(olga, "/voice ned")
        await nc.expect_line(r"^\* ned is now voice in #den \(by olga\)$")
    finally:
        nc.close()
    pages.assert_clean()


async def test_a_wall_reaches_the_web_page_and_a_text_client(
    web_server: Server, pages: Pages
) -> None:
    root = await open_json(web_server.port, "root")
    nc = await LineClient.open("127.0.0.1", web_server.port)
    try:
        await root.send(f"/register {PASSWORD}")  # root is a server operator here
        await root.expect(lambda e: e["type"] == "registered" and e["account"])
        await nc.line()  # the greeting
        await nc.send("ned")
        await nc.expect_line(r"^\* now talking in #general$")
        page = await pages.join("pia")
        await root.send("/wall the server restarts at noon")
        await nc.expect_line(r"^! notice from root: the server restarts at noon$")
        await expect(page.get_by_test_id("messages")).to_contain_text(
            "Notice from root: the server restarts at noon", timeout=WAIT_MS
        )
    finally:
        nc.close()
        root.close()
    pages.assert_clean()
