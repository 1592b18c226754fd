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
    # Usernames the body @mentions, as rendering found them (rules.render_body).
    mentions: tuple[str, ...] = ()
    edited_at: float | None = None  # the last edit of its body
    # (emoji, usernames in the order they reacted), in order of first use.
    reactions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The id of the last change to this message (the change log's, see store/changes.py):
    # its id until it changes. Caches of anything built from a message key on (id, rev).
    rev: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room,
            "author": self.author,
            "author_name": self.author,
            "body": self.body,
            "html": self.html,
            "created_at": rfc3339(self.created_at),
            "client_id": self.client_id,
            "edited_at": None if self.edited_at is None else rfc3339(self.edited_at),
            "mentions": list(self.mentions),
            "reactions": [{"emoji": e, "users": list(u)} for e, u in self.reactions],
            "attachments": [],
        }


def variant(message: Message, viewer: User) -> str:
    """How a message shows to a viewer: mine, mention (it @mentions them) or other. The one
    rule, for pages, live delivery and replays alike."""
    if message.author_id == viewer.id:
        return "mine"
    return "mention" if viewer.username in message.mentions else "other"


class Change(NamedTuple):
    """One change to a conversation, as the change log stores and the hub carries it: plain
    data, no references into this process. kind "message" (new; id is the message's),
    "updated" (an edit or a change of reactions; `message` as it is now) or "deleted"."""

    id: int
    kind: Literal["message", "updated", "deleted"]
    room_id: int
    message_id: int
    author_id: int  # the message's author
    message: Message | None  # None for "deleted"
    seq: int = 0  # for "deleted": the position the message had in its room (unread counts)


class Credential(NamedTuple):
    """What authenticated a request: a browser session or an API token (built per request)."""

    kind: Literal["session", "token"]
    token_hash: bytes
    csrf: str = ""
