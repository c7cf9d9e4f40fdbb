"""``chatd rooms`` (list, show, transfer or delete the registered rooms) and
``chatd klines`` (list or lift the server bans), on a database file."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from chatd.core.rules import BanRecord, Grant, RoomRules
from chatd.errors import ChatError
from chatd.protocol import Role, check_room, name_key, parse_mask
from chatd.store import DatabaseInUse, SqliteStore, StoreError


def manage_klines(args: argparse.Namespace) -> int:
    """``chatd klines``: work on the database file directly."""
    if args.db == ":memory:" or not os.path.exists(args.db):
        print(f"chatd klines: no database at {args.db}", file=sys.stderr)
        return 1
    if args.action == "remove":
        try:
            mask = parse_mask(args.mask)
        except ChatError as exc:
            print(f"chatd klines: {exc.text}", file=sys.stderr)
            return 2
        # A bare name, as /klines shows one: its account's kline or its nickname's.
        bare = ":" not in args.mask
        args.masks = [f"account:{mask.value}", str(mask)] if bare else [str(mask)]
    return asyncio.run(_manage_klines(args))


async def _manage_klines(args: argparse.Namespace) -> int:
    store = await _open(args, "klines", lock=args.action == "remove")
    if store is None:
        return 1
    try:
        klines, now = {}, time.time()
        for doc in await store.klines():
            ban = BanRecord.load(json.loads(doc))
            klines[str(ban.mask)] = ban
        if args.action == "list":
            for mask, ban in sorted(klines.items()):
                if ban.until is not None and ban.until <= now:
                    continue  # over: the daemon ignores it
                until = (
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(ban.until))
                    if ban.until is not None
                    else "-"
                )
                print(f"{mask}\tby {ban.by or '-'}\tuntil {until}\t{ban.reason}".rstrip())
            return 0
        found = [mask for mask in args.masks if mask in klines]
        if not found:
            print(f"chatd klines: no kline on {args.masks[-1]}", file=sys.stderr)
            return 1
        for mask in found:
            store.save_kline(mask, None)
            print(f"lifted the kline on {mask}")
        return 0
    finally:
        await store.close()


async def _open(args: argparse.Namespace, command: str, *, lock: bool) -> SqliteStore | None:
    """The database, or None after saying why not (in use by a daemon: locked)."""
    store = SqliteStore(args.db, lock=lock)
    try:
        await store.open()
    except DatabaseInUse as exc:
        who = f"a running chatd (pid {exc.holder})" if exc.holder else "a running chatd"
        print(
            f"chatd {command}: the database {exc.path} is in use by {who}; stop it "
            f"first ({command} list works while it runs)",
            file=sys.stderr,
        )
        return None
    except StoreError as exc:
        print(f"chatd {command}: {exc}", file=sys.stderr)
        return None
    return store


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
    store = await _open(args, "rooms", lock=args.action in ("transfer", "delete"))
    if store is None:
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


def _about(seconds: float) -> str:
    """A time left, roughly, in its largest unit: ``3d``, ``5h``, ``12m``, ``40s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(1, int(seconds))}s"


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
        left = f"\t{_about(ban.until - now)} left" if ban.until else ""
        print(f"ban\t{ban.mask}\tby {ban.by or 'server'}{left}\t{ban.reason}".rstrip())
    for mute in room.mutes.values():
        if mute.until is None or mute.until > now:
            print(f"mute\t{mute.name}\tby {mute.by}")
