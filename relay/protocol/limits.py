"""The limits of protocol v1: those the contract fixes or implies, and the configurable ones.

Limits on identifiers (not in RelayConfig because the contract fixes or implies them):
- message `id`: 1-64 characters (contract);
- user, device and group ids: 1-128 characters;
- a `presence` query names at most 1000 user ids; `group_add`/`group_remove` at most
  `max_group_members` user ids;
- history `limit`: 1-100, default 50; `conversations` `limit`: 1-100, default 100;
- every other integer a client sends (a receipt's `seq`, history's `before`/`after`) is at most
  SEQ_MAX, the largest seq a store holds (SQLite's INTEGER is a signed 64-bit number);
- a client frame's JSON nests at most FRAME_DEPTH_MAX objects/arrays (the frame itself is one),
  a message's `meta` at most META_DEPTH_MAX (meta itself is one). orjson reads 1,024 levels but
  writes only 254, and every server frame that carries a stored message adds up to 4 levels
  around its meta (conversations: frame, items, item, lastMessage): a stored meta must always
  be writable inside them, so the relay's bound is far below orjson's.

These are the only definitions of the numbers: the fast path's checks of a `message` frame
(relay.fastpath.message_fault) receive them as `Limits.rules`.
"""

from __future__ import annotations

from attrs import Factory, field, frozen

from relay.config import RelayConfig

MESSAGE_ID_MAX = 64
IDENT_MAX = 128
PRESENCE_QUERY_MAX = 1000
HISTORY_LIMIT_DEFAULT = 50
HISTORY_LIMIT_MAX = 100
CONVERSATIONS_LIMIT_DEFAULT = 100
CONVERSATIONS_LIMIT_MAX = 100
GROUP_NAME_MAX = 256
#: free-text fields the relay stores or forwards but does not interpret
SHORT_TEXT_MAX = 256
TOKEN_MAX = 8192
SEQ_MAX = 2**63 - 1
FRAME_DEPTH_MAX = 32
META_DEPTH_MAX = 16

USER_STATUSES = ("online", "away", "busy")
RECEIPT_STATUSES = ("delivered", "read")
TYPING_STATES = ("start", "stop")

#: search (protocol-v2 "Search"): a query is 1-256 characters of at most 16 words or phrases;
#: `limit` 1-100, default 20; the cursor `before` is the decimal of a store position (1-19 digits)
SEARCH_QUERY_MAX = 256
SEARCH_TERMS_MAX = 16
SEARCH_LIMIT_DEFAULT = 20
SEARCH_LIMIT_MAX = 100
SEARCH_CURSOR_MAX = 19


@frozen
class Limits:
    """The configurable limits frame validation enforces.

    `rules` is what relay.fastpath's message checks and decode_message take, made once per
    Limits (they are handed the same tuple for every message): (MESSAGE_ID_MAX, IDENT_MAX,
    SHORT_TEXT_MAX, max_text_chars, max_meta_bytes, META_DEPTH_MAX, FRAME_DEPTH_MAX)."""

    max_text_chars: int = 4096
    max_meta_bytes: int = 4096
    max_group_members: int = 1000
    rules: tuple[int, int, int, int, int, int, int] = field(
        init=False,
        eq=False,
        repr=False,
        default=Factory(
            lambda self: (
                MESSAGE_ID_MAX,
                IDENT_MAX,
                SHORT_TEXT_MAX,
                self.max_text_chars,
                self.max_meta_bytes,
                META_DEPTH_MAX,
                FRAME_DEPTH_MAX,
            ),
            takes_self=True,
        ),
    )

    @classmethod
    def from_config(cls, config: RelayConfig) -> Limits:
        return cls(
            max_text_chars=config.max_text_chars,
            max_meta_bytes=config.max_meta_bytes,
            max_group_members=config.max_group_members,
        )
