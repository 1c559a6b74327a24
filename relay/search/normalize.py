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


def _is_cjk(char: str) -> bool:
    point = ord(char)
    return any(low <= point <= high for low, high in _CJK_RANGES)


def fold(text: str) -> str:
    """Steps 1-3: case, diacritics and compatibility forms folded."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return unicodedata.normalize("NFC", stripped)


def tokens(text: str) -> list[str]:
    """The search tokens of `text`, in order (see the module docstring)."""
    found: list[str] = []
    word: list[str] = []
    run: list[str] = []

    def end_word() -> None:
        if word:
            found.append("".join(word))
            word.clear()

    def end_run() -> None:
        if len(run) == 1:
            found.append(run[0])
        else:
            found.extend(run[i] + run[i + 1] for i in range(len(run) - 1))
        run.clear()

    for char in fold(text):
        if not char.isalnum():
            end_word()
            end_run()
        elif _is_cjk(char):
            end_word()
            run.append(char)
        else:
            end_run()
            word.append(char)
    end_word()
    end_run()
    return found


def index_text(text: str) -> str:
    """What a store indexes for `text`: its tokens joined by spaces ("" when it has none)."""
    return " ".join(tokens(text))
