"""The one behavioural suite every Store implementation passes.

A test module runs it by defining a `store` fixture (an opened, empty store) and a class
`class TestXStore(StoreSuite): ...`. Nothing here knows which implementation it runs on: an
append the core makes without awaiting goes through the ability the store declares
(InlineAppend or QueuedAppend, see `fast_append`).

A helper module, not a test module: tests/ is on sys.path (tests/conftest.py), so the store
tests import it as `store_suite` from any folder.
"""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from relay.errors import Conflict, NotFound
from relay.store.base import (
    AppendDone,
    Appended,
    Coverage,
    Group,
    InlineAppend,
    MessageRef,
    NewMessage,
    QueuedAppend,
    Store,
    StoredMessage,
    Watermarks,
    direct_conversation,
    group_conversation,
)

_EPOCH = datetime(2026, 2, 5, 10, 30, tzinfo=UTC)
_clock = itertools.count()
_ids = itertools.count(1)


def stamp() -> str:
    """A fresh server timestamp, later than every one before (1 ms apart)."""
    moment = _EPOCH + timedelta(milliseconds=next(_clock))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def msg(
    sender: str,
    recipient: str | None = None,
    *,
    group: str | None = None,
    id: str | None = None,
    text: str | None = None,
    meta: dict[str, Any] | None = None,
) -> NewMessage:
    """A message from `sender` to `recipient` (1:1) or to `group`."""
    assert (recipient is None) != (group is None)
    conversation = (
        group_conversation(group)
        if group is not None
        else direct_conversation(sender, recipient or "")
    )
    mid = id if id is not None else f"m{next(_ids)}"
    return NewMessage(
        conversation=conversation,
        id=mid,
        sender_id=sender,
        text=text if text is not None else f"text of {mid}",
        server_timestamp=stamp(),
        recipient_id=recipient,
        group_id=group,
        sender_name=f"{sender} name",
        sender_avatar=sender[:2].upper(),
        client_timestamp="2026-02-05T10:30:15Z",
        meta=meta,
    )


def group(group_id: str, members: list[str], created_by: str = "a") -> Group:
    return Group(
        group_id=group_id,
        name=f"{group_id} name",
        members=tuple(members),
        created_by=created_by,
        created_at=stamp(),
    )


async def put(store: Store, *messages: NewMessage) -> list[StoredMessage]:
    """Append, and check none was a duplicate."""
    results = await store.append_many(messages)
    assert [r.duplicate for r in results] == [False] * len(messages)
    return [r.message for r in results]


async def fast_append(store: Store, batches: list[list[NewMessage]]) -> list[list[Appended]]:
    """Each batch appended the way the core appends without awaiting, on the ability `store`
    declares: append_now one after the other (InlineAppend), or every batch queued at once with
    append_soon and the answers awaited (QueuedAppend: one writer batch, the fused append)."""
    if isinstance(store, InlineAppend):
        return [store.append_now(batch) for batch in batches]
    assert isinstance(store, QueuedAppend), f"{type(store).__name__} declares no fast append"
    answers: list[list[Appended] | BaseException | None] = [None] * len(batches)
    done = trio.Event()

    def answer(i: int) -> AppendDone:
        def on_done(results: list[Appended] | None, error: BaseException | None) -> None:
            answers[i] = results if error is None else error
            if all(a is not None for a in answers):
                done.set()

        return on_done

    for i, batch in enumerate(batches):
        assert store.has_room()
        store.append_soon(batch, answer(i))
    with trio.fail_after(10):  # the SQLite writer is a real thread: real time
        await done.wait()
    results: list[list[Appended]] = []
    for got in answers:
        assert isinstance(got, list), got
        results.append(got)
    return results


def seqs(messages: list[StoredMessage]) -> list[int]:
    return [m.seq for m in messages]


def keys(messages: list[StoredMessage]) -> list[tuple[str, int]]:
    return [(m.conversation, m.seq) for m in messages]


AB = direct_conversation("a", "b")
AC = direct_conversation("a", "c")


