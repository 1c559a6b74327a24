"""Every store gives the same search answers (protocol-v2 "Search"): words (AND), prefixes,
phrases, case- and diacritic-insensitive in any script, CJK inside longer runs; only the user's
own conversations (a group's messages since they joined), newest first, paged by a cursor."""

from __future__ import annotations

from store_suite import AB, fast_append, group, msg, put

from relay.search import parse_query
from relay.store.base import (
    NewMessage,
    Searchable,
    Store,
    StoredMessage,
    direct_conversation,
    group_conversation,
)


async def found(
    store: Store,
    user: str,
    query: str,
    *,
    conversation: str | None = None,
    limit: int = 100,
) -> list[str]:
    """The texts of `user`'s search for `query` (one page), newest first."""
    assert isinstance(store, Searchable)
    page = await store.search(user, parse_query(query), conversation=conversation, limit=limit)
    return [m.text for m in page.messages]


async def texts(store: Store, *lines: str, sender: str = "a", to: str = "b") -> None:
    await put(store, *(msg(sender, to, text=line) for line in lines))


async def test_latin_with_accents_any_case(store: Store) -> None:
    await texts(store, "Un café crème à Paris", "Straße gesperrt", "nothing here")
    assert await found(store, "a", "cafe") == ["Un café crème à Paris"]
    assert await found(store, "b", "CAFÉ CREME") == ["Un café crème à Paris"]
    assert await found(store, "a", "paris café") == ["Un café crème à Paris"]
    assert await found(store, "a", "STRASSE") == ["Straße gesperrt"]
    assert await found(store, "a", "cafes") == []


async def test_cyrillic(store: Store) -> None:
    await texts(store, "Привет! Как дела?", "Ёжик в тумане", "Hello")
    assert await found(store, "a", "привет") == ["Привет! Как дела?"]
    assert await found(store, "a", "ДЕЛА") == ["Привет! Как дела?"]
    assert await found(store, "a", "ежик") == ["Ёжик в тумане"]
    assert await found(store, "a", "туман") == []
    assert await found(store, "a", "туман*") == ["Ёжик в тумане"]


async def test_cjk_matches_inside_longer_runs(store: Store) -> None:
    await texts(store, "明日東京都に行きます", "大阪で会いましょう", "한국어 공부를 합니다")
    assert await found(store, "a", "東京") == ["明日東京都に行きます"]
    assert await found(store, "a", "京都") == ["明日東京都に行きます"]
    assert await found(store, "a", "東京都に") == ["明日東京都に行きます"]
    assert await found(store, "a", "会い") == ["大阪で会いましょう"]
    assert await found(store, "a", "국어") == ["한국어 공부를 합니다"]
    assert await found(store, "a", "京東") == []
    assert await found(store, "a", "大阪 東京") == []


async def test_prefix(store: Store) -> None:
    await texts(store, "running late", "I run", "the runway", "rerun")
    assert await found(store, "a", "run*") == ["the runway", "I run", "running late"]
    assert await found(store, "a", "run") == ["I run"]
    assert await found(store, "a", "RUNN*") == ["running late"]


async def test_phrase_and_words(store: Store) -> None:
    await texts(store, "see you tomorrow", "you see, tomorrow", "see the sea")
    assert await found(store, "a", '"see you"') == ["see you tomorrow"]
    assert await found(store, "a", '"SEE YOU" tomorrow') == ["see you tomorrow"]
    assert await found(store, "a", "see you") == ["you see, tomorrow", "see you tomorrow"]
    assert await found(store, "a", "see sea") == ["see the sea"]
    assert await found(store, "a", '"see the sea" you') == []
    assert await found(store, "a", '"you see" tom*') == ["you see, tomorrow"]


async def test_a_message_without_text_answers_nothing(store: Store) -> None:
    # an encrypted message carries no text the relay could read
    await texts(store, "", "!!! ...", "plain words")
    assert await found(store, "a", "plain") == ["plain words"]
    assert await found(store, "a", "...") == []


async def test_only_the_users_own_conversations(store: Store) -> None:
    await put(store, msg("a", "b", text="secret plan a-b"))
    await put(store, msg("b", "c", text="secret plan b-c"))
    await put(store, msg("c", "c", text="secret plan note to self"))
    assert await found(store, "a", "secret plan") == ["secret plan a-b"]
    assert await found(store, "b", "secret plan") == ["secret plan b-c", "secret plan a-b"]
    assert await found(store, "c", "secret") == ["secret plan note to self", "secret plan b-c"]
    assert await found(store, "d", "secret") == []
    only_ab = await found(store, "b", "secret", conversation=AB)
    assert only_ab == ["secret plan a-b"]
    # naming a conversation the user is not in finds nothing
    bc = direct_conversation("b", "c")
    assert await found(store, "a", "secret", conversation=bc) == []


async def test_a_group_since_the_user_joined(store: Store) -> None:
    await store.create_group(group("g", ["a", "b"]))
    await put(store, msg("a", group="g", text="before c joined"))
    await store.set_group_members("g", ["a", "b", "c"])
    await put(store, msg("b", group="g", text="after c joined"))
    g = group_conversation("g")
    assert await found(store, "a", "joined") == ["after c joined", "before c joined"]
    assert await found(store, "c", "joined") == ["after c joined"]
    assert await found(store, "c", "joined", conversation=g) == ["after c joined"]
    # a member who left sees nothing of the group any more
    await store.set_group_members("g", ["a", "c"])
    assert await found(store, "b", "joined") == []
    assert await found(store, "b", "joined", conversation=g) == []


async def test_newest_first_paged_by_cursor(store: Store) -> None:
    assert isinstance(store, Searchable)
    await store.create_group(group("g", ["a", "c"]))
    sent: list[NewMessage] = []
    for i in range(25):
        sent.append(
            msg("a", group="g", text=f"ping {i}")
            if i % 3 == 0
            else msg("a", "bc"[i % 2], text=f"ping {i}")
        )
        sent.append(msg("a", "b", text=f"other {i}"))
    await put(store, *sent)
    query = parse_query("ping")
    pages: list[list[StoredMessage]] = []
    before = None
    for _ in range(5):
        page = await store.search("a", query, before=before, limit=10)
        pages.append(page.messages)
        if page.next is None:
            break
        before = page.next
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [m.text for p in pages for m in p] == [f"ping {i}" for i in reversed(range(25))]
    exact = await store.search("a", query, limit=25)
    assert exact.next is None and len(exact.messages) == 25
    assert (await store.search("a", query, limit=0)).messages == []


async def test_messages_appended_without_awaiting_are_found(store: Store) -> None:
    await fast_append(
        store,
        [
            [msg("a", "b", text="quick brown fox")],
            [msg("b", "a", text="lazy dog"), msg("a", "c", text="fox den")],
        ],
    )
    assert await found(store, "a", "fox") == ["fox den", "quick brown fox"]
    assert await found(store, "b", "fox") == ["quick brown fox"]
