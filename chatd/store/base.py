"""The store's connections and row helpers, shared by its parts."""

from __future__ import annotations

import asyncio
import bisect
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from chatd.errors import StorageUnavailable
from chatd.models import Change, Message, Room, User
from chatd.store.db import ThreadConnection, connect_sync, storage_error
from chatd.store.rows import _MESSAGE, _message, _messages, decode_reactions, encode_reactions  # noqa: F401
from chatd.store.writer import MessageWriter, OnLatency

T = TypeVar("T")
Committed = Callable[[list[Change], list[Message]], None]
MESSAGE_CACHE = 20_000
MARKS_CACHE = 5_000
LATEST_KEPT = 200  # newest message ids kept per room: a room page needs no SQL for them

_USER = "SELECT id, username, admin, active FROM users"
_ROOM = "SELECT id, slug, name, kind, last_message_id, message_count, archived_at IS NOT NULL FROM rooms"


def _user(row: tuple | None) -> User | None:
    return None if row is None else User(row[0], row[1], bool(row[2]), bool(row[3]))


def _room(row: tuple | None) -> Room | None:
    return None if row is None else Room._make(row)


def _bump_auth(conn: sqlite3.Connection) -> None:
    """Tell running servers that sessions or tokens changed (they poll this)."""
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'auth_version'")


