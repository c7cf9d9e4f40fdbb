"""The SQLite store: everything in one file, in WAL mode.

One writer thread owns the write connection and commits whatever has queued
up since its last commit in one transaction (group commit); a reader thread
with its own connection answers queries, which WAL lets run beside the
writes. The event loop never touches SQLite. A daemon holds its file alone
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
from typing import Any, Final

from chatd.protocol import name_key
from chatd.store.base import (
    MODLOG_MAX,
    Account,
    AccountRooms,
    Done,
    RoomRecord,
    Store,
    StoredMessage,
    StoreError,
)

# Log lines name the package (chatd.store), not this module.
logger = logging.getLogger(__name__)

#: Most writes in one group commit.
BATCH_MAX: Final = 2_000


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
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_MESSAGE_COLUMNS: Final = (
    "id, ts, room, sender, target, text, action, sender_account, target_account"
)


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
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
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

    def _close_connections(self) -> None:
        """Close both connections, then let another daemon have the database."""
        for conn in (self._wconn, self._rconn):
            if conn is not None:
                conn.close()
        self._wconn = self._rconn = None
        if self._lock is not None:
            self._lock.release()

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._reader.shutdown(wait=True)
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
            conn.execute(
                "DELETE FROM account_rooms WHERE account IN"
                " (SELECT id FROM accounts WHERE key = ?)",
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
        def run() -> list[tuple[Any, ...]]:
            assert self._rconn is not None
            return self._rconn.execute(query, args).fetchall()

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, run)
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
