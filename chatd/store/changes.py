"""Changes to stored messages (edit, delete, reactions), applied by the message writer.

The change log is the messages table (a new message is its own event) and the events table
(migration 6); both take their ids from one rising sequence, handed out by the writer in the
transaction that stores the change (next_id). A change is checked again inside that
transaction (the message still there, the actor still its author, the room still readable),
so what the service checked before queueing it cannot have gone stale.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from chatd.errors import BadInput, ChatdError, Forbidden, NotFound
from chatd.models import Change, Message, User
from chatd.store.rows import _MESSAGE, _message, encode_reactions

MAX_REACTIONS = 50  # different reactions on one message
ChangeKind = Literal["edit", "delete", "react", "unreact"]
# The change made (None: nothing to change, e.g. a reaction added twice) and the message as it
# is now (None once deleted), or why it was refused.
ChangeResult = tuple[Change | None, Message | None] | ChatdError


@dataclass(slots=True)
class ChangeRequest:
    kind: ChangeKind
    message_id: int
    room_id: int  # the message's room (messages never move): what `allowed` was asked about
    actor: User
    future: asyncio.Future[tuple[Change | None, Message | None]] = field(repr=False)
    body: str = ""
    html: str = ""
    mentions: tuple[str, ...] = ()
    emoji: str = ""
    created_at: float = 0.0
    # Asked on the event loop just before the batch is written: may the actor still read
    # the message's room (chatd.access), from where they asked?
    allowed: Callable[[], bool] = field(repr=False, default=lambda: True)


NEXT_ID = (
    "SELECT max(coalesce((SELECT max(id) FROM messages), 0), coalesce((SELECT max(id) FROM events), 0),"
    " (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'message_id_floor')) + 1")


def next_id(conn: sqlite3.Connection) -> int:
    """The next id of the one sequence: above every message and event, and above the ids of
    messages in deleted rooms (message_id_floor, migration 5)."""
    return conn.execute(NEXT_ID).fetchone()[0]


def apply(conn: sqlite3.Connection, item: ChangeRequest, event_id: int) -> ChangeResult:
    """Apply one change in the writer's open transaction, as event `event_id`."""
    row = conn.execute(f"{_MESSAGE} WHERE m.id = ?", (item.message_id,)).fetchone()
    if row is None:
        return NotFound("no such message")
    message = _message(row)
    if message.room_id != item.room_id:
        return NotFound("no such message")
    actor = item.actor
    if item.kind == "edit":
        if message.author_id != actor.id:
            return Forbidden("only its author can edit a message")
        archived = conn.execute("SELECT archived_at FROM rooms WHERE id = ?", (message.room_id,)).fetchone()
        if archived is not None and archived[0] is not None:
            return Forbidden("this room is archived; its messages can no longer change")
        if item.body == message.body:
            return None, message
        conn.execute(
            "UPDATE messages SET sent_body = coalesce(sent_body, body), body = ?, html = ?, mentions = ?,"
            " edited_at = ?, rev = ? WHERE id = ?",
            (item.body, item.html, " ".join(item.mentions), item.created_at, event_id, message.id))
        changed = message._replace(body=item.body, html=item.html, mentions=item.mentions,
                                   edited_at=item.created_at, rev=event_id)
        return _logged(conn, event_id, "updated", changed, item.created_at)
    if item.kind == "delete":
        if message.author_id != actor.id and not actor.admin:
            return Forbidden("only its author or an administrator can delete a message")
        seq = conn.execute("DELETE FROM messages WHERE id = ? RETURNING seq", (message.id,)).fetchone()[0]
        conn.execute(
            "INSERT INTO events (id, room_id, message_id, kind, seq, created_at) VALUES (?, ?, ?, 'deleted', ?, ?)",
            (event_id, message.room_id, message.id, seq, item.created_at))
        return Change(event_id, "deleted", message.room_id, message.id, message.author_id, None, seq), None
    reactions = dict(message.reactions)
    users = reactions.get(item.emoji, ())
    if item.kind == "react":
        if actor.username in users:
            return None, message
        if not users and len(reactions) >= MAX_REACTIONS:
            return BadInput(f"a message takes at most {MAX_REACTIONS} different reactions")
        reactions[item.emoji] = (*users, actor.username)
    else:
        if actor.username not in users:
            return None, message
        left = tuple(u for u in users if u != actor.username)
        if left:
            reactions[item.emoji] = left
        else:
            del reactions[item.emoji]
    now = tuple(reactions.items())
    conn.execute("UPDATE messages SET reactions = ?, rev = ? WHERE id = ?",
                 (encode_reactions(now), event_id, message.id))
    return _logged(conn, event_id, "updated", message._replace(reactions=now, rev=event_id), item.created_at)


def _logged(conn: sqlite3.Connection, event_id: int, kind: Literal["updated"], message: Message,
            at: float) -> ChangeResult:
    conn.execute("INSERT INTO events (id, room_id, message_id, kind, created_at) VALUES (?, ?, ?, ?, ?)",
                 (event_id, message.room_id, message.id, kind, at))
    return Change(event_id, kind, message.room_id, message.id, message.author_id, message), message
