"""The cluster's :class:`~chatd.core.bus.Bus`: presence, subscriptions and
fan-in through Redis (see :mod:`chatd.cluster`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Final

from redis.exceptions import RedisError

from chatd.cluster.link import COMMAND_TIMEOUT, Unavailable, as_text
from chatd.cluster.listener import Listener
from chatd.cluster.scripts import (
    BUMP_ID,
    CLAIM,
    DIRECT,
    FRESH,
    HEARTBEAT,
    JOIN,
    LEAVE,
    PERSON,
    REAP,
    RELEASE,
    ROOMS,
    P,
)
from chatd.cluster.store import RedisStore, stream_message
from chatd.core.bus import Bus, Hub, Opening, Person
from chatd.core.model import Member, Room
from chatd.errors import (
    ChatError,
    ClusterUnavailable,
    NickRegistered,
    NickTaken,
    NoSuchNick,
    NoSuchRoom,
    NotInRoom,
    RoomExists,
)
from chatd.protocol import (
    DEFAULT_ROOM,
    Direct,
    Event,
    Joined,
    Left,
    Message,
    RoomList,
    SessionEntry,
    TopicIs,
    WhoList,
    event_from_json,
    event_to_json,
    name_key,
)
from chatd.store import (
    RoomRecord,
    StoredMessage,
    StoreError,
)

logger = logging.getLogger(__name__)

#: Most messages fetched per room from its stream after an outage.
CATCH_UP_MAX: Final = 1000


class ClusterBus(Bus):
    """This node's part in the cluster: presence, subscriptions, fan-in.

    The :class:`~chatd.core.rooms.RoomManager` calls the non-async methods
    as its members change (they queue writes and never wait); the dispatcher
    awaits the async ones (claiming a nickname, opening a room, queries).
    What arrives from Redis goes to the manager through its
    :class:`~chatd.core.bus.Hub` calls.
    """

    def __init__(self, store: RedisStore, hub: Hub, *, ttl: float) -> None:
        self.store = store
        self.link = link = store.link
        self.hub = hub
        self.node = store.node
        self.history = store.history
        self.ttl = ttl
        for name, source in (
            ("claim", CLAIM),
            ("release", RELEASE),
            ("join", JOIN),
            ("leave", LEAVE),
            ("direct", DIRECT),
            ("heartbeat", HEARTBEAT),
            ("reap", REAP),
            ("rooms", ROOMS),
            ("bump_id", BUMP_ID),
            ("person", PERSON),
            ("fresh", FRESH),
        ):
            link.script(name, source)
        link.on_up = self._rejoin
        link.on_down = self._lost
        self._opening: dict[str, asyncio.Future[bool]] = {}
        self._barriers: dict[int, Callable[[], None]] = {}
        self._barrier_seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.listener = Listener(
            link,
            self.node,
            hub,
            opening=self._opening.__contains__,
            barrier_back=self._barrier_back,
            account=self._account,
        )
        #: Accounts held here that are connected through other nodes too:
        #: their key -> those nodes, and the rooms they are in there (as
        #: the claim found them, then as the other nodes tell).
        self._elsewhere: dict[str, set[str]] = {}
        self._remote_rooms: dict[str, set[str]] = {}
        #: Rooms being made live for a connection to follow its account there.
        self._follows: set[asyncio.Task[None]] = set()
        #: Nicknames being claimed by members of this node right now.
        self._claiming: set[str] = set()
        #: Messages stored whose echoes are on their way back from Redis:
        #: (member, op number); one echo barrier at a time is out for them.
        self._echoes: list[tuple[Member, int]] = []
        self._echo_barrier = False

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        """Take this node's place: drop a stale self, subscribe, heartbeat."""
        await self.link.call("reap", self.node, "node restarted")
        await self.link.call("heartbeat", self.node, int(self.ttl * 1000))
        await self.link.command("HSETNX", P + "roomnames", DEFAULT_ROOM, DEFAULT_ROOM)
        await self.listener.subscribe_all()
        self._tasks = [
            asyncio.create_task(self.listener.read_loop(), name="chatd-redis-reader"),
            asyncio.create_task(self._heartbeat_loop(), name="chatd-heartbeat"),
        ]
        logger.info("node %s joined the cluster at %s", self.node, self.link.url)

    async def stop(self) -> None:
        """Leave: let the queued writes finish, then remove this node's state."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self.link.drained()
        for task in [*self._tasks, *self._follows]:
            task.cancel()
        for task in [*self._tasks, *self._follows]:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("cluster task %s failed", task.get_name())
        self._tasks = []
        await self.listener.cancel()
        with contextlib.suppress(Unavailable, RedisError):
            await self.link.call("reap", self.node, "node stopped")
        await self.listener.close()

    @property
    def trouble(self) -> str:
        return "" if self.link.up else self.link.why

    # -- called by the room manager (never wait) -----------------------------

    def restored(self, last_id: int) -> None:
        pass  # Redis numbers the messages

    def keeps(self, record: RoomRecord) -> bool:
        # Other rooms become live here when someone here joins them.
        return name_key(record.name) == DEFAULT_ROOM

    def number(self) -> int:
        return 0  # the store's script takes the id from chatd:msgid

    def echo_room(self, room_key: str) -> str | None:
        return room_key  # every node delivers a message as it comes back

    def stored(self, member: Member, seq: int, record: StoredMessage) -> bool:
        """A message is stored and published: it reaches every node's
        members, this one's included, as it comes back from Redis. Its
        operation ends with its echo (Member.echo), or else after a barrier
        that passes once it came back (the sender left the room meanwhile).
        One barrier at a time serves every message stored before it was
        sent; those stored while it is on its way wait for the next one."""
        self._echoes.append((member, seq))
        if not self._echo_barrier:
            self._send_echo_barrier()
        return True

    def _send_echo_barrier(self) -> None:
        batch, self._echoes = self._echoes, []
        self._echo_barrier = True

        def back() -> None:
            self._echo_barrier = False
            for member, seq in batch:
                member.end_op(seq)
            if self._echoes:
                self._send_echo_barrier()

        self.barrier(back)

    def joined(self, member: Member, room: Room, created: bool) -> None:
        # Redis tells every node (this one too) of a room that came into use.
        assert member.key is not None
        args = (self.node, member.key, member.nick, room.key, room.name)
        self.link.submit("join", args, _log_failure, essential=True)
        self._to_account(member.key, ["aj", member.key, room.name])

    def left(self, member: Member, room: Room) -> None:
        assert member.key is not None
        self.link.submit("leave", (self.node, member.key, room.key), _log_failure, essential=True)
        self._to_account(member.key, ["al", member.key, room.key])
        self.went(member, room)

    def went(self, member: Member, room: Room) -> None:
        if not room.members and room.key not in self._opening and self.hub.close_room(room):
            self.listener.closed(room.key)

    def released(self, key: str, reason: str = "") -> None:
        self.link.submit("release", (self.node, key, reason), _log_failure, essential=True)
        self._elsewhere.pop(key, None)
        self._remote_rooms.pop(key, None)

    # -- an account connected through several nodes -----------------------------

    def elsewhere(self, key: str) -> bool:
        return bool(self._elsewhere.get(key))

    def present(self, key: str, room_key: str) -> bool:
        return room_key in self._remote_rooms.get(key, ())

    def account_event(self, key: str, event: Event) -> None:
        self._to_account(key, ["ae", key, event_to_json(event)])

    def session_id(self, number: int) -> str:
        return f"{self.node}.s{number}"  # one id space for the whole cluster

    def _shared(self, key: str, answer: list[Any]) -> None:
        """CLAIM's answer for an account connected through other nodes:
        {'shared', nick, the other nodes..., '', the account's rooms...}."""
        values = [as_text(v) for v in answer[2:]]
        split = values.index("")
        self._elsewhere[key] = set(values[:split])
        self._remote_rooms[key] = set(values[split + 1 :])

    def _session_entry(self, member: Member) -> tuple[str, str, str]:
        """The hash, field and value that list a session in Redis."""
        assert member.key is not None
        doc = json.dumps([member.kind, member.address, member.since])
        return P + "sessions:" + member.key, member.session_id, self.node + "\t" + doc

    def session_opened(self, member: Member) -> None:
        self.link.submit("HSET", self._session_entry(member), _log_failure)

    def session_closed(self, member: Member) -> None:
        if member.key is not None:
            args = (P + "sessions:" + member.key, member.session_id)
            self.link.submit("HDEL", args, _log_failure)

    async def sessions(self, key: str) -> list[SessionEntry] | None:
        found = await self._call("HGETALL", P + "sessions:" + key)  # after this node's writes
        entries = []
        for session_id, value in found.items():
            _, _, doc = as_text(value).partition("\t")
            kind, address, since = json.loads(doc)
            entries.append(SessionEntry(as_text(session_id), kind, address, float(since)))
        entries.sort(key=lambda e: e.since)
        return entries

    async def end_session(self, key: str, session_id: str, reason: str) -> bool:
        value = await self._call("HGET", P + "sessions:" + key, session_id)
        if not value:
            return False
        node = as_text(value).partition("\t")[0]
        payload = json.dumps([self.node, "ak", key, session_id, reason])
        await self._call("PUBLISH", P + "n:" + node, payload)
        # Gone from the list at once (its node says so again when it ends it).
        await self._call("HDEL", P + "sessions:" + key, session_id)
        return True

    def _to_account(self, key: str, data: list[Any]) -> None:
        """Tell the other nodes of an account connected through several."""
        nodes = self._elsewhere.get(key)
        if nodes:
            payload = json.dumps([self.node, *data])
            for node in nodes:
                self.link.submit("PUBLISH", (P + "n:" + node, payload), _log_failure)

    def _account(self, data: list[Any]) -> None:
        """News from another node of an account connected here too."""
        origin, what, key = data[0], data[1], data[2]
        hub = self.hub
        if what == "a+":
            self._elsewhere.setdefault(key, set()).add(data[3])
        elif what == "a-":
            nodes = self._elsewhere.get(key)
            if nodes is not None:
                nodes.discard(data[3])
                if not nodes:
                    # Its places in rooms passed here (hand_over): rooms this
                    # node's connections have not joined yet stay the
                    # account's, joined quietly (see present).
                    del self._elsewhere[key]
        elif (origin == self.node and what != "ak") or hub.find(key) is None:
            return
        elif what == "aj":
            self._remote_rooms.setdefault(key, set()).add(name_key(data[3]))
            if not hub.follow(key, data[3]):
                task = asyncio.create_task(self._follow(key, data[3]), name="chatd-follow")
                self._follows.add(task)
                task.add_done_callback(self._follows.discard)
        elif what == "al":
            self._remote_rooms.get(key, set()).discard(data[3])
            holder = hub.find(key)
            room = holder.rooms.get(data[3]) if holder is not None else None
            if room is not None and holder is not None and hub.unfollow(key, data[3]):
                self.link.submit("leave", (self.node, key, room.key), _log_failure)
                self.went(holder, room)
        elif what == "ae":
            hub.tell_nick(key, event_from_json(data[3]))
        elif what == "ak":
            hub.end_session(key, data[3], data[4])

    async def _follow(self, key: str, room_name: str) -> None:
        """The account joined a room that is not live here: make it live,
        then its connections here follow it."""
        try:
            async with self.open(room_name, create=False):
                holder = self.hub.find(key)
                if holder is not None and self.hub.follow(key, room_name):
                    room = holder.rooms[name_key(room_name)]
                    args = (self.node, key, holder.nick, room.key, room.name)
                    self.link.submit("join", args, _log_failure, essential=True)
        except ChatError as exc:  # Redis away, too many rooms live here
            logger.warning("could not follow %s into #%s: %s", key, room_name, exc)

    def publish(self, room: Room, event: Event) -> None:
        """Tell the other nodes' members of a room what happened here."""
        payload = _encode(self.node, event)
        if payload is not None:
            self.link.submit(
                "PUBLISH", (P + "r:" + room.key, payload), _log_failure, essential=True
            )

    def broadcast(self, room_key: str | None, data: list[Any]) -> None:
        """A moderation step, to the nodes with the room live (on its channel)
        or to every node; after the writes queued before it (the rules)."""
        channel = P + ("r:" + room_key if room_key is not None else "rooms")
        payload = json.dumps([self.node, "M", data])
        self.link.submit("PUBLISH", (channel, payload), _log_failure, essential=True)

    def barrier(self, done: Callable[[], None]) -> None:
        """``done`` once every write made before is applied and every message
        it published has come back to this node."""
        self._barrier_seq += 1
        seq = self._barrier_seq
        self._barriers[seq] = done

        def sent(result: Any) -> None:
            if isinstance(result, BaseException):
                self._barriers.pop(seq, None)
                done()

        payload = json.dumps([self.node, "b", seq])
        self.link.submit("PUBLISH", (P + "n:" + self.node, payload), sent)

    def _barrier_back(self, seq: int) -> None:
        done = self._barriers.pop(seq, None)
        if done is not None:
            done()

    # -- awaited by sessions ---------------------------------------------

    async def claim(
        self,
        member: Member,
        nick: str,
        *,
        account: int | None = None,
        takeover: bool = False,
        guest: bool = True,
    ) -> None:
        """Take ``nick`` cluster-wide for ``member`` (its old one is let go).

        A guest's nickname is first checked here, where no Redis round trip
        is needed: held by someone on this node, or (a rename) registered.
        """
        key = name_key(nick)
        if not takeover:
            holder = self.hub.find(nick)
            if holder is not None and holder is not member:
                raise NickTaken(f"nickname {nick} is taken; pick another")
            if member.key is not None and key != member.key:
                self.hub.check_guest_nick(nick)
        if key in self._claiming:
            raise NickTaken(f"nickname {nick} is taken; pick another")
        self._claiming.add(key)
        try:
            await self._claim(member, nick, key, account, takeover, guest)
        finally:
            self._claiming.discard(key)

    async def _claim(
        self, member: Member, nick: str, key: str, account: int | None, takeover: bool, guest: bool
    ) -> None:
        kick = json.dumps([self.node, "k", key, "logged in from elsewhere"])
        result = await self._call(
            "claim",
            self.node,
            key,
            nick,
            "" if account is None else str(account),
            member.key or "",
            "1" if guest else "0",
            "1" if takeover else "0",
            kick,
            member.nick or "",
        )
        if isinstance(result, list):  # shared with the account's other nodes
            self._shared(key, result)
            return
        answer = as_text(result)
        if answer == "taken":
            raise NickTaken(f"nickname {nick} is taken; pick another")
        if answer == "registered":
            self.store.note_registered(key)
            raise NickRegistered(
                f"{nick} is a registered nickname; /login {nick} PASSWORD, or pick another"
            )

    @contextlib.asynccontextmanager
    async def open(self, name: str, *, create: bool) -> AsyncIterator[Opening]:
        fresh = await self._make_live(name, create=create)
        try:
            # Redis checked that a room to create does not exist: it is live now.
            yield Opening(None, False, fresh)
        finally:
            # Nobody here joined it after all (too many rooms, or gone).
            room = self.hub.live(name)
            if room is not None and self.hub.close_room(room):
                self.listener.closed(room.key)
                if fresh:  # another node may bring it into use now
                    self.link.submit("DEL", (P + "fresh:" + room.key,), _log_failure)

    async def _make_live(self, room_name: str, *, create: bool) -> bool:
        """Make a room live here: subscribed, with its rules, topic and
        history; True if this join brings it into use."""
        key = name_key(room_name)
        if key in self._opening:
            await asyncio.shield(self._opening[key])
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            fresh = await self._open(room_name, key, create=create)
            future.set_result(True)
            return fresh
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters see it through shield
            raise
        finally:
            del self._opening[key]

    async def _open(self, room_name: str, key: str, *, create: bool) -> bool:
        """Make the room live; True if it is not in use anywhere (a join creates it)."""
        members = await self._command("HLEN", P + "members:" + key)
        topic = await self._command("HEXISTS", P + "topics", key)
        rules = await self.store.rules_of(key) if key != DEFAULT_ROOM else None
        fresh = not members and not topic and rules is None and key != DEFAULT_ROOM
        if fresh:
            # Another node may be bringing it into use at this moment, its
            # writes not in Redis yet: only one of them does (its creator).
            fresh = bool(await self._call("fresh", key, self.node))
        if create and not fresh:
            name = await self._command("HGET", P + "roomnames", key)
            shown = as_text(name) if name else room_name
            raise RoomExists(f"room #{shown} already exists; /join it")
        hub = self.hub
        room = hub.open_room(room_name)
        try:
            await self.listener.subscribe(key)
            if not fresh and key != DEFAULT_ROOM:
                # Read again now that it is subscribed: a change made since
                # the first read is in this one or arrives on the channel.
                rules = await self.store.rules_of(key)
            record = await self.store.topic(key)
            if record is not None:
                hub.describe(room, record.name, record.topic, record.topic_by)
            else:
                name = await self._command("HGET", P + "roomnames", key)
                if name and not room.members:
                    hub.describe(room, as_text(name), room.topic, room.topic_by)
            if rules is not None:
                hub.ruled(room, rules)
            if hub.history_on_join:
                history = await self.store.recent(key, hub.history_on_join)
                hub.seed(room, *history)
        except (Unavailable, StoreError) as exc:
            if hub.close_room(room):
                self.listener.closed(room.key)
            raise ClusterUnavailable(str(exc)) from None
        except BaseException:
            if hub.close_room(room):
                self.listener.closed(room.key)
            raise
        return fresh

    async def direct(self, member: Member, to: str, text: str, *, notice: bool = False) -> None:
        """Send a private message to ``to`` on whichever node holds it."""
        self.hub.check_store()
        event = await self._direct(member, to, text, self.hub.now(), notice)
        self.hub.direct_sent(member, event)

    async def _direct(self, member: Member, to: str, text: str, ts: float, notice: bool) -> Direct:
        assert member.key is not None
        result = await self._call(
            "direct",
            self.node,
            name_key(to),
            self.history,
            repr(ts),
            member.nick or "",
            text,
            "" if member.account is None else str(member.account),
            member.key,
            "1" if notice else "0",
        )
        message_id, target = int(result[0]), as_text(result[1])
        if not message_id:
            raise NoSuchNick(f"nobody is called {to}")
        return Direct(message_id, ts, member.nick or "", target, text, notice=notice)

    async def person(self, nick: str) -> Person | None:
        found = await self._call("person", name_key(nick))  # after this node's writes
        if not found:
            return None
        account = as_text(found[1])
        rooms = frozenset(as_text(r) for r in found[3:])
        return Person(
            as_text(found[0]),
            name_key(nick),
            int(account) if account else None,
            bool(int(found[2])),
            rooms,
        )

    async def room_list(self) -> RoomList:
        flat = await self._call("rooms")  # through the write queue: after this node's writes
        pairs = [(as_text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 3)]
        pairs.sort(key=lambda pair: name_key(pair[0]))
        return RoomList(tuple(pairs))

    async def who(self, member: Member, room_name: str | None) -> WhoList:
        if room_name is None:
            if member.current is None:
                raise NotInRoom("you are in no room; /join one")
            room_name = member.current.name
        key = name_key(room_name)
        # Through the write queue, so that it sees this node's earlier writes:
        # a /who right after a /join finds the member there.
        values = await self._call("HVALS", P + "members:" + key)
        if (
            not values
            and key != DEFAULT_ROOM
            and not await self._command("HEXISTS", P + "topics", key)
            and not await self._command("HEXISTS", P + "rules", key)
        ):
            raise NoSuchRoom(f"no room #{room_name}")
        name = await self._command("HGET", P + "roomnames", key)
        nicks = sorted((as_text(v).partition("\t")[2] for v in values), key=str.lower)
        return WhoList(as_text(name) if name else room_name, tuple(nicks))

    async def _call(self, name: str, *args: Any) -> Any:
        try:
            return await self.link.call(name, *args)
        except Unavailable as exc:
            raise ClusterUnavailable(str(exc)) from None

    async def _command(self, *args: Any) -> Any:
        try:
            return await self.link.command(*args)
        except Unavailable as exc:
            raise ClusterUnavailable(str(exc)) from None

    # -- faults ------------------------------------------------------------

    def _lost(self) -> None:
        self.listener.lost()
        for done in list(self._barriers.values()):
            done()
        self._barriers.clear()

    async def _rejoin(self) -> None:
        """Redis is back: write this node's state again, resubscribe, catch up.

        What Redis holds for this node is dropped first (without leave
        events) and written again from the members this node has now, so
        users who left during the outage leave no trace. Two pipelines,
        however many members.
        """
        node, hub, link = self.node, self.hub, self.link
        members = hub.members()
        seen = max((room.seen for room in hub.live_rooms()), default=0)
        async with link.redis.pipeline(transaction=False) as pipe:
            await link.run_script("reap", node, "", "1", client=pipe)
            await link.run_script("heartbeat", node, int(self.ttl * 1000), client=pipe)
            await link.run_script("bump_id", seen, client=pipe)
            pipe.hsetnx(P + "roomnames", DEFAULT_ROOM, DEFAULT_ROOM)
            for member in members:
                if member.account is None:
                    args = (node, member.key, member.nick, "", "", "0", "0", "", "")
                else:
                    # An account may be connected through another node too:
                    # shared again, as at its login.
                    kick = json.dumps([node, "k", member.key, "logged in from elsewhere"])
                    account = str(member.account)
                    args = (node, member.key, member.nick, account, "", "0", "1", kick, "")
                await link.run_script("claim", *args, client=pipe)
            answers = (await pipe.execute())[4:]
        conflicts = []
        for member, answer in zip(members, answers, strict=True):
            if isinstance(answer, list):
                assert member.key is not None
                self._shared(member.key, answer)
            elif as_text(answer) == "taken":
                conflicts.append(member)
        async with link.redis.pipeline(transaction=False) as pipe:
            for member in members:
                if member in conflicts:
                    continue
                for room in member.rooms.values():
                    joined = (node, member.key, member.nick, room.key, room.name)
                    await link.run_script("join", *joined, client=pipe)
                for device in hub.devices(member):
                    if device.session_id:
                        pipe.hset(*self._session_entry(device))
            await pipe.execute()
        await self.listener.subscribe_all()
        for member in conflicts:
            hub.disconnect(member, "nickname taken elsewhere while Redis was away")
            member.kick("nickname taken elsewhere while Redis was away")
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Deliver what each live room missed while this node was cut off."""
        for room in self.hub.live_rooms():
            if room.seen == 0:
                continue
            entries = await self.link.raw(
                "XRANGE", P + "conv:" + room.key, f"({room.seen}-0", "+", "COUNT", CATCH_UP_MAX
            )
            for entry_id, fields in entries:
                m = stream_message(room.key, as_text(entry_id), fields)
                if m.room is not None:
                    event = Message(m.id, m.ts, m.room, m.sender, m.text, m.action)
                    event = replace(event, notice=m.notice) if m.notice else event
                    self.hub.arrived(event, here=False)

    async def _heartbeat_loop(self) -> None:
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            if not self.link.up:
                continue
            try:
                missing = await self.link.call("heartbeat", self.node, int(self.ttl * 1000))
                if missing:
                    # The others dropped this node (it was cut off too long):
                    # write its state back.
                    logger.warning("node %s was dropped from the cluster; rejoining", self.node)
                    self.link.down("this node was dropped from the cluster")
                    continue
                dead = await self.link.call("reap", "", "node lost")
                for node in dead:
                    logger.warning(
                        "node %s stopped answering; its users were dropped", as_text(node)
                    )
            except (Unavailable, RedisError) as exc:
                logger.debug("heartbeat: %s", exc)


def _encode(node: str, event: Event) -> str | None:
    """The cluster form of an event a node publishes to a room."""
    match event:
        case Joined(room, nick):
            return json.dumps([node, "j", room, nick])
        case Left(room, nick, reason):
            return json.dumps([node, "l", room, nick, reason])
        case TopicIs(room, topic, by):
            return json.dumps([node, "t", room, topic, by])
    return None


def _log_failure(result: Any) -> None:
    if isinstance(result, BaseException) and not isinstance(result, Unavailable):
        logger.error("Redis refused a presence update: %s", result)
