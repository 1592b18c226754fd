"""Rooms, memberships, read marks and message history."""

from __future__ import annotations

import sqlite3
import time

from chatd.errors import Conflict, NotFound
from chatd.models import Change, Message, Room, RoomState, User
from chatd.rules import dm_peer
from chatd.store.base import _ROOM, StoreBase, _room
from chatd.store.changes import next_id
from chatd.store.db import transaction
from chatd.store.mirror import LATEST_KEPT
from chatd.store.rows import _MESSAGE, _messages
from chatd.store.writer import advance_read_mark


class RoomsStore(StoreBase):
    # -- rooms and memberships ----------------------------------------------

    async def create_room(self, slug: str, name: str, kind: str, creator: User) -> Room:
        def op(conn: sqlite3.Connection) -> Room:
            with transaction(conn):
                if conn.execute("SELECT 1 FROM rooms WHERE slug = ?", (slug,)).fetchone():
                    # The same words whoever holds the slug: a private room is never revealed.
                    raise Conflict("that room address is already taken; choose another", field="slug")
                room_id = _next_room_id(conn)
                conn.execute(
                    "INSERT INTO rooms (id, slug, name, kind, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (room_id, slug, name, kind, creator.id, time.time()),
                )
                # The creator is a member of a private room, and has joined a public one.
                conn.execute("INSERT INTO memberships (room_id, user_id) VALUES (?, ?)", (room_id, creator.id))
                return _room(conn.execute(f"{_ROOM} WHERE id = ?", (room_id,)).fetchone())

        room = await self._writer.run(op)
        self.note_room(room)
        self.note_mark(creator.id, room.id, 0, create=True)
        return room

    async def room_by_slug(self, slug: str) -> Room | None:
        """Any room, for administrators' room management only (no access check here)."""
        return self.room_named(slug)

    async def rooms_for(self, user: User) -> list[RoomState]:
        """Every room this user may read, with its unread count for them."""
        return self._read(self.rooms_for_now, user)

    async def sidebar_for(self, user: User) -> list[RoomState]:
        """The rooms in this user's sidebar: public rooms they joined, or have not joined (and
        not left) while they hold unread messages; their private rooms; DMs with messages.
        Archived rooms are left out: they are on the rooms page."""

        def op(conn: sqlite3.Connection) -> list[RoomState]:
            marks, states = self.user_marks(conn, user.id), self.user_states(conn, user.id)
            return [s for s in self.rooms_for_now(conn, user) if _listed(s.room, s.unread, marks, states)]

        return self._read(op)

    def sidebar_state(self, user_id: int, room: Room) -> tuple[bool, int]:
        """Whether this user's sidebar lists the room (sidebar_for's rule), and their unread
        count in it; (False, 0) for a private room or DM they are not a member of."""

        def op(conn: sqlite3.Connection) -> tuple[bool, int]:
            marks, states = self.user_marks(conn, user_id), self.user_states(conn, user_id)
            current = self.rooms.get(room.id, room)
            if current.kind != "public" and current.id not in marks:
                return False, 0
            unread = self.unread_count(current, marks.get(current.id, 0))
            return _listed(current, unread, marks, states), unread

        return self._read(op)

    def rooms_for_now(self, conn: sqlite3.Connection, user: User) -> list[RoomState]:
        """rooms_for, for a caller already on the event loop's connection."""
        marks = self.user_marks(conn, user.id)
        rooms, get, make, count = self.rooms, marks.get, RoomState._make, self.unread_count
        if self._gone:
            states = [make((rooms[i], count(rooms[i], get(i, 0)), None)) for i in self._public]
        else:  # no message was ever deleted: the count is a subtraction (the usual case, and the fast one)
            states = [make((rooms[i], max(0, rooms[i].message_count - get(i, 0)), None)) for i in self._public]
        closed = sorted((rooms[rid] for rid in marks if rid in rooms and rooms[rid].kind != "public"),
                        key=lambda r: r.name.casefold())
        for r in closed:
            peer = dm_peer(r.slug, user.username) if r.kind == "dm" else None
            states.append(RoomState(r, count(r, marks[r.id]), peer))
        return states

    async def directory(self, user: User) -> list[tuple[RoomState, int]]:
        """Every room but DMs this user may read, with their sidebar state: 1 joined (a private
        room's member), 0 not joined, -1 left."""

        def op(conn: sqlite3.Connection) -> list[tuple[RoomState, int]]:
            marks, states = self.user_marks(conn, user.id), self.user_states(conn, user.id)
            out = []
            for state in self.rooms_for_now(conn, user):
                room = state.room
                if room.kind == "dm":
                    continue
                joined = 1 if room.kind != "public" else (states.get(room.id, 1) if room.id in marks else 0)
                out.append((state, joined))
            return out

        return self._read(op)

    def joined(self, user: User, room: Room) -> bool:
        """Has this user joined this public room (it stays in their sidebar)?"""
        marks = self._read(self.user_marks, user.id)
        return room.id in marks and room.id not in self._states.get(user.id, {})

    def left_slugs(self, user: User) -> list[str]:
        """The public rooms this user left (kept out of their sidebar even with news)."""
        self._read(self.user_marks, user.id)
        rooms = self.rooms
        return sorted(rooms[i].slug for i, s in self._states.get(user.id, {}).items() if s == -1 and i in rooms)

    def left(self, user: User, room: Room) -> bool:
        """Has this user left this public room (it stays out of their sidebar)?"""
        self._read(self.user_marks, user.id)
        return self._states.get(user.id, {}).get(room.id) == -1

    async def set_joined(self, user: User, room: Room, joined: bool) -> None:
        """Join a public room (into the sidebar) or leave it (out of the sidebar, even with
        unread messages); the read state is kept either way."""
        state = 1 if joined else -1

        def op(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                row = conn.execute(
                    "INSERT INTO memberships (room_id, user_id, last_read_id, last_read_seq, sidebar)"
                    " VALUES (?, ?, 0, 0, ?) ON CONFLICT (room_id, user_id) DO UPDATE SET sidebar = excluded.sidebar"
                    " RETURNING last_read_seq", (room.id, user.id, state)).fetchone()
                return row[0]

        seq = await self._writer.run(op)
        self.note_mark(user.id, room.id, seq, create=True)
        self.note_state(user.id, room.id, state)

    async def unread(self, user: User, room: Room) -> int:
        """Messages after this user's read mark, from the room table and the mirrored marks."""
        marks = self._read(self.user_marks, user.id)
        current = self.rooms.get(room.id)
        if current is None:
            raise NotFound("no such room")
        return self.unread_count(current, marks.get(room.id, 0))

    async def open_dm(self, slug: str, first: User, second: User) -> Room:
        """The one DM room of this pair, created on first use."""

        def op(conn: sqlite3.Connection) -> Room:
            with transaction(conn):
                if not conn.execute("SELECT 1 FROM rooms WHERE slug = ?", (slug,)).fetchone():
                    conn.execute(
                        "INSERT INTO rooms (id, slug, name, kind, created_by, created_at) VALUES (?, ?, ?, 'dm', ?, ?)",
                        (_next_room_id(conn), slug, slug, first.id, time.time()),
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
        """Every private room and DM with its member ids (the access table's start)."""

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
            for row in conn.execute(f"{_ROOM} WHERE kind <> 'dm' ORDER BY name COLLATE NOCASE").fetchall():
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

    async def mark_read_many(self, marks: list[tuple[User, Room, int]]) -> None:
        """Move these read marks forward (never back), all in one transaction."""

        def op(conn: sqlite3.Connection) -> list[int]:
            seqs = []
            with transaction(conn):
                for user, room, message_id in marks:
                    row = conn.execute(
                        "SELECT id, seq FROM messages WHERE room_id = ? AND id <= ? ORDER BY id DESC LIMIT 1",
                        (room.id, message_id),
                    ).fetchone()
                    if row is not None:
                        advance_read_mark(conn, room, user.id, row[0], row[1])
                    seqs.append(row[1] if row else 0)
            return seqs

        seqs = await self._writer.run(op)
        for (user, room, _), seq in zip(marks, seqs, strict=True):
            self.note_mark(user.id, room.id, seq, create=room.kind == "public")

    # -- archiving and deleting (administrators) -----------------------------

    async def archive_room(self, room: Room, archived: bool) -> Room:
        """Archive a room (readable, closed to new messages) or bring it back."""

        def op(conn: sqlite3.Connection) -> str:
            with transaction(conn):
                cur = conn.execute("UPDATE rooms SET archived_at = ? WHERE id = ?",
                                   (time.time() if archived else None, room.id))
                if cur.rowcount == 0:
                    raise NotFound("no such room")
                return _bump_rooms(conn)

        self._rooms_seen = await self._writer.run(op)
        current = self.rooms.get(room.id, room)._replace(archived=archived)
        self.note_room(current)
        return current

    async def delete_room(self, room: Room) -> int:
        """Delete a room with its messages and memberships, in one transaction; returns how
        many messages went. Its ids are never given out again (migration 5)."""

        def op(conn: sqlite3.Connection) -> tuple[int, str]:
            with transaction(conn):
                conn.execute("UPDATE meta SET value = ? WHERE key = 'message_id_floor'", (str(next_id(conn) - 1),))
                conn.execute("DELETE FROM events WHERE room_id = ?", (room.id,))
                conn.execute("UPDATE meta SET value = max(CAST(value AS INTEGER), ?) WHERE key = 'room_id_floor'",
                             (room.id,))
                conn.execute("DELETE FROM memberships WHERE room_id = ?", (room.id,))
                gone = conn.execute("DELETE FROM messages WHERE room_id = ?", (room.id,)).rowcount
                if conn.execute("DELETE FROM rooms WHERE id = ?", (room.id,)).rowcount == 0:
                    raise NotFound("no such room")
                return gone, _bump_rooms(conn)

        gone, self._rooms_seen = await self._writer.run(op)
        self.forget_room(room.id)
        return gone

    def reload_rooms_now(self) -> tuple[list[Room], list[Room]]:
        """Read the room table again after another process (a `chatd room` command) changed
        it: returns (rooms whose name or archived state changed, rooms that are gone)."""
        return self._read(self._reload_rooms)

    def reload_room_now(self, room_id: int) -> tuple[Room | None, Room | None, set[int]]:
        """Read one room and its members again (another process changed them): returns the
        room as known before, as it is now (None when gone) and its members (private rooms
        and DMs), with the in-memory table updated."""
        return self._read(self._reload_room, room_id)

    def reload_all_rooms_now(self) -> list[tuple[Room | None, Room | None, set[int]]]:
        """reload_room_now for every room there is or was known."""

        def op(conn: sqlite3.Connection) -> list[tuple[Room | None, Room | None, set[int]]]:
            members: dict[int, set[int]] = {}
            for room_id, user_id in conn.execute(
                    "SELECT m.room_id, m.user_id FROM memberships m JOIN rooms r ON r.id = m.room_id"
                    " WHERE r.kind <> 'public'"):
                members.setdefault(room_id, set()).add(user_id)
            found = {row[0]: Room._make(row) for row in conn.execute(_ROOM)}
            out = [(self.forget_room(i), None, set()) for i in list(self.rooms) if i not in found]
            for room_id, row in found.items():
                out.append((*self._merge_room(row), members.get(room_id, set())))
            return out

        return self._read(op)

    def _reload_room(self, conn: sqlite3.Connection, room_id: int) -> tuple[Room | None, Room | None, set[int]]:
        row = conn.execute(f"{_ROOM} WHERE id = ?", (room_id,)).fetchone()
        if row is None:
            return self.forget_room(room_id), None, set()
        before, room = self._merge_room(Room._make(row))
        members = set() if room.kind == "public" else {
            r[0] for r in conn.execute("SELECT user_id FROM memberships WHERE room_id = ?", (room_id,))}
        return before, room, members

    def _merge_room(self, found: Room) -> tuple[Room | None, Room]:
        """Note a room read from the database; counts in memory may be a commit ahead of the
        read, so they are kept."""
        before = self.rooms.get(found.id)
        room = found if before is None else before._replace(name=found.name, archived=found.archived)
        if room != before:
            self.note_room(room)
        return before, room

    def _reload_rooms(self, conn: sqlite3.Connection) -> tuple[list[Room], list[Room]]:
        found = {row[0]: Room._make(row) for row in conn.execute(_ROOM)}
        changed = []
        for room_id, room in found.items():
            known = self.rooms.get(room_id)
            if known is None or (known.name, known.archived) != (room.name, room.archived):
                # Counts in memory may be a commit ahead of this read: keep them.
                merged = room if known is None else known._replace(name=room.name, archived=room.archived)
                self.note_room(merged)
                changed.append(merged)
        gone = [r for r in (self.forget_room(i) for i in list(self.rooms) if i not in found) if r is not None]
        return changed, gone

    # -- messages -----------------------------------------------------------

    async def messages(
        self, room: Room, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> list[Message]:
        """A page of a room's history in ascending id order."""

        def op(conn: sqlite3.Connection) -> list[Message]:
            # Ids come from the (room_id, id) index alone; rows only for messages not cached.
            if after is not None:  # with before too: the lowest ids strictly between the two
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM messages WHERE room_id = ? AND id > ? AND id < ? ORDER BY id LIMIT ?",
                    (room.id, after, before if before is not None else (1 << 62), limit))]
            elif before is None and limit <= LATEST_KEPT:
                ids = self.latest_ids(conn, room.id)[-limit:]
            else:
                bound = before if before is not None else (1 << 62)
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM messages WHERE room_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                    (room.id, bound, limit))][::-1]
            return self.cached_messages(conn, ids)

        return self._read(op)

    def message(self, message_id: int) -> Message | None:
        """One message by id, whatever its room (access is the caller's to ask)."""
        found = self._read(self.cached_messages, [message_id])
        return found[0] if found else None

    async def messages_around(self, room: Room, message_id: int, limit: int) -> list[Message]:
        """`limit` messages of the room around one of its messages, ascending: (limit - 1) // 2
        below it where there are that many, more below when there are too few above."""

        def op(conn: sqlite3.Connection) -> list[Message]:
            below = [r[0] for r in conn.execute(
                "SELECT id FROM messages WHERE room_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (room.id, message_id, limit - 1))]
            above = [r[0] for r in conn.execute(
                "SELECT id FROM messages WHERE room_id = ? AND id >= ? ORDER BY id LIMIT ?",
                (room.id, message_id, limit))]
            keep = min(len(below), max((limit - 1) // 2, limit - len(above)))
            ids = below[:keep][::-1] + above[:limit - keep]
            return self.cached_messages(conn, ids)

        return self._read(op)

    async def replay_start(self, since: int, upto: int, cap: int, user: User | None = None,
                           room: Room | None = None) -> tuple[int, bool]:
        """Where a replay of the newest `cap` changes in (since, upto] begins: the id to read
        after, and whether older ones were left out. `room` for one room, else every room
        `user` belongs to or that is public."""

        def op(conn: sqlite3.Connection) -> tuple[int, bool]:
            where, args = _replay_scope(user, room)
            rows = conn.execute(
                f"SELECT c.id FROM ({_CHANGES}) c JOIN rooms r ON r.id = c.room_id"
                f" WHERE {where} ORDER BY c.id DESC LIMIT ?", (since, upto, *args, cap + 1)).fetchall()
            if len(rows) <= cap:
                return since, False
            return rows[cap][0], True

        return await self._reader.run(op)

    async def replay_page(self, after: int, upto: int, limit: int, user: User | None = None,
                          room: Room | None = None) -> tuple[int, list[Change]]:
        """The next `limit` changes of a replay, in id order, each as the change log has it now:
        a new message or an update as the message is now, none of a message deleted since.
        Returns the last id read (0 at the end) with them."""

        def op(conn: sqlite3.Connection) -> tuple[int, list[Change]]:
            return _changes_page(conn, after, upto, limit, *_replay_scope(user, room))

        return await self._reader.run(op)

    def changes_between(self, after: int, upto: int, limit: int,
                        room_id: int | None = None) -> tuple[int, list[Change]]:
        """The change log in (after, upto], every room's or one's, at most `limit` (inline:
        what another process committed since this one's last delivery, a few rows). Returns
        the last id read (0 when none) with them."""
        where, args = ("c.room_id = ?3", (room_id,)) if room_id is not None else ("1 = 1", ())
        return self._read(lambda conn: _changes_page(conn, after, upto, limit, where, args))

    def newest_id(self) -> int:
        """The highest id of the change log given out, deleted messages' included."""
        return self._read(next_id) - 1


def _listed(room: Room, unread: int, marks: dict[int, int], states: dict[int, int]) -> bool:
    """Is this room, which the user may read, in their sidebar? Public rooms they joined, or
    have neither joined nor left while they have unread messages; their private rooms; DMs
    with messages. Never an archived room (it is on the rooms page)."""
    if room.archived:
        return False
    if room.kind == "public":
        joined = room.id in marks and room.id not in states
        return joined or (states.get(room.id) != -1 and unread > 0)
    return room.kind != "dm" or bool(room.last_message_id)


# The change log between two ids: new messages (their own events) and the events table.
_CHANGES = (
    "SELECT id, 'message' AS kind, room_id, id AS message_id, seq FROM messages WHERE id > ?1 AND id <= ?2"
    " UNION ALL SELECT id, kind, room_id, message_id, seq FROM events WHERE id > ?1 AND id <= ?2"
)


def _changes_page(conn: sqlite3.Connection, after: int, upto: int, limit: int, where: str,
                  args: tuple[int, ...]) -> tuple[int, list[Change]]:
    """The next `limit` changes in (after, upto] in id order, each as the change log has it now:
    a new message or an update as the message is now, none of a message deleted since."""
    rows = conn.execute(
        f"SELECT c.id, c.kind, c.room_id, c.message_id, c.seq FROM ({_CHANGES}) c"
        f" JOIN rooms r ON r.id = c.room_id WHERE {where} ORDER BY c.id LIMIT ?",
        (after, upto, *args, limit)).fetchall()
    if not rows:
        return 0, []
    wanted = list({r[3] for r in rows if r[1] != "deleted"})
    found: dict[int, Message] = {}
    for i in range(0, len(wanted), 500):
        part = wanted[i:i + 500]
        found.update((m.id, m) for m in _messages(conn.execute(
            f"{_MESSAGE} WHERE m.id IN ({','.join('?' * len(part))})", part).fetchall()))
    page = []
    for cid, kind, room_id, message_id, seq in rows:
        if kind == "deleted":
            page.append(Change(cid, "deleted", room_id, message_id, 0, None, seq or 0))
        elif (message := found.get(message_id)) is not None:
            page.append(Change(cid, kind, room_id, message_id, message.author_id, message,
                               (seq or 0) if kind == "message" else 0))
    return rows[-1][0], page


def _replay_scope(user: User | None, room: Room | None) -> tuple[str, tuple[int, ...]]:
    """Numbered parameters from ?3 on (?1 and ?2 are the change log's bounds)."""
    if room is not None:
        return "c.room_id = ?3", (room.id,)
    assert user is not None
    return ("(r.kind = 'public' OR EXISTS (SELECT 1 FROM memberships x WHERE x.room_id = c.room_id"
            " AND x.user_id = ?3))", (user.id,))


def _bump_rooms(conn: sqlite3.Connection) -> str:
    """Tell this and other processes that rooms were archived or deleted (see reload_rooms)."""
    return conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rooms_version'"
                        " RETURNING value").fetchone()[0]


def _next_room_id(conn: sqlite3.Connection) -> int:
    """Above every room id ever given out, deleted rooms' included (migration 5)."""
    return conn.execute(
        "SELECT max(coalesce((SELECT max(id) FROM rooms), 0),"
        " (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'room_id_floor')) + 1").fetchone()[0]
