"""Read markers, unread counts and search, in each store: memory, SQLite and
Redis (a real redis-server on loopback; skipped if none is installed).

The same tests run on every store through :class:`Feed`, which stores
messages the way the daemon does: ``append`` for room messages and, in
Redis, the DIRECT script for private ones (ids come from Redis's counter,
which the feed checks against its own).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatd.cluster.link import RedisLink
from chatd.cluster.scripts import DIRECT, P
from chatd.cluster.store import RedisStore
from chatd.errors import BadQuery
from chatd.protocol import name_key
from chatd.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    UNREAD_CAP,
    MemoryStore,
    SearchQuery,
    SqliteStore,
    Store,
    StoredMessage,
    Unread,
    dm_key,
)
from chatd.store.search import parse
from tests.helpers import REDIS, RedisServer

pytestmark = pytest.mark.timeout(60)

ALICE, BOB, CAROL, DAVE, ERIN = 1, 2, 3, 4, 5
NODE = "node1"


class Feed:
    """Stores messages in a store, numbering them 1, 2, 3... in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.next_id = 1
        if isinstance(store, RedisStore):
            store.link.script("direct", DIRECT)

    async def say(self, room: str, sender: str, text: str, account: int | None = None) -> int:
        ids = await self.say_many(room, sender, [text], account)
        return ids[0]

    async def say_many(
        self, room: str, sender: str, texts: list[str], account: int | None = None
    ) -> list[int]:
        """Room messages, queued 100 at a time, each hundred waited for."""
        ids: list[int] = []
        for start in range(0, len(texts), 100):
            ids += await self._say_batch(room, sender, texts[start : start + 100], account)
        return ids

    async def _say_batch(
        self, room: str, sender: str, texts: list[str], account: int | None
    ) -> list[int]:
        loop = asyncio.get_running_loop()
        ids, done = [], []
        for text in texts:
            future: asyncio.Future[BaseException | None] = loop.create_future()
            message = StoredMessage(self.next_id, 1000.0 + self.next_id, room, sender, None, text)
            if account is not None:
                message = StoredMessage(
                    message.id, message.ts, room, sender, None, text, sender_account=account
                )
            self.store.append(message, future.set_result)
            ids.append(self.next_id)
            done.append(future)
            self.next_id += 1
        assert await asyncio.gather(*done) == [None] * len(texts)
        if isinstance(self.store, RedisStore):
            assert int(await self.store.link.command("GET", P + "msgid")) == ids[-1]
        return ids

    async def dm(
        self, sender: str, to: str, text: str, sa: int | None = None, ta: int | None = None
    ) -> int:
        id_ = self.next_id
        self.next_id += 1
        store = self.store
        if isinstance(store, RedisStore):
            # As the cluster sends one: to whoever holds the nickname ``to``.
            account = "" if ta is None else str(ta)
            held = f"{NODE}\t{to}\t{account}"
            await store.link.command("HSET", P + "nicks", name_key(to), held)
            sender_account = "" if sa is None else str(sa)
            args = (NODE, name_key(to), 100_000, repr(1000.0 + id_), sender, text)
            got = await store.link.call("direct", *args, sender_account, name_key(sender), "0")
            assert int(got[0]) == id_
            return id_
        future: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        message = StoredMessage(id_, 1000.0 + id_, None, sender, to, text, False, sa, ta)
        store.append(message, future.set_result)
        assert await future is None
        return id_


async def _open(kind: str, tmp_path: Path, redis: RedisServer | None) -> Store:
    store: Store
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        store = SqliteStore(tmp_path / "chat.db")
    else:
        assert redis is not None
        store = RedisStore(RedisLink(redis.url), node=NODE, history=100_000)
    await store.open()
    return store


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def feed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Feed]:
    kind: str = request.param
    server: RedisServer | None = None
    if kind == "redis":
        if REDIS is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        server = await RedisServer.start(REDIS)
    try:
        store = await _open(kind, tmp_path, server)
        try:
            # The accounts exist (a Redis store learns their nicknames from them).
            for n, nick in enumerate(("alice", "bob", "carol", "dave", "erin"), 1):
                account = await store.create_account(nick, "hash")
                assert account is not None
                assert account.id == n
            yield Feed(store)
        finally:
            await store.close()
    finally:
        if server is not None:
            await server.stop()


def query(
    text: str,
    *rooms: str,
    account: int | None = ALICE,
    conversation: str | None = None,
    before: int | None = None,
    limit: int = 20,
    budget: float = 2.0,
) -> SearchQuery:
    return SearchQuery(text, rooms, account, conversation, before, limit, budget)


