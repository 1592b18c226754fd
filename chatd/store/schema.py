"""Schema migrations: an ordered list, applied on every open, tracked in user_version.

Each migration runs in its own transaction. Never edit a released migration;
append a new one. Version N of the schema is the first N entries applied.
"""

from __future__ import annotations

import sqlite3
import time

from chatd.rules import UNSPACED_CLASS

MIGRATIONS: list[str] = [
    # 1: accounts, server-side sessions, public rooms and messages.
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL
    );
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        body TEXT NOT NULL,
        html TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_room ON messages(room_id, id);
    """,
    # 2: the default public room exists from the first start.
    """
    INSERT OR IGNORE INTO rooms (slug, name, created_at) VALUES ('general', 'general', {now});
    """,
    # 3: API tokens and server metadata (setup token, auth change counter).
    """
    CREATE TABLE tokens (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        label TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('auth_version', '0');
    """,
    # 4: room kinds and private conversations. A memberships row is membership
    # of a private room or DM, and one user's read state in any room. Unread
    # counts are O(1): each message has its position in its room (seq), each
    # room its message count, each read mark the seq it reached. Accounts that
    # existed before start with everything read. client_id on messages for retries.
    """
    ALTER TABLE rooms ADD COLUMN kind TEXT NOT NULL DEFAULT 'public'
        CHECK (kind IN ('public', 'private', 'dm'));
    ALTER TABLE rooms ADD COLUMN created_by INTEGER REFERENCES users(id);
    ALTER TABLE rooms ADD COLUMN last_message_id INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rooms ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN client_id TEXT;
    ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET seq = numbered.n FROM (
        SELECT id, row_number() OVER (PARTITION BY room_id ORDER BY id) AS n FROM messages
    ) AS numbered WHERE numbered.id = messages.id;
    UPDATE rooms SET
        last_message_id = coalesce((SELECT max(id) FROM messages WHERE room_id = rooms.id), 0),
        message_count = (SELECT count(*) FROM messages WHERE room_id = rooms.id);
    CREATE TABLE memberships (
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        last_read_id INTEGER NOT NULL DEFAULT 0,
        last_read_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX memberships_user ON memberships(user_id, room_id, last_read_seq);
    INSERT INTO memberships (room_id, user_id, last_read_id, last_read_seq)
        SELECT r.id, u.id, r.last_message_id, r.message_count FROM rooms r, users u;
    CREATE INDEX messages_client ON messages(user_id, client_id)
        WHERE client_id IS NOT NULL;
    """,
    # 5: rooms can be archived (read-only, out of the sidebar) and deleted. A deleted room's
    # ids are never used again: the floors are the highest message and room ids ever given
    # out, so a new message or room after a deletion still gets a higher id than any before.
    # memberships.sidebar, for public rooms: 1 joined (listed in the sidebar), 0 not joined
    # (listed only while it has unread messages), -1 left (not listed). Existing read
    # states count as joined, so nobody's sidebar changes on upgrade.
    """
    ALTER TABLE rooms ADD COLUMN archived_at REAL;
    ALTER TABLE memberships ADD COLUMN sidebar INTEGER NOT NULL DEFAULT 1;
    INSERT OR IGNORE INTO meta (key, value) VALUES ('message_id_floor', '0');
    INSERT OR IGNORE INTO meta (key, value) VALUES ('room_id_floor', '0');
    INSERT OR IGNORE INTO meta (key, value) VALUES ('rooms_version', '0');
    """,
    # 6: conversations that change, and search. The change log is the messages table (a new
    # message is its own event, id and all) and the events table (edits, reaction changes and
    # deletions), which share one rising id sequence (store/changes.py). A deleted message's row
    # goes; its event keeps the room and the position (seq) it had, so unread counts skip it.
    # mentions: the usernames rendering found, space-separated (NULL: stored before this
    # migration, read back from the HTML once). reactions: JSON [[emoji, [username...]]...].
    # rev: the id of the message's last change (NULL: never changed). sent_body: the body as
    # first sent, kept by the first edit (a retry of the send is still recognised as one).
    # Search: two FTS5 indexes over the bodies, kept by triggers in the very transaction that
    # changes a message: words (accents and case folded) for every message, and trigrams for
    # the messages with text written without spaces (Chinese, Japanese, Thai).
    """
    ALTER TABLE messages ADD COLUMN mentions TEXT;
    ALTER TABLE messages ADD COLUMN edited_at REAL;
    ALTER TABLE messages ADD COLUMN reactions TEXT;
    ALTER TABLE messages ADD COLUMN rev INTEGER;
    ALTER TABLE messages ADD COLUMN sent_body TEXT;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('updated', 'deleted')),
        seq INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX events_room ON events(room_id, id);
    CREATE INDEX events_deleted ON events(room_id, seq) WHERE kind = 'deleted';
    CREATE VIRTUAL TABLE search_words USING fts5(
        body, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
    CREATE VIRTUAL TABLE search_grams USING fts5(
        body, content='messages', content_rowid='id', tokenize='trigram');
    INSERT INTO search_words (rowid, body) SELECT id, body FROM messages;
    INSERT INTO search_grams (rowid, body) SELECT id, body FROM messages WHERE body GLOB '{unspaced}';
    CREATE TRIGGER search_insert AFTER INSERT ON messages BEGIN
        INSERT INTO search_words (rowid, body) VALUES (new.id, new.body);
        INSERT INTO search_grams (rowid, body) SELECT new.id, new.body WHERE new.body GLOB '{unspaced}';
    END;
    CREATE TRIGGER search_delete AFTER DELETE ON messages BEGIN
        INSERT INTO search_words (search_words, rowid, body) VALUES ('delete', old.id, old.body);
        INSERT INTO search_grams (search_grams, rowid, body)
            SELECT 'delete', old.id, old.body WHERE old.body GLOB '{unspaced}';
    END;
    CREATE TRIGGER search_update AFTER UPDATE OF body ON messages BEGIN
        INSERT INTO search_words (search_words, rowid, body) VALUES ('delete', old.id, old.body);
        INSERT INTO search_grams (search_grams, rowid, body)
            SELECT 'delete', old.id, old.body WHERE old.body GLOB '{unspaced}';
        INSERT INTO search_words (rowid, body) VALUES (new.id, new.body);
        INSERT INTO search_grams (rowid, body) SELECT new.id, new.body WHERE new.body GLOB '{unspaced}';
    END;
    """,
    # 7: the search triggers ask whether a body has any character outside ASCII before they
    # match it against the unspaced scripts: GLOB with that class cost about 8 us a message,
    # the length test well under 1. The same messages go to the trigram index as before (every
    # unspaced character is outside ASCII), so nothing already indexed changes.
    """
    DROP TRIGGER search_insert;
    DROP TRIGGER search_delete;
    DROP TRIGGER search_update;
    CREATE TRIGGER search_insert AFTER INSERT ON messages BEGIN
        INSERT INTO search_words (rowid, body) VALUES (new.id, new.body);
        INSERT INTO search_grams (rowid, body) SELECT new.id, new.body
            WHERE length(CAST(new.body AS BLOB)) > length(new.body) AND new.body GLOB '{unspaced}';
    END;
    CREATE TRIGGER search_delete AFTER DELETE ON messages BEGIN
        INSERT INTO search_words (search_words, rowid, body) VALUES ('delete', old.id, old.body);
        INSERT INTO search_grams (search_grams, rowid, body) SELECT 'delete', old.id, old.body
            WHERE length(CAST(old.body AS BLOB)) > length(old.body) AND old.body GLOB '{unspaced}';
    END;
    CREATE TRIGGER search_update AFTER UPDATE OF body ON messages BEGIN
        INSERT INTO search_words (search_words, rowid, body) VALUES ('delete', old.id, old.body);
        INSERT INTO search_grams (search_grams, rowid, body) SELECT 'delete', old.id, old.body
            WHERE length(CAST(old.body AS BLOB)) > length(old.body) AND old.body GLOB '{unspaced}';
        INSERT INTO search_words (rowid, body) VALUES (new.id, new.body);
        INSERT INTO search_grams (rowid, body) SELECT new.id, new.body
            WHERE length(CAST(new.body AS BLOB)) > length(new.body) AND new.body GLOB '{unspaced}';
    END;
    """,
]

UNSPACED_GLOB = f"*[{UNSPACED_CLASS}]*"  # a message with any of these goes into the trigram index too


SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> int:
    """Apply pending migrations up to `upto`; return the version found before."""
    found = schema_version(conn)
    for version in range(found + 1, upto + 1):
        script = MIGRATIONS[version - 1].replace("{now}", repr(time.time())).replace("{unspaced}", UNSPACED_GLOB)
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            if schema_version(conn) >= version:
                conn.execute("ROLLBACK")
                continue
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
