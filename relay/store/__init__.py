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
from relay.store.memory import MemoryStore

__all__ = [
    "Appended",
    "ConversationSummary",
    "Group",
    "MemoryStore",
    "NewMessage",
    "Store",
    "StoredMessage",
    "Watermarks",
    "direct_conversation",
    "group_conversation",
]
