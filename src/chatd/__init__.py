"""chatd: a line-protocol chat daemon.

The package splits along the path a line takes: :mod:`chatd.protocol` turns
bytes into commands and events into bytes, :mod:`chatd.rooms` changes the
shared state and fans events out, :mod:`chatd.session` owns one connection,
and :mod:`chatd.server` owns the listeners.
"""

__version__ = "0.1.0"
