"""Durable state behind the relay: the Store protocol, its implementations, and the factory.

Importing this package imports neither trio nor sqlite3 (the sans-IO core may import it):
SqliteStore lives in relay.store.sqlite and is loaded only when a config asks for it.
"""

from relay.config import RelayConfig
from relay.store.base import (
    Appended,
    ConversationSummary,
    Coverage,
    Group,
    MessageRef,
    NewMessage,
    Store,
    StoredMessage,
    Watermarks,
    direct_conversation,
    group_conversation,
)
from relay.store.memory import MemoryStore

#: `db_path` values with these prefixes are PostgreSQL URLs (the PostgreSQL store), not files
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def store_from_config(config: RelayConfig) -> Store:
    """The store a relay with `config` uses (not yet opened): MemoryStore when `db_path` is None,
    else PostgresStore when it is a `postgresql://` URL, else SqliteStore on that file with the
    config's commit interval and retention."""
    if config.db_path is None:
        return MemoryStore()
    if config.db_path.startswith(POSTGRES_SCHEMES):
        from relay.store.postgres import PostgresStore

        return PostgresStore(
            config.db_path,
            commit_interval=config.commit_interval,
            retention_days=config.retention_days,
            retention_max_messages=config.retention_max_messages,
        )
    from relay.store.sqlite import SqliteStore

    return SqliteStore(
        config.db_path,
        commit_interval=config.commit_interval,
        retention_days=config.retention_days,
        retention_max_messages=config.retention_max_messages,
    )


__all__ = [
    "Appended",
    "ConversationSummary",
    "Coverage",
    "Group",
    "MemoryStore",
    "MessageRef",
    "NewMessage",
    "Store",
    "StoredMessage",
    "Watermarks",
    "direct_conversation",
    "group_conversation",
    "store_from_config",
]
