"""Text -> search tokens: the one normalizer of every store (a pure function).

A token is what one word of a query must equal (or start with, for a prefix). The steps:
1. `casefold` (case-insensitive in every script: "Straße" and "STRASSE" fold alike);
2. NFKD, then every combining mark (Unicode category Mn) dropped: diacritic-insensitive
   ("café" = "cafe", "Ёлка" = "елка"); compatibility forms fold to their plain letters
   (full-width Latin letters = ASCII ones, half-width katakana = katakana);
3. NFC, so scripts whose letters are composed of jamo (Hangul) are letters again;
4. words: maximal runs of letters and digits (`str.isalnum`); anything else separates;
5. CJK runs (Han, kana, Hangul), which have no spaces between words, become their
   overlapping character bigrams ("東京都" -> "東京", "京都"); a run of one character stays
   itself. A query's CJK run becomes the same bigrams as a phrase, so a query of two or more
   CJK characters matches inside a longer run.

Invariant: every token is non-empty and made only of characters that are letters or digits
(so SQLite FTS5's unicode61 tokenizer, which separates on spaces and punctuation only, reads
`index_text`'s space-joined tokens back as exactly these tokens).
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

#: Scripts written without spaces between words (code point ranges, inclusive).
_CJK_RANGES = (
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3FFFF),  # CJK extensions B onwards (planes 2 and 3)
)


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "".join(
        re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}"
        for low, high in ranges
    )


def _mark_ranges() -> list[tuple[int, int]]:
    """Every code point of category Mn (this Python's Unicode data), as ranges."""
    found: list[tuple[int, int]] = []
    for point in range(sys.maxunicode + 1):
        if unicodedata.category(chr(point)) == "Mn":
            if found and found[-1][1] == point - 1:
                found[-1] = (found[-1][0], point)
            else:
                found.append((point, point))
    return found


@functools.cache
def _marks() -> re.Pattern[str]:
    """The combining marks' expression, made when a text that is not ASCII first needs it:
    finding the marks walks every code point, 0.18 s that every process importing relay
    (each `relay` command, each started relay) paid at import, searching or not."""
    return re.compile(f"[{_char_class(_mark_ranges())}]+")


# The work is done by compiled regular expressions, not a loop over characters: the writer
# indexes every message it stores, and the loop cost about 100 us for a 50-character message.
_CJK = _char_class(list(_CJK_RANGES))
_HAS_CJK = re.compile(f"[{_CJK}]")
_CJK_RUNS = re.compile(f"([{_CJK}]+)")
#: a word: a run of characters for which str.isalnum() holds (`\w` less the underscore)
_WORDS = re.compile(r"[^\W_]+")
_ASCII_WORDS = re.compile(r"[a-z0-9]+")


def fold(text: str) -> str:
    """Steps 1-3: case, diacritics and compatibility forms folded."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return unicodedata.normalize("NFC", _marks().sub("", decomposed))


def _bigrams(run: str) -> list[str]:
    if len(run) == 1:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def tokens(text: str) -> list[str]:
    """The search tokens of `text`, in order (see the module docstring).

    Text with non-ASCII characters is normalized a whitespace-separated piece at a time,
    each piece's tokens cached: the same tokens, since no step joins characters across
    whitespace (a word never spans it; a mark or jamo composes only with its neighbour), and
    pieces repeat, where normalizing one costs ~1 us a character (15 us for a message of
    10 accented words; ~2 us with the cache)."""
    if text.isascii():
        if text.isalnum():  # one ASCII word ("ok", "thanks"): itself, folded
            return [text.lower()]
        return _ASCII_WORDS.findall(text.lower())
    found: list[str] = []
    for piece in text.split():
        found.extend(_piece_tokens(piece))
    return found


@functools.lru_cache(maxsize=32768)  # a few MB; a chat's frequent words stay
def _piece_tokens(piece: str) -> tuple[str, ...]:
    if piece.isascii():
        return tuple(_ASCII_WORDS.findall(piece.lower()))
    return tuple(_tokens(piece))


def _tokens(text: str) -> list[str]:
    """`tokens` without the cache (every step on the whole of `text`)."""
    if text.isascii():
        return _ASCII_WORDS.findall(text.lower())
    words = _WORDS.findall(fold(text))
    if not _HAS_CJK.search(" ".join(words)):
        return words
    found: list[str] = []
    for word in words:
        if not _HAS_CJK.search(word):
            found.append(word)
            continue
        # split: non-CJK pieces at even places, CJK runs at odd places
        for i, piece in enumerate(_CJK_RUNS.split(word)):
            if not piece:
                continue
            if i % 2:
                found.extend(_bigrams(piece))
            else:
                found.append(piece)
    return found


def index_text(text: str) -> str:
    """What a store indexes for `text`: its tokens joined by spaces ("" when it has none)."""
    if text.isascii() and text.isalnum():  # one ASCII word: the writer's cheapest case
        return text.lower()
    return " ".join(tokens(text))
