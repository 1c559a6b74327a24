"""The stores' per-message work: the in-memory store's append and the SQLite store's rows."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

import orjson

from relay._fastpath_py.records import record, untracked, untracked_json

# --- the in-memory store's append -----------------------------------------------------------------


class MemoryAppender:
    """MemoryStore.append_now, the store's part of every message: appends NewMessages to the
    containers it owns and returns their Appended. The store reads them through the read-only
    views below and never writes them.

    - `find(sender_id, id)` -> the stored row: the idempotency check (a known id is answered
      with the stored message, `duplicate=True`, and nothing changes);
    - `logs[conversation]` -> the rows in seq order (seq = position + 1), and beside it
      `orders[conversation]` -> the acceptance order of each: a counter, shared with
      take_order(), increasing across every conversation from 1;
    - a row is StoredMessage's fields in an exact tuple; the StoredMessage handed out is
      `stored_cls` made of it (its own copy of `meta` when there is one);
    - the first message of a 1:1 conversation not in `direct` (the store's, only read here) is
      passed to `note_direct`.
    The compiled class does the same in C (and keeps rows and logs out of the collector's sight)."""

    __slots__ = (
        "_appended_cls",
        "_by_sender",
        "_direct",
        "_last_order",
        "_logs",
        "_note_direct",
        "_orders",
        "_stored_cls",
    )

    def __init__(
        self,
        direct: Container[str],
        note_direct: Callable[[Any], None],
        stored_cls: type[tuple[Any, ...]],
        appended_cls: type[tuple[Any, ...]],
    ) -> None:
        if not (issubclass(stored_cls, tuple) and issubclass(appended_cls, tuple)):
            raise TypeError("MemoryAppender needs tuple classes (NamedTuples)")
        self._by_sender: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._logs: dict[str, list[tuple[Any, ...]]] = {}
        self._orders: dict[str, list[int]] = {}
        self._last_order = 0
        self._direct = direct
        self._note_direct = note_direct
        self._stored_cls = stored_cls
        self._appended_cls = appended_cls

    def find(self, sender_id: str, ident: str) -> tuple[Any, ...] | None:
        """The stored row of (sender_id, id), or None."""
        sent = self._by_sender.get(sender_id)
        return None if sent is None else sent.get(ident)

    @property
    def logs(self) -> Mapping[str, Sequence[tuple[Any, ...]]]:
        return self._logs

    @property
    def orders(self) -> Mapping[str, Sequence[int]]:
        return self._orders

    def take_order(self) -> int:
        """The acceptance counter's next value, given to no message: the messages appended
        after this call have greater orders (a device registering is placed with it)."""
        self._last_order += 1
        return self._last_order

    def append(self, messages: Iterable[Any]) -> list[Any]:
        results: list[Any] = []
        by_sender = self._by_sender
        logs = self._logs
        orders = self._orders
        stored_cls = self._stored_cls
        appended_cls = self._appended_cls
        for message in messages:
            sent = by_sender.get(message.sender_id)
            if sent is None:
                sent = by_sender[message.sender_id] = {}
            existing = sent.get(message.id)
            if existing is not None:
                results.append(record(appended_cls, (record(stored_cls, existing), True)))
                continue
            conversation = message.conversation
            log = logs.get(conversation)
            if log is None:
                log = logs[conversation] = untracked([])
                orders[conversation] = untracked([])
            seq = len(log) + 1
            if message.meta is None and message.e2e is None and message.attachments is None:
                row = untracked((conversation, seq, *message[1:]))
                stored = record(stored_cls, row)
            else:
                stored = message.stored(seq)  # its own copy of `meta`
                for value in (stored.meta, stored.e2e, stored.attachments, stored.call):
                    untracked_json(value)  # kept for the store's life (the compiled twin hides
                row = untracked(tuple(stored))  # them and the row from full collections)
            log.append(row)
            sent[message.id] = row
            self._last_order += 1
            orders[conversation].append(self._last_order)
            if message.group_id is None and conversation not in self._direct:
                self._note_direct(message)
            results.append(record(appended_cls, (stored, False)))
        return results


# --- the SQLite store's rows ----------------------------------------------------------------------

#: StoredMessage's optional columns, in the order of the bits of a row's `present` mask: a row's
#: parameters are pos, conversation, seq, id, sender_id, text, server_timestamp, then those of
#: these it sets, in this order (meta, e2e, attachments and call as their JSON text)
ROW_OPTIONAL = (
    "recipient_id",
    "group_id",
    "sender_name",
    "sender_avatar",
    "client_timestamp",
    "meta",
    "e2e",
    "attachments",
    "call",
)


def sqlite_rows(
    requests: Iterable[Iterable[Any]],
    tip_of: Callable[[Any], list[Any]],
    pos: int,
    stored_cls: type[tuple[Any, ...]],
    appended_cls: type[tuple[Any, ...]],
) -> tuple[dict[int, list[Any]], list[list[Any]], int]:
    """SqliteStore's per-message work for a fused append: every NewMessage of `requests`, in
    order, numbered and laid out as INSERT parameters.

    - `tip_of(message)` is called once per conversation (at its first message) and returns
      that conversation's counters, a list [last_seq, last_pos, updated_at] that this updates
      in place as its messages are numbered: seq = last_seq + 1, pos counts on from `pos`;
    - the rows go by the optional columns they set (`present`, bits of ROW_OPTIONAL): rows
      [present] is their parameters laid end to end;
    - each request's answer is a list of `appended_cls((stored, False))`, `stored` being
      `stored_cls` made of the message's fields with its seq second (its own copy of `meta`).
    Returns (rows, answers, the last pos given). The compiled function does the same in C."""
    tips: dict[str, list[Any]] = {}
    rows: dict[int, list[Any]] = {}
    answers: list[list[Any]] = []
    for messages in requests:
        results: list[Any] = []
        for m in messages:
            (
                conversation,
                ident,
                sender,
                text,
                timestamp,
                recipient,
                group,
                name,
                avatar,
                stamp,
                meta,
                e2e,
                attachments,
                call,
            ) = m
            tip = tips.get(conversation)
            if tip is None:
                tip = tips[conversation] = tip_of(m)
            pos += 1
            seq = tip[0] = tip[0] + 1
            tip[1] = pos
            tip[2] = timestamp
            present = 0
            if recipient is not None:
                present = 1
            if group is not None:
                present |= 2
            if name is not None:
                present |= 4
            if avatar is not None:
                present |= 8
            if stamp is not None:
                present |= 16
            if meta is not None:
                present |= 32
            if e2e is not None:
                present |= 64
            if attachments is not None:
                present |= 128
            if call is not None:
                present |= 256
            params = rows.get(present)
            if params is None:
                params = rows[present] = []
            params += (pos, conversation, seq, ident, sender, text, timestamp)
            if present:
                if recipient is not None:
                    params.append(recipient)
                if group is not None:
                    params.append(group)
                if name is not None:
                    params.append(name)
                if avatar is not None:
                    params.append(avatar)
                if stamp is not None:
                    params.append(stamp)
            if meta is None and e2e is None and attachments is None and call is None:
                stored = record(stored_cls, (conversation, seq, *m[1:]))
            else:
                if meta is not None:
                    params.append(orjson.dumps(meta).decode())
                if e2e is not None:
                    params.append(orjson.dumps(e2e).decode())
                if attachments is not None:
                    params.append(orjson.dumps(attachments).decode())
                if call is not None:
                    params.append(orjson.dumps(call).decode())
                stored = m.stored(seq)  # its own copy of `meta`
            results.append(record(appended_cls, (stored, False)))
        answers.append(results)
    return rows, answers, pos
