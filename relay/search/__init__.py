"""Message search (sans-IO): one normalizer and one query parser that every store uses, so
every store gives the same answers.

- relay.search.normalize: text -> search tokens (case- and diacritic-folded; CJK as bigrams);
- relay.search.query: a client's query -> terms, a matcher over tokens, an FTS5 expression.
"""

from __future__ import annotations

from relay.search.normalize import index_text, tokens
from relay.search.query import Phrase, SearchQuery, parse_query

__all__ = ["Phrase", "SearchQuery", "index_text", "parse_query", "tokens"]
