"""The message pipeline: every message, whatever its entry, takes the same five stages.

    check ──> append ──> answer ──> sequence ──> deliver
    _check    the store  _answer    Sequencer    Broker.deliver

- check: the sender may send it (senderId is the authenticated user -> else failed/forbidden;
  the parser's field checks -> failed/invalid or too_long; group unknown -> failed/not_found,
  not a member -> failed/forbidden), then the per-user token bucket (`rate_limit_messages`/s,
  burst `rate_limit_burst` -> failed/rate_limited; not for `publish`). A message without
  senderName/senderAvatar carries the userName/userAvatar its sender authenticated with.
- append: the accepted messages of one read in ONE store append, made the way the store
  allows: `append_now` inline (InlineAppend), `append_soon` answered from the store's callback
  (QueuedAppend, while it has room), or an awaited `append_many`.
- answer: only once the append returned does the sender get `sent` (with seq), in frame order,
  queued after the deliveries (the shell then writes the recipients first: see `_answer`);
  a duplicate (senderId, id) gets the same `sent` and seq and is not delivered again; a store
  failure answers every message of the append failed/internal.
- sequence: deliveries are released in seq order per conversation whatever order appends
  return in (relay.core.sequencer).
- deliver: to every live device of the recipient(s) and the sender's other devices, through
  the Broker port (relay.core.broker).

Entries: `inline` (the shell's poller, without waiting), `frames` (awaited, what `inline` left),
`publish` (in-process). Speed work belongs inside these stages, never in a copy of them.

Metrics (ctx.stats), per batch where it can be: messages accepted, failed by reason; the accept
time (time.monotonic, one read per batch) of a batch whose answers or deliveries are queued, as
`delivery_mark` for the shell's flush (relay_delivery_seconds).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from attrs import define, field

from relay.core.broker import Broker
from relay.core.context import Context
from relay.core.sequencer import Ready, Sequencer
from relay.core.session import Phase, Session
from relay.errors import FrameError
from relay.fastpath import OP_TEXT, encode_frame, encode_sent_frame, record
from relay.ports import Connection
from relay.protocol import (
    MESSAGE_ID_MAX,
    MessageFrame,
    MessageRefused,
    encode_receipt_failed,
    parse_client_frame,
    validate_message,
)
from relay.store.base import (
    Appended,
    Group,
    InlineAppend,
    NewMessage,
    QueuedAppend,
    StoredMessage,
    direct_conversation,
    group_conversation,
)

log = logging.getLogger("relay.core")

_ACTIVE = Phase.ACTIVE
#: bound of the remembered 1:1 and group conversation keys, each (cleared when reached)
DIRECT_KEYS_MAX = 100_000
_monotonic = time.monotonic

#: what a read's message frames are before the check: parsed, or refused by the parser
Item = MessageFrame | MessageRefused
#: a checked message: (what to store, the users it is for), or its refusal
Entry = tuple[NewMessage, tuple[str, ...]] | MessageRefused


class Author(Protocol):
    """Who sends: a Session, or a publisher's stand-in."""

    @property
    def user_id(self) -> str: ...
    @property
    def user_name(self) -> str | None: ...
    @property
    def user_avatar(self) -> str | None: ...


class _Publisher(NamedTuple):
    user_id: str
    user_name: str | None
    user_avatar: str | None = None


class _Pending(NamedTuple):
    """A checked append between the store and its answers."""

    entries: list[Entry]  # per frame, in order
    accepted: list[NewMessage]  # what to store, in order
    conversations: Sequence[str]  # each once: the sequencer's turn
    timestamp: str  # the server time of the append
    accepted_at: float = 0.0  # time.monotonic() of the check: where delivery latency starts


def _refusal_frame(refused: MessageRefused) -> bytes:
    return encode_receipt_failed(
        refused.message_id,
        refused.code,
        peer_id=refused.peer_id,
        group_id=refused.group_id,
        field=refused.field,
        detail=refused.message,
    )


def _refuse(
    frame: MessageFrame, code: str, detail: str, field: str | None = None
) -> MessageRefused:
    return MessageRefused(
        code,
        detail,
        message_id=frame.id,
        field=field,
        peer_id=frame.recipient_id,
        group_id=frame.group_id,
    )


