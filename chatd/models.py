"""Immutable records passed between layers; `to_json()` is their contract shape."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

RoomKind = Literal["public", "private", "dm"]


def rfc3339(ts: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC with milliseconds."""
    whole = int(ts)
    return f"{_second(whole)}.{int((ts - whole) * 1000):03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(whole: int) -> str:
    # Messages cluster in time, so a page of them formats only a few distinct seconds.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    admin: bool
    active: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "admin": self.admin}


class Room(NamedTuple):
    # Named tuples: a page builds a hundred of these, and tuples are built in C.
    id: int
    slug: str
    name: str
    kind: RoomKind
    last_message_id: int = 0
    message_count: int = 0
    # Archived: readable, no new messages, out of the sidebar.
    archived: bool = False

    def to_json(self, unread: int = 0) -> dict[str, Any]:
        data: dict[str, Any] = {"slug": self.slug, "name": self.name, "kind": self.kind, "unread": unread}
        if self.archived:  # only then: a room object is otherwise as it always was
            data["archived"] = True
        return data


class RoomState(NamedTuple):
    """A room as one user sees it in the sidebar."""

    room: Room
    unread: int
    # For a DM: the other person's username; for rooms: None.
    peer: str | None = None

    @property
    def href(self) -> str:
        return f"/dm/{self.peer}" if self.peer else f"/r/{self.room.slug}"

    @property
    def label(self) -> str:
        return self.peer or self.room.name


class Message(NamedTuple):
    id: int
    room_id: int
    room: str
    author: str
    author_id: int
    body: str
    html: str
    created_at: float
    client_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room,
            "author": self.author,
            "body": self.body,
            "html": self.html,
            "created_at": rfc3339(self.created_at),
            "client_id": self.client_id,
        }


class Credential(NamedTuple):
    """What authenticated a request: a browser session or an API token (built per request)."""

    kind: Literal["session", "token"]
    token_hash: bytes
    csrf: str = ""
