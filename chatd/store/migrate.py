"""`chatd migrate-db`: copy a SQLite database into an empty PostgreSQL one.

Everything the server keeps goes across with its ids (accounts and password hashes,
sessions and tokens, so nobody has to sign in again; rooms, memberships and read marks;
messages with their edits and reactions; the change log's events, so clients' `since`
positions stay valid). One read transaction on SQLite, one write transaction on
PostgreSQL: a copy that fails leaves the target as empty as it was. The search index
is PostgreSQL's own (a generated column), built as the rows arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from chatd.errors import Conflict
from chatd.store.db import connect_sync
from chatd.store.postgres import PgConnection, connect, redacted

# Table -> columns, in an order that satisfies the foreign keys. meta's server_id stays
# behind: the PostgreSQL database is a server of its own (its own broker channel).
TABLES: dict[str, tuple[str, ...]] = {
    "users": ("id", "username", "password_hash", "admin", "active", "created_at"),
    "sessions": ("token_hash", "user_id", "csrf", "created_at", "expires_at"),
    "tokens": ("token_hash", "user_id", "label", "created_at"),
    "meta": ("key", "value"),
    "rooms": ("id", "slug", "name", "created_at", "kind", "created_by", "last_message_id", "message_count",
              "archived_at"),
    "messages": ("id", "room_id", "user_id", "body", "html", "created_at", "client_id", "seq", "mentions",
                 "edited_at", "reactions", "rev", "sent_body"),
    "memberships": ("room_id", "user_id", "last_read_id", "last_read_seq", "sidebar"),
    "events": ("id", "room_id", "message_id", "kind", "seq", "created_at"),
}


def copy_to_postgres(source: Path, url: str, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every table; returns the rows copied per table. Refuses a target that holds data."""
    src = connect_sync(source)  # migrates the file to the current schema first
    dst: PgConnection = connect(url)
    try:
        if dst.execute("SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM messages)"
                       " + (SELECT count(*) FROM rooms WHERE slug <> 'general')").fetchone()[0]:
            raise Conflict(f"the database {redacted(url)} already holds data; migrate-db copies into an "
                           "empty database (create one with createdb)")
        counts: dict[str, int] = {}
        src.execute("BEGIN")  # one snapshot of the whole file
        dst.execute("BEGIN IMMEDIATE")
        try:
            dst.execute("DELETE FROM meta")
            dst.execute("DELETE FROM rooms")  # the fresh database's general, replaced by the file's
            for table, columns in TABLES.items():
                where = " WHERE key <> 'server_id'" if table == "meta" else ""
                rows = src.execute(f"SELECT {', '.join(columns)} FROM {table}{where}")
                counts[table] = dst.copy_rows(table, columns, rows)
                if progress is not None:
                    progress(table, counts[table])
            dst.execute("SELECT setval(pg_get_serial_sequence('users', 'id'),"
                        " greatest(1, (SELECT max(id) FROM users)))")
            dst.execute("COMMIT")
        except BaseException:
            dst.rollback()
            raise
        finally:
            src.execute("ROLLBACK")
        return counts
    finally:
        src.close()
        dst.close()