async def found(store: Store, q: SearchQuery) -> list[str]:
    result = await store.search(q)
    assert not result.cut
    return [m.text for m in result.messages]


# -- read markers -----------------------------------------------------------


async def test_a_marker_only_moves_forward(feed: Feed) -> None:
    store = feed.store
    store.save_read(ALICE, "general", 5)
    store.save_read(ALICE, "general", 3)
    store.save_read(ALICE, "@alice:bob", 7)
    store.save_read(BOB, "general", 1)
    assert await store.read_markers(ALICE) == {"general": 5, "@alice:bob": 7}
    store.save_read(ALICE, "general", 9)
    assert await store.read_markers(ALICE) == {"general": 9, "@alice:bob": 7}
    assert await store.read_markers(BOB) == {"general": 1}
    assert await store.read_markers(CAROL) == {}


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_markers_survive_reopening_the_store(kind: str, tmp_path: Path) -> None:
    server: RedisServer | None = None
    if kind == "redis":
        if REDIS is None:
            pytest.skip("redis-server is not installed")
        server = await RedisServer.start(REDIS)
    try:
        store = await _open(kind, tmp_path, server)
        store.save_read(ALICE, "general", 12)
        store.save_read(ALICE, "general", 4)
        if isinstance(store, RedisStore):
            await store.link.drained()  # as the cluster does before it closes the store
        await store.close()  # SQLite finishes the write-behind first
        store = await _open(kind, tmp_path, server)
        try:
            assert await store.read_markers(ALICE) == {"general": 12}
        finally:
            await store.close()
    finally:
        if server is not None:
            await server.stop()


# -- unread -------------------------------------------------------------------


async def test_unread_counts_what_others_sent_after_the_marker(feed: Feed) -> None:
    store = feed.store
    first = await feed.say("Dev", "bob", "hi all", BOB)
    await feed.say("Dev", "alice", "hello bob", ALICE)  # her own: never unread
    await feed.say("Dev", "bob", "alice: look at this", BOB)
    await feed.say("Dev", "guest7", "hey @Alice", None)  # a guest's counts too
    await feed.say("Dev", "bob", "alicedoes not count", BOB)
    await feed.say("Ops", "bob", "elsewhere", BOB)
    store.save_read(ALICE, "dev", first)
    assert await store.unread(ALICE, "alice", ("dev", "ops", "empty")) == [
        Unread("dev", "Dev", None, 3, 2, first),
        Unread("ops", "Ops", None, 1, 0, 0),
        Unread("empty", "empty", None, 0, 0, 0),
    ]
    # All read: the room is still listed, with nothing unread.
    store.save_read(ALICE, "dev", feed.next_id - 1)
    unread = await store.unread(ALICE, "alice", ("dev",))
    assert unread == [Unread("dev", "Dev", None, 0, 0, feed.next_id - 1)]
    # Bob, with no marker: everything alice and the guest sent.
    assert await store.unread(BOB, "bob", ("dev",)) == [Unread("dev", "Dev", None, 2, 1, 0)]


async def test_private_conversations_are_listed_with_their_peer(feed: Feed) -> None:
    store = feed.store
    await feed.dm("Bob", "alice", "psst alice", BOB, ALICE)
    await feed.dm("alice", "Bob", "yes?", ALICE, BOB)
    await feed.dm("Bob", "alice", "later", BOB, ALICE)
    read = await feed.dm("carol", "alice", "hi", CAROL, ALICE)
    await feed.dm("dave", "erin", "not for alice", DAVE, ERIN)
    await feed.say("general", "bob", "room line", BOB)
    store.save_read(ALICE, dm_key("carol", "alice"), read)
    assert await store.unread(ALICE, "alice", ("general",)) == [
        Unread("general", "general", None, 1, 0, 0),
        Unread("@alice:bob", None, "Bob", 2, 1, 0),
    ]
    assert await store.unread(BOB, "bob", ()) == [Unread("@alice:bob", None, "alice", 1, 0, 0)]
    # Newest conversation first.
    await feed.dm("carol", "alice", "again", CAROL, ALICE)
    peers = [u.peer for u in await store.unread(ALICE, "alice", ())]
    assert peers == ["carol", "Bob"]
    assert await store.unread(CAROL, "carol", ()) == []


async def test_counts_stop_at_the_cap(feed: Feed) -> None:
    texts = [f"alice, line {n}" for n in range(UNREAD_CAP + 5)]
    await feed.say_many("flood", "bob", texts, BOB)
    await feed.dm("bob", "alice", "one", BOB, ALICE)
    unread = await feed.store.unread(ALICE, "alice", ("flood",))
    assert unread[0] == Unread("flood", "flood", None, UNREAD_CAP, UNREAD_CAP, 0)
    assert unread[1].unread == 1


