"""The hottest pieces of HTML, built in Python rather than Jinja.

A room page shows 50 messages and every room in the sidebar; rendering those
through template includes cost several times more than the rest of the page.
These functions escape every value that is not already safe HTML (a message's
`html` is rendered and escaped once, when it is posted).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Iterable

from markupsafe import Markup

from chatd.models import Message, Room, RoomState, User, rfc3339, variant


def variants(messages: list[Message], user: User) -> list[str]:
    """models.variant of each message, for one viewer: a page of them in one call."""
    return [variant(m, user) for m in messages]


def message_html(m: Message, variant: str) -> str:
    """One message: the contract's anchors are id="message-{id}" and data-author.

    Named by its header and body (author, time, "edited", text) for screen readers, not by the
    reactions or the actions the script puts in it; the page's script makes it
    focusable and takes its links out of the Tab order (the list is walked with the arrow
    keys), shows the time in the reader's zone, and dates and groups the messages. The time
    here is UTC, for a page without its script.
    """
    author = m.author  # usernames are [a-z0-9_.-]: nothing to escape
    stamp = rfc3339(m.created_at)
    client = f' data-client-id="{html.escape(m.client_id)}"' if m.client_id and variant == "mine" else ""
    return (
        f'<article class="msg {variant}" id="message-{m.id}" data-author="{author}" data-id="{m.id}"{client}'
        f' aria-labelledby="h{m.id} b{m.id}">{avatar_html(author)}'
        f'<header id="h{m.id}"><a class="author" href="/dm/{author}">{author}</a> '
        f'<time datetime="{stamp}">{stamp[:10]} {stamp[11:16]} UTC</time>{edited_html(m)}</header>'
        f'<div class="body" id="b{m.id}">{m.html}</div>{reactions_html(m)}</article>'
    )


def edited_html(m: Message) -> str:
    if m.edited_at is None:
        return ""
    return f' <span class="edited" title="edited {rfc3339(m.edited_at)}">(edited)</span>'


def reactions_html(m: Message) -> str:
    """A message's reactions: a button each, with who reacted (the page's script marks the
    viewer's own as pressed and sends a click as a toggle: one fragment serves every viewer)."""
    if not m.reactions:
        return ""
    parts = []
    for emoji, users in m.reactions:
        e, names = html.escape(emoji), " ".join(users)
        who = ", ".join(users)
        parts.append(
            f'<button type="button" class="reaction" data-emoji="{e}" data-users="{names}"'
            f' title="{html.escape(who)}" aria-label="{e}: {len(users)}, {html.escape(who)}">'
            f'<span class="e">{e}</span> <span class="n">{len(users)}</span></button>')
    return f'<div class="reactions" role="group" aria-label="Reactions">{"".join(parts)}</div>'



@functools.lru_cache(maxsize=4096)
def avatar_html(author: str) -> str:
    """An initial on one of eight colours, the same for a name everywhere (.av.h0 to .h7)."""
    return f'<i class="av h{sum(author.encode()) % 8}" aria-hidden="true">{author[:1].upper()}</i>'


def older_html(room: Room, more: bool, first_id: int | None, peer: str | None) -> str:
    """Above a page of messages: where the page before it loads from (the script fetches it
    when this comes near the screen), or the start of the conversation."""
    if not more:
        if peer:
            where = f"your conversation with @{peer}"
        else:
            where = ("" if room.kind == "private" else "#") + html.escape(room.name, quote=False)
        return f'<p class="older start" role="note">This is the start of {where}.</p>'
    return (f'<div id="older" class="older" data-href="/r/{room.slug}/history?before={first_id}">'
            '<span>Loading older messages&hellip;</span></div>')


def later_html(room: Room, last_id: int) -> str:
    """Below a page that stops short of the newest messages (a permalink's, far back): where the
    newer page loads from (the script fetches it when this comes near the screen)."""
    return (f'<div id="later" class="later" data-href="/r/{room.slug}/history?after={last_id}">'
            f'<a href="/r/{room.slug}">Jump to the newest messages</a></div>')


def mark_current(fragment: str) -> str:
    """The message a permalink points at: aria-current, and a class to show it."""
    return fragment.replace('<article class="msg ', '<article aria-current="true" class="msg current ', 1)


def room_items_html(states: Iterable[RoomState], current_id: int | None) -> Markup:
    """Sidebar entries with their unread badges (empty for the room on screen).

    Slugs ([a-z0-9-], or two usernames joined by '+') and usernames
    ([a-z0-9_.-]) cannot carry markup; only display names are escaped.
    """
    items = []
    for room, unread, peer in states:
        link, inner, _ = _room_item_parts(room.id, room.slug, room.name, room.kind, peer)
        if room.id == current_id:
            items.append(f'{link} aria-current="page">{inner}</span></a></li>')
        elif unread:
            items.append(f'{link} class="has-unread">{inner}{unread}</span></a></li>')
        else:
            items.append(f"{link}>{inner}</span></a></li>")
    return Markup("\n".join(items))


def sidebar_entry(room: Room, peer: str | None) -> tuple[str, str, str]:
    """One entry as room_items_html renders it for a room not on screen, with an empty badge,
    for a tab to put in its place live: (list, sort key, html), the list "rooms" or "dms"."""
    link, inner, key = _room_item_parts(room.id, room.slug, room.name, room.kind, peer)
    return ("dms" if peer else "rooms"), key, f"{link}>{inner}</span></a></li>"


def sort_key(kind: str, name: str, peer: str | None) -> str:
    """An entry's place in its list, as a string a page's script compares with `<`.

    Rooms: public before private, then by name regardless of case (views.pages._sidebar sorts
    by this key). DMs: by the other person's name, which is the order of store.sidebar_for
    (by slug: the sorted pair of usernames joined by '+', which sorts below every username
    character)."""
    if peer:
        return peer
    return ("0" if kind == "public" else "1") + name.casefold()


@functools.lru_cache(maxsize=8192)
def _room_item_parts(room_id: int, slug: str, name: str, kind: str, peer: str | None) -> tuple[str, str, str]:
    """The fixed parts of a sidebar entry: the link's start, everything up to the badge's text,
    and the sort key (also on the <li>, for the script)."""
    href = f"/dm/{peer}" if peer else f"/r/{slug}"
    if kind == "private":
        sigil = '<span class="sigil lock" title="private"></span>'
    else:
        sigil = f'<span class="sigil">{"@" if kind == "dm" else "#"}</span>'
    label = peer or html.escape(name, quote=False)
    key = sort_key(kind, name, peer)
    return (f'<li data-sort="{html.escape(key)}"><a href="{href}"',
            f'{sigil}<span class="label">{label}</span><span class="badge" data-unread="{slug}">', key)


def online_html(names: list[str], oob: bool = False, shown: int = 100) -> Markup:
    """The people-online list (`#online`); `oob` makes it an htmx out-of-band swap."""
    swap = ' hx-swap-oob="true"' if oob else ""
    items = [f'<li><a href="/dm/{n}" title="{n}"><span class="dot" aria-hidden="true"></span>'
             f'<span class="label">{n}</span></a></li>' for n in names[:shown]]  # usernames are [a-z0-9_.-]
    if not items:
        items.append('<li class="empty">Nobody is online</li>')
    if len(names) > shown:
        items.append(f'<li class="empty">and {len(names) - shown} more</li>')
    # Not a live region: a screen reader is not interrupted by every arrival and departure.
    head = f'<ul id="online" class="people"{swap} aria-labelledby="online-heading">\n'
    return Markup(head + "\n".join(items) + "\n</ul>")
