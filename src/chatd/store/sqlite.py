"""The SQLite store: everything in one file, in WAL mode.

One writer thread owns the write connection and commits whatever has queued
up since its last commit in one transaction (group commit); a reader thread
with its own connection answers queries, which WAL lets run beside the
writes, and a third thread and connection run searches (each bounded by its
time budget, so a slow one holds up only other searches). The event loop
never touches SQLite. A daemon holds its file alone
(:class:`DatabaseLock`). The schema is :data:`MIGRATIONS`, applied forward on
open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from chatd.errors import BadQuery
from chatd.protocol import name_key
from chatd.protocol.mention import mentions
from chatd.store.base import (
    MODLOG_MAX,
    UNREAD_CAP,
    Account,
    AccountRooms,
    Done,
    RoomRecord,
    SearchQuery,
    SearchResult,
    Store,
    StoredMessage,
    StoreError,
    Unread,
)
from chatd.store.search import parse, searchable

T = TypeVar("T")

# Log lines name the package (chatd.store), not this module.
logger = logging.getLogger(__name__)

#: Most writes in one group commit.
BATCH_MAX: Final = 2_000
#: Private conversations of one account that /unread looks through at most.
PRIVATE_MAX: Final = 5_000
#: SQLite virtual machine steps between two looks at a search's clock.
_PROGRESS_STEPS: Final = 1_000


class DatabaseInUse(StoreError):
    """Another process holds the database's lock (see :class:`DatabaseLock`)."""

    def __init__(self, path: Path, holder: int | None) -> None:
        self.path = path
        #: The pid that holds the lock, if it could be told.
        self.holder = holder
        by = "another chatd" + (f" (pid {holder})" if holder else "")
        super().__init__(
            f"the database {path} is in use by {by}; give each daemon its own --db "
            "(or --db :memory:), or stop the other one first"
        )