# -- search -------------------------------------------------------------------


async def _some_talk(feed: Feed) -> None:
    await feed.say("dev", "bob", "Deploy the staging server", BOB)
    await feed.say("dev", "carol", "deployment finished", CAROL)
    await feed.say("dev", "bob", "the server is down", BOB)
    await feed.say("dev", "bob", "Crème brûlée for lunch", BOB)
    await feed.say("dev", "carol", "ship it now", CAROL)
    await feed.say("dev", "carol", "it ships", CAROL)
    await feed.say("secret", "carol", "the secret server", CAROL)
    await feed.dm("bob", "alice", "my server password", BOB, ALICE)
    await feed.dm("dave", "erin", "erin's server", DAVE, ERIN)


async def test_search_finds_words_prefixes_and_phrases(feed: Feed) -> None:
    await _some_talk(feed)
    store = feed.store
    assert await found(store, query("server", "dev")) == [
        "my server password",
        "the server is down",
        "Deploy the staging server",
    ]
    assert await found(store, query("SERVER down", "dev")) == ["the server is down"]
    assert await found(store, query("deploy*", "dev")) == [
        "deployment finished",
        "Deploy the staging server",
    ]
    assert await found(store, query('"ship it"', "dev")) == ["ship it now"]
    assert await found(store, query('"it ship"*', "dev")) == ["it ships"]
    assert await found(store, query("creme BRULEE", "dev")) == ["Crème brûlée for lunch"]
    assert await found(store, query("staging OR down", "dev")) == [
        "the server is down",
        "Deploy the staging server",
    ]
    assert await found(store, query("server NOT staging NOT password", "dev")) == [
        "the server is down"
    ]
    assert await found(store, query("server AND staging", "dev")) == ["Deploy the staging server"]
    assert await found(store, query("nothing-like-it", "dev")) == []


async def test_search_reads_only_the_rooms_given_and_the_askers_own_messages(
    feed: Feed,
) -> None:
    await _some_talk(feed)
    store = feed.store
    # "secret" is not among the rooms: never searched, even when named.
    assert await found(store, query("secret", "dev")) == []
    assert await found(store, query("server", "dev", conversation="secret")) == []
    assert await found(store, query("server", "dev", "secret", conversation="secret")) == [
        "the secret server"
    ]
    # Another account's private messages are never found, even when named.
    assert await found(store, query("erin", "dev")) == []
    dave_erin = dm_key("dave", "erin")
    assert await found(store, query("server", "dev", conversation=dave_erin)) == []
    if isinstance(store, RedisStore):
        store._nick_keys.clear()  # Redis looks the account's nickname up
    assert await found(store, query("server", account=ERIN)) == ["erin's server"]
    # A guest has no private messages.
    assert await found(store, query("server", "dev", account=None)) == [
        "the server is down",
        "Deploy the staging server",
    ]
    assert await found(store, query("server", conversation=dm_key("alice", "bob"))) == [
        "my server password"
    ]
    bob_alice = dm_key("alice", "bob")
    assert await found(store, query("server", account=None, conversation=bob_alice)) == []


async def test_search_finds_the_askers_messages_behind_others_in_a_conversation(
    feed: Feed,
) -> None:
    """A private conversation keyed by two nicknames may hold the messages of
    guests who had them before: they are skipped, however many."""
    await feed.dm("bob", "alice", "the old password", BOB, ALICE)
    for n in range(600):
        await feed.dm("bob", "alice", f"password {n} from a guest")
    result = await feed.store.search(query("password", limit=5))
    assert [m.text for m in result.messages] == ["the old password"]
    assert (result.more, result.cut) == (False, False)


async def test_search_pages_with_before(feed: Feed) -> None:
    ids = [await feed.say("dev", "bob", f"page {n}", BOB) for n in range(5)]
    await feed.say("dev", "bob", "unrelated", BOB)
    store = feed.store
    first = await store.search(query("page", "dev", limit=2))
    assert [m.id for m in first.messages] == [ids[4], ids[3]]
    assert (first.more, first.cut) == (True, False)
    assert [m.room for m in first.messages] == ["dev", "dev"]
    second = await store.search(query("page", "dev", limit=2, before=ids[3]))
    assert [m.id for m in second.messages] == [ids[2], ids[1]]
    assert second.more
    last = await store.search(query("page", "dev", limit=2, before=ids[1]))
    assert [m.id for m in last.messages] == [ids[0]]
    assert not last.more
    exact = await store.search(query("page", "dev", limit=5))
    assert len(exact.messages) == 5
    assert not exact.more


