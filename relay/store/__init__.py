"""Durable state behind the relay: the Store protocol and its implementations."""

from relay.store.base import (
    Appended,
    ConversationSummary,
    Group,
    NewMessage,
    Store,
    StoredMessage,
    Watermarks,
    direct_conversation,
    group_conversation,
)

__all__ = [
    "Appended",
    "ConversationSummary",
    "Group",
    "NewMessage",
    "Store",
    "StoredMessage",
    "Watermarks",
    "direct_conversation",
    "group_conversation",
]
