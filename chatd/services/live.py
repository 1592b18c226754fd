"""Live side of the domain: sockets, replay, presence, typing and fan-out.

Everything here runs after a commit: the message writer calls `committed`
with the messages of one transaction, in id order.

A browser tab gets HTML fragments (messages, the online list) and JSON objects without a
"type" key, which its script acts on:
- `{"unread": slug, "kind", "name", "from", "id", "mention", "text", "list", "sort", "html"}`:
  a message in a room the tab does not show;
- `{"unread_set": {slug: n}}` after a read mark, `{"unread_all": {slug: n, ...}}` on connecting;
- `{"room_updated": slug, "list": "rooms"|"dms", "sort": key, "html": "<li ...>", "unread": n}`:
  the room is in this user's sidebar now (created, joined, added to, unarchived, a DM's first
  message of one's own); add the entry, or replace it, in its list;
- `{"room_removed": slug}`: out of the sidebar, still readable (archived); with `"left": true`
  the user left it, and its later `unread` frames stay out of the sidebar too (the page's
  `data-left`) until a `room_updated` brings it back; with `"here": true` (access lost) the
  tab's own room is out of its reach and the socket closes;
- `{"typing": username, "room": slug}`, `{"reload": true}`, and errors
  `{"error", "code", "client_id"}`.
In `unread` and `room_updated`, `html` is the entry as the page renders it (empty badge) and
`sort` is its `data-sort`: an entry goes before the first one with a greater key. A tab
showing the room gets no `room_updated` for it (its page lists it already).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from chatd.broker import Broker
from chatd.config import Config
from chatd.errors import NotFound
from chatd.hub import Conn, Hub, text_frame
from chatd.models import Change, Message, Room, User, variant
from chatd.rules import dm_peer
from chatd.store import Store

if TYPE_CHECKING:
    from chatd.services.peers import Peers

log = logging.getLogger("chatd.live")
POLICY_VIOLATION = 1008  # closes the sockets of a revoked session or token: do not come back
REPLAY_CAP = 1000  # a replay sends at most the newest this many messages
REPLAY_PAGE = 100  # read from the database this many at a time
PRESENCE_DELAY = 0.2
NOTIFY_SNIPPET = 140
JSON_CACHE = 20_000
CATCH_UP_PAGE = 2000  # changes read back from the database at a time (Live.catch_up)


class Renderer(Protocol):
    """HTML for browser tabs: chatd.render.HtmlRenderer."""

    def message_fragment(self, message: Message, variant: str) -> str: ...

    def online_fragment(self, names: list[str]) -> str: ...

    def sidebar_entry(self, room: Room, peer: str | None) -> tuple[str, str, str]: ...


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once


def dumps(data: object) -> bytes:
    return _encode(data).encode()


def event_frame(data: object) -> bytes:
    return text_frame(dumps(data))


class Live:
    def __init__(self, config: Config, store: Store, hub: Hub, renderer: Renderer,
                 broker: Broker | None = None) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.renderer = renderer
        # The other processes of this server (chatd.broker); in-process, it carries nothing.
        self.broker = broker or Broker()
        self.peers: Peers | None = None  # set by Services when the broker is shared
        self.access = hub.access
        self.user_ids: dict[str, int] = {}
        # The highest change id delivered here: a replay reads up to it, live frames after it.
        # Every id up to it has been delivered, in order (Live.take).
        self.published = 0
        self._auth_acted = 0  # store.auth_epoch the last revocation sweep acted on
        self._rooms_acted = 0  # store.rooms_epoch the last room reload acted on
        self._presence: dict[int, bool] = {}
        self._presence_handle: asyncio.TimerHandle | None = None
        self._typing_seen: dict[tuple[int, int], float] = {}
        self._json: OrderedDict[tuple[int, int], str] = OrderedDict()  # by (id, rev)
        hub.encoder = self

    # -- routing tables -------------------------------------------------------

    async def load(self) -> None:
        """Build the access table from the store, before the first socket opens."""
        members = {room.id: ids for room, ids in await self.store.closed_rooms()}
        for room in self.store.rooms.values():
            self.access.add_room(room.id, room.kind, members.get(room.id, ()), room.archived)
        self.published = self.store.newest_id()
        self._auth_acted, self._rooms_acted = self.store.auth_epoch, self.store.rooms_epoch
        await self.refresh_users()

    async def refresh_users(self) -> None:
        users = await self.store.list_users()
        self.user_ids = {u.username: u.id for u in users if u.active}

    def is_user(self, name: str) -> bool:
        return name in self.user_ids

    # -- access: every change right after its commit, in the same turn of the loop ------------

    def room_added(self, room: Room, members: list[int], share: bool = True) -> None:
        """A new room: readable from now on (by its members, for a private one)."""
        self.access.add_room(room.id, room.kind, members, room.archived)
        if share:
            self.share_room(room.id)

    def share_room(self, room_id: int) -> None:
        """Other processes read this room and its members again (chatd.services.peers)."""
        self.broker.notify({"t": "room", "r": room_id})

    def room_created(self, room: Room, creator_id: int) -> None:
        """A room created: readable at once; streams that may read it are told, and it goes into
        its creator's sidebar. Others' sidebars list a public room once it brings them news."""
        self.room_added(room, [creator_id])
        streams = self.hub.streams if room.kind == "public" else self._sockets(creator_id, "stream")
        self.hub.send_to(list(streams), event_frame({"type": "room_updated", "room": room.to_json(0)}))
        self._show(creator_id, room)

    def member_added(self, room: Room, user_id: int, share: bool = True, after: int | None = None) -> None:
        """The user's open streams get the room's events from now on, without reconnecting,
        and their tabs list it. `after`: the newest change delivered here before the
        membership was written (the others replay what came after it: _missed_by_member)."""
        self.access.grant(room.id, user_id)
        if share:
            self.broker.notify({"t": "room", "r": room.id, "after": self.published if after is None else after})
        frame = event_frame({"type": "room_updated", "room": room.to_json(0)})
        self.hub.send_to(self._sockets(user_id, "stream"), frame)
        self._show(user_id, room)

    def member_removed(self, room: Room, user_id: int, share: bool = True) -> None:
        if self.access.revoke(room.id, user_id):
            self._lost(room, [user_id])
        if share:
            self.share_room(room.id)

    def joined(self, user_id: int, room: Room, share: bool = True) -> None:
        """The user joined a public room (with Join, by opening it or by posting in it)."""
        if share:
            self.broker.notify({"t": "marks", "u": user_id, "r": room.id, "op": "joined"})
        streams = self._sockets(user_id, "stream")
        if streams:
            _, unread = self.store.sidebar_state(user_id, room)
            self.hub.send_to(streams, event_frame({"type": "room_updated", "room": room.to_json(unread)}))
        self._show(user_id, room)

    def left(self, user_id: int, room: Room, share: bool = True) -> None:
        """The user left a public room: out of the sidebar of every tab of theirs, the room's own
        included (it stays readable, so nothing closes)."""
        if share:
            self.broker.notify({"t": "marks", "u": user_id, "r": room.id, "op": "left"})
        self.hub.send_to(self._sockets(user_id, "browser"), event_frame({"room_removed": room.slug, "left": True}))

    def room_archived(self, room: Room, share: bool = True) -> None:
        """Tabs showing the room load it again (without a composer, or with it back); the other
        tabs of those who may read it drop it from the sidebar, or list it again if theirs would."""
        self.access.set_archived(room.id, room.archived)
        if share:
            self.share_room(room.id)
        self.hub.send_to(list(self.hub.viewers.get(room.id, ())), event_frame({"reload": True}))
        tabs = [c for c in self.hub.readers(room.id) if c.kind == "browser" and c.room_id != room.id]
        if room.archived:
            self.hub.send_to(tabs, event_frame({"room_removed": room.slug}))
            return
        for user_id in {c.user.id for c in tabs}:
            self._show(user_id, room)

    def room_deleted(self, room: Room, share: bool = True) -> None:
        readers = {c.user.id for c in self.hub.readers(room.id)}
        self.access.remove_room(room.id)
        self._lost(room, list(readers))
        if share:
            self.share_room(room.id)

    def _lost(self, room: Room, user_ids: list[int]) -> None:
        """These users may no longer read the room: their streams are told, their tabs drop it
        from the sidebar, and a tab showing it says so and is closed. Nothing of the room
        reaches them after this (every delivery asks the access table)."""
        stream = event_frame({"type": "room_removed", "room": room.slug})
        elsewhere = event_frame({"room_removed": room.slug})
        here = event_frame({"room_removed": room.slug, "here": True})
        shown: list[Conn] = []
        for uid in user_ids:
            for conn in list(self.hub.by_user.get(uid, ())):
                if conn.kind == "stream":
                    self.hub.send_to([conn], stream)
                elif conn.room_id == room.id:
                    self.hub.send_to([conn], here)
                    shown.append(conn)
                else:
                    self.hub.send_to([conn], elsewhere)
        self.hub.close(shown, POLICY_VIOLATION, b"no access to this room")
        if shown:
            log.info("event=access_lost room=%s sockets_closed=%d", room.slug, len(shown))

    def _show(self, user_id: int, room: Room, peer: str | None = None) -> None:
        """This user's tabs put the room's entry in their sidebar, if their sidebar lists it now
        (tabs showing the room list it already)."""
        tabs = [c for c in self._sockets(user_id, "browser") if c.room_id != room.id]
        if not tabs:
            return
        listed, unread = self.store.sidebar_state(user_id, room)
        if not listed:
            return
        name, key, html = self.renderer.sidebar_entry(room, peer)
        self.hub.send_to(tabs, event_frame(
            {"room_updated": room.slug, "list": name, "sort": key, "html": html, "unread": unread}))

    def _sockets(self, user_id: int, kind: str) -> list[Conn]:
        return [c for c in self.hub.by_user.get(user_id, ()) if c.kind == kind]

    def socket_room(self, conn: Conn) -> Room:
        """The room a tab shows, if its user may still read it (every frame of a tab asks)."""
        room = self.store.rooms.get(conn.room_id) if conn.room_id is not None else None
        if room is None or not self.access.may_read(conn.user.id, room.id):
            raise NotFound("you no longer have access to this room")
        return room

    def ensure_current(self) -> None:
        """Act on what another process (a `chatd` command) changed, before anything more is
        delivered or any frame handled: close the sockets of ended sessions and tokens, and
        take in archived or deleted rooms. Costs a flag check when nothing changed."""
        store = self.store
        store.look_for_changes()
        if store.auth_epoch != self._auth_acted:
            self._auth_acted = store.auth_epoch
            self.close_revoked()
        if store.rooms_epoch != self._rooms_acted:
            self._rooms_acted = store.rooms_epoch
            changed, gone = store.reload_rooms_now()
            for room in gone:
                self.room_deleted(room, share=False)
            for room in changed:
                if bool(room.archived) != (room.id in self.access.archived):
                    self.room_archived(room, share=False)

    # -- messages ---------------------------------------------------------------

    def committed(self, log: list[Change]) -> None:
        """A commit of this process (the message writer calls this right after it): the other
        processes hear of it, and it is delivered here."""
        self.broker.publish(log)
        self.hub.metrics.messages_stored += sum(1 for c in log if c.kind == "message")
        self.take(log)

    def remote_changes(self, changes: list[Change]) -> None:
        """Another process's commit, from the broker."""
        self.take(changes)

    def take(self, log: list[Change]) -> None:
        """Deliver changes in id order, each once, with no gap. Ids are given out in commit
        order (in the transaction, under the database's write lock), so when a change arrives
        whose id is not the next one, the ones between are in the database already: they are
        read from there first (catch_up). What was delivered already is skipped."""
        if not log or log[-1].id <= self.published:
            self.ensure_current()
            return
        expected = self.published + 1
        for change in log:
            if change.id != expected:
                self.catch_up(log[-1].id)
                return
            expected += 1
        self._deliver(log, log[-1].id)

    def catch_up(self, upto: int | None = None) -> int:
        """Deliver what the database holds after the newest change delivered here, up to
        `upto` (default: the newest there is); returns how many changes that was."""
        if upto is None:
            upto = self.store.newest_id()
        count = 0
        while self.published < upto:
            last, page = self.store.changes_between(self.published, upto, CATCH_UP_PAGE)
            # Ids with nothing behind them now (deleted rooms' messages) are passed over.
            self._deliver(page, last or upto)
            count += len(page)
        if count:
            log.debug("event=caught_up changes=%d upto=%d", count, upto)
        return count

    def _deliver(self, log: list[Change], upto: int) -> None:
        """Hand each change to the hub (which asks `encode` for each wire form it needs, once),
        after the in-memory mirror took it in; then tell the authors of messages that brought
        a room into their sidebar, and those whose unread count a deletion lowered."""
        self.ensure_current()
        self.published = max(self.published, upto)
        if not log:
            return
        rooms = self.store.rooms
        for change in log:
            if change.room_id not in rooms:  # made by another process, whose notice is on its way
                self.room_changed_elsewhere(change.room_id)
        listed = self.store.apply(log)
        self.hub.publish(log)
        for change in log:
            if change.kind == "deleted":
                self._recount(change.room_id)
        for message in listed:
            room = self.store.rooms.get(message.room_id)
            if room is None:
                continue
            if room.kind == "dm":
                self._show(message.author_id, room, dm_peer(room.slug, message.author))
            else:
                self.joined(message.author_id, room, share=False)  # every process sees the message

    # -- what the other processes changed (chatd.services.peers calls these) ----------------

    def remote_notice(self, node: str, notice: dict[str, object]) -> None:
        if self.peers is not None:
            self.peers.notice(node, notice)  # type: ignore[arg-type]

    def spent(self, user_id: int) -> None:
        """A message let through the rate limit here counts on the other processes too."""
        if self.peers is not None:
            self.peers.spend(user_id)

    def room_changed_elsewhere(self, room_id: int, after: int | None = None) -> None:
        """Another process changed a room, its members or its archived state: read it again
        and act on the difference, as that process did for its own sockets. `after`: for an
        added member, the newest change that process had delivered before writing it."""
        self._sync_room(*self.store.reload_room_now(room_id), after=after)

    def _sync_room(self, before: Room | None, room: Room | None, members: set[int],
                   after: int | None = None) -> None:
        access = self.access
        if room is None:
            if before is not None:
                self.room_deleted(before, share=False)
            return
        if room.id not in access.public and room.id not in access.closed:
            access.add_room(room.id, room.kind, members, room.archived)
            if room.kind == "dm":
                return  # in the sidebar with its first message, as here
            streams = self.hub.streams if room.kind == "public" else [
                c for uid in members for c in self._sockets(uid, "stream")]
            self.hub.send_to(list(streams), event_frame({"type": "room_updated", "room": room.to_json(0)}))
            for uid in members:
                self.store.forget_user_marks(uid)
                self._show(uid, room)
            return
        if room.kind != "public":
            had = set(access.members(room.id) or ())
            for uid in (members - had) | (had - members):
                self.store.forget_user_marks(uid)
            for uid in members - had:
                self.member_added(room, uid, share=False)
                if after is not None:
                    self._missed_by_member(room, uid, after)
            for uid in had - members:
                self.member_removed(room, uid, share=False)
        if bool(room.archived) != (room.id in access.archived):
            self.room_archived(room, share=False)

    def _missed_by_member(self, room: Room, user_id: int, after: int) -> None:
        """A member added on another process: the room's changes this process delivered between
        that membership's commit and hearing of it (a message posted here meanwhile) went to
        everyone but them. Their streams here get those now, in order, after room_updated;
        what is delivered from now on reaches them as it comes."""
        streams = self._sockets(user_id, "stream")
        upto = self.published
        while streams and after < upto:
            last, page = self.store.changes_between(after, upto, CATCH_UP_PAGE, room_id=room.id)
            if not last:
                return
            after = last
            for conn in streams:
                for change in page:
                    self.hub.send_to([conn], text_frame(self._change_payload(change, conn)))

    def marks_changed_elsewhere(self, user_id: int, room_id: int, op: str) -> None:
        """Another process moved a user's read mark or sidebar state: read theirs again, and
        tell their sockets here as that process told its own."""
        self.store.forget_user_marks(user_id)
        room = self.store.rooms.get(room_id)
        conns = self.hub.by_user.get(user_id)
        if room is None or not conns:
            return
        if op == "joined":
            self.joined(user_id, room, share=False)
        elif op == "left":
            self.left(user_id, room, share=False)
        else:
            _, unread = self.store.sidebar_state(user_id, room)
            self.read_changed(next(iter(conns)).user, room, unread, share=False)

    def credentials_changed(self) -> None:
        """Sessions or tokens were revoked here: close their sockets, on every process."""
        self.ensure_current()
        self.broker.notify({"t": "auth"})

    def credentials_changed_elsewhere(self) -> None:
        self.store.force_look()
        self.ensure_current()

    def resync(self) -> None:
        """The broker's connection came back: whatever the other processes changed meanwhile
        is read again from the database (rooms, members, read marks, credentials, then the
        change log), as if every notice had been lost."""
        self.store.forget_user_marks(None)
        self.credentials_changed_elsewhere()
        for before, room, members in self.store.reload_all_rooms_now():
            self._sync_room(before, room, members)
        self.catch_up()
        if self.peers is not None:
            self.peers.hello()

    def _recount(self, room_id: int) -> None:
        """A message was deleted: the tabs elsewhere of those who may read the room get its
        unread count again (it may have been one of theirs)."""
        room = self.store.rooms.get(room_id)
        if room is None:
            return
        tabs: dict[int, list[Conn]] = {}
        for conn in self.hub.readers(room_id):
            if conn.kind == "browser" and conn.room_id != room_id:
                tabs.setdefault(conn.user.id, []).append(conn)
        for user_id, conns in tabs.items():
            listed, unread = self.store.sidebar_state(user_id, room)
            if listed:
                self.hub.send_to(conns, event_frame({"unread_set": {room.slug: unread}}))

    # -- the wire forms of a change (the hub's Encoder) --------------------------------------

    def encode(self, change: Change, form: str) -> bytes:
        """One wire form of a change: `stream` for event streams, the others for tabs."""
        message = change.message
        if change.kind == "message" and message is not None:
            return self._build(message, form)
        slug = message.room if message is not None else self._slug(change.room_id)
        if change.kind == "deleted":
            if form == "stream":
                return dumps({"type": "message_deleted", "id": change.id, "room": slug,
                              "message_id": change.message_id})
            return dumps({"message_deleted": change.message_id, "id": change.id, "room": slug})
        assert message is not None
        if form == "stream":
            return f'{{"type":"message_updated","id":{change.id},"message":{self.message_json(message)}}}'.encode()
        return dumps({"message_updated": change.message_id, "id": change.id, "room": slug,
                      "html": self.renderer.message_fragment(message, form)})

    def _slug(self, room_id: int) -> str:
        room = self.store.rooms.get(room_id)
        return room.slug if room is not None else ""

    def message_json(self, message: Message) -> str:
        """The message object of the contract as JSON text, encoded once per version of a message."""
        key = (message.id, message.rev)
        text = self._json.get(key)
        if text is None:
            text = self._json[key] = message.json_text()
            if len(self._json) > JSON_CACHE:
                self._json.popitem(last=False)
        return text

    def messages_json(self, messages: list[Message]) -> str:
        """A JSON array of these messages, each encoded once (one call for a whole page)."""
        cache = self._json
        return "[" + ",".join([cache.get((m.id, m.rev)) or self.message_json(m) for m in messages]) + "]"

    def _build(self, message: Message, form: str) -> bytes:
        if form == "stream":
            return f'{{"type":"message","id":{message.id},"message":{self.message_json(message)}}}'.encode()
        if form.startswith("unread"):
            room = self.store.rooms.get(message.room_id)
            data = {
                "unread": message.room, "kind": room.kind if room else "public",
                "name": room.name if room else message.room, "from": message.author,
                "id": message.id, "mention": form == "unread-mention",
                "text": message.body[:NOTIFY_SNIPPET],
            }
            if room is not None:  # the entry for a tab that does not list the room yet
                # A DM's unread frame goes to one person, for whom the other is its author.
                peer = message.author if room.kind == "dm" else None
                data["list"], data["sort"], data["html"] = self.renderer.sidebar_entry(room, peer)
            return dumps(data)
        return self.renderer.message_fragment(message, form).encode()

    def message_frame(self, message: Message, conn: Conn) -> bytes:
        """One message for one socket, as a whole frame (a duplicate acknowledgement)."""
        return text_frame(self._payload(message, conn))

    def _payload(self, message: Message, conn: Conn) -> bytes:
        if conn.kind == "stream":
            return self._build(message, "stream")
        return self._build(message, variant(message, conn.user))

    def _change_payload(self, change: Change, conn: Conn) -> bytes:
        """A replayed change for one socket, in the form live delivery would have given it."""
        if conn.kind == "stream":
            return self.encode(change, "stream")
        if change.kind == "deleted":
            return self.encode(change, "deleted")
        assert change.message is not None
        return self.encode(change, variant(change.message, conn.user))

    # -- sockets ------------------------------------------------------------------

    async def attach(self, conn: Conn, since: int | None, room: Room | None = None) -> None:
        """Register a socket; with `since`, replay what it missed with no gap or duplicate."""
        conn.held = [] if since is not None else None
        if self.hub.add(conn) and not self.hub.online_elsewhere(conn.user.id):
            self._presence_changed(conn.user.id, True)
        self._share_sockets(conn.user)
        self.ensure_current()  # after add: a credential ended since the upgrade closes this socket too
        if conn.room_id is not None:
            # Whatever changed between rendering the page and this socket opening.
            self.hub.send_to([conn], self._online_frame(conn.room_id))
        log.info("event=connect user=%s kind=%s ip=%s", conn.user.username, conn.kind, conn.ip)
        if since is None:
            return
        if self.broker.shared:
            self.catch_up()  # what other processes committed before this socket came, as replay
        upto = self.published  # later messages are held as they are published, then sent
        try:
            sent = await self._replay(conn, since, upto, room)
        except BaseException:
            self.hub.release(conn, upto)
            raise
        if sent:
            self.hub.release(conn, upto)

    async def _replay(self, conn: Conn, since: int, upto: int, room: Room | None) -> bool:
        """Send the newest REPLAY_CAP messages in (since, upto] the socket's user may read, a
        page at a time, as the client reads them (Hub.replay); False if it was dropped. A tab
        that missed more than that reloads its page instead."""
        user = conn.user
        after, cut = await self.store.replay_start(since, upto, REPLAY_CAP, user=user, room=room)
        if cut and conn.kind == "browser":
            self.hub.hold(conn, 0, event_frame({"reload": True}))
            return True
        may_read = self.access.may_read
        while conn.open:
            last, page = await self.store.replay_page(after, upto, REPLAY_PAGE, user=user, room=room)
            if not last:
                return True
            after = last
            payloads = [self._change_payload(c, conn) for c in page if may_read(user.id, c.room_id)]
            if not await self.hub.replay(conn, payloads):
                return False
        return False

    def detach(self, conn: Conn) -> None:
        if self.hub.remove(conn) and not self.hub.online_elsewhere(conn.user.id):
            self._presence_changed(conn.user.id, False)
        self._share_sockets(conn.user)
        log.info("event=disconnect user=%s kind=%s ip=%s", conn.user.username, conn.kind, conn.ip)

    def acknowledge_retry(self, conn: Conn, message: Message, created: bool) -> None:
        """A retried send was published the first time: answer this socket alone, again."""
        if not created:
            self.hub.send_to([conn], self.message_frame(message, conn))

    def send(self, conn: Conn, data: object) -> None:
        self.hub.send_to([conn], event_frame(data))

    # -- presence -------------------------------------------------------------------

    def _share_sockets(self, user: User) -> None:
        """The other processes count this user's sockets here (presence, connection limits)."""
        if self.broker.shared:
            self.broker.notify({"t": "conn", "u": user.id, "name": user.username, "k": self.hub.count_here(user.id)})

    def presence_changed(self, user_id: int, online: bool) -> None:
        """Another process's sockets made a user come online or go offline (chatd.services.peers)."""
        self._presence_changed(user_id, online)

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
            elif conn.room_id is not None and self.access.may_read(conn.user.id, conn.room_id):
                by_room.setdefault(conn.room_id, []).append(conn)
        for room_id, conns in by_room.items():
            self.hub.send_to(conns, self._online_frame(room_id))

    def _online_frame(self, room_id: int) -> bytes:
        return text_frame(self.renderer.online_fragment(self.online_in(room_id)).encode())

    def online_in(self, room_id: int) -> list[str]:
        """Who is online among those who may read the room."""
        return sorted(
            self.hub.usernames[uid] for uid in self.hub.online_ids() if self.access.may_read(uid, room_id)
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
        self.typing_here(user.id, user.username, room)
        self.broker.notify({"t": "typing", "u": user.id, "name": user.username, "r": room.id})

    def typing_here(self, user_id: int, username: str, room: Room) -> None:
        """This process's sockets that watch the room, but the typist's, hear of it."""
        stream = event_frame({"type": "typing", "room": room.slug, "user": username})
        tab = event_frame({"typing": username, "room": room.slug})
        for conn in self.hub.watchers(room.id):
            if conn.user.id != user_id:
                self.hub.send_to([conn], stream if conn.kind == "stream" else tab)

    def read_changed(self, user: User, room: Room, unread: int, share: bool = True) -> None:
        """Every tab of this user learns the room's new unread count."""
        if share:
            self.broker.notify({"t": "marks", "u": user.id, "r": room.id, "op": "read"})
        if not self.access.may_read(user.id, room.id):
            return
        frame = event_frame({"unread_set": {room.slug: unread}})
        tabs = [c for c in self.hub.by_user.get(user.id, ()) if c.kind == "browser"]
        self.hub.send_to(tabs, frame)

    # -- revocation -------------------------------------------------------------------

    def close_revoked(self) -> int:
        """Close sockets whose session or token no longer authenticates anyone."""
        conns = list(self.hub.conns)
        sessions = list({c.credential.token_hash for c in conns if c.credential.kind == "session"})
        tokens = list({c.credential.token_hash for c in conns if c.credential.kind == "token"})
        live = self.store.live_credentials(sessions, tokens)
        revoked = [c for c in conns if c.credential.token_hash not in live and c.open]
        self.close(revoked)
        return len(revoked)

    def close_credential(self, token_hash: bytes) -> None:
        self.close([c for c in self.hub.conns if c.credential.token_hash == token_hash])
        self.broker.notify({"t": "auth"})

    def close(self, conns: list[Conn]) -> None:
        """Send these sockets 1008; the hub finishes the closing handshake."""
        for conn in conns:
            log.info("event=revoked user=%s kind=%s", conn.user.username, conn.kind)
        self.hub.close(conns, POLICY_VIOLATION, b"signed out")