class StoreSuite:
    # --- seq and idempotency --------------------------------------------------------------------
    async def test_seq_counts_from_one_per_conversation_without_gaps(self, store: Store) -> None:
        assert await store.last_seq(AB) == 0
        first = await put(store, msg("a", "b"), msg("a", "c"), msg("b", "a"))
        second = await put(store, msg("a", "b"), msg("c", "a"), msg("a", "b"))
        assert keys(first + second) == [(AB, 1), (AC, 1), (AB, 2), (AB, 3), (AC, 2), (AB, 4)]
        assert await store.last_seq(AB) == 4
        assert await store.last_seq(AC) == 2
        assert await store.last_seq(direct_conversation("b", "c")) == 0

    async def test_stored_message_keeps_every_field(self, store: Store) -> None:
        new = msg("a", "b", text="Hello there! ✓", meta={"k": [1, "two", {"x": None}]})
        [stored] = await put(store, new)
        assert stored.conversation == AB and stored.seq == 1
        assert (stored.id, stored.sender_id, stored.recipient_id, stored.group_id) == (
            new.id,
            "a",
            "b",
            None,
        )
        assert stored.text == "Hello there! ✓"
        assert stored.server_timestamp == new.server_timestamp
        assert stored.client_timestamp == new.client_timestamp
        assert (stored.sender_name, stored.sender_avatar) == ("a name", "A")
        assert stored.meta == {"k": [1, "two", {"x": None}]}
        [again], _ = await store.history(AB)
        assert again == stored

    async def test_an_e2e_message_keeps_its_object_untouched(self, store: Store) -> None:
        e2e = {
            "v": 1,
            "suite": "hpke-x25519-sha256-aes256gcm",
            "senderDevice": "laptop",
            "boxes": {"phone": "QUJD", "watch": "QUI="},
        }
        one = msg("a", "b", text="", meta={"k": 1})._replace(e2e=e2e)
        [stored] = await put(store, one)  # the store's fast append
        assert (stored.text, stored.e2e, stored.meta) == ("", e2e, {"k": 1})
        batch = [msg("a", "b", text="")._replace(e2e=e2e), msg("b", "a", text="plain")]
        answers = [r.message for r in await store.append_many(batch)]  # a batch, mixed
        assert [(m.text, m.e2e) for m in answers] == [("", e2e), ("plain", None)]
        page, _ = await store.history(AB)
        assert [(m.text, m.e2e) for m in page] == [("", e2e), ("", e2e), ("plain", None)]
        assert page[0] == stored
        [summary] = await store.conversations("b")
        assert summary.last_message is not None and summary.last_message.e2e is None

    async def test_a_message_keeps_its_attachments(self, store: Store) -> None:
        files = [
            {"fileId": "f" * 24, "name": "cat.png", "size": 12, "mime": "image/png",
             "sha256": "ab" * 32},
            {"fileId": "g" * 24, "name": "é.txt", "size": 0, "mime": "text/plain",
             "sha256": "cd" * 32},
        ]  # fmt: skip
        [stored] = await put(store, msg("a", "b", text="")._replace(attachments=files))
        assert (stored.text, stored.attachments) == ("", files)
        batch = [msg("a", "b", text="see")._replace(attachments=files[:1]), msg("b", "a")]
        answers = [r.message for r in await store.append_many(batch)]  # a batch, mixed
        assert [m.attachments for m in answers] == [files[:1], None]
        page, _ = await store.history(AB)
        assert [(m.text, m.attachments) for m in page] == [
            ("", files),
            ("see", files[:1]),
            ("text of " + page[2].id, None),
        ]
        assert page[0] == stored
        assert await store.undelivered("b", "") == page[:2]

    async def test_sender_and_id_is_an_idempotency_key(self, store: Store) -> None:
        [original] = await put(store, msg("a", "b", id="x1", text="first"))
        listed = await store.conversations("b")
        [r] = await store.append_many([msg("a", "b", id="x1", text="changed")])
        assert r.duplicate
        assert r.message == original  # the stored one, not the resent copy
        assert await store.last_seq(AB) == 1
        assert await store.conversations("b") == listed  # a resend changes nothing
        assert await store.undelivered("b", "") == [original]
        # the same id from another sender is another message
        [other] = await put(store, msg("b", "a", id="x1"))
        assert other.seq == 2
        page, _ = await store.history(AB)
        assert [(m.sender_id, m.id, m.text) for m in page] == [
            ("a", "x1", "first"),
            ("b", "x1", "text of x1"),
        ]

    async def test_duplicate_within_one_batch(self, store: Store) -> None:
        results = await store.append_many(
            [msg("a", "b", id="d"), msg("a", "b", id="d", text="again"), msg("a", "b", id="e")]
        )
        assert [(r.message.seq, r.duplicate) for r in results] == [
            (1, False),
            (1, True),
            (2, False),
        ]
        assert results[1].message == results[0].message
        assert await store.last_seq(AB) == 2

    async def test_concurrent_batches_get_distinct_gapless_seqs(self, store: Store) -> None:
        got: list[tuple[str, int, bool]] = []

        async def sender(n: int) -> None:
            for batch in range(5):
                messages = [msg("a", "b", id=f"{n}-{batch}-{i}") for i in range(4)]
                messages.append(msg("a", "b", id=f"{n}-{batch}-0"))  # a resend in the batch
                for r in await store.append_many(messages):
                    got.append((r.message.id, r.message.seq, r.duplicate))

        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(sender, n)
        fresh = sorted(seq for _, seq, dup in got if not dup)
        assert fresh == list(range(1, 12 * 5 * 4 + 1))
        by_id = {mid: seq for mid, seq, dup in got if not dup}
        assert all(by_id[mid] == seq for mid, seq, dup in got if dup)
        assert await store.last_seq(AB) == 240

    # --- the append the core makes without awaiting ---------------------------------------------
    async def test_the_fast_append_answers_as_append_many(self, store: Store) -> None:
        # The same appends twice on one store, among users a b c and group g through
        # append_many, then among their renamed twins x y z and group h through the store's
        # fast append: every answer and every page of history is the same, renamed.
        twin = {"a": "x", "b": "y", "c": "z", "g": "h"}

        def renamed(m: Any) -> Any:
            group_id = twin[m.group_id] if m.group_id is not None else None
            recipient = twin[m.recipient_id] if m.recipient_id is not None else None
            return m._replace(
                conversation=group_conversation(group_id)
                if group_id is not None
                else direct_conversation(twin[m.sender_id], recipient or ""),
                sender_id=twin[m.sender_id],
                recipient_id=recipient,
                group_id=group_id,
            )

        await store.create_group(group("g", ["a", "b", "c"]))
        await store.create_group(group("h", ["x", "y", "z"]))
        resent = msg("a", "b", id="r1")
        rounds = [
            # new conversations, a group, meta, several conversations interleaved
            [
                [msg("a", "b", id="r1"), msg("b", "c"), msg("c", group="g")],
                [msg("a", "c", meta={"reply": "r1"}), msg("b", "a")],
                [msg("b", group="g"), msg("a", "b")],
            ],
            # resends, across batches and within one, among new messages
            [
                [resent._replace(text="resent"), msg("c", "a")],
                [msg("a", group="g", id="g1"), msg("a", group="g", id="g1", text="again")],
                [msg("b", "c"), resent],
            ],
        ]
        for batches in rounds:
            expected = [await store.append_many(batch) for batch in batches]
            got = await fast_append(store, [[renamed(m) for m in batch] for batch in batches])
            assert got == [
                [Appended(renamed(r.message), r.duplicate) for r in answers] for answers in expected
            ]
        for a, b in (("a", "b"), ("a", "c"), ("b", "c")):
            page, _ = await store.history(direct_conversation(a, b))
            twin_page, _ = await store.history(direct_conversation(twin[a], twin[b]))
            assert twin_page == [renamed(m) for m in page] and len(page) >= 2
        page, _ = await store.history(group_conversation("g"))
        twin_page, _ = await store.history(group_conversation("h"))
        assert twin_page == [renamed(m) for m in page] and len(page) == 3

    # --- history --------------------------------------------------------------------------------
    async def test_history_pages(self, store: Store) -> None:
        await put(store, *(msg("a" if i % 2 else "b", "b" if i % 2 else "a") for i in range(7)))
        page, more = await store.history(AB, limit=3)
        assert (seqs(page), more) == ([5, 6, 7], True)
        page, more = await store.history(AB, before=5, limit=3)
        assert (seqs(page), more) == ([2, 3, 4], True)
        page, more = await store.history(AB, before=3, limit=3)
        assert (seqs(page), more) == ([1, 2], False)
        page, more = await store.history(AB, before=4, limit=3)
        assert (seqs(page), more) == ([1, 2, 3], False)
        page, more = await store.history(AB, after=4, limit=2)
        assert (seqs(page), more) == ([5, 6], True)
        page, more = await store.history(AB, after=4, limit=3)
        assert (seqs(page), more) == ([5, 6, 7], False)
        page, more = await store.history(AB, after=0, limit=50)
        assert (seqs(page), more) == ([1, 2, 3, 4, 5, 6, 7], False)
        page, more = await store.history(AB, after=7)
        assert (page, more) == ([], False)
        page, more = await store.history(AB, before=1)
        assert (page, more) == ([], False)
        page, more = await store.history(AB, limit=7)
        assert (seqs(page), more) == ([1, 2, 3, 4, 5, 6, 7], False)
        assert await store.history(AC) == ([], False)

    # --- undelivered ----------------------------------------------------------------------------
    async def test_undelivered_oldest_first_across_conversations_excluding_own(
        self, store: Store
    ) -> None:
        await store.create_group(group("g", ["a", "b", "c"]))
        sent = await put(
            store,
            msg("a", "b"),  # AB 1
            msg("c", "b"),  # BC 1
            msg("b", "a"),  # AB 2, b's own
            msg("c", group="g"),  # g 1
            msg("a", "b"),  # AB 3
            msg("b", group="g"),  # g 2, b's own
            msg("a", "c"),  # AC 1, not b's
        )
        backlog = await store.undelivered("b", "")
        assert backlog == [sent[0], sent[1], sent[3], sent[4]]
        assert await store.undelivered("b", "", limit=2) == [sent[0], sent[1]]
        assert await store.undelivered("b", "phone") == backlog
        assert keys(await store.undelivered("a", "")) == [
            (AB, 2),
            (group_conversation("g"), 1),
            (group_conversation("g"), 2),
        ]
        assert await store.undelivered("nobody", "") == []

    async def test_undelivered_per_device(self, store: Store) -> None:
        await put(store, *(msg("a", "b") for _ in range(4)))
        assert seqs(await store.undelivered("b", "")) == [1, 2, 3, 4]
        await store.mark_delivered(AB, "b", "old", 1)
        assert seqs(await store.undelivered("b", "old")) == [2, 3, 4]
        # a device with no cursor starts at the user's delivered watermark
        assert seqs(await store.undelivered("b", "new")) == [2, 3, 4]
        assert seqs(await store.undelivered("b", "")) == [2, 3, 4]
        await store.mark_delivered(AB, "b", "phone", 3)
        assert seqs(await store.undelivered("b", "phone")) == [4]
        assert seqs(await store.undelivered("b", "watch")) == [4]
        # a device that has its own cursor keeps it: what it never acknowledged comes again
        assert seqs(await store.undelivered("b", "old")) == [2, 3, 4]
        await store.mark_delivered(AB, "b", "old", 2)
        assert seqs(await store.undelivered("b", "old")) == [3, 4]
        assert await store.member_watermarks(AB) == {"a": Watermarks(0, 0), "b": Watermarks(3, 0)}
        await store.mark_delivered(AB, "b", "", 4)
        assert await store.undelivered("b", "") == []
        assert await store.undelivered("b", "brand-new") == []
        assert seqs(await store.undelivered("b", "old")) == [3, 4]

    async def test_a_registered_device_is_owed_what_came_after_it_registered(
        self, store: Store
    ) -> None:
        await put(store, msg("a", "b"), msg("a", "b"))  # 1, 2: before the watch registered
        await store.register_device("b", "watch")
        await store.register_device("b", "phone")
        await put(store, msg("a", "b"), msg("a", "b"))  # 3, 4: after
        await store.register_device("b", "watch")  # again: the first registration counts
        # the phone had everything delivered; the watch never had any of it
        await store.mark_delivered(AB, "b", "phone", 4)
        assert seqs(await store.undelivered("b", "phone")) == []
        # the watch is owed what came after it registered, not what came before and was
        # delivered to another device (a new device does not get the whole history)
        assert seqs(await store.undelivered("b", "watch")) == [3, 4]
        assert seqs(await store.undelivered("b", "never-registered")) == []
        # its first cursor starts there too: marking 3 leaves 4 owed
        await store.mark_delivered(AB, "b", "watch", 3)
        assert seqs(await store.undelivered("b", "watch")) == [4]
        # a conversation that starts after it registered is owed whole
        await put(store, msg("c", "b"))
        await store.mark_delivered(direct_conversation("b", "c"), "b", "phone", 1)
        assert seqs(await store.undelivered("b", "watch")) == [4, 1]
        assert await store.member_watermarks(AB) == {"a": Watermarks(0, 0), "b": Watermarks(4, 0)}

    # --- watermarks -----------------------------------------------------------------------------
    async def test_watermarks_move_forward_only(self, store: Store) -> None:
        await put(store, *(msg("a", "b") for _ in range(5)))
        assert await store.member_watermarks(AB) == {"a": Watermarks(0, 0), "b": Watermarks(0, 0)}
        assert await store.mark_delivered(AB, "b", "", 3) == Watermarks(0, 0)
        assert await store.mark_delivered(AB, "b", "", 2) == Watermarks(3, 0)
        assert await store.mark_read(AB, "b", 2) == Watermarks(3, 0)
        assert await store.mark_read(AB, "b", 1) == Watermarks(3, 2)
        assert await store.mark_delivered(AB, "b", "", 1) == Watermarks(3, 2)
        # the other participant's marks are their own
        assert await store.member_watermarks(AB) == {"a": Watermarks(0, 0), "b": Watermarks(3, 2)}
        assert await store.mark_read(AB, "a", 0) == Watermarks(0, 0)

    async def test_mark_delivered_many_is_each_mark_in_turn(self, store: Store) -> None:
        await put(store, *(msg("a", "b") for _ in range(5)), msg("a", "c"), msg("c", "a"))
        befores = await store.mark_delivered_many(
            [
                (AB, "b", "phone", 3),
                (AB, "b", "watch", 2),  # the user's watermark is past it already
                (AC, "c", "", 9),  # clamped to the last message
                (AB, "b", "phone", 5),  # the same device again, further
                (AC, "a", "", 2),
            ]
        )
        assert befores == [
            Watermarks(0, 0),
            Watermarks(3, 0),
            Watermarks(0, 0),
            Watermarks(3, 0),
            Watermarks(0, 0),
        ]
        assert await store.member_watermarks(AB) == {"a": Watermarks(0, 0), "b": Watermarks(5, 0)}
        assert await store.member_watermarks(AC) == {"a": Watermarks(2, 0), "c": Watermarks(2, 0)}
        assert seqs(await store.undelivered("b", "phone")) == []
        assert await store.mark_delivered_many([]) == []

    async def test_read_implies_delivered(self, store: Store) -> None:
        await put(store, *(msg("a", "b") for _ in range(5)))
        assert await store.mark_read(AB, "b", 4) == Watermarks(0, 0)
        assert await store.member_watermarks(AB) == {"a": Watermarks(0, 0), "b": Watermarks(4, 4)}
        assert seqs(await store.undelivered("b", "tablet")) == [5]

    async def test_marks_never_pass_the_last_message(self, store: Store) -> None:
        # a receipt for a seq that does not exist yet must not swallow the messages still to come
        await put(store, msg("a", "b"), msg("a", "b"))
        await store.mark_read(AB, "b", 100)
        await store.mark_delivered(AB, "b", "phone", 100)
        assert await store.member_watermarks(AB) == {"a": Watermarks(0, 0), "b": Watermarks(2, 2)}
        [later] = await put(store, msg("a", "b"))
        assert await store.undelivered("b", "phone") == [later]
        [summary] = await store.conversations("b")
        assert (summary.unread, summary.read_seq, summary.last_seq) == (1, 2, 3)

    # --- receipts addressing --------------------------------------------------------------------
    async def test_latest_by_sender(self, store: Store) -> None:
        await store.create_group(group("g", ["a", "b", "c"]))
        g = group_conversation("g")
        sent = await put(
            store,
            msg("a", group="g"),
            msg("b", group="g"),
            msg("a", group="g"),
            msg("c", group="g"),
            msg("b", group="g"),
        )
        assert await store.latest_by_sender(g, 0, 5, "b") == [sent[2], sent[3]]
        assert await store.latest_by_sender(g, 3, 5, "a") == [sent[3], sent[4]]
        assert await store.latest_by_sender(g, 0, 2, "c") == [sent[0], sent[1]]
        assert await store.latest_by_sender(g, 4, 5, "b") == []
        assert await store.latest_by_sender(g, 5, 5, "x") == []

    async def test_latest_by_sender_in_a_direct_conversation(self, store: Store) -> None:
        # a 1:1 conversation has one other sender: the newest message not the reader's
        sent = await put(store, msg("a", "b"), msg("b", "a"), msg("b", "a"), msg("a", "b"))
        assert await store.latest_by_sender(AB, 0, 4, "a") == [sent[2]]
        assert await store.latest_by_sender(AB, 0, 2, "a") == [sent[1]]
        assert await store.latest_by_sender(AB, 3, 4, "a") == []
        assert await store.latest_by_sender(AB, 0, 4, "b") == [sent[3]]
        assert await store.latest_by_sender(AB, 1, 3, "b") == []
        # not one of its users: each of them
        assert await store.latest_by_sender(AB, 0, 99, "c") == [sent[2], sent[3]]
        # a note to self has no other sender
        note = direct_conversation("a", "a")
        await put(store, msg("a", "a"))
        assert await store.latest_by_sender(note, 0, 1, "a") == []
        # user ids holding the key's separator are told apart by the length prefix
        odd = direct_conversation("x:1", "y")
        [first, second] = await put(store, msg("x:1", "y"), msg("y", "x:1"))
        assert await store.latest_by_sender(odd, 0, 2, "x:1") == [second]
        assert await store.latest_by_sender(odd, 0, 2, "y") == [first]

    async def test_latest_by_sender_many_is_each_query_in_turn(self, store: Store) -> None:
        await store.create_group(group("g", ["a", "b", "c"]))
        g = group_conversation("g")
        await put(store, msg("a", group="g"), msg("b", group="g"), msg("c", group="g"))
        await put(store, msg("a", "b"), msg("b", "a"), msg("a", "b"))
        queries = [
            (g, 0, 3, "b"),
            (AB, 0, 3, "b"),
            (AB, 2, 3, "a"),
            (AC, 0, 5, "a"),
            (g, 1, 2, "a"),
        ]
        assert await store.latest_by_sender_many(queries) == [
            await store.latest_by_sender(*query) for query in queries
        ]
        assert [len(found) for found in await store.latest_by_sender_many(queries)] == [
            2, 1, 0, 0, 1
        ]  # fmt: skip
        assert await store.latest_by_sender_many([]) == []

    async def test_member_watermarks(self, store: Store) -> None:
        await put(store, msg("a", "b"), msg("b", "a"), msg("a", "b"))
        await store.mark_read(AB, "b", 1)
        await store.mark_delivered(AB, "a", "", 2)
        assert await store.member_watermarks(AB) == {
            "a": Watermarks(2, 0),
            "b": Watermarks(1, 1),
        }
        await store.create_group(group("g", ["a", "b", "c"]))
        g = group_conversation("g")
        await put(store, msg("a", group="g"), msg("b", group="g"))
        await store.mark_read(g, "c", 2)
        assert await store.member_watermarks(g) == {
            "a": Watermarks(0, 0),
            "b": Watermarks(0, 0),
            "c": Watermarks(2, 2),
        }
        # removed members are not reported; a newcomer starts at the group's present
        await store.set_group_members("g", ["a", "b", "d"])
        assert await store.member_watermarks(g) == {
            "a": Watermarks(0, 0),
            "b": Watermarks(0, 0),
            "d": Watermarks(2, 2),
        }
        assert await store.member_watermarks(direct_conversation("x", "y")) == {}
        assert await store.member_watermarks(group_conversation("nope")) == {}

    async def test_coverage_names_the_senders_newest_message_under_each_watermark(
        self, store: Store
    ) -> None:
        a1, a2, b3, a4, a5 = await put(
            store, msg("a", "b"), msg("a", "b"), msg("b", "a"), msg("a", "b"), msg("a", "b")
        )
        assert await store.coverage("a", limit=10) == []  # b's watermarks cover nothing yet
        await store.mark_delivered(AB, "b", "", 3)
        assert await store.coverage("a", limit=10) == [
            Coverage(AB, None, "b", MessageRef(2, a2.id), None)
        ]
        await store.mark_read(AB, "b", 1)
        await store.mark_delivered(AB, "b", "", 4)
        assert await store.coverage("a", limit=10) == [
            Coverage(AB, None, "b", MessageRef(4, a4.id), MessageRef(1, a1.id))
        ]
        await store.mark_read(AB, "b", 5)
        assert await store.coverage("a", limit=10) == [
            Coverage(AB, None, "b", MessageRef(5, a5.id), MessageRef(5, a5.id))
        ]
        # the other way round: a's watermark over b's message
        assert await store.coverage("b", limit=10) == []
        await store.mark_delivered(AB, "a", "", 5)
        assert await store.coverage("b", limit=10) == [
            Coverage(AB, None, "a", MessageRef(3, b3.id), None)
        ]
        assert await store.coverage("nobody", limit=10) == []

    async def test_coverage_in_a_group_is_per_member_and_after_their_join(
        self, store: Store
    ) -> None:
        await store.create_group(group("g", ["a", "b", "c"]))
        g = group_conversation("g")
        g1, g2, _ = await put(store, msg("a", group="g"), msg("a", group="g"), msg("b", group="g"))
        await store.mark_read(g, "b", 1)
        await store.mark_delivered(g, "b", "", 3)
        await store.mark_delivered(g, "c", "", 1)
        # d joins at seq 3: its watermarks (3, 3) speak for nothing a said before
        await store.set_group_members("g", ["a", "b", "c", "d"])
        assert await store.coverage("a", limit=10) == [
            Coverage(g, "g", "b", MessageRef(2, g2.id), MessageRef(1, g1.id)),
            Coverage(g, "g", "c", MessageRef(1, g1.id), None),
        ]
        [g4] = await put(store, msg("a", group="g"))
        await store.mark_read(g, "d", 4)
        assert (await store.coverage("a", limit=10))[-1] == Coverage(
            g, "g", "d", MessageRef(4, g4.id), MessageRef(4, g4.id)
        )
        # a member who left and came back joins again at the present
        await store.set_group_members("g", ["a", "b", "d"])
        await store.set_group_members("g", ["a", "b", "c", "d"])
        assert [c.reader for c in await store.coverage("a", limit=10)] == ["b", "d"]

    async def test_coverage_takes_recent_conversations_first_and_examines_at_most_limit(
        self, store: Store
    ) -> None:
        ad = direct_conversation("a", "d")
        [ab] = await put(store, msg("a", "b"))
        [ac] = await put(store, msg("a", "c"))
        await put(store, msg("d", "a"), msg("a", "d"))
        await store.mark_delivered(AB, "b", "", 1)
        await store.mark_delivered(AC, "c", "", 1)
        await store.mark_delivered(ad, "d", "", 1)  # covers only d's own message: nothing of a's
        covered = [Coverage(AC, None, "c", MessageRef(1, ac.id), None)]
        assert await store.coverage("a", limit=0) == []
        assert await store.coverage("a", limit=1) == []  # d's watermark was examined
        assert await store.coverage("a", limit=2) == covered
        covered.append(Coverage(AB, None, "b", MessageRef(1, ab.id), None))
        assert await store.coverage("a", limit=3) == covered
        assert await store.coverage("a", limit=100) == covered

    # --- conversation list ----------------------------------------------------------------------
    async def test_conversations_newest_first_with_unread_and_last_message(
        self, store: Store
    ) -> None:
        await put(store, msg("b", "a"), msg("a", "b"), msg("b", "a"), msg("b", "a"))
        await store.create_group(group("g", ["a", "b", "d"], created_by="b"))  # empty group
        [ac_last] = await put(store, msg("c", "a"))
        [ab_last] = await put(store, msg("b", "a"))
        await store.create_group(group("empty", ["a"]))
        await store.mark_read(AB, "a", 2)

        items = await store.conversations("a")
        assert [(i.conversation, i.peer_id, i.group_id) for i in items] == [
            (group_conversation("empty"), None, "empty"),
            (AB, "b", None),
            (AC, "c", None),
            (group_conversation("g"), None, "g"),
        ]
        empty, ab, ac, g = items
        assert (empty.last_message, empty.unread, empty.last_seq, empty.read_seq) == (None, 0, 0, 0)
        # unread: messages from others after the read watermark (seqs 3, 4 and 5 are b's)
        assert (ab.last_message, ab.unread, ab.last_seq, ab.read_seq) == (ab_last, 3, 5, 2)
        assert ab.updated_at == ab_last.server_timestamp
        assert (ac.last_message, ac.unread, ac.last_seq) == (ac_last, 1, 1)
        assert g.updated_at == (await store.get_group("g")).created_at  # type: ignore[union-attr]
        assert [i.conversation for i in await store.conversations("a", limit=2)] == [
            group_conversation("empty"),
            AB,
        ]
        # b sees the same 1:1 conversation from its side: a's one message is unread
        [ab_b, g_b] = await store.conversations("b")
        assert (ab_b.peer_id, ab_b.unread, g_b.group_id) == ("a", 1, "g")
        assert await store.conversations("nobody") == []

    async def test_conversation_order_follows_the_newest_message(self, store: Store) -> None:
        await store.create_group(group("g", ["a", "c"]))
        await put(store, msg("a", "b"), msg("c", group="g"), msg("a", "c"))
        assert [i.conversation for i in await store.conversations("a")] == [
            AC,
            group_conversation("g"),
            AB,
        ]
        await put(store, msg("b", "a"))
        assert [i.conversation for i in await store.conversations("a")] == [
            AB,
            AC,
            group_conversation("g"),
        ]
        [g] = [i for i in await store.conversations("c") if i.group_id == "g"]
        assert g.unread == 0  # c's own message

    async def test_contacts(self, store: Store) -> None:
        await put(store, msg("a", "b"), msg("c", "a"), msg("d", "e"))
        await store.create_group(group("g", ["a", "f", "h"]))
        assert await store.contacts("a") == {"b", "c", "f", "h"}
        assert await store.contacts("f") == {"a", "h"}
        assert await store.contacts("e") == {"d"}
        assert await store.contacts("nobody") == set()
        await store.set_group_members("g", ["a", "f"])
        assert await store.contacts("a") == {"b", "c", "f"}
        assert await store.contacts("h") == set()

    # --- groups ---------------------------------------------------------------------------------
    async def test_groups_create_get_conflict_and_members(self, store: Store) -> None:
        created = await store.create_group(group("g1", ["c", "a", "b", "a"], created_by="c"))
        assert created.members == ("a", "b", "c")
        assert (created.group_id, created.name, created.created_by) == ("g1", "g1 name", "c")
        assert await store.get_group("g1") == created
        assert await store.get_group("nope") is None
        try:
            await store.create_group(group("g1", ["x"]))
        except Conflict:
            pass
        else:
            raise AssertionError("a taken group id must raise Conflict")
        assert await store.get_group("g1") == created
        updated = await store.set_group_members("g1", ["d", "a", "d"])
        assert updated.members == ("a", "d")
        assert (updated.name, updated.created_by, updated.created_at) == (
            created.name,
            created.created_by,
            created.created_at,
        )
        assert await store.get_group("g1") == updated
        try:
            await store.set_group_members("nope", ["a"])
        except NotFound:
            pass
        else:
            raise AssertionError("an unknown group must raise NotFound")

    async def test_group_membership_scopes_backlog_and_list(self, store: Store) -> None:
        await store.create_group(group("g", ["a", "b"]))
        g = group_conversation("g")
        await put(store, msg("a", group="g"), msg("a", group="g"))
        assert seqs(await store.undelivered("b", "")) == [1, 2]
        await store.set_group_members("g", ["a", "c"])
        # b left: no backlog, no list entry
        assert await store.undelivered("b", "") == []
        assert await store.conversations("b") == []
        # c joined at the present: the past is history, not backlog, and not unread
        assert await store.undelivered("c", "") == []
        [item] = await store.conversations("c")
        assert (item.group_id, item.unread, item.last_seq) == ("g", 0, 2)
        page, _ = await store.history(g)
        assert seqs(page) == [1, 2]
        [third] = await put(store, msg("a", group="g"))
        assert await store.undelivered("c", "") == [third]
        # b comes back: what was said while b was out is not backlog either
        await store.set_group_members("g", ["a", "b", "c"])
        assert await store.undelivered("b", "") == []
        [fourth] = await put(store, msg("c", group="g"))
        assert await store.undelivered("b", "") == [fourth]

    async def test_a_device_registered_before_a_removal_gets_nothing_said_while_out(
        self, store: Store
    ) -> None:
        # the device has no cursor, so its backlog would start where it registered: before
        # the user was removed and added again; it starts after the rejoin all the same
        await store.register_device("b", "phone")
        await store.create_group(group("g", ["a", "b"]))
        await put(store, msg("a", group="g"))
        await store.set_group_members("g", ["a"])
        await put(store, msg("a", group="g"))  # said while b was out
        await store.set_group_members("g", ["a", "b"])
        assert await store.undelivered("b", "phone") == []
        [third] = await put(store, msg("a", group="g"))
        assert await store.undelivered("b", "phone") == [third]

    # --- presence -------------------------------------------------------------------------------
    async def test_last_seen(self, store: Store) -> None:
        assert await store.last_seen(["a", "b"]) == {}
        await store.set_last_seen("a", "2026-02-05T10:30:00.000Z")
        await store.set_last_seen("b", "2026-02-05T10:31:00.000Z")
        await store.set_last_seen("a", "2026-02-05T10:32:00.000Z")
        assert await store.last_seen(["a", "b", "c"]) == {
            "a": "2026-02-05T10:32:00.000Z",
            "b": "2026-02-05T10:31:00.000Z",
        }
        assert await store.last_seen(["b"]) == {"b": "2026-02-05T10:31:00.000Z"}
        assert await store.last_seen([]) == {}