#: The schema, one migration per version. ``PRAGMA user_version`` holds the
#: version a database is at; a database is migrated forward on open.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: accounts and messages.
    (
        """CREATE TABLE accounts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            nick TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            conv TEXT NOT NULL,
            room TEXT,
            sender TEXT NOT NULL,
            target TEXT,
            text TEXT NOT NULL,
            action INTEGER NOT NULL DEFAULT 0,
            sender_account INTEGER,
            target_account INTEGER
        )""",
        "CREATE INDEX messages_by_conversation ON messages (conv, id)",
    ),
    # 2: rooms that outlive their members (those with a topic).
    (
        """CREATE TABLE rooms (
            key TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            topic TEXT NOT NULL,
            topic_by TEXT,
            updated REAL NOT NULL
        )""",
    ),
    # 3: the rooms each account is in, rejoined at its next login.
    (
        """CREATE TABLE account_rooms (
            account INTEGER NOT NULL,
            position INTEGER NOT NULL,
            name TEXT NOT NULL,
            current INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (account, position)
        )""",
    ),
    # 4: rooms that belong to someone, their moderation log, server bans, operators.
    (
        "ALTER TABLE accounts ADD COLUMN oper INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE room_rules (
            key TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            doc TEXT NOT NULL,
            updated REAL NOT NULL
        )""",
        """CREATE TABLE modlog (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            room TEXT NOT NULL,
            entry TEXT NOT NULL
        )""",
        "CREATE INDEX modlog_by_room ON modlog (room, id)",
        """CREATE TABLE klines (
            mask TEXT PRIMARY KEY,
            doc TEXT NOT NULL
        )""",
    ),
    # 5: read markers, and the full-text index of the messages (for /search).
    (
        """CREATE TABLE read_markers (
            account INTEGER NOT NULL,
            conv TEXT NOT NULL,
            id INTEGER NOT NULL,
            PRIMARY KEY (account, conv)
        )""",
        # The private messages each account received, by conversation: the
        # conversations /unread lists are found here, not in every message.
        """CREATE INDEX messages_to_account ON messages (target_account, conv, id)
            WHERE target_account IS NOT NULL""",
        # External content: the index keeps only the words; the text stays in
        # messages. The triggers keep both in the same transaction.
        """CREATE VIRTUAL TABLE messages_fts USING fts5(
            text, content='messages', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2'
        )""",
        """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
        END""",
        """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, text)
                VALUES ('delete', old.id, old.text);
        END""",
        """CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, text)
                VALUES ('delete', old.id, old.text);
            INSERT INTO messages_fts (rowid, text) VALUES (new.id, new.text);
        END""",
        # The messages stored before: searchable too.
        "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_MESSAGE_COLUMNS: Final = (
    "id, ts, room, sender, target, text, action, sender_account, target_account"
)
_M_COLUMNS: Final = ", ".join("m." + c for c in _MESSAGE_COLUMNS.split(", "))


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a database to SCHEMA_VERSION; return the version it was at."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database was written by a newer chatd (schema version {version}; "
            f"this chatd knows up to {SCHEMA_VERSION}); upgrade chatd or use another --db"
        )
    for number in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return int(version)


#: The action column's value for a notice.
_NOTICE = 2


def _row_message(row: tuple[Any, ...]) -> StoredMessage:
    id_, ts, room, sender, target, text, action, sender_account, target_account = row
    # The action column holds the kind: 0 a line, 1 an action, 2 a notice.
    return StoredMessage(
        id_,
        ts,
        room,
        sender,
        target,
        text,
        action == 1,
        sender_account,
        target_account,
        action == _NOTICE,
    )


def _message_row(m: StoredMessage) -> tuple[Any, ...]:
    return (
        m.id,
        m.ts,
        m.conversation,
        m.room,
        m.sender,
        m.to,
        m.text,
        _NOTICE if m.notice else int(m.action),
        m.sender_account,
        m.to_account,
    )


@dataclasses.dataclass(slots=True)
class _Write:
    """One queued write: a message row, or a function run in the transaction."""

    row: tuple[Any, ...] | None
    run: Callable[[sqlite3.Connection], Any] | None
    done: Callable[[Any, BaseException | None], None]


class SqliteStore(Store):
    """One SQLite file in WAL mode, written by one thread with group commit."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "normal",
        clock: Callable[[], float] = time.time,
        lock: bool = True,
    ) -> None:
        """``lock=False`` opens a database that a daemon may hold: only for
        changes that daemon reads back from the file (not :meth:`is_registered`)."""
        self.path = Path(path)
        self._lock = DatabaseLock(self.path) if lock else None
        self._sync = sync
        self._clock = clock
        self._registered: set[str] = set()
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._pending = 0
        self._writer: threading.Thread | None = None
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chatd-db-read")
        # Searches have their own thread and connection: one that takes its
        # whole time budget does not hold up logins and history.
        self._searcher = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="chatd-db-search"
        )
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._sconn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.migrated_from: int | None = None

    # -- life cycle ------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._open)
        except sqlite3.Error as exc:
            self._close_connections()
            raise StoreError(f"cannot use the database {self.path}: {exc}") from None
        except StoreError:
            self._close_connections()
            raise
        self._writer = threading.Thread(target=self._write_loop, name="chatd-db-write", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _open(self) -> None:
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock is not None:
            # Before SQLite touches the file: a refused daemon migrates nothing.
            try:
                self._lock.acquire()
            except OSError as exc:
                raise StoreError(
                    f"cannot use the database {self.path}: {exc.strerror or exc}"
                ) from None
        self._wconn = conn = self._connect()
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise StoreError(f"cannot use the database {self.path}: WAL mode is not available")
        conn.execute(f"PRAGMA synchronous = {self._sync.upper()}")
        self.migrated_from = migrate(conn)
        # A read-only file opens and reads fine: find out now, not at the first
        # message, by writing the header (rolled back).
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        (last,) = conn.execute("SELECT max(id) FROM messages").fetchone()
        self.last_id = last or 0
        self._registered = {key for (key,) in conn.execute("SELECT key FROM accounts")}
        self._rconn = self._connect()
        self._sconn = self._connect()

    def _close_connections(self) -> None:
        """Close the connections, then let another daemon have the database."""
        for conn in (self._wconn, self._rconn, self._sconn):
            if conn is not None:
                conn.close()
        self._wconn = self._rconn = self._sconn = None
        if self._lock is not None:
            self._lock.release()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._reader.shutdown(wait=True)
        self._searcher.shutdown(wait=True)
        self._close_connections()

    # -- writes ----------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._pending

    def _submit(self, write: _Write) -> None:
        if self._writer is None:
            write.done(None, StoreError("the store is closed"))
            return
        self._pending += 1
        self._queue.put(write)

    def append(self, message: StoredMessage, done: Done) -> None:
        if message.id > self.last_id:
            self.last_id = message.id
        self._submit(_Write(_message_row(message), None, lambda _, exc: done(exc)))

    def barrier(self, done: Callable[[], None]) -> None:
        if self._pending == 0:
            done()
        else:
            self._submit(_Write(None, None, lambda _, __: done()))

    async def _write(self, run: Callable[[sqlite3.Connection], Any]) -> Any:
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._submit(_Write(None, run, done))
        return await future

    def _write_loop(self) -> None:
        """The writer thread: commit whatever has queued, in one transaction."""
        conn = self._wconn
        assert conn is not None
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < BATCH_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            results: list[Any] = []
            error: BaseException | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows = [w.row for w in batch if w.row is not None]
                    if rows:
                        conn.executemany(
                            "INSERT INTO messages (id, ts, conv, room, sender, target, text,"
                            " action, sender_account, target_account)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            rows,
                        )
                    results = [None if w.run is None else w.run(conn) for w in batch]
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite ends some failed ones itself
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                logger.error("database write failed (%d writes lost): %s", len(batch), exc)
                error = StoreError(f"the database cannot be written: {exc}")
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self._loop.call_soon_threadsafe(self._completed, batch, results, error)

    def _completed(
        self, batch: list[_Write], results: list[Any], error: BaseException | None
    ) -> None:
        self._pending -= len(batch)
        if error is not None:
            self.last_failure = time.monotonic()
        elif any(w.row is not None for w in batch):
            self.last_failure = None
        for i, write in enumerate(batch):
            try:
                write.done(results[i] if error is None else None, error)
            except Exception:
                logger.exception("store completion failed")

    def save_room(self, room: RoomRecord) -> None:
        key, now = name_key(room.name), self._clock()

        def run(conn: sqlite3.Connection) -> None:
            if room.topic:
                conn.execute(
                    "INSERT INTO rooms (key, name, topic, topic_by, updated) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET name = excluded.name,"
                    " topic = excluded.topic, topic_by = excluded.topic_by,"
                    " updated = excluded.updated",
                    (key, room.name, room.topic, room.topic_by, now),
                )
            else:
                conn.execute("DELETE FROM rooms WHERE key = ?", (key,))

        def done(_: Any, exc: BaseException | None) -> None:
            if exc is not None:
                logger.error("the topic of #%s was not saved: %s", room.name, exc)

        self._submit(_Write(None, run, done))

    async def create_account(self, nick: str, password_hash: str) -> Account | None:
        key, now = name_key(nick), self._clock()

        def run(conn: sqlite3.Connection) -> Account | None:
            cursor = conn.execute(
                "INSERT INTO accounts (key, nick, password_hash, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (key, nick, password_hash, now),
            )
            if cursor.rowcount != 1:
                return None
            assert cursor.lastrowid is not None
            return Account(cursor.lastrowid, nick, password_hash, now)

        account: Account | None = await self._write(run)
        if account is not None:
            self._registered.add(key)
        return account

    async def set_password(self, nick: str, password_hash: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE accounts SET password_hash = ? WHERE key = ?",
                (password_hash, name_key(nick)),
            )
            return cursor.rowcount == 1

        changed: bool = await self._write(run)
        return changed

    async def delete_account(self, nick: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            for table in ("account_rooms", "read_markers"):
                conn.execute(
                    f"DELETE FROM {table} WHERE account IN (SELECT id FROM accounts WHERE key = ?)",
                    (name_key(nick),),
                )
            cursor = conn.execute("DELETE FROM accounts WHERE key = ?", (name_key(nick),))
            return cursor.rowcount == 1

        deleted: bool = await self._write(run)
        self._registered.discard(name_key(nick))
        return deleted

    def save_account_rooms(self, account: int, rooms: AccountRooms) -> None:
        current = name_key(rooms.current) if rooms.current is not None else None
        rows = [
            (account, position, name, int(name_key(name) == current))
            for position, name in enumerate(rooms.rooms)
        ]

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM account_rooms WHERE account = ?", (account,))
            conn.executemany(
                "INSERT INTO account_rooms (account, position, name, current) VALUES (?, ?, ?, ?)",
                rows,
            )

        self._write_behind(run, f"the rooms of account {account}")

    def _write_behind(self, run: Callable[[sqlite3.Connection], Any], what: str) -> None:
        """A write nobody waits for, queued after the earlier ones; a failure is logged."""

        def done(_: Any, exc: BaseException | None) -> None:
            if exc is not None:
                logger.error("%s was not saved: %s", what, exc)

        self._submit(_Write(None, run, done))

    def save_rules(
        self, name: str, doc: str | None, *, registered: bool, secret: bool = False
    ) -> None:
        key, now = name_key(name), self._clock()

        def run(conn: sqlite3.Connection) -> None:
            if doc is not None and registered:
                conn.execute(
                    "INSERT INTO room_rules (key, name, doc, updated) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET name = excluded.name,"
                    " doc = excluded.doc, updated = excluded.updated",
                    (key, name, doc, now),
                )
            else:
                conn.execute("DELETE FROM room_rules WHERE key = ?", (key,))

        self._write_behind(run, f"the rules of #{name}")

    async def all_rules(self) -> dict[str, str]:
        rows = await self._read("SELECT name, doc FROM room_rules ORDER BY key")
        return {name: doc for name, doc in rows}

    def log_action(self, room_key: str, entry: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO modlog (room, entry) VALUES (?, ?)", (room_key, entry))
            # This room's entries past its last MODLOG_MAX (ids are shared by every room).
            conn.execute(
                "DELETE FROM modlog WHERE room = ? AND id <= (SELECT id FROM modlog"
                " WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (room_key, room_key, MODLOG_MAX),
            )

        self._write_behind(run, f"the moderation log of #{room_key}")

    async def modlog(self, room_key: str, limit: int) -> list[str]:
        await self._written()
        rows = await self._read(
            "SELECT entry FROM modlog WHERE room = ? ORDER BY id DESC LIMIT ?", room_key, limit
        )
        return [entry for (entry,) in reversed(rows)]

    def save_kline(self, mask: str, doc: str | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if doc is None:
                conn.execute("DELETE FROM klines WHERE mask = ?", (mask,))
            else:
                conn.execute(
                    "INSERT INTO klines (mask, doc) VALUES (?, ?)"
                    " ON CONFLICT (mask) DO UPDATE SET doc = excluded.doc",
                    (mask, doc),
                )

        self._write_behind(run, f"the kline on {mask}")

    async def klines(self) -> list[str]:
        return [doc for (doc,) in await self._read("SELECT doc FROM klines ORDER BY mask")]

    async def set_oper(self, nick: str, on: bool) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE accounts SET oper = ? WHERE key = ?", (int(on), name_key(nick))
            )
            return cursor.rowcount == 1

        changed: bool = await self._write(run)
        return changed

    async def delete_room(self, name: str) -> None:
        """Forget a room: its rules, topic, moderation log and messages
        (``chatd rooms delete``, with the daemon stopped)."""
        key = name_key(name)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM room_rules WHERE key = ?", (key,))
            conn.execute("DELETE FROM rooms WHERE key = ?", (key,))
            conn.execute("DELETE FROM modlog WHERE room = ?", (key,))
            conn.execute("DELETE FROM messages WHERE conv = ?", (key,))

        await self._write(run)

    async def _written(self) -> None:
        """Wait until the writes queued before are committed."""
        assert self._loop is not None
        saved: asyncio.Future[None] = self._loop.create_future()
        self.barrier(lambda: None if saved.done() else saved.set_result(None))
        await saved

    async def writable(self) -> bool:
        try:
            # A real write of the header (same value): a read-only file fails it.
            await self._write(lambda conn: conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}"))
        except StoreError:
            return False
        return True

    # -- reads -----------------------------------------------------------

    async def _read(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self._read_with(lambda conn: conn.execute(query, args).fetchall())

    async def _read_with(
        self, run: Callable[[sqlite3.Connection], T], *, searching: bool = False
    ) -> T:
        """``run(connection)`` on the reader thread (or the search thread)."""

        def call() -> T:
            conn = self._sconn if searching else self._rconn
            assert conn is not None
            return run(conn)

        executor = self._searcher if searching else self._reader
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call)
        except sqlite3.Error as exc:
            raise StoreError(f"the database cannot be read: {exc}") from None

    async def rooms(self) -> list[RoomRecord]:
        rows = await self._read("SELECT name, topic, topic_by FROM rooms ORDER BY key")
        return [RoomRecord(*row) for row in rows]

    async def recent(
        self,
        conversation: str,
        limit: int,
        before: int | None = None,
        account: int | None = None,
    ) -> tuple[list[StoredMessage], bool]:
        query = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conv = ? AND id < ?"
        args: list[Any] = [conversation, before if before is not None else 2**63 - 1]
        if account is not None:
            query += " AND (sender_account = ? OR target_account = ?)"
            args += [account, account]
        rows = await self._read(query + " ORDER BY id DESC LIMIT ?", *args, limit + 1)
        more = len(rows) > limit
        return [_row_message(row) for row in reversed(rows[:limit])], more

    def is_registered(self, nick: str) -> bool:
        return name_key(nick) in self._registered

    async def account(self, nick: str) -> Account | None:
        rows = await self._read(
            "SELECT id, nick, password_hash, created, oper FROM accounts WHERE key = ?",
            name_key(nick),
        )
        return _account(rows[0]) if rows else None

    async def accounts(self) -> list[Account]:
        rows = await self._read(
            "SELECT id, nick, password_hash, created, oper FROM accounts ORDER BY key"
        )
        return [_account(row) for row in rows]

    async def account_rooms(self, account: int) -> AccountRooms:
        # After the writes queued before: a login right after a /join sees it.
        await self._written()
        rows = await self._read(
            "SELECT name, current FROM account_rooms WHERE account = ? ORDER BY position", account
        )
        current = next((name for name, is_current in rows if is_current), None)
        return AccountRooms(tuple(name for name, _ in rows), current)

    # -- read markers, unread counts, search ---------------------------------

    def save_read(self, account: int, conversation: str, message_id: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO read_markers (account, conv, id) VALUES (?, ?, ?)"
                " ON CONFLICT (account, conv) DO UPDATE SET id = max(id, excluded.id)",
                (account, conversation, message_id),
            )

        self._write_behind(run, f"the read marker of account {account} in {conversation}")

    async def read_markers(self, account: int) -> dict[str, int]:
        await self._written()
        rows = await self._read("SELECT conv, id FROM read_markers WHERE account = ?", account)
        return {conv: id_ for conv, id_ in rows}

    async def unread(self, account: int, nick: str, rooms: tuple[str, ...]) -> list[Unread]:
        await self._written()
        return await self._read_with(lambda conn: _unread(conn, account, nick, rooms))

    async def search(self, query: SearchQuery) -> SearchResult:
        """Through the FTS5 index, newest first: FTS5 hands out its matches in
        rowid (message id) order, so a page costs the matches it looks at,
        not the whole history. A progress handler stops the search at its
        budget; what was found by then is returned, with ``cut``."""
        match = parse(query.text).fts5()
        scope = _search_scope(query)
        if scope is None:
            return SearchResult([], False)
        where, args = scope
        sql = (
            f"SELECT {_M_COLUMNS} FROM messages_fts CROSS JOIN messages AS m"
            " ON m.id = messages_fts.rowid"
            f" WHERE messages_fts MATCH ? AND messages_fts.rowid < ? AND ({where})"
            " ORDER BY messages_fts.rowid DESC LIMIT ?"
        )
        before = query.before if query.before is not None else 2**63 - 1
        params: tuple[Any, ...] = (match, before, *args, query.limit + 1)
        conversation = query.conversation

        def run(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], bool]:
            if conversation is not None and _small(conn, conversation, before):
                # A few messages: test each against the index, rather than
                # walk every match of a common word in the whole history.
                small_sql = (
                    f"SELECT {_M_COLUMNS} FROM messages AS m CROSS JOIN messages_fts"
                    " ON messages_fts.rowid = m.id"
                    f" WHERE m.conv = ? AND m.id < ? AND messages_fts MATCH ? AND ({where})"
                    " ORDER BY m.id DESC LIMIT ?"
                )
                small = (conversation, before, match, *args, query.limit + 1)
                return _search(conn, small_sql, small, query.budget)
            return _search(conn, sql, params, query.budget)

        await self._written()
        rows, cut = await self._read_with(run, searching=True)
        return SearchResult(
            [_row_message(row) for row in rows[: query.limit]],
            len(rows) > query.limit,
            cut and len(rows) <= query.limit,
        )


def _unread(
    conn: sqlite3.Connection, account: int, nick: str, rooms: tuple[str, ...]
) -> list[Unread]:
    """Store.unread, on the reader thread: at most UNREAD_CAP rows per
    conversation, each found through an index."""
    markers: dict[str, int] = dict(
        conn.execute("SELECT conv, id FROM read_markers WHERE account = ?", (account,)).fetchall()
    )
    found: list[Unread] = []
    for key in rooms:
        last = markers.get(key, 0)
        rows = conn.execute(
            "SELECT room, sender_account, text FROM messages WHERE conv = ? AND id > ?"
            " ORDER BY id DESC LIMIT ?",
            (key, last, UNREAD_CAP),
        ).fetchall()
        if rows:
            name = rows[0][0]
        else:
            row = conn.execute(
                "SELECT room FROM messages WHERE conv = ? ORDER BY id DESC LIMIT 1", (key,)
            ).fetchone()
            name = row[0] if row is not None else None
        texts = [text for _, sender_account, text in rows if sender_account != account]
        found.append(
            Unread(key, name or key, None, len(texts), sum(mentions(t, nick) for t in texts), last)
        )
    # The private conversations the account received messages in, one index
    # seek each (messages_to_account), newest unread message first.
    private: list[tuple[int, Unread]] = []
    conv = ""
    for _ in range(PRIVATE_MAX):
        row = conn.execute(
            "SELECT conv FROM messages WHERE target_account = ? AND conv > ? ORDER BY conv LIMIT 1",
            (account, conv),
        ).fetchone()
        if row is None:
            break
        conv = row[0]
        last = markers.get(conv, 0)
        rows = conn.execute(
            "SELECT id, sender, sender_account, text FROM messages"
            " WHERE target_account = ? AND conv = ? AND id > ? ORDER BY id DESC LIMIT ?",
            (account, conv, last, UNREAD_CAP),
        ).fetchall()
        theirs = [(id_, sender, text) for id_, sender, sa, text in rows if sa != account]
        if theirs:
            newest, peer, _ = theirs[0]
            count = sum(mentions(text, nick) for _, _, text in theirs)
            private.append((newest, Unread(conv, None, peer, len(theirs), count, last)))
    private.sort(key=lambda p: p[0], reverse=True)
    return found + [u for _, u in private]


def _search_scope(query: SearchQuery) -> tuple[str, list[Any]] | None:
    """The SQL condition on ``m`` (messages) of the conversations ``query``
    may read, and its arguments; None if it may read none."""
    own = "(m.sender_account = ? OR m.target_account = ?)"
    account, conversation = query.account, query.conversation
    if conversation is not None:
        if not searchable(query, ()):
            return None
        if conversation.startswith("@"):
            return f"m.conv = ? AND {own}", [conversation, account, account]
        return "m.conv = ?", [conversation]
    parts: list[str] = []
    args: list[Any] = []
    if query.rooms:
        parts.append(f"m.conv IN ({', '.join('?' * len(query.rooms))})")
        args += query.rooms
    if account is not None:
        parts.append(f"(substr(m.conv, 1, 1) = '@' AND {own})")
        args += [account, account]
    return (" OR ".join(parts), args) if parts else None


#: A conversation with fewer messages than this (before the page asked for)
#: is searched message by message (see SqliteStore.search).
SMALL_CONVERSATION: Final = 2000


def _small(conn: sqlite3.Connection, conversation: str, before: int) -> bool:
    (count,) = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM messages WHERE conv = ? AND id < ? LIMIT ?)",
        (conversation, before, SMALL_CONVERSATION),
    ).fetchone()
    return int(count) < SMALL_CONVERSATION


