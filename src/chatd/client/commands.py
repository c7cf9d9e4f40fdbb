"""The lines the user types, as the client sorts them before sending.

``/format`` typed by the user is refused locally: switching the server to
text would break the client, so ``/help`` does not list it. The commands
that carry a password are never kept in the prompt's history.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

#: Commands this client does not send, and why (said when one is typed).
#: ``/help`` leaves them out: it lists only what works here.
REFUSED_COMMANDS: Final[Mapping[str, str]] = {
    "/format": "this client needs JSON from the server (use 'chatd connect --json' to print JSON)",
}

#: Commands whose arguments are passwords: never kept in the prompt's history.
SECRET_COMMANDS: Final = frozenset({"/login", "/register", "/passwd"})


def command_name(line: str) -> str | None:
    """``/quit`` for ``/QUIT bye``; None when the line is said, not a command."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    return line.split(" ", 1)[0].lower()
