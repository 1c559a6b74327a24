"""The PostgreSQL schema of relay, as numbered migrations tracked in `relay_schema`.

Invariant: `MIGRATIONS[n - 1]` takes a database from version n-1 to n; a database at version
`len(MIGRATIONS)` is current. A migration is never edited once released. `migrate` runs in one
transaction under an advisory lock, so nodes starting together migrate once, and a database is
either fully at the new version or untouched.

Tables (version 1) mirror the SQLite store's (relay/store/migrations.py, versions 1-5):
- messages: `pos` grows with acceptance (orders the backlog across conversations);
  (conversation, seq) and (id, sender_id) are unique — the latter is the idempotency key that
  holds across nodes: a resend to another node finds the stored row.
- conversations: the seq counter `last_seq` per conversation, updated in the same transaction
  as the insert (never derived from messages, so retention never makes a seq reusable).
- positions: one row, `last_pos`. Every append transaction locks it first (`FOR UPDATE`):
  appends from all nodes are serialised there, so seq and pos are allocated atomically, in
  commit order, and no two transactions can wait on each other's conversation rows (no
  deadlock). Group commit amortises the lock: one transaction per batch of messages.
- participants, watermarks, device_cursors, groups, last_seen, devices as in SQLite.
Later versions: 4 webhooks (webhook_cursor with the scanner's lease, webhook_events), 5
device_keys, 6 write_locks (the `marks` lock of the writes appends never touch, writer.py).
"""

from __future__ import annotations

from typing import Final

import psycopg

MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE messages (
        pos BIGINT PRIMARY KEY,
        conversation TEXT NOT NULL,
        seq BIGINT NOT NULL,
        id TEXT NOT NULL,
        sender_id TEXT NOT NULL,
        text TEXT NOT NULL,
        server_timestamp TEXT NOT NULL,
        recipient_id TEXT,
        group_id TEXT,
        sender_name TEXT,
        sender_avatar TEXT,
        client_timestamp TEXT,
        meta TEXT
    );
    CREATE UNIQUE INDEX messages_by_seq ON messages (conversation, seq);
    CREATE UNIQUE INDEX messages_by_key ON messages (id, sender_id);

    CREATE TABLE conversations (
        conversation TEXT PRIMARY KEY,
        group_id TEXT,
        last_seq BIGINT NOT NULL,
        last_pos BIGINT NOT NULL,
        updated_at TEXT NOT NULL
    );

    CREATE TABLE participants (
        user_id TEXT NOT NULL,
        conversation TEXT NOT NULL,
        peer_id TEXT,
        joined_seq BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, conversation)
    );
    CREATE INDEX participants_by_conversation ON participants (conversation, user_id);

    CREATE TABLE watermarks (
        conversation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        delivered_seq BIGINT NOT NULL,
        read_seq BIGINT NOT NULL,
        PRIMARY KEY (conversation, user_id)
    );

    CREATE TABLE device_cursors (
        conversation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (conversation, user_id, device_id)
    );

    CREATE TABLE groups (
        group_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    );

    CREATE TABLE last_seen (
        user_id TEXT PRIMARY KEY,
        timestamp TEXT NOT NULL
    );

    CREATE TABLE devices (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        since_pos BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id)
    );

    CREATE TABLE positions (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        last_pos BIGINT NOT NULL
    );
    INSERT INTO positions (id, last_pos) VALUES (0, 0)
    """,
    # 2: an encrypted message's e2e object, as its JSON text (its text column is then '')
    """
    ALTER TABLE messages ADD COLUMN e2e TEXT
    """,
    # 3: the files a message carries, its resolved attachment list as JSON text
    """
    ALTER TABLE messages ADD COLUMN attachments TEXT
    """,
    # 4: a call record's {callId, media, outcome, durationMs}, as JSON text (relay.core.calls)
    """
    ALTER TABLE messages ADD COLUMN call TEXT
    """,
    # 5: webhooks (WebhookOutbox, webhooks.py): the scan's cursor, one row once webhooks were
    # first turned on, with the scanner's lease (`owner`, `lease_until` in unix seconds); the
    # pending events by id
    """
    CREATE TABLE webhook_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        last_pos BIGINT NOT NULL,
        owner TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE TABLE webhook_events (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        next_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL
    );
    CREATE INDEX webhook_events_by_due ON webhook_events (next_at);
    CREATE INDEX webhook_events_by_age ON webhook_events (created_at, id)
    """,
    # 6: devices' end-to-end public keys (KeyStore, keys.py), one row per (user, device)
    """
    CREATE TABLE device_keys (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        identity_key TEXT NOT NULL,
        enc_key TEXT NOT NULL,
        signature TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id)
    )
    """,
    # 7: the cluster-wide lock of the writes appends never touch (writer.py, MARKS): delivery
    # marks no longer queue behind every node's appends on the `positions` row
    """
    CREATE TABLE write_locks (name TEXT PRIMARY KEY);
    INSERT INTO write_locks (name) VALUES ('marks')
    """,
    # 8: search (relay/store/postgres/search.py): each message's tsvector of relay.search
    # tokens ('' for none; NULL: not computed yet, for rows stored before this version, which
    # the store fills in at open, found through the partial index)
    """
    ALTER TABLE messages ADD COLUMN search TSVECTOR;
    CREATE INDEX messages_search ON messages USING GIN (search);
    CREATE INDEX messages_unsearchable ON messages (pos) WHERE search IS NULL
    """,
    # 9: uploaded files (relay/store/postgres/blobs.py): records, bytes in chunks, readers,
    # and uploads whose bytes are committed before their record
    """
    CREATE TABLE files (
        file_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        size BIGINT NOT NULL,
        mime TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX files_by_age ON files (created_at);
    CREATE TABLE file_chunks (
        file_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (file_id, n)
    );
    ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
    CREATE TABLE file_readers (
        file_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (file_id, user_id)
    );
    CREATE TABLE file_uploads (
        file_id TEXT PRIMARY KEY,
        started_at DOUBLE PRECISION NOT NULL
    );
    -- the messages carrying a file: retention of the files of deleted messages
    CREATE INDEX messages_by_file ON messages USING GIN ((attachments::jsonb) jsonb_path_ops)
        WHERE attachments IS NOT NULL
    """,
)

SCHEMA_VERSION: Final = len(MIGRATIONS)

#: pg_advisory_xact_lock key of migrations (any constant; "relay" in ASCII)
_MIGRATION_LOCK: Final = 0x72656C6179


class SchemaMismatch(Exception):
    """The database was written by a newer relay, or belongs to another application."""


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Bring the schema up to SCHEMA_VERSION and commit; returns the version the database had."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM relay_schema").fetchone()
        if row is None:
            tables = [
                str(name)
                for (name,) in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename != 'relay_schema'"
                )
            ]
            if tables:
                raise SchemaMismatch(
                    f"it is not a relay database (it has tables {', '.join(sorted(tables)[:5])} "
                    "but no relay schema version)"
                )
            conn.execute("INSERT INTO relay_schema (version) VALUES (0)")
            version = 0
        else:
            version = int(str(row[0]))
        if version > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"schema version {version} is newer than this relay supports ({SCHEMA_VERSION})"
            )
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                conn.execute(statement.encode())
        conn.execute("UPDATE relay_schema SET version = %s", (SCHEMA_VERSION,))
    return version


def _statements(script: str) -> list[str]:
    """Split a migration into statements (no migration has a ';' inside a literal)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
