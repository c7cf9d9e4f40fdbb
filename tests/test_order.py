"""ReplyOrder: a connection's output in command order, without sockets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatd.core.order import ReplyOrder


class Output:
    """What a session would write: replies at once unless held."""

    def __init__(self) -> None:
        self.order = ReplyOrder()
        self.written: list[bytes] = []

    def reply(self, data: bytes) -> None:
        if self.order.busy:
            self.order.hold(data)
        else:
            self.written.append(data)

    def end(self, seq: int, data: bytes | None = None) -> None:
        self.written += self.order.end(seq, data)


def test_a_reply_waits_for_the_message_before_it() -> None:
    out = Output()
    hello = out.order.begin()
    out.reply(b"who")
    assert out.written == []
    out.end(hello, b"hello")
    assert out.written == [b"hello", b"who"]
    out.reply(b"now")
    assert out.written[-1] == b"now"


def test_an_operation_ending_early_waits_for_the_one_before() -> None:
    out = Output()
    first, second = out.order.begin(), out.order.begin()
    out.reply(b"after both")
    out.end(second, b"two")
    assert out.written == []
    out.end(first, b"one")
    assert out.written == [b"one", b"two", b"after both"]
    assert not out.order.busy


def test_ending_twice_says_nothing_twice() -> None:
    out = Output()
    seq = out.order.begin()
    out.end(seq, b"once")
    out.end(seq, b"again")
    assert out.written == [b"once"]


def test_an_echo_ends_the_oldest_message_to_its_room() -> None:
    out = Output()
    a = out.order.begin("dev")
    out.reply(b"who")
    out.order.begin("dev")
    written, awaited = out.order.echo("dev", b"echo 1")
    assert awaited
    assert written == [b"echo 1", b"who"]
    out.end(a)  # the barrier after it: nothing more
    written, awaited = out.order.echo("dev", b"echo 2")
    assert (written, awaited) == ([b"echo 2"], True)
    assert out.order.echo("dev", b"someone else's") == ([], False)


def test_a_message_to_a_room_left_since_ends_with_the_next_echo() -> None:
    out = Output()
    out.order.begin("old")
    out.reply(b"left #old")
    out.order.begin("new")
    written, awaited = out.order.echo("new", b"echo in new")
    assert awaited
    assert written == [b"left #old", b"echo in new"]


def test_release_gives_everything_held_in_order() -> None:
    out = Output()
    first = out.order.begin()
    out.reply(b"a")
    second = out.order.begin()
    out.reply(b"b")
    out.end(second, b"two")
    assert out.order.release() == [b"a", b"two", b"b"]
    assert not out.order.busy
    assert first < second


@given(st.lists(st.booleans(), max_size=30), st.randoms(use_true_random=False))
def test_output_is_in_command_order_whatever_order_operations_end(
    commands: list[bool], rnd: object
) -> None:
    """True: an operation (ends later, says its number); False: a reply."""
    import random

    assert isinstance(rnd, random.Random)
    out = Output()
    expected: list[bytes] = []
    ops: list[int] = []
    for n, is_op in enumerate(commands):
        data = str(n).encode()
        expected.append(data)
        if is_op:
            # Its number, and the command it was, for the shuffled ending.
            ops.append(out.order.begin() * 1000 + n)
        else:
            out.reply(data)
    rnd.shuffle(ops)
    for packed in ops:
        seq, n = divmod(packed, 1000)
        out.end(seq, str(n).encode())
    assert out.written == expected
    assert not out.order.busy
