"""The search syntax: reading a /search query and matching messages with it.

A query is words, all of which a message must contain (in any order)::

    deploy friday          both words
    deplo*                 a word that starts with "deplo"
    "ship it"              the words in this order, one after the other
    staging OR prod        either word (OR joins the words on each side)
    deploy NOT staging     "deploy", and not "staging"
    deploy AND friday      the same as "deploy friday"

Words are compared as SQLite's FTS5 ``unicode61 remove_diacritics 2``
tokenizer compares them: case-insensitively, without diacritics ("creme"
finds "Crème"), and split at anything that is not a letter or a digit
("don't" is the phrase "don t"). The keywords are upper case ("or" is a
word). A query that cannot be read (an open quote, an operator with no word
on one side, NOT inside an OR, nothing but NOT) raises :class:`BadQuery`.

The memory and Redis stores match with :meth:`Query.matches`; SQLite runs
:meth:`Query.fts5`, the same query written in FTS5's syntax, against its
index. Every word goes to FTS5 as a quoted string, so no text a user types
can reach FTS5's own operators (column filters, ``NEAR``, ``^``).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable
from typing import Final

from chatd.errors import BadQuery
from chatd.store.base import SearchQuery

#: Messages a search that scans (memory, Redis) looks at, at most.
SCAN_MAX: Final = 200_000

#: A word: a run of letters and digits (what unicode61 keeps as a token).
_WORD: Final = re.compile(r"[^\W_]+")
_KEYWORDS: Final = frozenset({"AND", "OR", "NOT"})


def fold(text: str) -> str:
    """``text`` lower-cased, with its diacritics removed (NFKD, then the
    combining marks dropped), as the FTS5 tokenizer folds it."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def words(text: str) -> list[str]:
    """The words of ``text``, folded."""
    return _WORD.findall(fold(text))


@dataclasses.dataclass(frozen=True, slots=True)
class Term:
    """A word or a phrase: its words must follow one another in a message."""

    #: The words, folded (none: the term had no letters or digits).
    words: tuple[str, ...]
    #: The last word is a prefix (``deplo*``).
    prefix: bool
    #: The term as it was written, without quotes or ``*`` (for FTS5).
    source: str

    def found_in(self, text_words: list[str]) -> bool:
        """Whether ``text_words`` (a message's words, folded) hold this term."""
        wanted, n = self.words, len(self.words)
        if n == 1 and not self.prefix:
            return wanted[0] in text_words
        *head, last = wanted
        for i in range(len(text_words) - n + 1):
            if all(text_words[i + j] == w for j, w in enumerate(head)):
                word = text_words[i + n - 1]
                if word.startswith(last) if self.prefix else word == last:
                    return True
        return False

    def fts5(self) -> str:
        quoted = '"' + self.source.replace('"', '""') + '"'
        return quoted + " *" if self.prefix else quoted


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """A query read by :func:`parse`."""

    #: Every group must match; a group matches if one of its terms does.
    groups: tuple[tuple[Term, ...], ...]
    #: Terms a message must not hold.
    excluded: tuple[Term, ...] = ()

    def matches(self, text: str) -> bool:
        """Whether a message's text matches the query."""
        folded = fold(text)
        text_words: list[str] | None = None

        def holds(term: Term) -> bool:
            nonlocal text_words
            # A cheap test first: most messages lack one of the words outright.
            if not all(w in folded for w in term.words):
                return False
            if text_words is None:
                text_words = _WORD.findall(folded)
            return term.found_in(text_words)

        return all(any(holds(t) for t in group) for group in self.groups) and not any(
            holds(t) for t in self.excluded
        )

    def fts5(self) -> str:
        """The query in SQLite FTS5's syntax (every word a quoted string)."""
        found = " AND ".join("(" + " OR ".join(t.fts5() for t in g) + ")" for g in self.groups)
        if not self.excluded:
            return found
        return f"({found}) NOT ({' OR '.join(t.fts5() for t in self.excluded)})"


def _term(source: str, prefix: bool) -> Term:
    return Term(tuple(words(source)), prefix, source)


def _lex(text: str) -> list[Term | str]:
    """Terms and keywords (as strings), in order."""
    items: list[Term | str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise BadQuery('cannot read the search: a quote (") is not closed')
            phrase, i = text[i + 1 : end], end + 1
            prefix = i < n and text[i] == "*"
            while i < n and text[i] == "*":
                i += 1
            items.append(_term(phrase, prefix))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] != '"':
                i += 1
            word = text[start:i]
            if word in _KEYWORDS:
                items.append(word)
            else:
                stripped = word.rstrip("*")
                items.append(_term(stripped, len(stripped) < len(word)))
    return items


def parse(text: str) -> Query:
    """Read a query (see the module); raise BadQuery if it cannot be read."""
    items = _lex(text)
    groups: list[tuple[Term, ...]] = []
    excluded: list[Term] = []
    i, n = 0, len(items)
    after_word = False

    def operand(at: int, keyword: str) -> Term:
        item = items[at] if at < n else None
        if not isinstance(item, Term):
            raise BadQuery(f"cannot read the search: {keyword} needs a word after it")
        return item

    while i < n:
        item = items[i]
        if item == "AND":
            if not after_word:
                raise BadQuery("cannot read the search: AND needs a word on each side")
            operand(i + 1, "AND")
            i, after_word = i + 1, False
        elif item == "OR":
            raise BadQuery("cannot read the search: OR needs a word on each side")
        elif item == "NOT":
            excluded.append(operand(i + 1, "NOT"))
            i += 2
            if i < n and items[i] == "OR":
                raise BadQuery("cannot read the search: NOT cannot be joined with OR")
            after_word = True
        else:
            assert isinstance(item, Term)
            group = [item]
            i += 1
            while i < n and items[i] == "OR":
                group.append(operand(i + 1, "OR"))
                i += 2
            groups.append(tuple(group))
            after_word = True
    # Terms with no letters or digits ("-", "...") find nothing and exclude nothing.
    kept = [g for g in (tuple(t for t in group if t.words) for group in groups) if g]
    if not kept:
        if any(t.words for t in excluded):
            raise BadQuery("cannot read the search: it needs a word to find, not only NOT ones")
        raise BadQuery("cannot read the search: there is no word to find in it")
    return Query(tuple(kept), tuple(t for t in excluded if t.words))


def searchable(query: SearchQuery, private: Iterable[str]) -> list[str]:
    """The conversations ``query`` may read: its rooms and, for an account,
    ``private`` (the account's private conversations); or only
    ``query.conversation`` if it is one of those (a room not in
    ``query.rooms`` is never searched; a private one only for an account,
    whose own messages in it the caller must still pick out)."""
    conversation = query.conversation
    if conversation is None:
        return [*query.rooms, *(sorted(private) if query.account is not None else ())]
    if conversation.startswith("@"):
        return [conversation] if query.account is not None else []
    return [conversation] if conversation in query.rooms else []
