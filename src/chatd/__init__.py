"""chatd: a line-protocol chat daemon.

The package splits along the path a line takes: :mod:`chatd.protocol` turns
bytes into commands and events into bytes, :mod:`chatd.core.rooms` changes the
shared state and fans events out, :mod:`chatd.daemon.session` owns one connection,
and :mod:`chatd.daemon.server` owns the listeners.
"""

__version__ = "0.1.0"
