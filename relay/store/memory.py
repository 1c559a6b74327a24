"""MemoryStore: the Store protocol kept in process memory (nothing survives the process).

Pure Python, no I/O: every method completes without awaiting anything, so the event loop never
waits on it. It is the reference behaviour the shared suite (tests/store_suite.py) pins down and
the store of `relay serve --memory` and of tests. It keeps every message (retention settings
apply to the SQLite store only).

The messages are appended by a fastpath.MemoryAppender (append_now's work, compiled), which
owns the containers it writes; `_messages` and `_order` are its read-only views (`logs`,
`orders`), and the store writes neither.

Invariants:
- `_messages[c][i].seq == i + 1` for every conversation `c` (seq from 1, no gap, no reuse).
- the appender's `find(sender_id, id)` is the stored message for every stored message.
- `_order[c][seq - 1]` is a process-wide counter increasing with acceptance: it orders the
  undelivered backlog across conversations (a list beside `_messages[c]`, same length).
  `_devices[(u, d)]` took a value of the same counter (the appender's take_order) when the
  device registered: the messages accepted after it are those with a greater order.
- Watermarks and device cursors never exceed the conversation's last seq and never decrease.
- Stored messages are kept as exact tuples in StoredMessage's field order (rows), handed out as
  StoredMessage: the garbage collector does not track an exact tuple of strings, ints and None
  (a NamedTuple instance stays tracked, and every full collection would walk all of them).
- The per-conversation lists, the rows and the JSON values in them (meta, e2e, attachments,
  call) are out of the collector's sight from the start (compiled build: the appender makes
  them so, `fastpath.untracked_json`): they hold only JSON-shaped values, so no cycle runs
  through them, and a store of millions of messages adds nothing to a full collection (a
  tracked list is walked whole by every one; so is a dict while it holds a tracked row). With
  a third of the messages carrying meta and its containers tracked, the `mix` bench's full
  collections took 360-375 ms each (2026-12-06); the store never changes a stored value.
- `_joined[(g, u)]` is the seq of group conversation g when u last joined it (absent: 0, as for
  every 1:1 participant); u's watermarks speak only for the seqs above it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any

from attrs import define, field

from relay.errors import Conflict, NotFound
from relay.fastpath import MemoryAppender, record
from relay.search.normalize import tokens
from relay.search.query import SearchQuery
from relay.store.base import (
    Appended,
    ConversationSummary,
    Coverage,
    DeviceKeys,
    Group,
    MessageRef,
    NewMessage,
    OutboxEvent,
    SearchPage,
    StoredMessage,
    Watermarks,
    WebhookCandidate,
    group_conversation,
)

_NO_MARKS = Watermarks(0, 0)
#: a stored message as kept: StoredMessage's fields, in order, in an exact tuple
_Row = tuple[Any, ...]
_SEQ = StoredMessage._fields.index("seq")
_SENDER = StoredMessage._fields.index("sender_id")
_ID = StoredMessage._fields.index("id")
_STAMP = StoredMessage._fields.index("server_timestamp")
_TEXT = StoredMessage._fields.index("text")


def _message(row: _Row) -> StoredMessage:
    return record(StoredMessage, row)


@define
class MemoryStore:
    """In-memory Store. `open`/`close` have nothing to do; data lives as long as the object."""

    # 1:1 conversation -> its two participants (one, for a note to self)
    _direct: dict[str, frozenset[str]] = field(factory=dict, init=False)
    # user -> the 1:1 conversations they take part in
    _direct_by_user: dict[str, set[str]] = field(factory=dict, init=False)
    _groups: dict[str, Group] = field(factory=dict, init=False)
    # user -> ids of the groups they belong to
    _groups_by_user: dict[str, set[str]] = field(factory=dict, init=False)
    # A user's watermarks, (conversation, user) -> seq, as two tables of ints, which the
    # collector never walks: a Watermarks kept per key, replaced as the watermark moves (per
    # reader and conversation each tick), was walked by the next young collection and
    # promoted; at 10,000 connections (bench `sparse`) they were a third of each young
    # collection. Every key of `_read` is in `_delivered` (read_seq <= delivered_seq).
    _delivered: dict[tuple[str, str], int] = field(factory=dict, init=False)
    _read: dict[tuple[str, str], int] = field(factory=dict, init=False)
    # (conversation, user) -> device id -> that device's delivered cursor
    _cursors: dict[tuple[str, str], dict[str, int]] = field(factory=dict, init=False)
    # (group conversation, user) -> the group's last seq when the user joined
    _joined: dict[tuple[str, str], int] = field(factory=dict, init=False)
    _last_seen: dict[str, str] = field(factory=dict, init=False)
    _keys: dict[tuple[str, str], DeviceKeys] = field(factory=dict, init=False)  # KeyStore
    # (user, device) -> the acceptance counter's value when the device registered
    _devices: dict[tuple[str, str], int] = field(factory=dict, init=False)
    # append_now's work: it owns the message containers; it reads _direct and calls _note_direct
    _appender: MemoryAppender = field(init=False)
    # conversation -> its rows in seq order: the appender's logs, read-only here
    _messages: Mapping[str, Sequence[_Row]] = field(init=False)
    # conversation -> the acceptance order of each of its rows: the appender's orders
    _order: Mapping[str, Sequence[int]] = field(init=False)
    # webhooks (WebhookOutbox): the scan's cursor (an acceptance order; None: never placed)
    # and the pending events by id
    _webhook_cursor: int | None = field(default=None, init=False)
    _webhook_events: dict[str, OutboxEvent] = field(factory=dict, init=False)
    # conversation -> the search tokens of its rows, in seq order: made when a search first
    # reaches them (a prefix of the log; messages are never removed)
    _search_tokens: dict[str, list[tuple[str, ...]]] = field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._appender = MemoryAppender(self._direct, self._note_direct, StoredMessage, Appended)
        self._messages = self._appender.logs
        self._order = self._appender.orders

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    # --- messages -------------------------------------------------------------------------------
    async def append_many(self, messages: Sequence[NewMessage]) -> list[Appended]:
        return self.append_now(messages)

    def append_now(self, messages: Sequence[NewMessage]) -> list[Appended]:
        """append_many without waiting (see Store.append_many): the core's poller appends
        inline with it. A subclass that changes append_many must change this too."""
        return self._appender.append(messages)  # the hot path of every message: compiled

    def _note_direct(self, message: NewMessage) -> None:
        if message.conversation in self._direct:
            return
        people = frozenset({message.sender_id, message.recipient_id or message.sender_id})
        self._direct[message.conversation] = people
        for user in people:
            self._direct_by_user.setdefault(user, set()).add(message.conversation)

    async def history(
        self,
        conversation: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> tuple[list[StoredMessage], bool]:
        log = self._messages.get(conversation, [])
        limit = max(limit, 0)
        if after is not None:
            start = max(after, 0)
            page = log[start : start + limit]
            has_more = start + limit < len(log)
            return [_message(row) for row in page], has_more
        end = len(log) if before is None else min(max(before - 1, 0), len(log))
        start = max(end - limit, 0)
        return [_message(row) for row in log[start:end]], start > 0

    async def undelivered(
        self, user_id: str, device_id: str, *, limit: int = 1000
    ) -> list[StoredMessage]:
        found: list[_Row] = []
        for conversation in self._conversations_of(user_id):
            start = self._cursors.get((conversation, user_id), {}).get(device_id)
            if start is None:
                start = self._device_start(conversation, user_id, device_id)
            # never what was said before the user (last) joined the group
            start = max(start, self._joined.get((conversation, user_id), 0))
            # at most a page from each conversation: a device far behind costs a page per
            # call, not its whole backlog (seq order is acceptance order within one)
            rows = self._messages.get(conversation, [])
            owed = (rows[i] for i in range(start, len(rows)) if rows[i][_SENDER] != user_id)
            found.extend(islice(owed, max(limit, 0)))
        found.sort(key=lambda r: self._order[r[0]][r[_SEQ] - 1])
        return [_message(row) for row in found[: max(limit, 0)]]

    def _device_start(self, conversation: str, user_id: str, device_id: str) -> int:
        """Where a device with no cursor in `conversation` stands: the user's delivered
        watermark, or the seq before the first message accepted after the device registered
        when that is lower."""
        start = self._marks_of(conversation, user_id).delivered_seq
        since = self._devices.get((user_id, device_id))
        if since is not None:
            start = min(start, bisect_right(self._order.get(conversation, ()), since))
        return start

    async def register_device(self, user_id: str, device_id: str) -> None:
        key = (user_id, device_id)
        if key not in self._devices:
            self._devices[key] = self._appender.take_order()  # later messages count above it

    async def latest_by_sender(
        self, conversation: str, after_seq: int, upto_seq: int, exclude_sender: str
    ) -> list[StoredMessage]:
        return self._latest_by_sender(conversation, after_seq, upto_seq, exclude_sender)

    def _latest_by_sender(
        self, conversation: str, after_seq: int, upto_seq: int, exclude_sender: str
    ) -> list[StoredMessage]:
        log = self._messages.get(conversation, ())
        low = max(after_seq, 0)
        people = self._direct.get(conversation)
        if people is not None and exclude_sender in people:
            # 1:1 seen by a participant: at most one other sender, whose newest message is the last one found
            # walking back (called once per delivery watermark move: the hot path of acks)
            for i in range(min(max(upto_seq, 0), len(log)) - 1, low - 1, -1):
                row = log[i]
                if row[_SENDER] != exclude_sender:
                    return [_message(row)]
            return []
        newest: dict[str, _Row] = {}
        for row in log[low : max(upto_seq, 0)]:
            if row[_SENDER] != exclude_sender:
                newest[row[_SENDER]] = row
        return [_message(row) for row in sorted(newest.values(), key=lambda r: r[_SEQ])]

    async def latest_by_sender_many(
        self, queries: Sequence[tuple[str, int, int, str]]
    ) -> list[list[StoredMessage]]:
        # one pass without a coroutine per query: one query per moved delivery watermark
        latest = self._latest_by_sender
        return [latest(*query) for query in queries]

    async def last_seq(self, conversation: str) -> int:
        return len(self._messages.get(conversation, []))

    # --- watermarks -----------------------------------------------------------------------------
    def _marks_of(self, conversation: str, user_id: str) -> Watermarks:
        key = (conversation, user_id)
        delivered = self._delivered.get(key)
        if delivered is None:
            return _NO_MARKS
        return Watermarks(delivered, self._read.get(key, 0))

    def _set_marks(self, conversation: str, user_id: str, delivered: int, read: int) -> None:
        key = (conversation, user_id)
        self._delivered[key] = delivered
        if read:
            self._read[key] = read
        else:
            self._read.pop(key, None)

    async def mark_delivered(
        self, conversation: str, user_id: str, device_id: str, seq: int
    ) -> Watermarks:
        return self._mark_delivered(conversation, user_id, device_id, seq)

    def _mark_delivered(
        self, conversation: str, user_id: str, device_id: str, seq: int
    ) -> Watermarks:
        key = (conversation, user_id)
        before = self._marks_of(conversation, user_id)
        log = self._messages.get(conversation)
        seq = min(seq, len(log) if log is not None else 0)
        devices = self._cursors.get(key)
        if devices is None:
            devices = self._cursors[key] = {}
        cursor = devices.get(device_id)
        if cursor is None:
            cursor = self._device_start(conversation, user_id, device_id)
        devices[device_id] = seq if seq > cursor else cursor
        if seq > before.delivered_seq:
            self._delivered[key] = seq
        return before

    async def mark_delivered_many(
        self, marks: Sequence[tuple[str, str, str, int]]
    ) -> list[Watermarks]:
        # one pass without a coroutine per mark: one mark per device and conversation flushed
        mark = self._mark_delivered
        return [mark(*m) for m in marks]

    async def mark_read(self, conversation: str, user_id: str, seq: int) -> Watermarks:
        before = self._marks_of(conversation, user_id)
        seq = min(seq, len(self._messages.get(conversation, [])))
        read = max(before.read_seq, seq)
        self._set_marks(conversation, user_id, max(before.delivered_seq, read), read)
        return before

    def _participants(self, conversation: str) -> tuple[str, ...]:
        people = self._direct.get(conversation)
        if people is not None:
            return tuple(sorted(people))
        group = self._groups.get(conversation[2:]) if conversation.startswith("g:") else None
        return group.members if group is not None else ()

    async def member_watermarks(self, conversation: str) -> dict[str, Watermarks]:
        return {u: self._marks_of(conversation, u) for u in self._participants(conversation)}

    async def coverage(self, sender_id: str, *, limit: int) -> list[Coverage]:
        found: list[Coverage] = []
        budget = max(limit, 0)
        for conversation in self._by_recency(sender_id):
            log = self._messages.get(conversation, [])
            group_id = None if conversation in self._direct else conversation[2:]
            for reader in self._participants(conversation):
                if reader == sender_id:
                    continue
                marks = self._marks_of(conversation, reader)
                joined = self._joined.get((conversation, reader), 0)
                if marks.delivered_seq <= joined:
                    continue
                if budget == 0:
                    return found
                budget -= 1
                delivered = _newest_of(log, sender_id, joined, marks.delivered_seq)
                if delivered is None:
                    continue
                if delivered.seq <= marks.read_seq:
                    read: MessageRef | None = delivered
                else:
                    read = _newest_of(log, sender_id, joined, marks.read_seq)
                found.append(Coverage(conversation, group_id, reader, delivered, read))
        return found

    # --- conversation list ----------------------------------------------------------------------
    def _conversations_of(self, user_id: str) -> list[str]:
        direct = self._direct_by_user.get(user_id, set())
        groups = self._groups_by_user.get(user_id, set())
        return [*direct, *(group_conversation(g) for g in groups)]

    def _by_recency(self, user_id: str) -> list[str]:
        """The user's conversations in the order of `conversations` (newest first)."""
        rows: list[tuple[tuple[str, int], str]] = []
        for conversation in self._conversations_of(user_id):
            log = self._messages.get(conversation)
            last = log[-1] if log else None
            if last is not None:
                rows.append(((last[_STAMP], self._order[conversation][-1]), conversation))
            elif conversation not in self._direct:
                rows.append(((self._groups[conversation[2:]].created_at, 0), conversation))
        rows.sort(key=lambda row: row[0], reverse=True)
        return [conversation for _, conversation in rows]

    async def conversations(self, user_id: str, *, limit: int = 100) -> list[ConversationSummary]:
        rows: list[tuple[tuple[str, int], ConversationSummary]] = []
        for conversation in self._conversations_of(user_id):
            log = self._messages.get(conversation, [])
            last = _message(log[-1]) if log else None
            marks = self._marks_of(conversation, user_id)
            unread = sum(1 for r in log[marks.read_seq :] if r[_SENDER] != user_id)
            peer_id: str | None = None
            group_id: str | None = None
            if conversation in self._direct:
                people = self._direct[conversation]
                peer_id = next((p for p in people if p != user_id), user_id)
                updated_at = last.server_timestamp if last else ""
            else:
                group_id = conversation[2:]
                created = self._groups[group_id].created_at
                updated_at = last.server_timestamp if last else created
            summary = ConversationSummary(
                conversation=conversation,
                peer_id=peer_id,
                group_id=group_id,
                last_message=last,
                unread=unread,
                last_seq=len(log),
                read_seq=marks.read_seq,
                updated_at=updated_at,
            )
            order = self._order[conversation][last.seq - 1] if last else 0
            rows.append(((updated_at, order), summary))
        rows.sort(key=lambda row: row[0], reverse=True)
        return [summary for _, summary in rows[: max(limit, 0)]]

    async def contacts(self, user_id: str) -> set[str]:
        found: set[str] = set()
        for conversation in self._direct_by_user.get(user_id, set()):
            found |= self._direct[conversation]
        for group_id in self._groups_by_user.get(user_id, set()):
            found.update(self._groups[group_id].members)
        found.discard(user_id)
        return found

    # --- groups ---------------------------------------------------------------------------------
    async def create_group(self, group: Group) -> Group:
        if group.group_id in self._groups:
            raise Conflict(f"group {group.group_id!r} exists already")
        stored = Group(
            group_id=group.group_id,
            name=group.name,
            members=tuple(sorted(set(group.members))),
            created_by=group.created_by,
            created_at=group.created_at,
        )
        self._groups[group.group_id] = stored
        self._join(stored.group_id, stored.members)
        return stored

    async def get_group(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    async def set_group_members(self, group_id: str, members: Sequence[str]) -> Group:
        old = self._groups.get(group_id)
        if old is None:
            raise NotFound(f"group {group_id!r} does not exist")
        new = Group(
            group_id=old.group_id,
            name=old.name,
            members=tuple(sorted(set(members))),
            created_by=old.created_by,
            created_at=old.created_at,
        )
        for user in set(old.members) - set(new.members):
            self._groups_by_user[user].discard(group_id)
        self._groups[group_id] = new
        self._join(group_id, tuple(set(new.members) - set(old.members)))
        return new

    def _join(self, group_id: str, users: Sequence[str]) -> None:
        # A member joins at the group's present: what was said before (or while they were out of
        # the group) is history, not backlog; their devices start again at the new watermark.
        conversation = group_conversation(group_id)
        last = len(self._messages.get(conversation, []))
        for user in users:
            self._groups_by_user.setdefault(user, set()).add(group_id)
            self._cursors.pop((conversation, user), None)
            self._joined[(conversation, user)] = last
            marks = self._marks_of(conversation, user)
            if marks.delivered_seq < last or marks.read_seq < last:
                self._set_marks(
                    conversation, user, max(marks.delivered_seq, last), max(marks.read_seq, last)
                )

    # --- search (Searchable) ---------------------------------------------------------------------
    async def search(
        self,
        user_id: str,
        query: SearchQuery,
        *,
        conversation: str | None = None,
        before: int | None = None,
        limit: int = 20,
    ) -> SearchPage:
        limit = max(limit, 0)
        mine = self._conversations_of(user_id)
        if conversation is not None:
            mine = [conversation] if conversation in mine else []
        found: list[tuple[int, _Row]] = []  # (acceptance order, row)
        for key in mine:
            log = self._messages.get(key, [])
            order = self._order.get(key, [])
            known = self._search_tokens.setdefault(key, [])
            known.extend(tuple(tokens(row[_TEXT])) for row in log[len(known) :])
            # a group's messages since the user last joined it (0 for a 1:1 participant)
            start = self._joined.get((key, user_id), 0)
            end = len(log) if before is None else bisect_left(order, before, start, len(log))
            taken = 0
            for i in range(end - 1, start - 1, -1):
                if query.matches(known[i]):
                    found.append((order[i], log[i]))
                    taken += 1
                    if taken > limit:
                        break
        found.sort(key=lambda item: item[0], reverse=True)
        page = found[:limit]
        return SearchPage(
            [_message(row) for _, row in page], [at for at, _ in page], len(found) > limit
        )

    # --- presence -------------------------------------------------------------------------------
    async def set_last_seen(self, user_id: str, timestamp: str) -> None:
        self._last_seen[user_id] = timestamp

    async def last_seen(self, user_ids: Sequence[str]) -> dict[str, str]:
        return {u: self._last_seen[u] for u in user_ids if u in self._last_seen}

    # --- end-to-end keys (relay.store.base.KeyStore) ------------------------------------------------
    async def publish_keys(self, keys: DeviceKeys) -> None:
        self._keys[(keys.user_id, keys.device_id)] = keys

    async def device_keys(self, user_id: str) -> list[DeviceKeys]:
        return sorted(
            (k for (user, _), k in self._keys.items() if user == user_id),
            key=lambda k: k.device_id,
        )

    # --- webhooks (WebhookOutbox) --------------------------------------------------------------
    async def webhook_start(self) -> None:
        if self._webhook_cursor is None:
            self._webhook_cursor = self._appender.take_order()  # later messages count above it

    async def webhook_candidates(self, *, limit: int) -> list[WebhookCandidate]:
        # a bisect per conversation: O(conversations) per scan, which suits the memory store's
        # use (tests, `--memory`); the SQLite store reads an index range
        cursor = self._webhook_cursor
        limit = max(limit, 0)
        if cursor is None or limit == 0:
            return []
        found: list[tuple[int, _Row]] = []
        for conversation, orders in self._order.items():
            start = bisect_right(orders, cursor)
            if start < len(orders):
                log = self._messages[conversation]
                found.extend(
                    zip(orders[start : start + limit], log[start : start + limit], strict=True)
                )
        found.sort(key=lambda item: item[0])
        return [WebhookCandidate(order, _message(row)) for order, row in found[:limit]]

    async def webhook_advance(
        self, position: int, events: Sequence[OutboxEvent], *, max_pending: int
    ) -> int:
        pending = self._webhook_events
        for event in events:
            pending.setdefault(event.id, event)
        if self._webhook_cursor is None or position > self._webhook_cursor:
            self._webhook_cursor = position
        excess = len(pending) - max(max_pending, 0)
        if excess <= 0:
            return 0
        for event in sorted(pending.values(), key=lambda e: (e.created_at, e.id))[:excess]:
            del pending[event.id]
        return excess

    async def webhook_due(self, now: float, *, limit: int) -> list[OutboxEvent]:
        due = [e for e in self._webhook_events.values() if e.next_at <= now]
        due.sort(key=lambda e: (e.created_at, e.id))
        return due[: max(limit, 0)]

    async def webhook_settle(
        self, removed: Sequence[str], retried: Sequence[tuple[str, float]]
    ) -> None:
        pending = self._webhook_events
        for event_id in removed:
            pending.pop(event_id, None)
        for event_id, next_at in retried:
            event = pending.get(event_id)
            if event is not None:
                pending[event_id] = OutboxEvent(
                    event.id, event.body, event.created_at, next_at, event.attempts + 1
                )

    async def webhook_pending(self) -> tuple[int, float | None]:
        pending = self._webhook_events
        return len(pending), min((e.next_at for e in pending.values()), default=None)


def _newest_of(log: Sequence[_Row], sender_id: str, after: int, upto: int) -> MessageRef | None:
    """The newest message of `sender_id` with after < seq <= upto in a conversation's log."""
    for i in range(min(upto, len(log)) - 1, max(after, 0) - 1, -1):
        row = log[i]
        if row[_SENDER] == sender_id:
            return MessageRef(row[_SEQ], row[_ID])
    return None
