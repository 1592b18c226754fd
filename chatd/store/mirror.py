"""What the server keeps in memory of the database, and the one place that keeps it current.

The room table (with each room's counts), the newest message ids per room, recent messages,
the read marks and sidebar states of active users, and the positions of deleted messages:
the store reads them from SQL on first use (store/base.py, rooms.py) and every commit of this
process moves them on here, the change log's through `apply`, in the same turn of the event
loop as the commit. Caches of things built from a message (HTML fragments, JSON) key on the
message's (id, rev), so a change never needs to find them: the new rev misses them.
Nothing here runs SQL.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

from chatd.models import Change, Message, Room

MESSAGE_CACHE = 20_000
LATEST_KEPT = 200  # newest message ids kept per room: a room page needs no SQL for them


class Mirror:
    def __init__(self) -> None:
        # Recent messages as they are now (the change log replaces and drops them).
        self._recent: OrderedDict[int, Message] = OrderedDict()
        # Every room, kept current by this process: rooms are created, and their
        # counts change, only through this server's writer (one server per database);
        # a `chatd room` command's changes are read again (reload_rooms).
        self.rooms: dict[int, Room] = {}
        self._public: list[int] = []  # public room ids, by name
        self._public_slugs: dict[str, int] = {}
        self._slugs: dict[str, int] = {}  # every room
        # Read marks (room id -> seq read) of recently active users (store/base.py loads them).
        self._marks: OrderedDict[int, dict[int, int]] = OrderedDict()
        # Beside each user's marks: public rooms' sidebar states (memberships.sidebar, migration 5).
        self._states: dict[int, dict[int, int]] = {}
        self._latest: dict[int, list[int]] = {}
        # Room id -> the positions (seq) its deleted messages had, ascending: unread counts are
        # positions past a read mark, less the deleted ones among them (loaded at open).
        self._gone: dict[int, list[int]] = {}
        # Moves on every change to rooms, counts or read marks: what was computed from
        # them at an earlier epoch may be stale, at the same epoch it is not.
        self.epoch = 0

    def apply(self, log: list[Change]) -> list[Message]:
        """One commit of the change log: new messages move their room's counts on (and are
        kept), changed ones are replaced, deleted ones dropped. Returns the new messages that
        brought their room into their author's sidebar (see _count_messages)."""
        new = [c for c in log if c.kind == "message" and c.message is not None]
        if len(new) != len(log):
            self.changed([c for c in log if c.kind != "message"])
        self.remember([c.message for c in new])  # type: ignore[misc]
        return self._count_messages(new)

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

    def _count_messages(self, new: list[Change]) -> list[Message]:
        """Committed messages: room counts move on, and posting reads the room for its author
        (and joins a public one). Returns the messages that brought their room into their
        author's sidebar: the author had not joined the public room, or it is a DM's first."""
        self.epoch += 1
        rooms = self.rooms
        listed = []
        for change in new:
            m = change.message
            assert m is not None
            room = rooms.get(m.room_id)
            if room is not None:
                if room.kind == "dm":
                    brought_in = not room.last_message_id
                else:
                    brought_in = room.kind == "public" and not self._joined_now(m.author_id, room.id)
                if brought_in:
                    listed.append(m)
                # Its position, where known: a process that missed a message (created and deleted
                # before it read it back from the database) still counts the room right.
                count = max(room.message_count, change.seq) if change.seq else room.message_count + 1
                room = rooms[m.room_id] = room._replace(last_message_id=max(room.last_message_id, m.id),
                                                        message_count=count)
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

    def forget_user_marks(self, user_id: int | None) -> None:
        """Another process moved this user's marks (None: anyone's): read them again on use."""
        self.epoch += 1
        if user_id is None:
            self._marks.clear()
            self._states.clear()
        else:
            self._marks.pop(user_id, None)
            self._states.pop(user_id, None)

    def changed(self, log: list[Change]) -> None:
        """Committed edits, reaction changes and deletions: the caches that hold messages take
        them in (the recent messages, the newest ids per room, the deleted positions)."""
        self.epoch += 1
        for change in log:
            if change.kind == "updated" and change.message is not None:
                if change.message_id in self._recent:
                    self._recent[change.message_id] = change.message
            elif change.kind == "deleted":
                room = self.rooms.get(change.room_id)
                if room is not None and change.seq > room.message_count:  # see _count_messages
                    self.rooms[change.room_id] = room._replace(message_count=change.seq)
                self._recent.pop(change.message_id, None)
                self._latest.pop(change.room_id, None)  # read again: it may now hold too few
                bisect.insort(self._gone.setdefault(change.room_id, []), change.seq)

    def remember(self, messages: list[Message]) -> None:
        for message in messages:
            self._recent[message.id] = message
        while len(self._recent) > MESSAGE_CACHE:
            self._recent.popitem(last=False)
