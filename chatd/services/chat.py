"""Rooms, memberships, messages and read marks: validate, store, then publish."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from chatd import rules
from chatd.config import Config
from chatd.errors import BadInput, Forbidden, NotFound, RateLimited, StorageUnavailable
from chatd.hub import Conn
from chatd.limits import TokenBucket, Window
from chatd.models import Change, Message, Room, RoomState, User
from chatd.services.live import Live
from chatd.store import Store
from chatd.store.changes import ChangeKind

log = logging.getLogger("chatd.chat")
MAX_LIMIT = 200
SEARCH_LIMIT = 20
MAX_SEARCH = 100
READ_MARK_INTERVAL = 0.2  # seconds between two transactions of read marks


class ReadMarks:
    """Read marks, written together: at most one transaction per READ_MARK_INTERVAL for all
    users, each user's marks in a room coalesced to the highest. A lone mark is written at
    once; a flood of read frames costs a dictionary update each, and others' posts do not
    queue behind hundreds of little transactions. Each caller is answered after the commit
    that holds its mark."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[tuple[int, int], tuple[User, Room, int]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._last = -READ_MARK_INTERVAL
        self.transactions = 0

    async def mark(self, user: User, room: Room, message_id: int) -> None:
        key = (user.id, room.id)
        known = self._pending.get(key)
        if known is None or known[2] < message_id:
            self._pending[key] = (user, room, message_id)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name="chatd-read-marks")
        await waiter

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                await asyncio.sleep(max(0.0, self._last + READ_MARK_INTERVAL - loop.time()))
                marks, self._pending = list(self._pending.values()), {}
                waiters, self._waiters = self._waiters, []
                self._last = loop.time()
                self.transactions += 1
                try:
                    await self.store.mark_read_many(marks)
                except Exception as exc:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._task = None


