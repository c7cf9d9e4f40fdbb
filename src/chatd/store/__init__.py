"""What chatd remembers: accounts and their rooms, rooms with topics, and every message.

:class:`Store` (in :mod:`chatd.store.base`, with the records it keeps) is the
small interface the rest of the daemon uses; two stores implement it:

* :class:`MemoryStore` (``--db :memory:``, :mod:`chatd.store.memory`) keeps
  everything in this process and nothing across restarts; each conversation
  keeps its last ``MEMORY_HISTORY`` messages.
* :class:`SqliteStore` (:mod:`chatd.store.sqlite`) keeps everything in one
  SQLite file, in WAL mode. One writer thread owns the write connection and
  commits whatever has queued up since its last commit in one transaction
  (group commit); a reader thread with its own connection answers queries,
  and a search thread with another answers ``/search`` (through an FTS5
  index), which WAL lets run beside the writes. The event loop never
  touches SQLite.
  A daemon holds its file alone (:class:`DatabaseLock`).

Writes that must be durable before anyone sees them (messages) take a
``done`` callback: it runs on the event loop after the commit, in the order
the writes were made, so the caller can fan out in store order.

The rest of chatd imports from this package, not from its modules: every
name it uses is re-exported here, and :func:`open_store` picks the store.
"""

from __future__ import annotations

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
    dm_key,
)
from chatd.store.memory import MEMORY_HISTORY, MemoryStore
from chatd.store.sqlite import (
    BATCH_MAX,
    MIGRATIONS,
    SCHEMA_VERSION,
    DatabaseInUse,
    DatabaseLock,
    SqliteStore,
    default_db_path,
    migrate,
)

__all__ = [
    "BATCH_MAX",
    "MEMORY_HISTORY",
    "MIGRATIONS",
    "MODLOG_MAX",
    "SCHEMA_VERSION",
    "UNREAD_CAP",
    "Account",
    "AccountRooms",
    "DatabaseInUse",
    "DatabaseLock",
    "Done",
    "MemoryStore",
    "RoomRecord",
    "SearchQuery",
    "SearchResult",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoredMessage",
    "Unread",
    "default_db_path",
    "dm_key",
    "migrate",
    "open_store",
]


def open_store(db: str, *, sync: str = "normal") -> Store:
    """The store for a ``--db`` value (not yet opened)."""
    if db == ":memory:":
        return MemoryStore()
    return SqliteStore(db, sync=sync)