def sqlite_index_progress(path: Path) -> tuple[int, int]:
    """(indexed_pos, last_pos) of a SQLite store's file: how far its search index has come."""
    conn = sqlite3.connect(path)
    try:
        (indexed,) = conn.execute("SELECT indexed_pos FROM search_progress").fetchone()
        (last,) = conn.execute("SELECT last_pos FROM positions").fetchone()
        return int(indexed), int(last)
    finally:
        conn.close()


def sqlite_index_rows(path: Path) -> list[tuple[int, str, str]]:
    """(rowid, body, conv) of every row of a SQLite store's search index, as the index itself
    holds them (it is contentless: migration 13): each column's tokens in order, joined by a
    space, which is how the indexer wrote them (relay.search.index_text)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE VIRTUAL TABLE temp.index_instances "
            "USING fts5vocab(main, message_search, instance)"
        )
        rows: dict[int, dict[str, list[tuple[int, str]]]] = {}
        for term, doc, col, offset in conn.execute(
            "SELECT term, doc, col, offset FROM temp.index_instances"
        ):
            rows.setdefault(doc, {"body": [], "conv": []})[col].append((offset, term))
        return [
            (
                doc,
                " ".join(term for _, term in sorted(columns["body"])),
                " ".join(term for _, term in sorted(columns["conv"])),
            )
            for doc, columns in sorted(rows.items())
        ]
    finally:
        conn.close()
