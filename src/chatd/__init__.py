"""chatd: a line-protocol chat daemon.

The folders are the layers, and imports only point down (tests/test_layers.py):
:mod:`chatd.protocol` (bytes <-> commands and events, no I/O),
:mod:`chatd.store`, :mod:`chatd.core` (rooms, dispatch, the bus),
:mod:`chatd.cluster` and :mod:`chatd.transports`, :mod:`chatd.daemon`
(server, sessions), then the client, the tools and the command line.
See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
