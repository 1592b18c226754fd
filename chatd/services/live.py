"""Live side of the domain: sockets, replay, presence, typing and fan-out.

Everything here runs after a commit: the message writer calls `on_commit`
with the messages of one transaction, in id order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import OrderedDict
from typing import Protocol

from chatd.config import Config
from chatd.hub import Conn, Envelope, Hub, text_frame
from chatd.models import Message, Room, User
from chatd.store import Store

log = logging.getLogger("chatd.live")
POLICY_VIOLATION = 1008  # closes the sockets of a revoked session or token: do not come back
_MENTION_ATTR = re.compile(r'data-mention="([a-z0-9_.-]+)"')
PRESENCE_DELAY = 0.2
NOTIFY_SNIPPET = 140
JSON_CACHE = 20_000


class Renderer(Protocol):
    """HTML for browser tabs: chatd.render.HtmlRenderer."""

    def message_fragment(self, message: Message, variant: str) -> str: ...

    def variant_for(self, message: Message, user: User) -> str: ...

    def online_fragment(self, names: list[str]) -> str: ...


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once


def dumps(data: object) -> bytes:
    return _encode(data).encode()


def event_frame(data: object) -> bytes:
    return text_frame(dumps(data))


class Live:
    def __init__(self, config: Config, store: Store, hub: Hub, renderer: Renderer) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.renderer = renderer
        self.user_ids: dict[str, int] = {}
        self._presence: dict[int, bool] = {}
        self._presence_handle: asyncio.TimerHandle | None = None
        self._typing_seen: dict[tuple[int, int], float] = {}
        self._json: OrderedDict[int, str] = OrderedDict()

    # -- routing tables -------------------------------------------------------

    async def load(self) -> None:
        for room, members in await self.store.closed_rooms():
            self.hub.set_members(room.id, members)
        await self.refresh_users()

    async def refresh_users(self) -> None:
        users = await self.store.list_users()
        self.user_ids = {u.username: u.id for u in users if u.active}

    def is_user(self, name: str) -> bool:
        return name in self.user_ids

    def member_added(self, room: Room, user_id: int) -> None:
        """Route the room's live messages to this user too (private rooms and DMs)."""
        self.hub.closed_rooms.setdefault(room.id, set()).add(user_id)

    def member_removed(self, room: Room, user_id: int) -> None:
        self.hub.closed_rooms.setdefault(room.id, set()).discard(user_id)

    # -- messages ---------------------------------------------------------------

    def on_commit(self, messages: list[Message]) -> None:
        """Hand each committed message to the hub, encoded once per wire form."""
        self.hub.metrics.messages_stored += len(messages)
        envelopes = []
        for message in messages:
            mentioned = frozenset(
                uid for name in _MENTION_ATTR.findall(message.html)
                if (uid := self.user_ids.get(name)) is not None
            )
            envelopes.append(Envelope(message.id, message.room_id, message.author_id, mentioned,
                                      lambda form, m=message: self._build(m, form)))
        self.hub.publish(envelopes)

    def message_json(self, message: Message) -> str:
        """The message object of the contract as JSON text, encoded once per message."""
        text = self._json.get(message.id)
        if text is None:
            text = self._json[message.id] = _encode(message.to_json())
            if len(self._json) > JSON_CACHE:
                self._json.popitem(last=False)
        return text

    def messages_json(self, messages: list[Message]) -> str:
        """A JSON array of these messages, each encoded once (one call for a whole page)."""
        cache = self._json
        return "[" + ",".join([cache.get(m.id) or self.message_json(m) for m in messages]) + "]"

    def _build(self, message: Message, form: str) -> bytes:
        if form == "stream":
            return f'{{"type":"message","message":{self.message_json(message)}}}'.encode()
        if form.startswith("unread"):
            room = self.store.rooms.get(message.room_id)
            return dumps({
                "unread": message.room, "kind": room.kind if room else "public",
                "name": room.name if room else message.room, "from": message.author,
                "id": message.id, "mention": form == "unread-mention",
                "text": message.body[:NOTIFY_SNIPPET],
            })
        return self.renderer.message_fragment(message, form).encode()

    def message_frame(self, message: Message, conn: Conn) -> bytes:
        """One message for one socket (replays and duplicate acknowledgements)."""
        if conn.kind == "stream":
            return text_frame(self._build(message, "stream"))
        return text_frame(self._build(message, self.renderer.variant_for(message, conn.user)))

    # -- sockets ------------------------------------------------------------------

    async def attach(self, conn: Conn, since: int | None, room: Room | None = None) -> None:
        """Register a socket; with `since`, replay what it missed with no gap or duplicate."""
        conn.held = [] if since is not None else None
        if self.hub.add(conn):
            self._presence_changed(conn.user.id, True)
        if conn.room_id is not None:
            # Whatever changed between rendering the page and this socket opening.
            self.hub.send_to([conn], self._online_frame(conn.room_id))
        log.info("event=connect user=%s kind=%s ip=%s", conn.user.username, conn.kind, conn.ip)
        if since is None:
            return
        try:
            if room is None:
                missed = await self.store.messages_since(conn.user, since)
            else:
                missed = await self.store.messages(room, after=since, limit=1000)
        except BaseException:
            self.hub.release(conn, since)
            raise
        if missed:
            self.hub.write(conn, b"".join(self.message_frame(m, conn) for m in missed), len(missed))
        self.hub.release(conn, max([since] + [m.id for m in missed]))

    def detach(self, conn: Conn) -> None:
        if self.hub.remove(conn):
            self._presence_changed(conn.user.id, False)
        log.info("event=disconnect user=%s kind=%s ip=%s", conn.user.username, conn.kind, conn.ip)

    def acknowledge_retry(self, conn: Conn, message: Message, created: bool) -> None:
        """A retried send was published the first time: answer this socket alone, again."""
        if not created:
            self.hub.send_to([conn], self.message_frame(message, conn))

    def send(self, conn: Conn, data: object) -> None:
        self.hub.send_to([conn], event_frame(data))

    # -- presence -------------------------------------------------------------------

    def _presence_changed(self, user_id: int, online: bool) -> None:
        # A flap (online then offline before the flush) cancels out.
        if self._presence.get(user_id) is (not online):
            del self._presence[user_id]
        else:
            self._presence[user_id] = online
        self._schedule_presence()

    def _schedule_presence(self) -> None:
        if self._presence_handle is None:
            loop = asyncio.get_running_loop()
            self._presence_handle = loop.call_later(PRESENCE_DELAY, self.flush_presence)

    def flush_presence(self) -> None:
        """Coalesced presence: stream events for changes, a fresh online list for tabs."""
        self._presence_handle = None
        changes, self._presence = self._presence, {}
        if not changes:
            return
        names = self.hub.usernames
        frames = {
            uid: event_frame({"type": "presence", "user": names.get(uid, ""), "online": online})
            for uid, online in changes.items()
        }
        everything = b"".join(frames.values())  # encoded once; only a changed user's own sockets differ
        by_room: dict[int, list[Conn]] = {}
        for conn in list(self.hub.conns):
            if conn.kind == "stream":
                if conn.user.id in frames:
                    mine = [f for uid, f in frames.items() if uid != conn.user.id]
                    if mine:
                        self.hub.write(conn, b"".join(mine), len(mine))
                else:
                    self.hub.write(conn, everything, len(frames))
            elif conn.room_id is not None:
                by_room.setdefault(conn.room_id, []).append(conn)
        for room_id, conns in by_room.items():
            self.hub.send_to(conns, self._online_frame(room_id))

    def _online_frame(self, room_id: int) -> bytes:
        return text_frame(self.renderer.online_fragment(self.online_in(room_id)).encode())

    def online_in(self, room_id: int) -> list[str]:
        """Who is online among those who may read the room."""
        return sorted(
            self.hub.usernames[uid] for uid in self.hub.online_ids() if self.hub.may_read(uid, room_id)
        )

    # -- typing and read state --------------------------------------------------------

    def typing(self, user: User, room: Room, now: float) -> None:
        """Tell the room's other readers that `user` is typing (throttled, never stored)."""
        key = (user.id, room.id)
        if now - self._typing_seen.get(key, -1e9) < self.config.typing_interval_seconds * 0.5:
            return
        self._typing_seen[key] = now
        if len(self._typing_seen) > 50_000:
            self._typing_seen.clear()
        stream = event_frame({"type": "typing", "room": room.slug, "user": user.username})
        tab = event_frame({"typing": user.username, "room": room.slug})
        for conn in self.hub.watchers(room.id):
            if conn.user.id != user.id:
                self.hub.send_to([conn], stream if conn.kind == "stream" else tab)

    def read_changed(self, user: User, room: Room, unread: int) -> None:
        """Every tab of this user learns the room's new unread count."""
        frame = event_frame({"unread_set": {room.slug: unread}})
        tabs = [c for c in self.hub.by_user.get(user.id, ()) if c.kind == "browser"]
        self.hub.send_to(tabs, frame)

    # -- revocation -------------------------------------------------------------------

    async def close_revoked(self) -> int:
        """Close sockets whose session or token no longer authenticates anyone."""
        conns = list(self.hub.conns)
        sessions = list({c.credential.token_hash for c in conns if c.credential.kind == "session"})
        tokens = list({c.credential.token_hash for c in conns if c.credential.kind == "token"})
        live = await self.store.live_credentials(sessions, tokens)
        revoked = [c for c in conns if c.credential.token_hash not in live and c.open]
        self.close(revoked)
        return len(revoked)

    def close_credential(self, token_hash: bytes) -> None:
        self.close([c for c in self.hub.conns if c.credential.token_hash == token_hash])

    def close(self, conns: list[Conn]) -> None:
        """Send these sockets 1008; the hub finishes the closing handshake."""
        for conn in conns:
            log.info("event=revoked user=%s kind=%s", conn.user.username, conn.kind)
        self.hub.close(conns, POLICY_VIOLATION, b"signed out")
