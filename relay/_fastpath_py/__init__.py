"""The pure-Python twin of relay._fastpath: RFC 6455 server-side framing (framing), Outbox
(outbox), the message path's JSON frames and the `message` frame's checks (messages), records
(records), the in-memory store's append and the SQLite store's rows (stores).

A leaf: it imports nothing from relay outside this package. Its functions work on plain
values; the classes they build (MessageFrame, StoredMessage, Appended) and the limits they
check are parameters.

Invariant: for every input this package and the compiled relay._fastpath give equal events,
equal failed/close_code/close_reason, equal encoded bytes, equal Outbox states, equal
message_fault answers, and for NewMessages equal MemoryAppender results and containers and
equal sqlite_rows results and calls (tests/test_fastpath_parity.py holds them to it). Import it
through relay.fastpath.
"""

from __future__ import annotations

from relay._fastpath_py.framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1,
    FrameParser,
    encode_close,
    encode_frame,
    parse_close,
)
from relay._fastpath_py.messages import (
    ATTACHMENT_ID_MAX,
    ATTACHMENTS_MAX,
    E2E_BOXES_MAX,
    E2E_BYTES_MAX,
    E2E_SUITE,
    E2E_VERSION,
    MESSAGE_FAULTS,
    attachments_fault,
    decode_message,
    e2e_fault,
    encode_delivery,
    encode_receipt_frame,
    encode_sent,
    encode_sent_frame,
    message_dict,
    message_fault,
)
from relay._fastpath_py.outbox import Outbox
from relay._fastpath_py.records import record, untracked, untracked_json
from relay._fastpath_py.stores import ROW_OPTIONAL, MemoryAppender, sqlite_rows

__all__ = [
    "ATTACHMENTS_MAX",
    "ATTACHMENT_ID_MAX",
    "E2E_BOXES_MAX",
    "E2E_BYTES_MAX",
    "E2E_SUITE",
    "E2E_VERSION",
    "MESSAGE_FAULTS",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "ROW_OPTIONAL",
    "RSV1",
    "FrameParser",
    "MemoryAppender",
    "Outbox",
    "attachments_fault",
    "decode_message",
    "e2e_fault",
    "encode_close",
    "encode_delivery",
    "encode_frame",
    "encode_receipt_frame",
    "encode_sent",
    "encode_sent_frame",
    "message_dict",
    "message_fault",
    "parse_close",
    "record",
    "sqlite_rows",
    "untracked",
    "untracked_json",
]
