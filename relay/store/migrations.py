"""The SQLite schema of relay, as numbered migrations tracked by `PRAGMA user_version`.

Invariant: `MIGRATIONS[n - 1]` takes a database from user_version n-1 to n; a database at
version `len(MIGRATIONS)` is current. A migration is never edited once released: a change to the
schema is a new entry. `migrate` runs inside the caller's write transaction, so a database is
either fully at the new version or untouched.

Tables (version 1):
- messages: one row per stored message. `pos` (the rowid) grows with acceptance and orders the
  undelivered backlog across conversations; (conversation, seq) and (sender_id, id) are unique.
- conversations: one row per conversation that has a message or is a group: its seq counter
  `last_seq` (kept here, not derived from messages, so retention never makes a seq reusable), the
  `pos` of its newest message and `updated_at` for the conversation list.
- participants: who is in a conversation: both users of a 1:1 (with `peer_id`, the other one)
  and the current members of a group (`peer_id` NULL). The member list of a group lives here.
- watermarks: a user's delivered/read seq per conversation.
- device_cursors: a device's delivered seq per conversation (absent = the user's watermark).
- groups, last_seen.

Version 2: the idempotency index is keyed (id, sender_id) instead of (sender_id, id): the same
unique constraint, but message ids that grow with time (the client library's `<ms>-<random>`,
ULIDs, timestamps) now land at the end of the index instead of at one place per sender, so a
batch of appends dirties a few index pages rather than one or more per sender.

Version 3: `participants.joined_seq`, the group's last seq when the member joined (0 for 1:1
participants, and for members who joined before version 3): a member's watermarks speak only for
the messages after it (see Store.coverage).

Version 4: `devices`, one row per device that connected: `since_pos`, the greatest message `pos`
when it first did. In a conversation where it has no cursor yet, a device is owed the messages
above the user's watermark and those with a `pos` above its `since_pos` (Store.undelivered).

Version 5: `positions`, one row: `last_pos`, the greatest `pos` ever given to a message. A new
message's pos is `last_pos + 1`, never `MAX(pos) + 1`: once retention has deleted the newest
messages (all of them, in a quiet deployment) the table's maximum falls back, and positions
counted from it again would sit at or below a device's `since_pos`, which would then not be owed
the messages that follow its registration. Initialised from every pos recorded anywhere.

Version 6: webhooks (relay.webhooks, Store ability WebhookOutbox). `webhook_cursor`, one row
once webhooks were first turned on: `last_pos`, the greatest message pos the webhook scan has
decided; a message above it is decided again after a restart, so none is missed.
`webhook_events`: the events not yet delivered, by id, with the body as sent, when made
(`created_at`), when next due (`next_at`, unix seconds) and the failed attempts so far.
Version 7: the search index. `message_search`, an FTS5 table (unicode61 tokenizer, its own
diacritic folding off) whose row `rowid` = a message's `pos` holds `relay.search.index_text` of
its text (`body`) and its conversation's token (`conv`, sqlite/search.py `conversation_token`),
for every indexed message whose text has a token (`message_search_terms`: how many rows hold
each token); `search_progress.indexed_pos`: every
message with a pos at or below it is indexed. The writer's indexer (sqlite/indexer.py) moves it
on; the messages above it are searched by a scan. The trigger `messages_search_gone` deletes a
message's row with the message (retention), in the same transaction. The migration indexes
nothing itself (indexed_pos 0): the indexer works through the existing messages.

Version 8: `device_keys`, one row per device that published end-to-end keys (keys_publish):
public keys and signature as base64 text, replaced by a newer publish.

Version 9: `messages.e2e`, an encrypted message's e2e object as its JSON text (NULL for a
plain message); such a message's `text` is '' so the search indexer finds nothing to index.

Version 10: `messages.attachments`, the files a message carries as the JSON text of their list
of {fileId, name, size, mime, sha256} (NULL for none); `text` is '' when it has none.

Version 11: `messages.call`, a call record's {callId, media, outcome, durationMs} as its JSON
text (NULL for any other message); only the relay's calls write one.

Version 12: `search_terms`, every token the `body` of `message_search` holds (a superset: a
token stays once its messages are gone), written in the transaction that indexes it
(sqlite/indexer.py). A prefix query (`run*`) is expanded through it to an OR of the tokens
(sqlite/search.py): FTS5's own prefix query merges the whole posting lists of every such token
before it returns a row (27 ms for `run*` over 1M messages, against 0.2 ms for the OR).

Version 13: `message_search` rebuilt contentless (`content=''`) and with `columnsize=0`. FTS5
then keeps only the index: no copy of each row's body and conv (the `_content` table) and no
per-row token counts (`_docsize`), one B-tree row each per indexed message, which only reading
columns back and ranking (bm25, `rank`) need; no read of the store does either (searches take
the rowid and order by pos). A contentless row is removed by FTS5's 'delete' command given
exactly the values it was indexed with, so the trigger `messages_search_gone` recomputes them
from the message with `relay_index_text` and `relay_conversation_token`, SQL functions every
connection that deletes messages must have (sqlite/search.py `register_functions`; without them
the DELETE fails whole), and only for a message that is indexed: pos <= indexed_pos and a body
with a token (a 'delete' of a row that is not there would corrupt the index). So
`relay.search.index_text` and `conversation_token` are part of this schema: changing what
either gives for a text needs a migration that rebuilds the index (as queries, tokenized the
same way, need anyway). The rows of the old table are not copied: `search_progress.indexed_pos`
goes back to 0 and the writer's indexer works through the stored messages again (as after
version 7), while searches match the unindexed tail by a scan, so they stay exact meanwhile.
`search_terms` stays as it is (a superset of the tokens indexed is all the prefix expansion
needs).
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE messages (
        pos INTEGER PRIMARY KEY,
        conversation TEXT NOT NULL,
        seq INTEGER NOT NULL,
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
    -- history pages, backlog ranges, unread counts, receipts addressing
    CREATE UNIQUE INDEX messages_by_seq ON messages (conversation, seq);
    -- the idempotency key
    CREATE UNIQUE INDEX messages_by_key ON messages (sender_id, id);

    CREATE TABLE conversations (
        conversation TEXT PRIMARY KEY,
        group_id TEXT,
        last_seq INTEGER NOT NULL,
        last_pos INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE participants (
        user_id TEXT NOT NULL,
        conversation TEXT NOT NULL,
        peer_id TEXT,
        PRIMARY KEY (user_id, conversation)
    ) WITHOUT ROWID;
    -- members of a conversation (group member lists, contacts)
    CREATE INDEX participants_by_conversation ON participants (conversation, user_id);

    CREATE TABLE watermarks (
        conversation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        delivered_seq INTEGER NOT NULL,
        read_seq INTEGER NOT NULL,
        PRIMARY KEY (conversation, user_id)
    ) WITHOUT ROWID;

    CREATE TABLE device_cursors (
        conversation TEXT NOT NULL,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (conversation, user_id, device_id)
    ) WITHOUT ROWID;

    CREATE TABLE groups (
        group_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE last_seen (
        user_id TEXT PRIMARY KEY,
        timestamp TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: the idempotency index leads with the message id (see the module docstring)
    """
    DROP INDEX messages_by_key;
    CREATE UNIQUE INDEX messages_by_key ON messages (id, sender_id);
    """,
    # 3: a participant's join point (see the module docstring)
    """
    ALTER TABLE participants ADD COLUMN joined_seq INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: registered devices (see the module docstring)
    """
    CREATE TABLE devices (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        since_pos INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id)
    ) WITHOUT ROWID;
    """,
    # 5: the greatest pos ever given (see the module docstring)
    """
    CREATE TABLE positions (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        last_pos INTEGER NOT NULL
    );
    INSERT INTO positions (id, last_pos) SELECT 0, max(
        COALESCE((SELECT MAX(pos) FROM messages), 0),
        COALESCE((SELECT MAX(last_pos) FROM conversations), 0),
        COALESCE((SELECT MAX(since_pos) FROM devices), 0)
    );
    """,
    # 6: webhooks (see the module docstring)
    """
    CREATE TABLE webhook_cursor (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        last_pos INTEGER NOT NULL
    );
    CREATE TABLE webhook_events (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        next_at REAL NOT NULL,
        attempts INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- what is due next
    CREATE INDEX webhook_events_by_due ON webhook_events (next_at);
    -- the oldest, dropped first when the backlog is full
    CREATE INDEX webhook_events_by_age ON webhook_events (created_at, id);
    """,
    # 7: the search index (see the module docstring)
    """
    CREATE VIRTUAL TABLE message_search USING fts5(
        body, conv, tokenize = 'unicode61 remove_diacritics 0'
    );
    CREATE VIRTUAL TABLE message_search_terms USING fts5vocab(message_search, row);
    CREATE TRIGGER messages_search_gone AFTER DELETE ON messages BEGIN
        DELETE FROM message_search WHERE rowid = old.pos;
    END;
    CREATE TABLE search_progress (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        indexed_pos INTEGER NOT NULL
    );
    INSERT INTO search_progress (id, indexed_pos) VALUES (0, 0);
    """,
    # 8: devices' end-to-end keys (see the module docstring)
    """
    CREATE TABLE device_keys (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        identity_key TEXT NOT NULL,
        enc_key TEXT NOT NULL,
        signature TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id)
    ) WITHOUT ROWID;
    """,
    # 9: an encrypted message's e2e object, as its JSON text (its text column is then '')
    """
    ALTER TABLE messages ADD COLUMN e2e TEXT;
    """,
    # 10: the files a message carries, its resolved attachment list as JSON text
    """
    ALTER TABLE messages ADD COLUMN attachments TEXT;
    """,
    # 11: a call record's {callId, media, outcome, durationMs}, as JSON text
    """
    ALTER TABLE messages ADD COLUMN call TEXT;
    """,
    # 12: the search index's vocabulary (see the module docstring)
    """
    CREATE TABLE search_terms (term TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE VIRTUAL TABLE temp.search_terms_by_column USING fts5vocab(main, message_search, col);
    INSERT OR IGNORE INTO search_terms (term)
        SELECT term FROM temp.search_terms_by_column WHERE col = 'body';
    DROP TABLE temp.search_terms_by_column;
    """,
    # 13: the search index contentless, without per-row sizes, re-indexed (see the docstring)
    """
    DROP TRIGGER messages_search_gone;
    DROP TABLE message_search_terms;
    DROP TABLE message_search;
    CREATE VIRTUAL TABLE message_search USING fts5(
        body, conv, tokenize = 'unicode61 remove_diacritics 0', content = '', columnsize = 0
    );
    CREATE VIRTUAL TABLE message_search_terms USING fts5vocab(message_search, row);
    CREATE TRIGGER messages_search_gone AFTER DELETE ON messages
    WHEN old.pos <= (SELECT indexed_pos FROM search_progress)
        AND relay_index_text(old.text) != ''
    BEGIN
        INSERT INTO message_search (message_search, rowid, body, conv) VALUES (
            'delete', old.pos, relay_index_text(old.text),
            relay_conversation_token(old.conversation)
        );
    END;
    UPDATE search_progress SET indexed_pos = 0;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaMismatch(Exception):
    """The database is not one this relay can use: written by a newer relay (user_version above
    SCHEMA_VERSION), or another application's database (tables, but no relay version)."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION inside the open transaction; returns the version the
    database had. Always writes user_version, so a database that cannot be written fails here."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"schema version {version} is newer than this relay supports ({SCHEMA_VERSION})"
        )
    if version == 0:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        if tables:
            raise SchemaMismatch(
                f"it is not a relay database (it has tables {', '.join(sorted(tables)[:5])} "
                "but no relay schema version)"
            )
    for script in MIGRATIONS[version:]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return int(version)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (no migration has a ';' inside a literal; a trigger's
    body, whose statements end in ';' too, stays one statement: SQLite says when one is whole)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    found: list[str] = []
    pending = ""
    for piece in "\n".join(lines).split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statement = pending.strip()[:-1].strip()
            if statement:
                found.append(statement)
            pending = ""
    return found
