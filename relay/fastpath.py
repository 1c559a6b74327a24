"""The one import point of the hot path: compiled relay._fastpath or its pure-Python twin.

Selection (made once, at import):
- RELAY_PURE=1 forces the twin (relay._fastpath_py);
- otherwise relay._fastpath is used; when it cannot be imported the twin is used with a
  RuntimeWarning naming the reason, unless RELAY_REQUIRE_EXT=1 makes that an ImportError.
IMPLEMENTATION says which one ("cython" or "python"). Both have the same API and results.

Like the implementations, this module imports nothing else from relay: the fast path is a leaf
the layers above import (relay.protocol chooses the limits its checks apply).
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Literal

__all__ = [
    "ATTACHMENTS_MAX",
    "ATTACHMENT_ID_MAX",
    "E2E_BOXES_MAX",
    "E2E_BYTES_MAX",
    "E2E_SUITE",
    "E2E_VERSION",
    "IMPLEMENTATION",
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

IMPLEMENTATION: Literal["cython", "python"]


def _choose() -> tuple[ModuleType, Literal["cython", "python"]]:
    if os.environ.get("RELAY_PURE") == "1":
        return importlib.import_module("relay._fastpath_py"), "python"
    try:
        return importlib.import_module("relay._fastpath"), "cython"
    except ImportError as exc:
        if os.environ.get("RELAY_REQUIRE_EXT") == "1":
            raise ImportError(
                f"relay._fastpath is required (RELAY_REQUIRE_EXT=1) but cannot be imported: {exc}"
                " — build it with `python setup.py build_ext --inplace`"
            ) from exc
        warnings.warn(
            f"relay._fastpath cannot be imported ({exc}); using the pure-Python twin",
            RuntimeWarning,
            stacklevel=3,
        )
        return importlib.import_module("relay._fastpath_py"), "python"


if TYPE_CHECKING:
    # The twin is the reference; relay/_fastpath.pyi declares the same API for the compiled one.
    from relay._fastpath_py import (
        ATTACHMENT_ID_MAX,
        ATTACHMENTS_MAX,
        E2E_BOXES_MAX,
        E2E_BYTES_MAX,
        E2E_SUITE,
        E2E_VERSION,
        MESSAGE_FAULTS,
        OP_BINARY,
        OP_CLOSE,
        OP_CONT,
        OP_PING,
        OP_PONG,
        OP_TEXT,
        ROW_OPTIONAL,
        RSV1,
        FrameParser,
        MemoryAppender,
        Outbox,
        attachments_fault,
        decode_message,
        e2e_fault,
        encode_close,
        encode_delivery,
        encode_frame,
        encode_receipt_frame,
        encode_sent,
        encode_sent_frame,
        message_dict,
        message_fault,
        parse_close,
        record,
        sqlite_rows,
        untracked,
        untracked_json,
    )
else:
    _implementation, IMPLEMENTATION = _choose()
    globals().update(
        {name: getattr(_implementation, name) for name in __all__ if name != "IMPLEMENTATION"}
    )