@define(eq=False)
class Pipeline:
    _ctx: Context
    _broker: Broker
    _sequencer: Sequencer = field(init=False)
    _direct_keys: dict[tuple[str, str], str] = field(factory=dict)
    #: group id -> its conversation key, one string object per group while remembered: the
    #: devices' `sent_upto` and `pending_marks` are keyed by it, and delivery reads or writes
    #: them three times per recipient device; a key identical to the dict's own is found
    #: without comparing characters (about 60 instructions less per dict operation,
    #: callgrind, CPython 3.11)
    _group_keys: dict[str, str] = field(factory=dict)
    # the store's ways to append without awaiting (relay.store.base), decided once
    _inline: InlineAppend | None = field(init=False)
    _queued: QueuedAppend | None = field(init=False)
    #: why this node cannot take messages now (PostgreSQL or Redis lost), None while it can:
    #: each message is then refused (`failed`, reason `internal`, the problem as its message)
    health: Callable[[], str | None] | None = None

    def __attrs_post_init__(self) -> None:
        self._sequencer = Sequencer(self._broker.deliver)
        store = self._ctx.store
        self._inline = store if isinstance(store, InlineAppend) else None
        self._queued = store if isinstance(store, QueuedAppend) else None

    def prune(self, now: float) -> None:
        self._sequencer.prune(now)

    # --- entries ----------------------------------------------------------------------------------
    def inline(self, conn: Connection, session: Session, payloads: list[bytes]) -> int:
        """The leading message frames of a read (1:1, or to a group in the router's cache),
        appended without waiting when the store allows it; returns how many payloads were
        taken (the rest go to `frames` and the other handlers, awaited, in order)."""
        inline = self._inline
        queued = self._queued
        if inline is None and (queued is None or not queued.has_room()):
            return 0
        batch = self._leading(payloads, session.user_id)
        if not batch:
            return 0
        ctx = self._ctx
        now = ctx.clock()
        pending = self._check(conn, session, session, batch, now, ctx.now_iso())
        if pending is None:
            return len(batch)
        if inline is not None:
            try:
                results: list[Appended] | None = inline.append_now(pending.accepted)
            except Exception:
                log.exception("storing %d message(s) failed", len(pending.accepted))
                results = None
            deliveries: list[Ready] = []
            try:
                answers = self._answer(conn, session, pending, results, deliveries)
            finally:
                self._sequencer.run(pending.conversations, deliveries, now)
            self._reply(conn, session, answers)
            return len(batch)

        def stored(results: list[Appended] | None, error: BaseException | None) -> None:
            if error is not None:
                log.error("storing %d message(s) failed: %s", len(pending.accepted), error)
            try:
                self._finish(conn, session, pending, results)
            except Exception:
                log.exception("internal error answering stored messages")

        assert queued is not None
        self._sequencer.begin(pending.conversations, now)
        try:
            queued.append_soon(pending.accepted, stored)
        except BaseException:
            self._sequencer.end(pending.conversations, ())
            raise
        return len(batch)

    async def frames(self, conn: Connection, session: Session, batch: list[Item]) -> None:
        """A read's consecutive message frames, awaited (a group not cached, a store that
        must be awaited)."""
        ctx = self._ctx
        for i, item in enumerate(batch):  # the groups into the router's cache: _check reads it
            if item.__class__ is MessageFrame:
                assert isinstance(item, MessageFrame)
                if item.group_id is not None:
                    await ctx.router.group(ctx.store, item.group_id)
                if item.attachments is not None:  # the files' records, before the checks
                    batch[i] = await self._resolve(session.user_id, item)
        now = ctx.clock()
        pending = self._check(conn, session, session, batch, now, ctx.now_iso())
        if pending is None:
            return
        self._sequencer.begin(pending.conversations, now)
        try:
            results: list[Appended] | None = await ctx.store.append_many(pending.accepted)
        except Exception:
            log.exception("storing %d message(s) failed", len(pending.accepted))
            results = None
        except BaseException:  # cancelled: nothing to answer, the turn ends
            self._sequencer.end(pending.conversations, ())
            raise
        if results is not None:
            await self._grant(pending, results)
        self._finish(conn, session, pending, results)

    async def publish(
        self,
        *,
        sender_id: str,
        text: str | None,
        recipient_id: str | None = None,
        group_id: str | None = None,
        message_id: str | None = None,
        sender_name: str | None = None,
        meta: dict[str, Any] | None = None,
        e2e: dict[str, Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        call: dict[str, Any] | None = None,
    ) -> StoredMessage:
        """Send a message as `sender_id` from inside the process (no connection): the same
        checks as a client's message but the rate limit (raises MessageRefused, a FrameError,
        with the receipt's reason as `code`), the same append and delivery. `message_id`
        defaults to a random one; publishing an id again returns the stored message without
        delivering it again. `call` is a call record (relay.core.calls), which no client's
        message can carry. Raises what the store raises."""
        if not isinstance(sender_id, str) or not sender_id:
            raise FrameError("invalid", "sender_id must be a non-empty string", field="senderId")
        mid = message_id if message_id is not None else secrets.token_hex(16)
        if not isinstance(mid, str) or not 1 <= len(mid) <= MESSAGE_ID_MAX:
            raise FrameError(
                "invalid", f"message_id must be 1-{MESSAGE_ID_MAX} characters", field="id"
            )
        obj: dict[str, Any] = {
            "text": text,
            "recipientId": recipient_id,
            "groupId": group_id,
            "senderId": sender_id,
            "senderName": sender_name,
            "meta": meta,
        }
        if e2e is not None:  # an encrypted message: its object, and no text (None: absent)
            obj["e2e"] = e2e
        if attachments is not None:  # files the sender uploaded ([{fileId}]); text optional
            obj["attachments"] = attachments
        ctx = self._ctx
        frame = validate_message(obj, ctx.limits, message_id=mid)
        if frame.attachments is not None:
            resolved = await self._resolve(sender_id, frame)
            if resolved.__class__ is not MessageFrame:
                assert isinstance(resolved, MessageRefused)
                raise resolved
            assert isinstance(resolved, MessageFrame)
            frame = resolved
        if frame.group_id is not None:
            await ctx.router.group(ctx.store, frame.group_id)
        now = ctx.clock()
        timestamp = ctx.now_iso()
        entry = self._check_one(_Publisher(sender_id, sender_name), frame, now, timestamp, False)
        if entry.__class__ is not tuple:
            assert isinstance(entry, MessageRefused)
            raise entry
        assert isinstance(entry, tuple)
        if call is not None:
            entry = (entry[0]._replace(call=call), entry[1])
        conversations = (entry[0].conversation,)
        pending = _Pending([entry], [entry[0]], conversations, timestamp, _monotonic())
        deliveries: list[Ready] = []
        self._sequencer.begin(conversations, now)
        try:
            results = await ctx.store.append_many(pending.accepted)
            await self._grant(pending, results)
            self._answer(None, None, pending, results, deliveries)
        finally:
            self._sequencer.end(conversations, deliveries)
        return results[0].message

    # --- attachments (relay.core.attachments) ----------------------------------------------------
    async def _resolve(self, user: str, frame: MessageFrame) -> Item:
        """`frame` with its attachments resolved to the files' records, or its refusal when a
        file is not one `user` uploaded (or no file service runs)."""
        files = self._ctx.files
        wanted = frame.attachments
        assert wanted is not None
        found = None
        if files is not None:
            found = await files.resolve(user, [a["fileId"] for a in wanted])
        if found is None:
            return _refuse(
                frame, "invalid", "each fileId must name a file the sender uploaded", "attachments"
            )
        return frame._replace(attachments=found)

    async def _grant(self, pending: _Pending, results: list[Appended]) -> None:
        """Grant the files of the newly stored messages to their audiences, before they are
        answered and delivered (a recipient may download at once)."""
        files = self._ctx.files
        if files is None:
            return
        stored = iter(results)
        for entry in pending.entries:
            if entry.__class__ is not tuple:
                continue
            assert isinstance(entry, tuple)
            message, audience = entry
            appended = next(stored)
            if message.attachments is not None and not appended.duplicate:
                try:
                    await files.grant([a["fileId"] for a in message.attachments], audience)
                except Exception:
                    log.exception("granting the files of message %s failed", message.id)

    # --- stages -----------------------------------------------------------------------------------
    def _leading(self, payloads: list[bytes], user: str) -> list[Item]:
        """The leading message frames of `payloads` (refused ones included) that need no
        waiting: 1:1, or to a group in the router's cache; with files, only those the file
        catalog holds in memory as `user`'s, already granted to the message's audience
        (relay.core.attachments: then no file is read or written for it)."""
        ctx = self._ctx
        limits = ctx.limits
        cached_group = ctx.router.cached_group
        batch: list[Item] = []
        for payload in payloads:
            try:
                frame = parse_client_frame(payload, limits)
            except MessageRefused as refused:
                batch.append(refused)
                continue
            except FrameError:
                break
            if frame.__class__ is not MessageFrame:
                break
            assert isinstance(frame, MessageFrame)
            group_id = frame.group_id
            group = None
            if group_id is not None:
                group = cached_group(group_id)
                if group is None:
                    break
            if frame.attachments is not None:
                files = ctx.files
                if files is None:  # refused: in `frames`
                    break
                ids = [a["fileId"] for a in frame.attachments]
                found = files.known(user, ids)
                if found is None:  # read from the file store: awaited, in `frames`
                    break
                if group is not None:
                    audience: Sequence[str] = group.members
                else:
                    peer = frame.recipient_id
                    assert peer is not None
                    audience = (peer,) if peer == user else (peer, user)
                if not files.granted(ids, audience):  # a grant to store: awaited, in `frames`
                    break
                frame = frame._replace(attachments=found)
            batch.append(frame)
        return batch

    def _check(
        self,
        conn: Connection,
        session: Session,
        author: Author,
        batch: list[Item],
        now: float,
        timestamp: str,
    ) -> _Pending | None:
        """Check every message of `batch` (groups from the router's cache). None when nothing
        is to be stored: the refusals were answered."""
        entries: list[Entry] = []
        accepted: list[NewMessage] = []
        check_one = self._check_one
        for item in batch:
            if item.__class__ is MessageFrame:
                assert isinstance(item, MessageFrame)
                entry = check_one(author, item, now, timestamp, True)
                if entry.__class__ is tuple:
                    accepted.append(entry[0])
                entries.append(entry)
            else:
                assert isinstance(item, MessageRefused)
                entries.append(item)
        if not accepted:
            ctx = self._ctx
            for entry in entries:
                assert isinstance(entry, MessageRefused)
                ctx.stats.message_failed(entry.code)
                ctx.send(conn, session, _refusal_frame(entry))
            return None
        if len(accepted) == 1:
            conversations: Sequence[str] = (accepted[0].conversation,)
        else:  # no comprehension: it is a function call of its own in 3.11
            conversations = list(dict.fromkeys([m.conversation for m in accepted]))
        return _Pending(entries, accepted, conversations, timestamp, _monotonic())

    def _check_one(
        self, author: Author, frame: MessageFrame, now: float, timestamp: str, limited: bool
    ) -> Entry:
        """One message's checks that need the sender (see the module doc)."""
        user = author.user_id
        if self.health is not None:
            problem = self.health()
            if problem is not None:
                return _refuse(frame, "internal", f"the relay cannot take messages now: {problem}")
        sender_id = frame.sender_id
        if sender_id is not None and sender_id != user:
            return _refuse(frame, "forbidden", "senderId is not the authenticated user", "senderId")
        group_id = frame.group_id
        if group_id is None:
            peer = frame.recipient_id
            assert peer is not None
            audience: tuple[str, ...] = (peer,) if peer == user else (peer, user)
            conversation = self._direct_keys.get((user, peer)) or self._direct_key(user, peer)
        else:
            group: Group | None = self._ctx.router.cached_group(group_id)
            if group is None:
                return _refuse(frame, "not_found", "no such group", "groupId")
            if user not in group.members:
                return _refuse(frame, "forbidden", "not a member of this group", "groupId")
            audience = group.members
            conversation = self._group_keys.get(group_id) or self._group_key(group_id)
        if limited and not self._ctx.limiter.allow(user, now):
            return _refuse(frame, "rate_limited", "too many messages; slow down")
        sender_name = frame.sender_name
        sender_avatar = frame.sender_avatar
        # NewMessage(...) in one allocation (fastpath.record): its fields, in order
        message: NewMessage = record(
            NewMessage,
            (
                conversation,
                frame.id,
                user,
                frame.text,
                timestamp,
                frame.recipient_id,
                group_id,
                author.user_name if sender_name is None else sender_name,
                author.user_avatar if sender_avatar is None else sender_avatar,
                frame.client_timestamp,
                frame.meta,
                frame.e2e,
                frame.attachments,
                None,  # call: only a call record published by relay.core.calls has one
            ),
        )
        return message, audience

    def _group_key(self, group_id: str) -> str:
        """group_conversation(group_id), remembered (bounded) for the hot path."""
        keys = self._group_keys
        if len(keys) >= DIRECT_KEYS_MAX:
            keys.clear()
        key = keys[group_id] = group_conversation(group_id)
        return key

    def _direct_key(self, user: str, peer: str) -> str:
        """direct_conversation(user, peer), remembered (bounded) for the hot path."""
        keys = self._direct_keys
        if len(keys) >= DIRECT_KEYS_MAX:
            keys.clear()
        key = keys[(user, peer)] = direct_conversation(user, peer)
        return key

    def _finish(
        self,
        conn: Connection,
        session: Session,
        pending: _Pending,
        results: list[Appended] | None,
    ) -> None:
        """Release the new messages to the sequencer, then queue the answers; the append's
        turn ends whatever happens."""
        deliveries: list[Ready] = []
        try:
            answers = self._answer(conn, session, pending, results, deliveries)
        finally:
            self._sequencer.end(pending.conversations, deliveries)
        self._reply(conn, session, answers)

    def _answer(
        self,
        conn: Connection | None,
        session: Session | None,
        pending: _Pending,
        results: list[Appended] | None,
        deliveries: list[Ready],
    ) -> list[bytes]:
        """The sender's answers in frame order, framed (`sent`, or `failed` when `results` is
        None: the store failed; none without a connection); the new messages' deliveries go to
        `deliveries` for the sequencer.

        The callers queue the answers (`_reply`) after the sequencer has queued the
        deliveries, so that the shell, which writes connections in the order they got frames,
        writes a message's recipients before its sender: the `delivered` receipt their flush
        causes (relay.core.marks) then joins the `sent` in the sender's write rather than
        costing a write of its own. Each connection's own frames keep their order."""
        ctx = self._ctx
        stats = ctx.stats
        if results is None:
            stats.message_failed("internal", len(pending.accepted))
        else:
            stats.messages_accepted += len(results)
            if not stats.delivery_mark:
                stats.delivery_mark = pending.accepted_at
        stored = iter(results or ())
        timestamp = pending.timestamp
        unstored = "the message was not stored"
        if results is None and self.health is not None:
            problem = self.health()  # why, when the node knows (PostgreSQL lost)
            if problem is not None:
                unstored = f"{unstored}: {problem}"
        answers: list[bytes] = []
        answering = conn is not None and session is not None
        for entry in pending.entries:
            if entry.__class__ is not tuple:
                assert isinstance(entry, MessageRefused)
                stats.message_failed(entry.code)
                if answering:
                    answers.append(encode_frame(OP_TEXT, _refusal_frame(entry)))
                continue
            assert isinstance(entry, tuple)
            message, audience = entry
            if results is None:
                if answering:
                    failed = encode_receipt_failed(
                        message.id,
                        "internal",
                        peer_id=message.recipient_id,
                        group_id=message.group_id,
                        detail=unstored,
                    )
                    answers.append(encode_frame(OP_TEXT, failed))
                continue
            appended = next(stored)
            done = appended.message
            if answering:
                answers.append(
                    encode_sent_frame(
                        done.id, done.recipient_id, done.group_id, done.seq, timestamp
                    )
                )
            if not appended.duplicate:
                deliveries.append((message.conversation, done.seq, done, audience, conn))
        return answers

    def _reply(self, conn: Connection, session: Session, answers: list[bytes]) -> None:
        """Queue the sender's framed answers, in order (none once it is closing; a full
        outbox closes it with 1013)."""
        self._ctx.send_wire_all(conn, session, answers)
