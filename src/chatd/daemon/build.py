"""The one place that wires a daemon's store and bus to its room manager.

One daemon on its own store (SQLite by default, or memory) gets the
:class:`~chatd.core.local.LocalBus`; with ``--redis`` the store is Redis and
the bus is the :class:`~chatd.cluster.bus.ClusterBus`. A new store or a new
bus is one more branch here, and nowhere else.
"""

from __future__ import annotations

import os
import socket

from chatd.config import Settings
from chatd.core.rooms import RoomManager
from chatd.store import Store, open_store


def build_manager(settings: Settings) -> RoomManager:
    """The room manager for ``settings``, with its store and its bus."""
    if settings.redis is None:
        return room_manager(settings, open_store(settings.db, sync=settings.db_sync))
    from chatd.cluster.bus import ClusterBus
    from chatd.cluster.link import RedisLink
    from chatd.cluster.store import RedisStore

    node = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
    store = RedisStore(RedisLink(settings.redis), node=node, history=settings.redis_history)
    manager = room_manager(settings, store)
    manager.attach(ClusterBus(store, manager, ttl=settings.node_ttl))
    return manager


def room_manager(s: Settings, store: Store) -> RoomManager:
    """A room manager with the limits of ``s`` (on the default bus)."""
    return RoomManager(
        max_rooms_per_session=s.max_rooms_per_session,
        max_rooms_on_server=s.max_total_rooms,
        max_members=s.max_room_members,
        announce_limit=s.announce_limit,
        history_on_join=s.history_on_join,
        # Half the soft limit: what one group of confirmations can add
        # to an outbox leaves a reader that keeps up well inside it.
        store_window_bytes=max(s.soft_queue_bytes // 2, s.max_line),
        store_window_messages=max(s.max_queue_events // 8, 1),
        store=store,
        opers=s.opers,
        max_owned_rooms=s.max_owned_rooms,
    )
