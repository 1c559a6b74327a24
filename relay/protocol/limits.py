"""The limits of protocol v1: those the contract fixes or implies, and the configurable ones.

Limits on identifiers (not in RelayConfig because the contract fixes or implies them):
- message `id`: 1-64 characters (contract);
- user, device and group ids: 1-128 characters;
- a `presence` query names at most 1000 user ids; `group_add`/`group_remove` at most
  `max_group_members` user ids;
- history `limit`: 1-100, default 50; `conversations` `limit`: 1-100, default 100.

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

USER_STATUSES = ("online", "away", "busy")
RECEIPT_STATUSES = ("delivered", "read")
TYPING_STATES = ("start", "stop")


@frozen
class Limits:
    """The configurable limits frame validation enforces.

    `rules` is what relay.fastpath's message checks take, made once per Limits (they are handed
    the same tuple for every message): (MESSAGE_ID_MAX, IDENT_MAX, SHORT_TEXT_MAX,
    max_text_chars, max_meta_bytes)."""

    max_text_chars: int = 4096
    max_meta_bytes: int = 4096
    max_group_members: int = 1000
    rules: tuple[int, int, int, int, int] = field(
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
