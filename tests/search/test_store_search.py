"""Every store gives the same search answers (protocol-v2 "Search"): words (AND), prefixes,
phrases, case- and diacritic-insensitive in any script, CJK inside longer runs; only the user's
own conversations (a group's messages since they joined), newest first, paged by a cursor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
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

#: the `found` fixture: (user, query, conversation=None, limit=100) -> the texts found, newest
#: first (after `settle`); the `settle` fixture: await before a search of the store's own
Found = Callable[..., Awaitable[list[str]]]
Settle = Callable[[Store], Awaitable[None]]


async def texts(store: Store, *lines: str, sender: str = "a", to: str = "b") -> None:
    await put(store, *(msg(sender, to, text=line) for line in lines))


async def test_latin_with_accents_any_case(store: Store, found: Found) -> None:
    await texts(store, "Un café crème à Paris", "Straße gesperrt", "nothing here")
    assert await found("a", "cafe") == ["Un café crème à Paris"]
    assert await found("b", "CAFÉ CREME") == ["Un café crème à Paris"]
    assert await found("a", "paris café") == ["Un café crème à Paris"]
    assert await found("a", "STRASSE") == ["Straße gesperrt"]
    assert await found("a", "cafes") == []


async def test_cyrillic(store: Store, found: Found) -> None:
    await texts(store, "Привет! Как дела?", "Ёжик в тумане", "Hello")
    assert await found("a", "привет") == ["Привет! Как дела?"]
    assert await found("a", "ДЕЛА") == ["Привет! Как дела?"]
    assert await found("a", "ежик") == ["Ёжик в тумане"]
    assert await found("a", "туман") == []
    assert await found("a", "туман*") == ["Ёжик в тумане"]


async def test_cjk_matches_inside_longer_runs(store: Store, found: Found) -> None:
    await texts(store, "明日東京都に行きます", "大阪で会いましょう", "한국어 공부를 합니다")
    assert await found("a", "東京") == ["明日東京都に行きます"]
    assert await found("a", "京都") == ["明日東京都に行きます"]
    assert await found("a", "東京都に") == ["明日東京都に行きます"]
    assert await found("a", "会い") == ["大阪で会いましょう"]
    assert await found("a", "국어") == ["한국어 공부를 합니다"]
    assert await found("a", "京東") == []
    assert await found("a", "大阪 東京") == []


async def test_prefix(store: Store, found: Found) -> None:
    await texts(store, "running late", "I run", "the runway", "rerun")
    assert await found("a", "run*") == ["the runway", "I run", "running late"]
    assert await found("a", "run") == ["I run"]
    assert await found("a", "RUNN*") == ["running late"]
    assert await found("a", "zzz*") == []
    assert await found("a", "run* late") == ["running late"]


async def test_phrase_and_words(store: Store, found: Found) -> None:
    await texts(store, "see you tomorrow", "you see, tomorrow", "see the sea")
    assert await found("a", '"see you"') == ["see you tomorrow"]
    assert await found("a", '"SEE YOU" tomorrow') == ["see you tomorrow"]
    assert await found("a", "see you") == ["you see, tomorrow", "see you tomorrow"]
    assert await found("a", "see sea") == ["see the sea"]
    assert await found("a", '"see the sea" you') == []
    assert await found("a", '"you see" tom*') == ["you see, tomorrow"]


async def test_a_message_without_text_answers_nothing(store: Store, found: Found) -> None:
    # an encrypted message carries no text the relay could read
    await texts(store, "", "!!! ...", "plain words")
    assert await found("a", "plain") == ["plain words"]
    assert await found("a", "...") == []


async def test_only_the_users_own_conversations(store: Store, found: Found) -> None:
    await put(store, msg("a", "b", text="secret plan a-b"))
    await put(store, msg("b", "c", text="secret plan b-c"))
    await put(store, msg("c", "c", text="secret plan note to self"))
    assert await found("a", "secret plan") == ["secret plan a-b"]
    assert await found("b", "secret plan") == ["secret plan b-c", "secret plan a-b"]
    assert await found("c", "secret") == ["secret plan note to self", "secret plan b-c"]
    assert await found("d", "secret") == []
    only_ab = await found("b", "secret", conversation=AB)
    assert only_ab == ["secret plan a-b"]
    # naming a conversation the user is not in finds nothing
    bc = direct_conversation("b", "c")
    assert await found("a", "secret", conversation=bc) == []


async def test_a_group_since_the_user_joined(store: Store, found: Found) -> None:
    await store.create_group(group("g", ["a", "b"]))
    await put(store, msg("a", group="g", text="before c joined"))
    await store.set_group_members("g", ["a", "b", "c"])
    await put(store, msg("b", group="g", text="after c joined"))
    g = group_conversation("g")
    assert await found("a", "joined") == ["after c joined", "before c joined"]
    assert await found("c", "joined") == ["after c joined"]
    assert await found("c", "joined", conversation=g) == ["after c joined"]
    # a member who left sees nothing of the group any more
    await store.set_group_members("g", ["a", "c"])
    assert await found("b", "joined") == []
    assert await found("b", "joined", conversation=g) == []


async def test_newest_first_paged_by_cursor(store: Store, settle: Settle) -> None:
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
    await settle(store)
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


async def test_messages_appended_without_awaiting_are_found(store: Store, found: Found) -> None:
    await fast_append(
        store,
        [
            [msg("a", "b", text="quick brown fox")],
            [msg("b", "a", text="lazy dog"), msg("a", "c", text="fox den")],
        ],
    )
    assert await found("a", "fox") == ["fox den", "quick brown fox"]
    assert await found("b", "fox") == ["quick brown fox"]


async def test_searches_asked_at_once_each_get_their_own_answer(
    store: Store, settle: Settle
) -> None:
    """A store may run searches one at a time (the SQL stores' searcher): every one of a burst
    asked together is answered, with its own page, whatever order they run in."""
    await texts(store, *(f"word{i} shared" for i in range(20)))
    await settle(store)
    assert isinstance(store, Searchable)
    pages: dict[int, list[str]] = {}

    async def one(i: int) -> None:
        page = await store.search("a", parse_query(f"word{i}"))
        pages[i] = [m.text for m in page.messages]

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
    assert pages == {i: [f"word{i} shared"] for i in range(20)}
    shared = await store.search("b", parse_query("shared"), limit=50)
    assert len(shared.messages) == 20
