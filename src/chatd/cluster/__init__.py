"""Cluster mode: several daemons, one chat, through one Redis server.

Each daemon (a *node*) keeps its own members in its own
:class:`~chatd.core.rooms.RoomManager`; Redis holds what the nodes share:

===========================  ===================================================
``chatd:nicks``              hash: nickname key -> ``node TAB nick TAB account``
``chatd:node:NODE``          set: the nickname keys a node holds
``chatd:in:NODE:NICK``       set: the rooms a nickname on a node is in
``chatd:members:ROOM``       hash: nickname key -> ``node TAB nick``
``chatd:roomnames``          hash: room key -> display name (rooms in use)
``chatd:fresh:ROOM``         string: the node bringing a room into use (10 s)
``chatd:topics``             hash: room key -> JSON ``[name, topic, by]``
``chatd:nodes``              sorted set: node -> heartbeat deadline (ms)
``chatd:msgid``              counter: the id of the last message
``chatd:conv:CONV``          stream per room or private conversation, capped
``chatd:accounts``           hash: nickname key -> JSON account
``chatd:accountid``          counter: the id of the last account
``chatd:accountrooms``       hash: account id -> JSON ``[[room, ...], current]``
``chatd:read:ACCOUNT``       hash: conversation key -> the id of the last message read
``chatd:with:NICK``          set: the nodes an account is connected through, when several
``chatd:sessions:NICK``      hash: session id -> ``node TAB [transport, address, since]``
===========================  ===================================================

Channels: ``chatd:r:ROOM`` carries a room's events, ``chatd:n:NODE`` what
is addressed to one node (private messages, kicks, barriers), and
``chatd:rooms`` rooms coming into use and going out of use (for the members
that ``/rooms watch``). A node subscribes to the rooms it has members in, to
its own channel and to ``chatd:rooms``.

Every change is one Lua script, so Redis applies it atomically: a message
takes its id from ``chatd:msgid``, is appended to its stream and published,
in one step. Redis runs scripts one at a time, so the order of ids is the
order of publication, and every subscriber sees a room's messages in that
order. A node delivers room messages when they come back from Redis, its
own included: that is what gives every node the same order.

The event loop never waits on Redis for a room message: writes go through
one bounded queue, sent in pipelined batches by one task, and the sender
learns of a failure from the message's completion. While Redis cannot be
reached, senders are told ``cluster_unavailable``, the node reconnects with
backoff, then writes its own state back (nicknames, memberships),
resubscribes, and fetches from the streams what its rooms missed.
"""
