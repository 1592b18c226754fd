"""Immutable records passed between layers; `to_json()` is their contract shape."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

RoomKind = Literal["public", "private", "dm"]


def rfc3339(ts: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC with milliseconds."""
    whole = int(ts)
    return f"{_second(whole)}.{int((ts - whole) * 1000):03d}Z"


# A JSON string literal with non-ASCII kept: json's own C function, as json.dumps(ensure_ascii=False) uses.
_json_string = json.encoder.encode_basestring


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
        """The contract's message object, readably: the reference json_text is held to (the
        server itself sends json_text, encoded once per version)."""
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

    def json_text(self) -> str:
        """to_json() as compact JSON text with non-ASCII kept, the bytes json.dumps would give
        (tests/test_models.py holds the two together), built by hand in under half the time:
        every post, edit and reaction encodes one (Live.message_json keeps it per version)."""
        s = _json_string
        author = s(self.author)
        client = "null" if self.client_id is None else s(self.client_id)
        edited = "null" if self.edited_at is None else f'"{rfc3339(self.edited_at)}"'
        mentions = ",".join(map(s, self.mentions))
        reactions = ",".join([f'{{"emoji":{s(e)},"users":[{",".join(map(s, u))}]}}' for e, u in self.reactions])
        return (f'{{"id":{self.id},"room":{s(self.room)},"author":{author},"author_name":{author},'
                f'"body":{s(self.body)},"html":{s(self.html)},"created_at":"{rfc3339(self.created_at)}",'
                f'"client_id":{client},"edited_at":{edited},"mentions":[{mentions}],'
                f'"reactions":[{reactions}],"attachments":[]}}')


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
    # The message's position in its room (unread counts): for "deleted", the one it had; for
    # "message", its own (0 where not known).
    seq: int = 0


class Credential(NamedTuple):
    """What authenticated a request: a browser session or an API token (built per request)."""

    kind: Literal["session", "token"]
    token_hash: bytes
    csrf: str = ""


def change_to_wire(change: Change) -> list[Any]:
    """A change as JSON-ready lists, for the broker (change_from_wire reverses it)."""
    m = change.message
    return [change.id, change.kind, change.room_id, change.message_id, change.author_id, change.seq,
            None if m is None else [*m[:9], list(m.mentions), m.edited_at, [[e, list(u)] for e, u in m.reactions],
                                    m.rev]]


def change_from_wire(data: list[Any]) -> Change:
    """The change another process published; ValueError when it is not one."""
    try:
        cid, kind, room_id, message_id, author_id, seq, m = data
        message = None if m is None else Message(
            int(m[0]), int(m[1]), str(m[2]), str(m[3]), int(m[4]), str(m[5]), str(m[6]), float(m[7]),
            None if m[8] is None else str(m[8]), tuple(str(u) for u in m[9]),
            None if m[10] is None else float(m[10]), tuple((str(e), tuple(str(x) for x in u)) for e, u in m[11]),
            int(m[12]))
        if kind not in ("message", "updated", "deleted"):
            raise ValueError(kind)
        return Change(int(cid), kind, int(room_id), int(message_id), int(author_id), message, int(seq))
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"not a change: {exc}") from None
