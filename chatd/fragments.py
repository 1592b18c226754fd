"""The hottest pieces of HTML, built in Python rather than Jinja.

A room page shows 50 messages and every room in the sidebar; rendering those
through template includes cost several times more than the rest of the page.
These functions escape every value that is not already safe HTML (a message's
`html` is rendered and escaped once, when it is posted).
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from markupsafe import Markup

from chatd.models import Message, RoomState, User, rfc3339


def variant_for(message: Message, user: User) -> str:
    """mine, mention (the viewer is @mentioned) or other."""
    if message.author_id == user.id:
        return "mine"
    if f'data-mention="{user.username}"' in message.html:
        return "mention"
    return "other"


def message_html(m: Message, variant: str) -> str:
    """One message: the contract's anchors are id="message-{id}" and data-author."""
    author = m.author  # usernames are [a-z0-9_.-]: nothing to escape
    stamp = rfc3339(m.created_at)
    client = f' data-client-id="{html.escape(m.client_id)}"' if m.client_id and variant == "mine" else ""
    return (
        f'<article class="msg {variant}" id="message-{m.id}" data-author="{author}" data-id="{m.id}"{client}>'
        f'<header><a class="author" href="/dm/{author}">{author}</a> '
        f'<time datetime="{stamp}">{stamp[11:16]}</time></header>'
        f'<div class="body">{m.html}</div></article>'
    )


def room_items_html(states: Iterable[RoomState], current_id: int | None) -> Markup:
    """Sidebar entries with their unread badges (empty for the room on screen).

    Slugs ([a-z0-9-], or two usernames joined by '+') and usernames
    ([a-z0-9_.-]) cannot carry markup; only display names are escaped.
    """
    items = []
    for s in states:
        room = s.room
        here = room.id == current_id
        if room.kind == "private":
            sigil = '<span class="sigil lock" title="private"></span>'
        else:
            sigil = f'<span class="sigil">{"@" if room.kind == "dm" else "#"}</span>'
        unread = "" if here or not s.unread else str(s.unread)
        current = ' aria-current="page"' if here else ""
        flag = ' class="has-unread"' if unread else ""
        label = s.peer or html.escape(room.name, quote=False)
        items.append(
            f'<li><a href="{s.href}"{current}{flag}>{sigil}<span class="label">{label}</span>'
            f'<span class="badge" data-unread="{room.slug}">{unread}</span></a></li>'
        )
    return Markup("\n".join(items))