class StoreBase:
    """Connections: a writer thread, a reader thread (big reads), an inline reader on the
    event loop (small reads; WAL: never waits) and, with synchronous=NORMAL, the inline
    connection that commits message batches (writer.py)."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = Path(path)
        self.sync = sync
        self._writer = ThreadConnection(self.path, sync, "chatd-writer")  # write transactions
        self._reader = ThreadConnection(self.path, sync, "chatd-reader")  # big reads
        self.messages_writer: MessageWriter | None = None
        self._inline: sqlite3.Connection | None = None
        self._inline_writer: sqlite3.Connection | None = None
        # Messages never change once stored, so recent ones are kept ready-made.
        self._recent: OrderedDict[int, Message] = OrderedDict()
        # Every room, kept current by this process: rooms are created, and their
        # counts change, only through this server's writer (one server per database);
        # a `chatd room` command's changes are read again (reload_rooms).
        self.rooms: dict[int, Room] = {}
        self._public: list[int] = []  # public room ids, by name
        self._public_slugs: dict[str, int] = {}
        self._slugs: dict[str, int] = {}  # every room
        self._marks: OrderedDict[int, dict[int, int]] = OrderedDict()
        # Beside each user's marks: public rooms' sidebar states (memberships.sidebar, migration 5).
        self._states: dict[int, dict[int, int]] = {}
        self._latest: dict[int, list[int]] = {}
        # Room id -> the positions (seq) its deleted messages had, ascending: unread counts are
        # positions past a read mark, less the deleted ones among them (loaded at open).
        self._gone: dict[int, list[int]] = {}
        self._sessions: dict[bytes, tuple[User, str, float]] = {}
        # Moves on every change to rooms, counts or read marks: what was computed from
        # them at an earlier epoch may be stale, at the same epoch it is not.
        self.epoch = 0
        self._tokens: dict[bytes, User] = {}
        self._auth_seen: str | None = None  # auth_version the two caches above belong to
        # Move whenever credentials (auth_version) or rooms (rooms_version) were seen to change:
        # the live side compares them with what it last acted on (Live.ensure_current).
        self.auth_epoch = 0
        self.rooms_epoch = 0
        self._rooms_seen: str | None = None
        self._watch_seen: int | None = None  # see AccountsStore._credentials_current
        self._auth_looked = False  # _credentials_current already ran in this turn of the loop

    def note_room(self, room: Room) -> None:
        """Record a new or changed room in the in-memory room table."""
        self.epoch += 1
        self.rooms[room.id] = room
        self._slugs[room.slug] = room.id
        if room.kind == "public":
            self._public_slugs[room.slug] = room.id
            self._public = sorted(self._public_slugs.values(), key=lambda i: self.rooms[i].name.casefold())

    def forget_room(self, room_id: int) -> Room | None:
        """A deleted room leaves every in-memory table (its id is never given out again)."""
        self.epoch += 1
        room = self.rooms.pop(room_id, None)
        if room is None:
            return None
        self._slugs.pop(room.slug, None)
        if self._public_slugs.pop(room.slug, None) is not None:
            self._public = [i for i in self._public if i != room_id]
        self._latest.pop(room_id, None)
        self._gone.pop(room_id, None)
        for marks in self._marks.values():
            marks.pop(room_id, None)
        for states in self._states.values():
            states.pop(room_id, None)
        for mid in [mid for mid, m in self._recent.items() if m.room_id == room_id]:
            del self._recent[mid]
        return room

    def room_named(self, slug: str) -> Room | None:
        """Any room by its slug, from the in-memory table (access is decided by chatd.access)."""
        room_id = self._slugs.get(slug)
        return None if room_id is None else self.rooms.get(room_id)

    def _count_messages(self, messages: list[Message]) -> list[Message]:
        """Committed messages: room counts move on, and posting reads the room for its author
        (and joins a public one). Returns the messages that brought their room into their
        author's sidebar: the author had not joined the public room, or it is a DM's first."""
        self.epoch += 1
        rooms = self.rooms
        listed = []
        for m in messages:
            room = rooms.get(m.room_id)
            if room is not None:
                if room.kind == "dm":
                    brought_in = not room.last_message_id
                else:
                    brought_in = room.kind == "public" and not self._joined_now(m.author_id, room.id)
                if brought_in:
                    listed.append(m)
                room = rooms[m.room_id] = room._replace(last_message_id=m.id, message_count=room.message_count + 1)
                self.note_mark(m.author_id, room.id, room.message_count, create=room.kind == "public")
                if room.kind == "public":
                    self.note_state(m.author_id, room.id, 1)
            latest = self._latest.get(m.room_id)
            # A load that raced this commit may already hold the id: ids only grow.
            if latest is not None and (not latest or m.id > latest[-1]):
                latest.append(m.id)
                if len(latest) > 2 * LATEST_KEPT:
                    del latest[:-LATEST_KEPT]
        return listed

    def unread_count(self, room: Room, mark: int) -> int:
        """Messages past a read mark (a position), deleted ones left out."""
        unread = room.message_count - mark
        gone = self._gone.get(room.id)
        if gone:
            unread -= len(gone) - bisect.bisect_right(gone, mark)
        return max(0, unread)

    def _joined_now(self, user_id: int, room_id: int) -> bool:
        """Had this user joined this public room, as far as the mirrored marks tell? An author
        whose marks are not loaded counts as joined: nothing is announced for them (a user
        with a tab open loaded theirs, and keeps them in use with read marks)."""
        marks = self._marks.get(user_id)
        return marks is None or (room_id in marks and room_id not in self._states.get(user_id, {}))

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

    def note_state(self, user_id: int, room_id: int, state: int) -> None:
        self.epoch += 1
        states = self._states.get(user_id)
        if states is None:
            return
        if state == 1:
            states.pop(room_id, None)
        else:
            states[room_id] = state

    def note_mark(self, user_id: int, room_id: int, seq: int, create: bool) -> None:
        """A read mark moved forward; `create` when a new row may have appeared."""
        self.epoch += 1
        marks = self._marks.get(user_id)
        if marks is None:
            return
        if room_id in marks:
            marks[room_id] = max(marks[room_id], seq)
        elif create:
            marks[room_id] = seq

    def forget_mark(self, user_id: int, room_id: int) -> None:
        self.epoch += 1
        marks = self._marks.get(user_id)
        if marks is not None:
            marks.pop(room_id, None)

    def changed(self, log: list[Change]) -> None:
        """Committed edits, reaction changes and deletions: the caches that hold messages take
        them in (the recent messages, the newest ids per room, the deleted positions)."""
        self.epoch += 1
        for change in log:
            if change.kind == "updated" and change.message is not None:
                if change.message_id in self._recent:
                    self._recent[change.message_id] = change.message
            elif change.kind == "deleted":
                self._recent.pop(change.message_id, None)
                self._latest.pop(change.room_id, None)  # read again: it may now hold too few
                bisect.insort(self._gone.setdefault(change.room_id, []), change.seq)

    def remember(self, messages: list[Message]) -> None:
        for message in messages:
            self._recent[message.id] = message
        while len(self._recent) > MESSAGE_CACHE:
            self._recent.popitem(last=False)

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
            raise storage_error(exc) or StorageUnavailable("the database could not be read") from None

    async def open(self) -> None:
        await self._writer.open()  # creates and migrates the file first
        await self._reader.open()
        self._inline = await asyncio.to_thread(connect_sync, self.path, self.sync)
        if self.sync == "normal":  # a commit waits for no disk: messages are written inline
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
        """Start the message writer; after each commit, `on_commit(messages, listed)` gets the
        messages and those of them that brought a room into their author's sidebar."""

        def committed(log: list[Change]) -> None:
            messages = [c.message for c in log if c.kind == "message" and c.message is not None]
            if len(messages) != len(log):
                self.changed([c for c in log if c.kind != "message"])
            self.remember(messages)
            on_commit(log, self._count_messages(messages))

        self.messages_writer = MessageWriter(self._writer, committed, on_latency, self._inline_writer)
        self.messages_writer.start()
        return self.messages_writer

    async def check(self) -> None:
        self._read(lambda c: c.execute("SELECT 1").fetchone())
