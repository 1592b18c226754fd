"""Rooms, memberships, read marks and message history."""

from __future__ import annotations

import sqlite3
import time

from chatd.errors import Conflict, NotFound
from chatd.models import Message, Room, RoomState, User
from chatd.rules import dm_peer
from chatd.store.base import _MESSAGE, _ROOM, LATEST_KEPT, StoreBase, _messages, _room
from chatd.store.db import transaction
from chatd.store.writer import advance_read_mark


class RoomsStore(StoreBase):
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

        room = await self._writer.run(op)
        self.note_room(room)
        if kind != "public":
            self.note_mark(creator.id, room.id, 0, create=True)
        return room

    async def room_for(self, user: User, slug: str) -> Room:
        """The room if this user may read it; otherwise NotFound, exactly as for no room."""
        public = self._public_slugs.get(slug)
        if public is not None:  # every account may read a public room: no query needed
            return self.rooms[public]

        def op(conn: sqlite3.Connection) -> Room | None:
            return _room(
                conn.execute(
                    "SELECT r.id, r.slug, r.name, r.kind, r.last_message_id, r.message_count FROM rooms r"
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
            marks = self.user_marks(conn, user.id)
            rooms, get, make = self.rooms, marks.get, RoomState._make
            states = [make((rooms[i], max(0, rooms[i].message_count - get(i, 0)), None)) for i in self._public]
            closed = sorted((rooms[rid] for rid in marks if rid in rooms and rooms[rid].kind != "public"),
                            key=lambda r: r.name)
            for r in closed:
                peer = dm_peer(r.slug, user.username) if r.kind == "dm" else None
                states.append(RoomState(r, max(0, r.message_count - marks[r.id]), peer))
            return states

        return self._read(op)

    async def unread(self, user: User, room: Room) -> int:
        """Messages after this user's read mark, from the room table and the mirrored marks."""
        marks = self._read(self.user_marks, user.id)
        return max(0, self.rooms[room.id].message_count - marks.get(room.id, 0))

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

        room = await self._writer.run(op)
        for user in (first, second):
            self.note_mark(user.id, room.id, 0, create=True)
        # An existing room's counts in memory are the live ones (they may be a commit ahead).
        return self.rooms.get(room.id) or self._noted(room)

    def _noted(self, room: Room) -> Room:
        self.note_room(room)
        return room

    async def add_member(self, room: Room, user: User) -> bool:
        """Add a member; their read mark starts at the room's newest message."""

        def op(conn: sqlite3.Connection) -> int | None:
            with transaction(conn):
                row = conn.execute(
                    "INSERT OR IGNORE INTO memberships (room_id, user_id, last_read_id, last_read_seq)"
                    " SELECT id, ?, last_message_id, message_count FROM rooms WHERE id = ?"
                    " RETURNING last_read_seq",
                    (user.id, room.id),
                ).fetchone()
                return None if row is None else row[0]

        seq = await self._writer.run(op)
        if seq is not None:
            self.note_mark(user.id, room.id, seq, create=True)
        return seq is not None

    async def remove_member(self, room: Room, user: User) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            with transaction(conn):
                cur = conn.execute(
                    "DELETE FROM memberships WHERE room_id = ? AND user_id = ?", (room.id, user.id)
                )
                return cur.rowcount > 0

        removed = await self._writer.run(op)
        self.forget_mark(user.id, room.id)
        return removed

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
                row = conn.execute(
                    "SELECT id, seq FROM messages WHERE room_id = ? AND id <= ? ORDER BY id DESC LIMIT 1",
                    (room.id, message_id),
                ).fetchone()
                if row is not None:
                    advance_read_mark(conn, room, user.id, row[0], row[1])
                return row[1] if row else 0

        seq = await self._writer.run(op)
        self.note_mark(user.id, room.id, seq, create=room.kind == "public")
        return await self.unread(user, room)

    # -- messages -----------------------------------------------------------

    async def messages(
        self, room: Room, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> list[Message]:
        """A page of a room's history in ascending id order."""

        def op(conn: sqlite3.Connection) -> list[Message]:
            # Ids come from the (room_id, id) index alone; rows only for messages not cached.
            if after is not None:
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM messages WHERE room_id = ? AND id > ? ORDER BY id LIMIT ?",
                    (room.id, after, limit))]
            elif before is None and limit <= LATEST_KEPT:
                ids = self.latest_ids(conn, room.id)[-limit:]
            else:
                bound = before if before is not None else (1 << 62)
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM messages WHERE room_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                    (room.id, bound, limit))][::-1]
            return self.cached_messages(conn, ids)

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
