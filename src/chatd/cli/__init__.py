"""The ``chatd`` command: ``serve``, ``connect``, ``accounts``, ``gencert``, ``bench``,
``health``.

* :mod:`chatd.cli.main`: :func:`main`, the subcommand dispatch, logging, the
  event loop and signals, ``serve`` and ``connect``;
* :mod:`chatd.cli.args`: the parsers; ``serve``'s options are made from
  :class:`chatd.config.Settings` (:func:`build_parser`,
  :func:`settings_from_args`);
* :mod:`chatd.cli.accounts`, :mod:`chatd.cli.gencert`, :mod:`chatd.cli.health`:
  the subcommands of those names.
"""

from chatd.cli.args import build_parser, settings_from_args
from chatd.cli.main import main

__all__ = ["build_parser", "main", "settings_from_args"]
