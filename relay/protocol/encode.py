"""Server frames of protocol v1 (sans-IO): every `encode_*` function returns the JSON bytes of
one frame (orjson); the caller wraps them in one WebSocket frame once and hands the same bytes
to every recipient. Fields whose value is absent (None) are left out, except `lastSeen` in
presence answers and `lastMessage` in conversation items, which the contract shows as `null`.

The frames of every message (its delivery, its `sent` receipt) are the fast path's
(relay.fastpath: message_dict, encode_sent, and encode_delivery/encode_sent_frame, which also
wrap them in their WebSocket frame); the frames here use its message_dict for the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from relay.fastpath import message_dict
from relay.store.base import ConversationSummary, Group, StoredMessage


def _dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in obj.items() if v is not None})


def encode_auth_ok(
    user_id: str,
    device_id: str,
    session_id: str,
    server_time: str,
    *,
    ice_servers: list[dict[str, Any]] | None = None,
    http_token: str | None = None,
) -> bytes:
    return _dumps(
        {
            "type": "auth_ok",
            "userId": user_id,
            "deviceId": device_id,
            "sessionId": session_id,
            "serverTime": server_time,
            "iceServers": ice_servers,
            "httpToken": http_token,
        }
    )


def encode_error(
    code: str, message: str, *, ref: str | None = None, field: str | None = None
) -> bytes:
    return _dumps({"type": "error", "code": code, "message": message, "ref": ref, "field": field})


def encode_receipt_failed(
    message_id: str,
    reason: str,
    *,
    peer_id: str | None = None,
    group_id: str | None = None,
    field: str | None = None,
    detail: str | None = None,
) -> bytes:
    """A refused message: `reason` is rate_limited, forbidden, invalid, too_long, not_found or
    internal; `field` names the offending field for invalid/too_long; `message` says why."""
    return _dumps(
        {
            "type": "receipt",
            "id": message_id,
            "peerId": peer_id,
            "groupId": group_id,
            "status": "failed",
            "reason": reason,
            "field": field,
            "message": detail,
        }
    )


def encode_receipt_status(
    *,
    message_id: str | None,
    seq: int,
    status: str,
    user_id: str,
    timestamp: str,
    peer_id: str | None = None,
    group_id: str | None = None,
) -> bytes:
    """A delivered/read watermark: to a sender (`id` of its newest covered message, `userId` the
    reader, `peerId` the reader in 1:1 or `groupId`), or to the reader's other devices (`peerId`
    the other participant, `userId` the reader itself, no `id`)."""
    return _dumps(
        {
            "type": "receipt",
            "id": message_id,
            "peerId": peer_id,
            "groupId": group_id,
            "seq": seq,
            "status": status,
            "userId": user_id,
            "timestamp": timestamp,
        }
    )


def encode_status(
    user_id: str, status: str, timestamp: str, *, last_seen: str | None = None
) -> bytes:
    """Presence change of `user_id`: online/away/busy, or offline with `lastSeen`."""
    return _dumps(
        {
            "type": "status",
            "status": status,
            "userId": user_id,
            "timestamp": timestamp,
            "lastSeen": last_seen,
        }
    )


def encode_presence(
    users: Iterable[tuple[str, str, str | None]], *, ref: str | None = None
) -> bytes:
    """Answer to a presence query: (userId, status, lastSeen-or-None) per user asked for."""
    body: dict[str, Any] = {
        "type": "presence",
        "users": [{"userId": u, "status": s, "lastSeen": seen} for u, s, seen in users],
    }
    if ref is not None:
        body["ref"] = ref
    return orjson.dumps(body)


def encode_typing(user_id: str, state: str, *, group_id: str | None = None) -> bytes:
    return _dumps({"type": "typing", "userId": user_id, "state": state, "groupId": group_id})


def conversation_item(
    summary: ConversationSummary, *, group_name: str | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if summary.group_id is not None:
        item["groupId"] = summary.group_id
        if group_name is not None:
            item["name"] = group_name
    else:
        item["peerId"] = summary.peer_id
    item["lastMessage"] = (
        message_dict(summary.last_message) if summary.last_message is not None else None
    )
    last = item["lastMessage"]
    if last is not None and "e2e" in last:  # a preview never carries the boxes: only the flag
        last["e2e"] = True
    item["unread"] = summary.unread
    item["lastSeq"] = summary.last_seq
    item["readSeq"] = summary.read_seq
    item["updatedAt"] = summary.updated_at
    return item


def encode_conversations(
    items: list[dict[str, Any]], *, ref: str | None = None, has_more: bool = False
) -> bytes:
    """The conversation list; `hasMore: true` only when the list was cut short (by size)."""
    body: dict[str, Any] = {"type": "conversations"}
    if ref is not None:
        body["ref"] = ref
    body["items"] = items
    if has_more:
        body["hasMore"] = True
    return orjson.dumps(body)


def encode_history(
    messages: Sequence[StoredMessage],
    has_more: bool,
    *,
    peer_id: str | None = None,
    group_id: str | None = None,
    ref: str | None = None,
    statuses: Sequence[str] | None = None,
) -> bytes:
    """A history page; `statuses[i]` is the status of `messages[i]` (default: `delivered`)."""
    body: dict[str, Any] = {"type": "history"}
    if ref is not None:
        body["ref"] = ref
    if group_id is not None:
        body["groupId"] = group_id
    else:
        body["peerId"] = peer_id
    if statuses is None:
        body["messages"] = [message_dict(m) for m in messages]
    else:
        body["messages"] = [message_dict(m, s) for m, s in zip(messages, statuses, strict=True)]
    body["hasMore"] = has_more
    return orjson.dumps(body)


def encode_group(group: Group, *, event: str, ref: str | None = None) -> bytes:
    """A group's state after a change; `event` is create, add, remove or leave."""
    return _dumps(
        {
            "type": "group",
            "groupId": group.group_id,
            "name": group.name,
            "members": list(group.members),
            "createdBy": group.created_by,
            "event": event,
            "ref": ref,
        }
    )


def encode_pong(server_time: str, *, ref: str | None = None) -> bytes:
    return _dumps({"type": "pong", "ref": ref, "serverTime": server_time})


def encode_search_result(
    messages: Sequence[StoredMessage],
    statuses: Sequence[str],
    *,
    has_more: bool,
    cursor: int | None,
    ref: str | None = None,
) -> bytes:
    """A page of search results, newest first; `next` is the cursor of the following page
    (the decimal of a store position), present when `has_more`."""
    body: dict[str, Any] = {"type": "search_result"}
    if ref is not None:
        body["ref"] = ref
    body["items"] = [message_dict(m, s) for m, s in zip(messages, statuses, strict=True)]
    body["hasMore"] = has_more
    if has_more and cursor is not None:
        body["next"] = str(cursor)
    return orjson.dumps(body)
