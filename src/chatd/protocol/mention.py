"""Mentions: whether a line of text names someone.

A mention is a nickname as a word, case-insensitively (``bob``, ``Bob:``,
``hi bob.``), or the same with an ``@`` (``@bob``). A nickname's characters
(letters, digits, ``_ - .``) around it make it part of another word:
``bobby`` and ``bob.smith`` do not mention ``bob``; a final ``.`` is
punctuation (unless the nickname ends with one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, TypeVar

from chatd.protocol.commands import name_key

#: A run of nickname characters, possibly after an ``@``.
_WORD: Final = re.compile(r"[A-Za-z0-9_.\-]+")


T = TypeVar("T")


def named(text: str, names: Mapping[str, T]) -> list[T]:
    """The values of ``names`` (by name key) whose names ``text`` mentions,
    looked up word by word (a room message's few words against the many
    nicknames of a daemon). A word that ends in "." is tried whole first:
    a nickname may end in one."""
    found: list[T] = []
    for word in _WORD.findall(text):
        key = name_key(word)
        value = names.get(key)
        if value is None and key[-1] == ".":
            value = names.get(key.rstrip("."))
        if value is not None:
            found.append(value)
    return found


def mentions(text: str, nick: str) -> bool:
    """Whether ``text`` mentions ``nick``."""
    key = name_key(nick)
    return key in text.lower() and bool(named(text, {key: True}))
