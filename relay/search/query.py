"""A client's search query -> terms; the terms as a matcher over tokens (the scan stores) and
as an SQLite FTS5 MATCH expression. Both say the same thing, so every store answers alike.

Syntax (protocol-v2 "Search"): words separated by spaces, every one must match (AND); a word
ending in `*` matches any token it begins (a prefix); `"..."` is a phrase, its words adjacent
and in order (an unclosed quote runs to the end of the query). Each word or phrase is
normalized by relay.search.normalize.tokens; a word that normalizes to several tokens ("e-mail",
a CJK run) is a phrase of them. A term with no tokens (punctuation only) is dropped.

Invariant: every Phrase has at least one token, and each token is letters and digits only
(normalize's invariant), so it is quoted safely in an FTS5 string.
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import frozen

from relay.search.normalize import tokens


@frozen
class Phrase:
    """Tokens that must occur adjacent and in order; with `prefix`, the last one only needs to
    begin a token."""

    words: tuple[str, ...]
    prefix: bool = False

    def occurs_in(self, found: Sequence[str]) -> bool:
        words = self.words
        size = len(words)
        head, last = words[:-1], words[-1]
        for i in range(len(found) - size + 1):
            end = found[i + size - 1]
            if not (end == last or (self.prefix and end.startswith(last))):
                continue
            if all(found[i + j] == word for j, word in enumerate(head)):
                return True
        return False

    def fts5(self) -> str:
        quoted = '"' + " ".join(self.words) + '"'
        return f"{quoted} *" if self.prefix else quoted


@frozen
class SearchQuery:
    """Every term must occur (AND). `terms` is empty only for a query with nothing to search."""

    terms: tuple[Phrase, ...]

    def matches(self, found: Sequence[str]) -> bool:
        """Whether a text whose tokens are `found` answers this query."""
        return bool(self.terms) and all(term.occurs_in(found) for term in self.terms)

    def fts5(self) -> str:
        """The FTS5 MATCH expression of the same terms (over normalize.index_text)."""
        return " AND ".join(term.fts5() for term in self.terms)


def _term(text: str, prefix: bool) -> Phrase | None:
    words = tokens(text)
    return Phrase(tuple(words), prefix) if words else None


def parse_query(query: str) -> SearchQuery:
    """The terms of `query` (see the module docstring), in the order written, duplicates once."""
    terms: dict[Phrase, None] = {}
    quoted = False
    for part in query.split('"'):
        if quoted:
            term = _term(part, prefix=False)
            if term is not None:
                terms[term] = None
        else:
            for word in part.split():
                term = _term(word, prefix=word.endswith("*"))
                if term is not None:
                    terms[term] = None
        quoted = not quoted
    return SearchQuery(tuple(terms))
