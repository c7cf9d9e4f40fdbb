"""The chat itself, with no sockets: the room model (the one owner of rooms
and members), the dispatcher (what each command does) and the bus (the
interface to the other nodes, with the one-daemon LocalBus)."""
