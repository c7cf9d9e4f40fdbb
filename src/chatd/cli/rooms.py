"""``chatd rooms``: list, show, transfer or delete the registered rooms in a database file."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from chatd.core.rules import Grant, RoomRules
from chatd.errors import ChatError
from chatd.protocol import Role, check_room, format_duration, name_key
from chatd.store import DatabaseInUse, SqliteStore, StoreError


def manage_rooms(args: argparse.Namespace) -> int:
    """``chatd rooms``: work on the database file directly."""
    if args.db == ":memory:" or not os.path.exists(args.db):
        print(f"chatd rooms: no database at {args.db}", file=sys.stderr)
        return 1
    if args.action != "list":
        try:
            args.room = check_room(args.room)
        except ChatError as exc:
            print(f"chatd rooms: {exc.text}", file=sys.stderr)
            return 2
    return asyncio.run(_manage_rooms(args))


async def _manage_rooms(args: argparse.Namespace) -> int:
    # A running daemon keeps each registered room's rules in memory and
    # writes them whole: list and show may read beside it, but transfer and
    # delete take its lock, so that no daemon writes over them.
    store = SqliteStore(args.db, lock=args.action in ("transfer", "delete"))
    try:
        await store.open()
    except DatabaseInUse as exc:
        who = f"a running chatd (pid {exc.holder})" if exc.holder else "a running chatd"
        print(
            f"chatd rooms: the database {exc.path} is in use by {who}; stop it to "
            f"{args.action} a room (list and show work while it runs)",
            file=sys.stderr,
        )
        return 1
    except StoreError as exc:
        print(f"chatd rooms: {exc}", file=sys.stderr)
        return 1
    try:
        return await _act(store, args)
    finally:
        await store.close()


async def _act(store: SqliteStore, args: argparse.Namespace) -> int:
    rules = {name_key(n): (n, RoomRules.load(doc)) for n, doc in (await store.all_rules()).items()}
    if args.action == "list":
        for name, room in sorted(rules.values(), key=lambda r: name_key(r[0])):
            owner = room.owner[1] if room.owner else "-"
            modes = room.modes.flags() or "-"
            print(f"{name}\towner {owner}\tmodes {modes}\tbans {len(room.bans)}")
        return 0
    found = rules.get(name_key(args.room))
    if found is None:
        print(f"chatd rooms: no registered room #{args.room}", file=sys.stderr)
        return 1
    name, room = found
    if args.action == "show":
        _show(name, room)
        return 0
    if args.action == "delete":
        await store.delete_room(name)
        print(f"deleted #{name}")
        return 0
    account = await store.account(args.account)
    if account is None:
        print(f"chatd rooms: no account {args.account}", file=sys.stderr)
        return 1
    old = room.owner
    if old is not None and old[0] != account.id:
        room.roles[f"a:{old[0]}"] = Grant(old[1], Role.OP)
    room.roles.pop(f"a:{account.id}", None)
    room.owner = (account.id, account.nick)
    store.save_rules(name, room.dump(), registered=True, secret=room.modes.secret)
    entry = {"ts": time.time(), "by": None, "action": "transfer", "target": account.nick}
    entry["detail"] = f"from {old[1]}" if old is not None else ""
    store.log_action(name_key(name), json.dumps(entry))
    print(f"#{name} now belongs to {account.nick}")
    return 0


def _show(name: str, room: RoomRules) -> None:
    modes = room.modes
    print(f"room\t#{name}")
    print(f"owner\t{room.owner[1] if room.owner else '- (the server operators)'}")
    args = [a for a in (modes.key, None if modes.limit is None else str(modes.limit)) if a]
    print(f"modes\t{' '.join([modes.flags() or '-', *args])}")
    for grant in sorted(room.roles.values(), key=lambda g: (-g.role, g.name.lower())):
        print(f"{grant.role.label}\t{grant.name}")
    now = time.time()
    for ban in room.bans:
        if ban.until is not None and ban.until <= now:
            continue
        left = f"\t{format_duration(max(1, int(ban.until - now)))} left" if ban.until else ""
        print(f"ban\t{ban.mask}\tby {ban.by or 'server'}{left}\t{ban.reason}".rstrip())
    for mute in room.mutes.values():
        if mute.until is None or mute.until > now:
            print(f"mute\t{mute.name}\tby {mute.by}")
