"""Every SQL statement in chatd: accounts, sessions, rooms, memberships, messages.

Reads go through a reader connection (WAL: they never wait for the writer);
every write goes through the single writer connection, one transaction each.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from chatd.errors import Conflict, NotFound, StorageUnavailable
from chatd.models import Message, Room, RoomState, User
from chatd.store.db import Connection, connect_sync, storage_error, transaction
from chatd.store.schema import SCHEMA_VERSION
from chatd.store.writer import MessageWriter, OnCommit, OnLatency

__all__ = ["Store", "SCHEMA_VERSION"]
T = TypeVar("T")

_USER = "SELECT id, username, admin, active, read_floor FROM users"
_ROOM = "SELECT id, slug, name, kind, last_message_id FROM rooms"
_MESSAGE = (
    "SELECT m.id, m.room_id, r.slug, u.username, m.user_id, m.body, m.html, m.created_at,"
    " m.client_id FROM messages m JOIN rooms r ON r.id = m.room_id"
    " JOIN users u ON u.id = m.user_id"
)


def _user(row: tuple | None) -> User | None:
    return None if row is None else User(row[0], row[1], bool(row[2]), bool(row[3]), row[4])


def _room(row: tuple | None) -> Room | None:
    return None if row is None else Room(row[0], row[1], row[2], row[3], row[4])


def _messages(rows: list[tuple]) -> list[Message]:
    return [Message(*row) for row in rows]


def _bump_auth(conn: sqlite3.Connection) -> None:
    """Tell running servers that sessions or tokens changed (they poll this)."""
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'auth_version'")


class Store:
    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = Path(path)
        self.sync = sync
        self._writer = Connection(self.path, sync)
        self._reader = Connection(self.path, sync)
        self.messages_writer: MessageWriter | None = None
        self._inline: sqlite3.Connection | None = None

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

    async def close(self) -> None:
        if self.messages_writer is not None:
            await self.messages_writer.stop()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await self._reader.close()
        await self._writer.close()

    def start_writer(self, on_commit: OnCommit, on_latency: OnLatency) -> MessageWriter:
        self.messages_writer = MessageWriter(self._writer, on_commit, on_latency)
        self.messages_writer.start()
        return self.messages_writer

    async def check(self) -> None:
        self._read(lambda c: c.execute("SELECT 1").fetchone())

    # -- accounts -----------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, admin: bool) -> User:
        def op(conn: sqlite3.Connection) -> User:
            with transaction(conn):
                try:
                    cur = conn.execute(
                        "INSERT INTO users (username, password_hash, admin, created_at, read_floor)"
                        " VALUES (?, ?, ?, ?, (SELECT coalesce(max(id), 0) FROM messages))",
                        (username, password_hash, int(admin), time.time()),
                    )
                except sqlite3.IntegrityError:
                    raise Conflict(f"the user {username} already exists") from None
                _bump_auth(conn)
                return _user(conn.execute(f"{_USER} WHERE id = ?", (cur.lastrowid,)).fetchone())

        return await self._writer.run(op)

    async def create_first_admin(self, setup_hash: str, username: str, password_hash: str) -> User:
        """Create the first account if the setup token matches and no account exists."""

        def op(conn: sqlite3.Connection) -> User | None:
            with transaction(conn):
                row = conn.execute("SELECT value FROM meta WHERE key = 'setup_token'").fetchone()
                if row is None or row[0] != setup_hash or conn.execute(
                    "SELECT 1 FROM users LIMIT 1"
                ).fetchone():
                    return None
                conn.execute("DELETE FROM meta WHERE key = 'setup_token'")
                cur = conn.execute(
                    "INSERT INTO users (username, password_hash, admin, created_at, read_floor)"
                    " VALUES (?, ?, 1, ?, 0)",
                    (username, password_hash, time.time()),
                )
                return _user(conn.execute(f"{_USER} WHERE id = ?", (cur.lastrowid,)).fetchone())

        user = await self._writer.run(op)
        if user is None:
            raise NotFound("this setup link has been used or has expired")
        return user

    async def set_setup_token(self, setup_hash: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM meta WHERE key = 'setup_token'")
                if setup_hash is not None:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('setup_token', ?)", (setup_hash,)
                    )

        await self._writer.run(op)

    async def setup_token_valid(self, setup_hash: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM meta WHERE key = 'setup_token'").fetchone()
            if row is None or row[0] != setup_hash:
                return False
            return conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None

        return self._read(op)

    async def count_users(self) -> int:
        return self._read(lambda c: c.execute("SELECT count(*) FROM users").fetchone()[0])

    async def user_with_hash(self, username: str) -> tuple[User, str] | None:
        def op(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute(
                "SELECT id, username, admin, active, read_floor, password_hash FROM users"
                " WHERE username = ?",
                (username,),
            ).fetchone()
            return None if row is None else (_user(row[:5]), row[5])

        return self._read(op)

    async def user_by_name(self, username: str) -> User | None:
        return self._read(
            lambda c: _user(c.execute(f"{_USER} WHERE username = ? AND active = 1", (username,)).fetchone())
        )

    async def list_users(self) -> list[User]:
        return self._read(
            lambda c: [_user(r) for r in c.execute(f"{_USER} ORDER BY username").fetchall()]
        )

    async def active_usernames(self) -> set[str]:
        return self._read(
            lambda c: {r[0] for r in c.execute("SELECT username FROM users WHERE active = 1")}
        )

    async def set_password(self, username: str, password_hash: str) -> None:
        """Set a password and end every session of that user."""

        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                cur = conn.execute(
                    "UPDATE users SET password_hash = ? WHERE username = ? AND active = 1",
                    (password_hash, username),
                )
                if cur.rowcount == 0:
                    raise NotFound(f"no active user named {username}")
                conn.execute(
                    "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE username = ?)",
                    (username,),
                )
                _bump_auth(conn)

        await self._writer.run(op)

    async def deactivate_user(self, username: str) -> None:
        """Deactivate an account in one transaction; its messages stay."""

        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                row = conn.execute(
                    "UPDATE users SET active = 0 WHERE username = ? AND active = 1 RETURNING id",
                    (username,),
                ).fetchone()
                if row is None:
                    raise NotFound(f"no active user named {username}")
                conn.execute("DELETE FROM sessions WHERE user_id = ?", (row[0],))
                conn.execute("DELETE FROM tokens WHERE user_id = ?", (row[0],))
                _bump_auth(conn)

        await self._writer.run(op)

    # -- sessions and tokens ------------------------------------------------

    async def create_session(self, user_id: int, token_hash: bytes, csrf: str, ttl: float) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
                conn.execute(
                    "INSERT INTO sessions (token_hash, user_id, csrf, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (token_hash, user_id, csrf, now, now + ttl),
                )

        await self._writer.run(op)

    async def delete_session(self, token_hash: bytes) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
                _bump_auth(conn)

        await self._writer.run(op)

    async def user_for_session(self, token_hash: bytes) -> tuple[User, str] | None:
        def op(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute(
                "SELECT u.id, u.username, u.admin, u.active, u.read_floor, s.csrf FROM sessions s"
                " JOIN users u ON u.id = s.user_id"
                " WHERE s.token_hash = ? AND s.expires_at > ? AND u.active = 1",
                (token_hash, time.time()),
            ).fetchone()
            return None if row is None else (_user(row[:5]), row[5])

        return self._read(op)

    async def create_token(self, user_id: int, token_hash: bytes, label: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO tokens (token_hash, user_id, label, created_at) VALUES (?, ?, ?, ?)",
                    (token_hash, user_id, label, time.time()),
                )

        await self._writer.run(op)

    async def user_for_token(self, token_hash: bytes) -> User | None:
        return self._read(
            lambda c: _user(
                c.execute(
                    "SELECT u.id, u.username, u.admin, u.active, u.read_floor FROM tokens t"
                    " JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND u.active = 1",
                    (token_hash,),
                ).fetchone()
            )
        )

    async def auth_version(self) -> int:
        return self._read(
            lambda c: int(c.execute("SELECT value FROM meta WHERE key = 'auth_version'").fetchone()[0])
        )

    async def live_credentials(self, sessions: list[bytes], tokens: list[bytes]) -> set[bytes]:
        """Which of these session and token hashes still authenticate an active user."""

        def op(conn: sqlite3.Connection) -> set[bytes]:
            live: set[bytes] = set()
            now = time.time()
            for h in sessions:
                if conn.execute(
                    "SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id"
                    " WHERE s.token_hash = ? AND s.expires_at > ? AND u.active = 1", (h, now)
                ).fetchone():
                    live.add(h)
            for h in tokens:
                if conn.execute(
                    "SELECT 1 FROM tokens t JOIN users u ON u.id = t.user_id"
                    " WHERE t.token_hash = ? AND u.active = 1", (h,)
                ).fetchone():
                    live.add(h)
            return live

        return await self._reader.run(op)

    # -- rooms and memberships ----------------------------------------------

    async def create_room(self, slug: str, name: str, kind: str, creator: User) -> Room:
        def op(conn: sqlite3.Connection) -> Room:
            with transaction(conn):
                try:
                    cur = conn.execute(
                        "INSERT INTO rooms (slug, name, kind, created_by, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (slug, name, kind, creator.id, time.time()),
                    )
                except sqlite3.IntegrityError:
                    raise Conflict(f"the room {slug} already exists") from None
                if kind != "public":
                    conn.execute(
                        "INSERT INTO memberships (room_id, user_id) VALUES (?, ?)",
                        (cur.lastrowid, creator.id),
                    )
                return _room(conn.execute(f"{_ROOM} WHERE id = ?", (cur.lastrowid,)).fetchone())

        return await self._writer.run(op)

    async def room_for(self, user: User, slug: str) -> Room:
        """The room if this user may read it; otherwise NotFound, exactly as for no room."""

        def op(conn: sqlite3.Connection) -> Room | None:
            return _room(
                conn.execute(
                    "SELECT r.id, r.slug, r.name, r.kind, r.last_message_id FROM rooms r"
                    " WHERE r.slug = ? AND (r.kind = 'public' OR EXISTS (SELECT 1 FROM"
                    " memberships m WHERE m.room_id = r.id AND m.user_id = ?))",
                    (slug, user.id),
                ).fetchone()
            )

        room = self._read(op)
        if room is None:
            raise NotFound("no such room")
        return room

    async def room_by_slug(self, slug: str) -> Room | None:
        """Any room, for administrators' membership management only."""
        return self._read(
            lambda c: _room(c.execute(f"{_ROOM} WHERE slug = ?", (slug,)).fetchone())
        )

    async def rooms_for(self, user: User) -> list[RoomState]:
        """Every room this user may read, with its unread count for them."""

        def op(conn: sqlite3.Connection) -> list[RoomState]:
            rows = conn.execute(
                "SELECT r.id, r.slug, r.name, r.kind, r.last_message_id,"
                " max(coalesce(m.last_read_id, 0), :floor) AS mark"
                " FROM rooms r LEFT JOIN memberships m ON m.room_id = r.id AND m.user_id = :uid"
                " WHERE r.kind = 'public' OR m.user_id IS NOT NULL ORDER BY r.name",
                {"uid": user.id, "floor": user.read_floor},
            ).fetchall()
            states = []
            for row in rows:
                room = _room(row[:5])
                unread = _count_unread(conn, room, row[5], user.id)
                peer = _dm_peer(room, user) if room.kind == "dm" else None
                states.append(RoomState(room, unread, peer))
            return states

        return self._read(op)

    async def unread(self, user: User, room: Room) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT last_read_id FROM memberships WHERE room_id = ? AND user_id = ?",
                (room.id, user.id),
            ).fetchone()
            mark = max(row[0] if row else 0, user.read_floor)
            latest = conn.execute(f"{_ROOM} WHERE id = ?", (room.id,)).fetchone()
            return _count_unread(conn, _room(latest), mark, user.id)

        return self._read(op)

    async def open_dm(self, slug: str, first: User, second: User) -> Room:
        """The one DM room of this pair, created on first use."""

        def op(conn: sqlite3.Connection) -> Room:
            with transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO rooms (slug, name, kind, created_by, created_at)"
                    " VALUES (?, ?, 'dm', ?, ?)",
                    (slug, slug, first.id, time.time()),
                )
                room = _room(conn.execute(f"{_ROOM} WHERE slug = ?", (slug,)).fetchone())
                for user in (first, second):
                    conn.execute(
                        "INSERT OR IGNORE INTO memberships (room_id, user_id) VALUES (?, ?)",
                        (room.id, user.id),
                    )
                return room

        return await self._writer.run(op)

    async def add_member(self, room: Room, user: User) -> bool:
        """Add a member; their read mark starts at the room's newest message."""

        def op(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cur = conn.execute(
                    "INSERT OR IGNORE INTO memberships (room_id, user_id, last_read_id)"
                    " SELECT id, ?, last_message_id FROM rooms WHERE id = ?",
                    (user.id, room.id),
                )
                return cur.rowcount > 0

        return await self._writer.run(op)

    async def remove_member(self, room: Room, user: User) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cur = conn.execute(
                    "DELETE FROM memberships WHERE room_id = ? AND user_id = ?", (room.id, user.id)
                )
                return cur.rowcount > 0

        return await self._writer.run(op)

    async def members(self, room: Room) -> list[str]:
        return self._read(
            lambda c: [
                r[0]
                for r in c.execute(
                    "SELECT u.username FROM memberships m JOIN users u ON u.id = m.user_id"
                    " WHERE m.room_id = ? AND u.active = 1 ORDER BY u.username",
                    (room.id,),
                )
            ]
        )

    async def closed_rooms(self) -> list[tuple[Room, set[int]]]:
        """Every private room and DM with its member ids (the hub's routing table)."""

        def op(conn: sqlite3.Connection) -> list[tuple[Room, set[int]]]:
            rooms = {
                r[0]: (_room(r), set())
                for r in conn.execute(f"{_ROOM} WHERE kind <> 'public'").fetchall()
            }
            for room_id, user_id in conn.execute(
                "SELECT m.room_id, m.user_id FROM memberships m JOIN rooms r ON r.id = m.room_id"
                " WHERE r.kind <> 'public'"
            ):
                rooms[room_id][1].add(user_id)
            return list(rooms.values())

        return await self._reader.run(op)

    async def all_rooms(self) -> list[tuple[Room, list[str]]]:
        """Every public and private room with its members (administration)."""

        def op(conn: sqlite3.Connection) -> list[tuple[Room, list[str]]]:
            out = []
            for row in conn.execute(f"{_ROOM} WHERE kind <> 'dm' ORDER BY name").fetchall():
                names = [
                    r[0]
                    for r in conn.execute(
                        "SELECT u.username FROM memberships m JOIN users u ON u.id = m.user_id"
                        " WHERE m.room_id = ? AND u.active = 1 ORDER BY u.username",
                        (row[0],),
                    )
                ] if row[3] != "public" else []
                out.append((_room(row), names))
            return out

        return await self._reader.run(op)

    async def mark_read(self, user: User, room: Room, message_id: int) -> int:
        """Move this user's read mark forward (never back); return the room's unread count."""

        def op(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                latest = _room(conn.execute(f"{_ROOM} WHERE id = ?", (room.id,)).fetchone())
                mark = min(message_id, latest.last_message_id)
                if latest.kind == "public":
                    conn.execute(
                        "INSERT INTO memberships (room_id, user_id, last_read_id) VALUES (?, ?, ?)"
                        " ON CONFLICT (room_id, user_id) DO UPDATE"
                        " SET last_read_id = max(last_read_id, excluded.last_read_id)",
                        (room.id, user.id, mark),
                    )
                else:
                    conn.execute(
                        "UPDATE memberships SET last_read_id = max(last_read_id, ?)"
                        " WHERE room_id = ? AND user_id = ?",
                        (mark, room.id, user.id),
                    )
                row = conn.execute(
                    "SELECT last_read_id FROM memberships WHERE room_id = ? AND user_id = ?",
                    (room.id, user.id),
                ).fetchone()
                current = max(row[0] if row else 0, user.read_floor)
                return _count_unread(conn, latest, current, user.id)

        return await self._writer.run(op)

    # -- messages -----------------------------------------------------------

    async def messages(
        self, room: Room, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> list[Message]:
        """A page of a room's history in ascending id order."""

        def op(conn: sqlite3.Connection) -> list[Message]:
            if after is not None:
                rows = conn.execute(
                    f"{_MESSAGE} WHERE m.room_id = ? AND m.id > ? ORDER BY m.id LIMIT ?",
                    (room.id, after, limit),
                ).fetchall()
                return _messages(rows)
            bound = before if before is not None else (1 << 62)
            rows = conn.execute(
                f"{_MESSAGE} WHERE m.room_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?",
                (room.id, bound, limit),
            ).fetchall()
            return _messages(rows[::-1])

        return self._read(op)

    async def messages_since(self, user: User, since: int, limit: int = 1000) -> list[Message]:
        """The newest `limit` messages above `since` in every room this user may read."""

        def op(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(
                f"{_MESSAGE} WHERE m.id > ? AND (r.kind = 'public' OR EXISTS (SELECT 1 FROM"
                " memberships x WHERE x.room_id = m.room_id AND x.user_id = ?))"
                " ORDER BY m.id DESC LIMIT ?",
                (since, user.id, limit),
            ).fetchall()
            return _messages(rows[::-1])

        return await self._reader.run(op)

    async def latest_message_id(self) -> int:
        return self._read(
            lambda c: c.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        )

    # -- operations ---------------------------------------------------------

    async def backup(self, dest: Path) -> None:
        """Write a consistent copy with SQLite's online backup, then rename into place."""
        dest = Path(dest)

        def op(conn: sqlite3.Connection) -> None:
            fd, tmp = tempfile.mkstemp(prefix=".chatd-backup-", dir=dest.parent or Path("."))
            os.close(fd)
            try:
                target = sqlite3.connect(tmp)
                try:
                    conn.backup(target)
                    target.execute("PRAGMA journal_mode = DELETE")
                finally:
                    target.close()
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

        try:
            await self._reader.run(op)
        except sqlite3.Error as exc:
            raise storage_error(exc) or exc from None


def _count_unread(conn: sqlite3.Connection, room: Room, mark: int, user_id: int) -> int:
    if room.last_message_id <= mark:
        return 0
    return conn.execute(
        "SELECT count(*) FROM messages WHERE room_id = ? AND id > ? AND user_id <> ?",
        (room.id, mark, user_id),
    ).fetchone()[0]


def _dm_peer(room: Room, user: User) -> str:
    first, _, second = room.slug.partition("+")
    return second if first == user.username else first


def open_sync(path: Path) -> sqlite3.Connection:
    """A migrated synchronous connection (used by tests and tooling)."""
    return connect_sync(path)
