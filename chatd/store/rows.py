"""How a message row reads: the query's columns and their decoding (shared by the store's parts
and the writer, which both read messages)."""

from __future__ import annotations

import json
import re

from chatd.models import Message

_MESSAGE = (
    "SELECT m.id, m.room_id, r.slug, u.username, m.user_id, m.body, m.html, m.created_at,"
    " m.client_id, m.mentions, m.edited_at, m.reactions, m.rev FROM messages m"
    " JOIN rooms r ON r.id = m.room_id JOIN users u ON u.id = m.user_id"
)
_LEGACY_MENTION = re.compile(r'data-mention="([a-z0-9_.-]+)"')


def _message(row: tuple) -> Message:
    """A row of _MESSAGE as a Message."""
    mid, mentions, edited, reactions, rev = row[0], row[9], row[10], row[11], row[12]
    if mentions is None:  # stored before migration 6, which began keeping them as data
        found: tuple[str, ...] = tuple(dict.fromkeys(_LEGACY_MENTION.findall(row[6])))
    else:
        found = tuple(mentions.split()) if mentions else ()
    return Message(mid, row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], found, edited,
                   decode_reactions(reactions), rev or mid)


def _messages(rows: list[tuple]) -> list[Message]:
    return [_message(row) for row in rows]


def decode_reactions(text: str | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not text:
        return ()
    return tuple((emoji, tuple(users)) for emoji, users in json.loads(text))


def encode_reactions(reactions: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    return json.dumps([[e, list(u)] for e, u in reactions], ensure_ascii=False) if reactions else None
