"""The terminal client: ``chatd connect``.

The client speaks JSON to the server and renders what it receives for
people; it reconnects on its own and shows what it missed meanwhile.

* :mod:`chatd.client.chat`: the connection, the reconnects and the state the
  client tracks (:class:`~chatd.client.chat.ChatClient`);
* :mod:`chatd.client.render`: server events as display lines (pure);
* :mod:`chatd.client.ui`: where those lines and status messages go;
* :mod:`chatd.client.terminal`: the prompt on a terminal, the plain mode on
  pipes, and :func:`run_client`;
* :mod:`chatd.client.catchup`, :mod:`chatd.client.reconnect`,
  :mod:`chatd.client.login`, :mod:`chatd.client.marks`, :mod:`chatd.client.link`,
  :mod:`chatd.client.commands`, :mod:`chatd.client.options`: the parts
  :class:`~chatd.client.chat.ChatClient` is made of.
"""

from chatd.client.options import ClientOptions
from chatd.client.reconnect import Backoff, restore_commands
from chatd.client.render import help_lines, json_line, nick_colour, parse_server_line, render_event
from chatd.client.terminal import _no_secrets_history, run_client

__all__ = [
    "Backoff",
    "ClientOptions",
    "_no_secrets_history",
    "help_lines",
    "json_line",
    "nick_colour",
    "parse_server_line",
    "render_event",
    "restore_commands",
    "run_client",
]
