"""Where event lines and status messages go: a terminal, or a pipe's stdout and stderr.

A mention of the user and a private message from someone else ring the
terminal's bell: a BEL written with the line, on a terminal only. Pipe
output stays one plain line per event, with no BEL in it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from chatd.client.render import DIM, RED, help_lines, json_line, paint, render_event
from chatd.protocol import clean_text

#: The terminal's bell.
BEL: Final = "\a"


class Ui(Protocol):
    """The client's output path (a terminal, or stdout and stderr of a pipe)."""

    interactive: bool

    def event(self, event: Mapping[str, Any], raw: str | None, *, bell: bool = False) -> None:
        """Show one server event; ``raw`` is the server's JSON text, if it sent JSON.

        ``bell``: the event is for the user's attention (a mention, a private
        message): ring the bell where there is one to ring.
        """
        ...

    def status(self, text: str, *, error: bool = False) -> None:
        """Show something the client itself has to say."""
        ...


class TerminalUi:
    """Printing above the prompt: ``sys.stdout`` is prompt_toolkit's proxy then."""

    interactive = True

    def __init__(self, *, colour: bool, json_output: bool) -> None:
        self.colour = colour and not json_output
        self.json_output = json_output

    def event(self, event: Mapping[str, Any], raw: str | None, *, bell: bool = False) -> None:
        # The BEL goes with the line, in one write: alone, it would make the
        # prompt be erased and drawn again for nothing.
        ring = BEL if bell else ""
        if self.json_output:
            self._print(ring + json_line(event, raw))
        elif event.get("type") == "help":
            for line in help_lines(event, colour=self.colour):
                self._print(line)
        else:
            self._print(ring + render_event(event, colour=self.colour))

    def status(self, text: str, *, error: bool = False) -> None:
        line = clean_text(f"! {text}" if error else f"* {text}")
        self._print(paint(line, RED if error else DIM, self.colour))

    @staticmethod
    def _print(line: str) -> None:
        # Looked up on each call: patch_stdout replaces sys.stdout.
        print(line, flush=True)


class PipeUi:
    """One plain line per event on stdout; status on stderr."""

    interactive = False

    def __init__(self, *, json_output: bool, on_broken: Callable[[], None]) -> None:
        self.json_output = json_output
        self._on_broken = on_broken
        self._broken = False

    def event(self, event: Mapping[str, Any], raw: str | None, *, bell: bool = False) -> None:
        # No bell: the output is for programs; a mention is marked in the line.
        self._emit(json_line(event, raw) if self.json_output else render_event(event))

    def status(self, text: str, *, error: bool = False) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"chatd connect: {clean_text(text)}", file=sys.stderr, flush=True)

    def _emit(self, line: str) -> None:
        if self._broken:
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # Nobody reads our output any more: stop. Point fd 1 at /dev/null
            # so the interpreter's final flush does not fail loudly again.
            self._broken = True
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            self._on_broken()
