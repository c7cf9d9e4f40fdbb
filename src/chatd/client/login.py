"""The password typed in this session, to log in again after a reconnect.

The nickname of an account is protected, so taking it back on a new
connection needs a login: with the password of the ``/login`` or
``/register`` typed in this session, kept in memory only and updated by
``/passwd`` (the server then rejoins the account's rooms itself).
"""

from __future__ import annotations

from chatd.client.reconnect import Snapshot


class Relogin:
    """The ``/login`` line of the account this session is in, and what leads to it."""

    __slots__ = ("_login_sent", "_passwd_sent", "_register_sent", "line")

    def __init__(self) -> None:
        self.line: str | None = None  # the /login of the account we are in
        self._login_sent: str | None = None  # the last /login typed, not yet answered
        self._register_sent: str | None = None  # the password of the last /register typed
        self._passwd_sent: str | None = None  # the new password of the last /passwd typed

    def typed(self, command: str | None, line: str) -> None:
        """Note a ``/login``, ``/register`` or ``/passwd`` line the user sends."""
        if command == "/login":
            self._login_sent = line
        elif command == "/register" and len(words := line.split()) == 2:
            self._register_sent = words[1]
        elif command == "/passwd" and len(words := line.split()) == 3:
            self._passwd_sent = words[2]

    def registered(self, nick: object, *, account: bool, restore: Snapshot | None) -> None:
        """The server gave us ``nick``; ``restore``: the state a restore brings back."""
        if not account:
            self.line = None
        elif restore is not None:
            self.line = restore.login
        elif self._login_sent is not None:
            self.line, self._login_sent = self._login_sent, None
        elif self._register_sent is not None and isinstance(nick, str):
            # Registered here: the same password logs in again after a reconnect.
            self.line = f"/login {nick} {self._register_sent}"
            self._register_sent = None

    def passwd_changed(self, nick: str | None) -> None:
        """The server confirmed a ``/passwd``: log in with the new password from now on."""
        if self._passwd_sent is not None and self.line is not None and nick:
            self.line = f"/login {nick} {self._passwd_sent}"
        self._passwd_sent = None
