"""``chatd accounts``: list, delete, reset or make operators of accounts in a database file."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from chatd.errors import ChatError
from chatd.store import DatabaseInUse, SqliteStore, StoreError


def manage_accounts(args: argparse.Namespace) -> int:
    """``chatd accounts``: work on the database file directly."""
    if args.db == ":memory:" or not os.path.exists(args.db):
        print(f"chatd accounts: no database at {args.db}", file=sys.stderr)
        return 1
    return asyncio.run(_manage_accounts(args))


async def _manage_accounts(args: argparse.Namespace) -> int:
    from chatd.core.accounts import Passwords
    from chatd.protocol import check_password

    # A daemon reads accounts, passwords and operator flags from the file at
    # each login, so list, reset-password and oper share it with one. It keeps the registered
    # nicknames in memory, though: a delete behind its back would leave the
    # nickname reserved there, so delete takes the daemon's lock (see
    # DatabaseLock), which also keeps a daemon from starting meanwhile.
    store = SqliteStore(args.db, lock=args.action == "delete")
    try:
        await store.open()
    except DatabaseInUse as exc:
        who = f"a running chatd (pid {exc.holder})" if exc.holder else "a running chatd"
        print(
            f"chatd accounts: the database {exc.path} is in use by {who}; stop it to "
            "delete an account (list and reset-password work while it runs)",
            file=sys.stderr,
        )
        return 1
    except StoreError as exc:
        print(f"chatd accounts: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "list":
            for each in await store.accounts():
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(each.created))
                print(f"{each.nick}\t{created}" + ("\toper" if each.oper else ""))
            return 0
        account = await store.account(args.nick)
        if account is None:
            print(f"chatd accounts: no account {args.nick}", file=sys.stderr)
            return 1
        if args.action == "delete":
            await store.delete_account(args.nick)
            print(f"deleted {args.nick}")
            return 0
        if args.action == "oper":
            on = args.state == "on"
            await store.set_oper(account.nick, on)
            print(f"{account.nick} is {'now' if on else 'no longer'} a server operator")
            return 0
        password = _read_password()
        try:
            check_password(password)
        except ChatError as exc:
            print(f"chatd accounts: {exc.text}", file=sys.stderr)
            return 2
        passwords = Passwords()
        try:
            await store.set_password(args.nick, await passwords.hash(password))
        finally:
            passwords.close()
        print(f"password of {args.nick} reset")
        return 0
    finally:
        await store.close()


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != first:
            raise SystemExit("chatd accounts: the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")