class Chat:
    def __init__(self, config: Config, store: Store, live: Live) -> None:
        self.config = config
        self.store = store
        self.live = live
        self.access = live.access
        self.flood = TokenBucket(config.messages_per_second, config.message_burst)
        self.room_limit = Window(config.rooms_per_hour, 3600)
        self.read_marks = ReadMarks(store)

    # -- rooms ------------------------------------------------------------------

    async def room_for(self, user: User, slug: object) -> Room:
        """The only way to a room: NotFound unless this user may read it."""
        if not isinstance(slug, str) or not slug or len(slug) > 100 or rules.has_surrogates(slug):
            raise NotFound("no such room")
        self.live.ensure_current()  # a room a `chatd room` command archived or deleted is taken in first
        room = self.store.room_named(slug)
        if room is None or not self.access.may_read(user.id, room.id):
            raise NotFound("no such room")
        return room

    async def rooms_for(self, user: User) -> list[RoomState]:
        return await self.store.rooms_for(user)

    async def create_room(self, user: User, slug: object, name: object, private: object) -> Room:
        slug = rules.check_slug(slug)
        if not isinstance(private, bool):
            raise BadInput("private must be true or false")
        title = rules.check_room_name(name, slug)
        self._count_room_creation(user)
        try:
            room = await self.store.create_room(slug, title, "private" if private else "public", user)
        except BaseException:
            self.room_limit.forget_last(user.id)  # a refused creation does not count
            raise
        self.live.room_created(room, user.id)
        log.info("event=room_created room=%s kind=%s by=%s", slug, room.kind, user.username)
        return room

    def _count_room_creation(self, user: User) -> None:
        """Members create at most rooms_per_hour rooms (0: only administrators create rooms).
        Counted before the write, so concurrent requests cannot slip past the limit."""
        if user.admin:
            return
        if self.config.rooms_per_hour == 0:
            raise Forbidden("only administrators can create rooms on this server")
        wait = self.room_limit.blocked(user.id)
        if wait:
            raise RateLimited("you have created too many rooms for now; try again later", wait)
        self.room_limit.hit(user.id)

    async def set_joined(self, user: User, slug: object, joined: bool) -> Room:
        """Join a public room (it stays in the sidebar) or leave it (out of the sidebar)."""
        room = await self.room_for(user, slug)
        if room.kind != "public":
            raise BadInput("only public rooms are joined and left this way; private rooms have members")
        already = self.store.joined(user, room)
        await self.store.set_joined(user, room, joined)
        if not joined:
            self.live.left(user.id, room)
        elif not already:
            self.live.joined(user.id, room)
        return room

    async def visit(self, user: User, room: Room) -> None:
        """Opening a public room one has not joined (nor left) joins it."""
        if room.kind == "public" and not room.archived and not self.store.joined(user, room) \
                and not self.store.left(user, room):
            await self.store.set_joined(user, room, True)
            self.live.joined(user.id, room)

    async def archive_room(self, actor: User, slug: object, archived: bool) -> Room:
        """Administrators: archive a room (readable, no new messages, off the sidebar) or undo it."""
        room = self.administered(actor, slug)
        room = await self.store.archive_room(room, archived)
        self.live.room_archived(room)
        log.info("event=room_%s room=%s by=%s", "archived" if archived else "unarchived", room.slug, actor.username)
        return room

    async def delete_room(self, actor: User, slug: object) -> int:
        """Administrators: delete a room and its messages; returns how many messages went."""
        room = self.administered(actor, slug)
        gone = await self.store.delete_room(room)
        self.live.room_deleted(room)
        log.info("event=room_deleted room=%s messages=%d by=%s", room.slug, gone, actor.username)
        return gone

    def administered(self, actor: User, slug: object) -> Room:
        """A room an administrator may archive or delete (not a DM, not general)."""
        if not actor.admin:
            raise Forbidden("only administrators can archive or delete rooms")
        room = self.store.room_named(slug) if isinstance(slug, str) else None
        if room is None:
            raise NotFound("no such room")
        rules.check_administrable(room.slug, room.kind)
        return room

    async def open_dm(self, user: User, username: object) -> Room:
        """The direct conversation between `user` and `username`, the same for both."""
        name = username.strip().lower() if isinstance(username, str) else ""
        other = await self.store.user_by_name(name) if rules.USERNAME_RE.fullmatch(name) else None
        if other is None:
            raise NotFound(f"no user named {name or username!r}")
        slug = rules.dm_slug(user.username, other.username)
        existing = self.store.room_named(slug)
        if existing is not None and self.access.may_read(user.id, existing.id):
            return existing  # viewing a DM page is a read: write only the first time
        room = await self.store.open_dm(slug, user, other)
        self.live.room_added(room, [user.id, other.id])
        return room

    async def add_member(self, actor: User, slug: object, username: object) -> Room:
        """A member of a private room (or an admin) adds someone to it."""
        room = await self._manageable(actor, slug)
        name = rules.check_username(username)
        user = await self.store.user_by_name(name)
        if user is None:
            raise NotFound(f"no user named {name}", field="username")
        delivered = self.live.published  # every change committed after the membership comes later
        await self.store.add_member(room, user)
        self.live.member_added(room, user.id, after=delivered)
        log.info("event=member_added room=%s user=%s by=%s", room.slug, name, actor.username)
        return room

    async def remove_member(self, actor: User, slug: object, username: object) -> Room:
        """Leave a private room, or (admins) remove someone from it."""
        room = await self._manageable(actor, slug)
        name = rules.check_username(username)
        if name != actor.username and not actor.admin:
            raise NotFound("no such member")
        user = await self.store.user_by_name(name)
        if user is None or not await self.store.remove_member(room, user):
            raise NotFound(f"{name} is not a member of {room.slug}")
        self.live.member_removed(room, user.id)
        log.info("event=member_removed room=%s user=%s by=%s", room.slug, name, actor.username)
        return room

    async def members(self, actor: User, slug: object) -> tuple[Room, list[str]]:
        room = await self._manageable(actor, slug)
        return room, await self.store.members(room)

    async def _manageable(self, actor: User, slug: object) -> Room:
        """A private room the actor belongs to, or any private room for an admin."""
        if actor.admin and isinstance(slug, str):
            room = self.store.room_named(slug)
            if room is None:
                raise NotFound("no such room")
        else:
            room = await self.room_for(actor, slug)
        if room.kind != "private":
            raise BadInput("only private rooms have members; public rooms are open to everyone")
        return room

    # -- messages ---------------------------------------------------------------

    async def post_message(
        self, user: User, slug: object, body: object, client_id: object = None
    ) -> tuple[Message, bool]:
        """Store a message, answered after its commit; (message, False) for a retry."""
        room = await self.room_for(user, slug)
        return await self.post_in(user, room, body, client_id)

    async def post_in(
        self, user: User, room: Room, body: object, client_id: object = None, conn: Conn | None = None,
    ) -> tuple[Message, bool]:
        """Post as `user`, from `conn` when the post came on a socket. Access is asked now and
        again when the post's batch is written, so a post waiting to be written when its
        author loses the room, or its socket is closed, is refused."""
        self._check_writable(user, room)
        text = rules.check_body(body)
        cid = rules.check_client_id(client_id)
        wait = self.flood.take(user.id)
        if wait:
            raise RateLimited("you are sending messages too fast; slow down", wait)
        self.live.spent(user.id)
        rendered = rules.render_body(text, self.live.is_user)
        writer = self.store.messages_writer
        if writer is None:
            raise StorageUnavailable("the server is not accepting messages")
        allowed = still(self.access.may_write, user, room, conn)
        return await writer.submit(room, user, text, rendered.html, cid, allowed, rendered.mentions)

    def _check_writable(self, user: User, room: Room) -> None:
        if not self.access.may_write(user.id, room.id):
            if self.access.may_read(user.id, room.id):
                raise Forbidden("this room is archived; it takes no new messages")
            raise NotFound("no such room")

    async def history(
        self, user: User, slug: object, before: object = None, after: object = None,
        limit: object = None, around: object = None,
    ) -> tuple[Room, list[Message]]:
        room = await self.room_for(user, slug)
        n = min(parse_int(limit, "limit", default=50, low=1) or 50, MAX_LIMIT)
        b = parse_int(before, "before", default=None, low=0)
        a = parse_int(after, "after", default=None, low=0)
        c = parse_int(around, "around", default=None, low=0)
        if c is not None:
            message = self.store.message(c)
            if message is None or message.room_id != room.id:
                raise NotFound("no such message")
            return room, await self.store.messages_around(room, c, n)
        return room, await self.store.messages(room, before=b, after=a, limit=n)

    # -- changes to messages ------------------------------------------------------

    def message_for(self, user: User, message_id: object) -> tuple[Room, Message]:
        """The only way to a stored message: NotFound unless this user may read its room now
        (a deleted message, or one of a room they cannot read, is the same 404)."""
        try:
            mid = parse_int(message_id, "message id", default=None, low=0)
        except BadInput:
            mid = None  # /m/abc: no such message, as for any id that is not one
        if mid is None:
            raise NotFound("no such message")
        self.live.ensure_current()
        message = self.store.message(mid)
        room = self.store.rooms.get(message.room_id) if message is not None else None
        if message is None or room is None or not self.access.may_read(user.id, room.id):
            raise NotFound("no such message")
        return room, message

    async def edit_message(self, user: User, message_id: object, body: object) -> Message:
        room, message = self.message_for(user, message_id)
        if message.author_id != user.id:
            raise Forbidden("only its author can edit a message")
        if room.archived:
            raise Forbidden("this room is archived; its messages can no longer change")
        text = rules.check_body(body)
        rendered = rules.render_body(text, self.live.is_user)
        _, now = await self._change("edit", user, room, message, body=text, html=rendered.html,
                                    mentions=rendered.mentions)
        assert now is not None
        log.info("event=message_edited id=%d room=%s by=%s", message.id, room.slug, user.username)
        return now

    async def delete_message(self, user: User, message_id: object) -> None:
        room, message = self.message_for(user, message_id)
        if message.author_id != user.id and not user.admin:
            raise Forbidden("only its author or an administrator can delete a message")
        await self._change("delete", user, room, message)
        log.info("event=message_deleted id=%d room=%s by=%s", message.id, room.slug, user.username)

    async def react(self, user: User, message_id: object, emoji: object, add: bool) -> Message:
        """Add the caller's reaction (again: nothing changes) or take it back."""
        room, message = self.message_for(user, message_id)
        text = rules.check_emoji(emoji)
        if room.archived:
            raise Forbidden("this room is archived; its messages can no longer change")
        wait = self.flood.take(user.id)
        if wait:
            raise RateLimited("you are reacting too fast; slow down", wait)
        self.live.spent(user.id)
        _, now = await self._change("react" if add else "unreact", user, room, message, emoji=text)
        assert now is not None
        return now

    async def _change(self, kind: ChangeKind, user: User, room: Room, message: Message,
                      **values: Any) -> tuple[Change | None, Message | None]:
        """Queue a change; the writer asks again, just before writing it, whether the user may
        still read the room (as a post asks whether its author may still write there)."""
        writer = self.store.messages_writer
        if writer is None:
            raise StorageUnavailable("the server is not accepting changes")
        return await writer.change(kind, message, user, still(self.access.may_read, user, room, None), **values)

    # -- search -------------------------------------------------------------------------

    async def search(self, user: User, q: object, slug: object = None, before: object = None,
                     limit: object = None) -> list[tuple[Message, str]]:
        """Messages matching `q`, newest first, only from rooms the user may read now, each with
        a snippet (escaped text, hits in <mark>)."""
        query = rules.parse_query(q)
        n = min(parse_int(limit, "limit", default=SEARCH_LIMIT, low=1) or SEARCH_LIMIT, MAX_SEARCH)
        b = parse_int(before, "before", default=None, low=0)
        if slug not in (None, ""):
            rooms = [(await self.room_for(user, slug)).id]
        else:
            self.live.ensure_current()
            rooms = self.access.readable_by(user.id)
        if query.words is None and query.grams is None:
            return []
        found = await self.store.search(query, rooms, b, n)
        may_read = self.access.may_read  # again: access may have ended while the index was read
        return [(m, snippet) for m, snippet in found if may_read(user.id, m.room_id)]

    async def mark_read(self, user: User, slug: object, message_id: object) -> int:
        room = await self.room_for(user, slug)
        return await self.mark_read_in(user, room, message_id)

    async def mark_read_in(self, user: User, room: Room, message_id: object) -> int:
        if not self.access.may_read(user.id, room.id):
            raise NotFound("no such room")
        mid = parse_int(message_id, "message_id", default=None, low=0)
        if mid is None:
            raise BadInput("message_id is required")
        await self.read_marks.mark(user, room, mid)
        unread = await self.store.unread(user, room)
        self.live.read_changed(user, room, unread)
        return unread

    def typing(self, user: User, room: Room) -> None:
        if not self.access.may_write(user.id, room.id):
            raise NotFound("no such room")
        self.live.typing(user, room, time.monotonic())


def still(check: Callable[[int, int], bool], user: User, room: Room, conn: Conn | None) -> Callable[[], bool]:
    """What the writer asks just before a queued write: does `check` (Access.may_write or
    may_read) still hold for this user and room, and is the socket it came from still open?"""
    uid, rid = user.id, room.id
    if conn is None:
        return lambda: check(uid, rid)
    return lambda: conn.open and check(uid, rid)


def parse_int(value: object, name: str, default: int | None, low: int) -> int | None:
    """Parse a non-negative integer parameter; 400 for anything else."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadInput(f"{name} must be a number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        number = int(value)
    else:
        raise BadInput(f"{name} must be a number")
    if number < low or number >= 1 << 62:
        raise BadInput(f"{name} must be at least {low}")
    return number