@pytest.mark.parametrize("text", ['"unterminated', "", "   ", "OR", "NOT x", "a AND", "..."])
async def test_a_query_that_cannot_be_read_is_refused(feed: Feed, text: str) -> None:
    await feed.say("dev", "bob", "unterminated business", BOB)
    with pytest.raises(BadQuery, match="cannot read the search"):
        await feed.store.search(query(text, "dev"))


def test_the_parser_writes_every_word_as_an_fts5_string() -> None:
    assert parse("don't re: x*").fts5() == '("don\'t") AND ("re:") AND ("x" *)'
    assert parse('a OR "b c" NOT d').fts5() == '(("a" OR "b c")) NOT ("d")'
    assert parse("bob.smith").matches("ask Bob.Smith")
    assert not parse("bob.smith").matches("smith, bob")
    assert parse("don't").matches("I DON'T know")
    assert parse("naive").matches("naïve")


# -- SQLite: the index ------------------------------------------------------


async def test_a_version_4_database_is_indexed_when_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as conn:
        for migration in MIGRATIONS[:4]:
            for statement in migration:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO messages (id, ts, conv, room, sender, text, sender_account)"
            " VALUES (7, 1.0, 'general', 'general', 'ann', 'from the old days', 2)"
        )
        conn.execute("PRAGMA user_version = 4")
    store = SqliteStore(path)
    await store.open()
    try:
        assert store.migrated_from == 4
        result = await store.search(query("old days", "general"))
        assert [(m.id, m.text) for m in result.messages] == [(7, "from the old days")]
        assert await store.unread(ALICE, "alice", ("general",)) == [
            Unread("general", "general", None, 1, 0, 0)
        ]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_deleting_a_room_removes_its_messages_from_the_index(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "chat.db")
    await store.open()
    try:
        feed = Feed(store)
        await feed.say("doomed", "bob", "findable words", BOB)
        await feed.say("kept", "bob", "findable words too", BOB)
        await store.delete_room("doomed")
        assert await found(store, query("findable", "doomed", "kept")) == ["findable words too"]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "chat.db") as conn:
        # The index agrees with its content table.
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


async def test_a_search_with_no_time_left_still_answers(tmp_path: Path) -> None:
    """Not a timing test: with a budget too small for anything, the search
    returns, either cut or complete, and what it returns is right."""
    path = tmp_path / "big.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    count = 20_000
    with sqlite3.connect(path) as conn:
        rows = [
            (
                n,
                float(n),
                "small" if n % 5000 == 0 else "big",
                "small" if n % 5000 == 0 else "big",
                "bob",
                f"filler {n}" + (" needle" if n % 4000 == 0 else ""),
            )
            for n in range(1, count + 1)
        ]
        conn.executemany(
            "INSERT INTO messages (id, ts, conv, room, sender, text) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    store = SqliteStore(path)
    await store.open()
    try:
        cases = [
            (query("needle", "big", "small", budget=0.0001), [20000, 16000, 12000, 8000, 4000]),
            # Every message matches; the room holds only four: FTS5 walks them all.
            (query("filler", "small", budget=0.0001), [20000, 15000, 10000, 5000]),
        ]
        for q, expected in cases:
            result = await store.search(q)
            ids = [m.id for m in result.messages]
            if result.cut:
                assert ids == expected[: len(ids)]
            else:
                assert ids == expected
            full = await store.search(SearchQuery(q.text, q.rooms, q.account))
            assert ([m.id for m in full.messages], full.cut) == (expected, False)
    finally:
        await store.close()


async def test_one_conversation_is_searched_alike_small_or_large(tmp_path: Path) -> None:
    """SQLite reads a small conversation message by message and a large one
    through the index's matches: the answers are the same."""
    store = SqliteStore(tmp_path / "chat.db")
    await store.open()
    try:
        feed = Feed(store)
        small_ids = await feed.say_many("small", "bob", [f"the note {i}" for i in range(30)])
        await feed.say_many("noise", "bob", ["the other room"] * 50)
        large_ids = await feed.say_many("large", "bob", [f"the line {i}" for i in range(2100)])
        for room, ids in (("small", small_ids), ("large", large_ids)):
            query = SearchQuery("the", (room, "noise"), None, conversation=room, limit=5)
            result = await store.search(query)
            assert [m.id for m in result.messages] == ids[::-1][:5], room
            assert result.more
            assert not result.cut
            older = await store.search(
                SearchQuery("the", (room,), None, conversation=room, before=ids[3], limit=5)
            )
            assert [m.id for m in older.messages] == ids[2::-1], room
    finally:
        await store.close()
