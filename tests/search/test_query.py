"""The normalizer and the query parser, which every store shares: what a word is, what folds
alike, how a query's words and phrases come out (and as FTS5 says them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.search import Phrase, index_text, parse_query, tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Café CRÈME", ["cafe", "creme"]),
        ("Straße", ["strasse"]),
        ("Ёлка, ЁЖИК!", ["елка", "ежик"]),
        ("ＡＢＣ１２３", ["abc123"]),  # full-width forms  # noqa: RUF001
        ("ｶﾀｶﾅ", ["カタ", "タカ", "カナ"]),  # half-width katakana become katakana bigrams
        ("東京都", ["東京", "京都"]),
        ("東", ["東"]),
        ("한국어 공부", ["한국", "국어", "공부"]),  # Hangul stays composed
        ("東京2020年", ["東京", "2020", "年"]),
        ("e-mail, it's", ["e", "mail", "it", "s"]),
        ("", []),
        ("... !!! ---", []),
    ],
)
def test_tokens(text: str, expected: list[str]) -> None:
    assert tokens(text) == expected
    assert index_text(text) == " ".join(expected)


def test_query_terms_and_their_fts5_form() -> None:
    query = parse_query('run*  "See You" 東京都 e-mail "unclosed phrase')
    assert query.terms == (
        Phrase(("run",), prefix=True),
        Phrase(("see", "you")),
        Phrase(("東京", "京都")),
        Phrase(("e", "mail")),
        Phrase(("unclosed", "phrase")),
    )
    assert query.fts5() == (
        '"run" * AND "see you" AND "東京 京都" AND "e mail" AND "unclosed phrase"'
    )


def test_punctuation_only_terms_drop_and_duplicates_count_once() -> None:
    assert parse_query('... "" * run run').terms == (Phrase(("run",)),)
    assert parse_query("!!!").terms == ()
    assert not parse_query("!!!").matches(["anything"])


def test_matcher() -> None:
    found = tokens("we are running late, see you soon")
    assert parse_query("run*").matches(found)
    assert not parse_query("run").matches(found)
    assert parse_query('"see you" late').matches(found)
    assert not parse_query('"you see"').matches(found)
    assert parse_query('"running la*"').matches(found) is False  # a * inside quotes is text
    assert parse_query("runn* SOON").matches(found)


def reference_tokens(text: str) -> list[str]:
    """The normalizer's definition, a character at a time (normalize.py's module docstring):
    what its compiled regular expressions must give on every text."""
    import unicodedata

    from relay.search.normalize import _CJK_RANGES

    folded = unicodedata.normalize(
        "NFC",
        "".join(
            c
            for c in unicodedata.normalize("NFKD", text.casefold())
            if unicodedata.category(c) != "Mn"
        ),
    )
    found: list[str] = []
    word: list[str] = []
    run: list[str] = []

    def end() -> None:
        if word:
            found.append("".join(word))
            word.clear()
        if len(run) == 1:
            found.append(run[0])
        found.extend(run[i] + run[i + 1] for i in range(len(run) - 1))
        run.clear()

    for char in folded:
        cjk = any(low <= ord(char) <= high for low, high in _CJK_RANGES)
        if not char.isalnum():
            end()
        elif cjk:
            if word:
                end()
            run.append(char)
        else:
            if run:
                end()
            word.append(char)
    end()
    return found


_SAMPLES = "aZ9_-. éÉçß\u0301ﬁ\uff21\uff11ЁёжΣςκ東京都に行くカタｶﾀ한국어ㄱ\u3000\u00b2٣अक्षि🙂"


@given(st.text(alphabet=st.sampled_from(_SAMPLES) | st.characters(), max_size=40))
@settings(max_examples=500, deadline=None)
def test_the_compiled_normalizer_follows_its_definition(text: str) -> None:
    assert tokens(text) == reference_tokens(text)


def test_importing_relay_does_not_walk_every_code_point() -> None:
    """The combining marks' table (a walk over all 1.1 million code points, 0.18 s) is made
    when a text that is not ASCII is first folded, not when a `relay` command starts."""
    probe = (
        "import relay.cli, relay.app\n"
        "from relay.search import normalize\n"
        "before = normalize._marks.cache_info().currsize\n"
        "normalize.tokens('plain ascii')\n"
        "ascii_only = normalize._marks.cache_info().currsize\n"
        "normalize.tokens('café')\n"
        "print(before, ascii_only, normalize._marks.cache_info().currsize)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["0", "0", "1"]
