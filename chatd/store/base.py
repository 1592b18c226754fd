"""The store's connections and row helpers, shared by its parts."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from chatd.errors import StorageUnavailable
from chatd.models import Change, Message, Room, User
from chatd.store.db import ThreadConnection, connect_sync, storage_error
from chatd.store.mirror import LATEST_KEPT, Mirror
from chatd.store.postgres import is_postgres
from chatd.store.rows import _MESSAGE, _messages
from chatd.store.writer import MessageWriter, OnLatency

T = TypeVar("T")
log = logging.getLogger("chatd.store")
Committed = Callable[[list[Change]], None]
MARKS_CACHE = 5_000

_USER = "SELECT id, username, admin, active FROM users"
_ROOM = "SELECT id, slug, name, kind, last_message_id, message_count, archived_at IS NOT NULL FROM rooms"


def _user(row: tuple | None) -> User | None:
    return None if row is None else User(row[0], row[1], bool(row[2]), bool(row[3]))


def _room(row: tuple | None) -> Room | None:
    return None if row is None else Room._make(row)


def _bump_auth(conn: sqlite3.Connection) -> None:
    """Tell running servers that sessions or tokens changed (they poll this)."""
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'auth_version'")


class StoreBase(Mirror):
    """Connections: a writer thread, a reader thread (big reads), an inline reader on the
    event loop (small reads; WAL: never waits) and, with synchronous=NORMAL, the inline
    connection that commits message batches (writer.py)."""

    def __init__(self, path: Path | str, sync: str = "normal") -> None:
        # A postgresql:// URL: PostgreSQL through the same statements (store/postgres.py).
        self.postgres = is_postgres(path)
        self.path: Path | str = str(path) if self.postgres else Path(path)
        self.sync = sync
        self._writer = ThreadConnection(self.path, sync, "chatd-writer")  # write transactions
        self._reader = ThreadConnection(self.path, sync, "chatd-reader")  # big reads
        Mirror.__init__(self)
        self.messages_writer: MessageWriter | None = None
        self._inline: sqlite3.Connection | None = None
        self._inline_writer: sqlite3.Connection | None = None
        self._sessions: dict[bytes, tuple[User, str, float]] = {}
        self._tokens: dict[bytes, User] = {}
        self._auth_seen: str | None = None  # auth_version the two caches above belong to
        # Move whenever credentials (auth_version) or rooms (rooms_version) were seen to change:
        # the live side compares them with what it last acted on (Live.ensure_current).
        self.auth_epoch = 0
        self.rooms_epoch = 0
        self._rooms_seen: str | None = None
        self._watch_seen: int | None = None  # see AccountsStore._credentials_current
        self._auth_looked = False  # _credentials_current already ran in this turn of the loop

    def latest_ids(self, conn: sqlite3.Connection, room_id: int) -> list[int]:
        """The room's newest message ids, oldest first (at least LATEST_KEPT when it has them)."""
        latest = self._latest.get(room_id)
        if latest is None:
            latest = self._latest[room_id] = [r[0] for r in conn.execute(
                "SELECT id FROM messages WHERE room_id = ? ORDER BY id DESC LIMIT ?",
                (room_id, LATEST_KEPT))][::-1]
        return latest

    # Read marks (room id -> seq read) of recently active users, mirrored from the
    # memberships table: loaded on first use, then kept in step by every write below.
    # Updates are idempotent (max, set, pop), so a load racing a write stays right.

    def user_marks(self, conn: sqlite3.Connection, user_id: int) -> dict[int, int]:
        marks = self._marks.get(user_id)
        if marks is None:
            rows = conn.execute(
                "SELECT room_id, last_read_seq, sidebar FROM memberships WHERE user_id = ?", (user_id,)).fetchall()
            marks = self._marks[user_id] = {r[0]: r[1] for r in rows}
            self._states[user_id] = {r[0]: r[2] for r in rows if r[2] != 1}
            if len(self._marks) > MARKS_CACHE:
                evicted, _ = self._marks.popitem(last=False)
                self._states.pop(evicted, None)
        else:
            self._marks.move_to_end(user_id)
        return marks

    def user_states(self, conn: sqlite3.Connection, user_id: int) -> dict[int, int]:
        """Public rooms whose sidebar state is not "joined": room id -> 0 (not joined) or -1 (left).
        A public room with no read state at all is not joined either (see rooms_for)."""
        self.user_marks(conn, user_id)
        return self._states[user_id]

    def cached_messages(self, conn: sqlite3.Connection, ids: list[int]) -> list[Message]:
        """These messages in this order, read from the database only when not cached."""
        recent = self._recent
        missing = [i for i in ids if i not in recent]
        if missing:
            marks = ",".join("?" * len(missing))
            self.remember(_messages(conn.execute(f"{_MESSAGE} WHERE m.id IN ({marks})", missing).fetchall()))
        return [recent[i] for i in ids if i in recent]

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a small read on the event loop's own thread.

        Point lookups and pages of at most a few hundred rows take tens of
        microseconds in SQLite, less than a hop to a worker thread and back;
        WAL means they never wait for the writer. Big reads use `_reader`.
        """
        if self._inline is None:
            raise StorageUnavailable("the database is closed")
        try:
            return fn(self._inline, *args)
        except sqlite3.Error as exc:
            log.debug("event=read_failed error=%r", str(exc))
            raise storage_error(exc) or StorageUnavailable("the database could not be read") from None

    async def open(self) -> None:
        await self._writer.open()  # creates and migrates the file first
        await self._reader.open()
        self._inline = await asyncio.to_thread(connect_sync, self.path, self.sync)
        if self.postgres:
            # Message batches run on the loop too (posts awaited, PgConnection.write_ahead, on
            # connections it opens; changes inline): from the writer thread, each of a batch's
            # round trips would wait for the GIL the busy loop holds, up to its switch interval
            # (docs/performance.md, "PostgreSQL").
            self._inline_writer = await asyncio.to_thread(connect_sync, self.path, self.sync)
            self._inline_writer.never_wait = True  # type: ignore[attr-defined]
            self._inline_writer.on_loop = self._inline.on_loop = True  # type: ignore[attr-defined]
            self._inline_writer.listen_for_meta()  # type: ignore[attr-defined]
        elif self.sync == "normal":  # a commit waits for no disk: messages are written inline
            self._inline_writer = await asyncio.to_thread(connect_sync, self.path, self.sync)
            self._inline_writer.execute("PRAGMA busy_timeout = 0")
            self._inline_writer.execute("PRAGMA wal_autocheckpoint = 0")
        for row in self._inline.execute(f"{_ROOM}"):
            self.note_room(Room._make(row))
        for room_id, seq in self._inline.execute(
                "SELECT room_id, seq FROM events WHERE kind = 'deleted' ORDER BY room_id, seq"):
            self._gone.setdefault(room_id, []).append(seq)

    async def close(self) -> None:
        if self.messages_writer is not None:
            await self.messages_writer.stop()
        if self._inline_writer is not None:
            self._inline_writer.close()
            self._inline_writer = None
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await self._reader.close()
        await self._writer.close()

    def start_writer(self, on_commit: Committed, on_latency: OnLatency) -> MessageWriter:
        """Start the message writer; after each commit, `on_commit(changes)` gets what it
        changed (the caller hands them to `apply`, in id order with the other processes')."""
        self.messages_writer = MessageWriter(self._writer, on_commit, on_latency, self._inline_writer)
        self.messages_writer.start()
        return self.messages_writer

    async def channel_name(self) -> str:
        """The broker channel of the server this database belongs to: its processes, and only
        they, share it (a random id kept in the database; a copy of the file shares it too,
        so a copy served beside the original needs a Redis database of its own)."""

        def op(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('server_id', ?)", (secrets.token_hex(8),))
            return conn.execute("SELECT value FROM meta WHERE key = 'server_id'").fetchone()[0]

        return "chatd:" + await self._writer.run(op)

    async def check(self) -> None:
        self._read(lambda c: c.execute("SELECT 1").fetchone())
