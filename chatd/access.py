"""Who may read and write which room, decided here and nowhere else. No I/O.

Every path asks this one table: the HTTP routes (through `Chat.room_for`), every frame a
tab or a stream sends, every delivery of a message, typing or presence frame, and every
replay. It mirrors the store (public rooms, the members of private rooms and DMs, archived
rooms) and is changed in the same turn of the event loop as the commit that changes them,
so access that ends is over for every open socket before anything else happens.
"""

from __future__ import annotations

from collections.abc import Iterable


class Access:
    def __init__(self) -> None:
        self.public: set[int] = set()
        # Private rooms and DMs: room id -> member user ids.
        self.closed: dict[int, set[int]] = {}
        self.archived: set[int] = set()

    def may_read(self, user_id: int, room_id: int) -> bool:
        """May this user read this room now? False for a room that does not exist."""
        if room_id in self.public:
            return True
        members = self.closed.get(room_id)
        return members is not None and user_id in members

    def may_write(self, user_id: int, room_id: int) -> bool:
        """May this user post in this room now (it is readable and not archived)?"""
        return room_id not in self.archived and self.may_read(user_id, room_id)

    def readable_by(self, user_id: int) -> list[int]:
        """Every room this user may read now (searches are narrowed to these)."""
        return [*self.public, *(rid for rid, members in self.closed.items() if user_id in members)]

    def members(self, room_id: int) -> set[int] | None:
        """A closed room's members (do not change the set); None for a public room."""
        return self.closed.get(room_id)

    # -- changes, each right after the commit that made it -----------------------------

    def add_room(self, room_id: int, kind: str, members: Iterable[int] = (), archived: bool = False) -> None:
        if kind == "public":
            self.public.add(room_id)
        else:
            self.closed.setdefault(room_id, set()).update(members)
        self.set_archived(room_id, archived)

    def set_archived(self, room_id: int, archived: bool) -> None:
        if archived:
            self.archived.add(room_id)
        else:
            self.archived.discard(room_id)

    def grant(self, room_id: int, user_id: int) -> None:
        self.closed.setdefault(room_id, set()).add(user_id)

    def revoke(self, room_id: int, user_id: int) -> bool:
        """Take a member out of a closed room; True if they were in it."""
        members = self.closed.get(room_id)
        if members is None or user_id not in members:
            return False
        members.discard(user_id)
        return True

    def remove_room(self, room_id: int) -> None:
        self.public.discard(room_id)
        self.closed.pop(room_id, None)
        self.archived.discard(room_id)