def _search(
    conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], budget: float
) -> tuple[list[tuple[Any, ...]], bool]:
    """Run a search until it is done or its budget is spent (then SQLite is
    interrupted and the rows found so far are kept): (rows, cut)."""
    deadline = time.monotonic() + budget
    cut = False

    def progress() -> int:
        nonlocal cut
        if time.monotonic() > deadline:
            cut = True
        return int(cut)

    rows: list[tuple[Any, ...]] = []
    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    try:
        # Row by row: the rows stepped before an interruption are kept.
        rows.extend(conn.execute(sql, params))
    except sqlite3.OperationalError as exc:
        if cut:
            return rows, True
        text = str(exc)
        if "fts5" in text or "unterminated string" in text:
            raise BadQuery(f"cannot read the search: {text}") from None
        raise
    finally:
        conn.set_progress_handler(None, 0)
    return rows, cut


def _account(row: tuple[Any, ...]) -> Account:
    id_, nick, password_hash, created, oper = row
    return Account(id_, nick, password_hash, created, bool(oper))


class DatabaseLock:
    """The lock that keeps a database to one daemon: flock(2) on the file itself.

    A daemon numbers messages on from the highest id in its database, so two
    daemons on one file hand out the same ids and one of them loses every
    message whose id the other stored first. The kernel drops an flock when
    its holder's descriptor closes, so a holder that dies in any way (SIGKILL
    included) frees the database at once: unlike a pid file, nothing stale is
    left to clean up. The lock is on the database's inode, so every name of
    the file (a symbolic or a hard link, a relative path) meets the same lock.

    SQLite's own locks are POSIX record locks, which on Linux are independent
    of flock. A process loses its POSIX locks on a file when it closes any
    descriptor of that file, so the lock's descriptor is opened before SQLite
    opens the file and closed only after SQLite has closed it.
    """

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = db
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise DatabaseInUse (never waits); OSError if
        the file cannot be opened."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:  # a read-only file still locks; SQLite then says why
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(os.fstat(fd))
            os.close(fd)
            raise DatabaseInUse(self.db, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Let the next daemon have the database (closing the file drops the lock)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None


def _flock_holder(st: os.stat_result) -> int | None:
    """The pid holding an flock on the file ``st`` describes, from /proc/locks
    (Linux; None elsewhere, or if it cannot be told): said to whoever is
    refused, for information only."""
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/chatd/chatd.db``, or ``~/.local/share/chatd/chatd.db``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "chatd" / "chatd.db"
