"""The message writer: group commit of pending posts, publish after commit.

Posts queue up while a transaction is being written; the next transaction
takes all of them. Every caller is answered only after the commit that holds
its message, and the hub hears of messages in id order, after that commit.

Where the transaction runs: with synchronous=NORMAL a WAL commit appends to
the log and waits for no disk, so it runs inline on the event loop on its own
connection (no thread hop, no contention for the GIL). That connection never
waits for SQLite's write lock: when someone else holds it (a `chatd` command,
or this server's other writes on the writer thread) the batch goes to the
writer thread, which waits there, so the loop does not wait for the lock. It never
checkpoints either: the writer thread does that every CHECKPOINT_EVERY inline
commits, in two passes. The first copies the log into the database file (and
waits for the disk) while commits go on; the second, with posts held in the
queue, copies only what landed meanwhile, so the log is wholly copied and the
next commit starts it over: the log stays bounded and posting pauses for a
short pass, not a full one. With synchronous=FULL every commit waits for an
fsync, so every batch runs on the writer thread.

What this costs when the disk stalls (a frozen file system during a VM snapshot, a
block device that stops answering): an inline commit waits for the disk on the event
loop, and with it the whole server, until the disk answers; nothing is lost. Moving
every commit to the writer thread would avoid that, but a thread hop per batch cost
about 40% of the posts a core can store on the machines chatd is measured on
(docs/performance.md, "Where commits run"). With synchronous=FULL, where every batch is
on the writer thread anyway, a stalled disk holds the posts and nothing else.

On PostgreSQL a batch of posts is awaited on the loop instead (_write_ahead and
PgConnection.write_ahead): the loop reads the next posts while PostgreSQL writes, and two
batches may be in flight, the second guessing what the first leaves (_Known) and checked
under the write lock, so ids, answers and publication keep the order posts were queued in.
Batches with changes to messages read as they go, so they are written as on SQLite, after
every batch before them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chatd.errors import ChatdError, Forbidden, NotFound, StorageUnavailable
from chatd.models import Change, Message, Room, User
from chatd.store import changes
from chatd.store.changes import ChangeRequest, ChangeResult
from chatd.store.db import ThreadConnection, insert_many, storage_error, transaction
from chatd.store.postgres import NotAhead, PgConnection, Stale
from chatd.store.rows import _message

log = logging.getLogger("chatd.store")
MAX_BATCH = 512
CHECKPOINT_EVERY = 200  # inline commits between WAL checkpoints (a few MB of log)
IN_FLIGHT = 2  # on PostgreSQL: batches being written at once (_write_ahead)

OnCommit = Callable[[list[Change]], None]
OnLatency = Callable[[float], None]
Result = tuple[Message, bool] | ChatdError  # (message, created) or why it was refused


@dataclass(slots=True)
class Pending:
    room: Room
    author: User
    body: str
    html: str
    client_id: str | None
    created_at: float
    future: asyncio.Future[tuple[Message, bool]] = field(repr=False)
    # Asked on the event loop just before the batch is written: may the author still post
    # here, from where they posted (chatd.access, the socket still open)?
    allowed: Callable[[], bool] = field(repr=False, default=lambda: True)
    mentions: tuple[str, ...] = ()  # usernames the body @mentions (rules.render_body)


Item = Pending | ChangeRequest


class MessageWriter:
    """Single writer task: one transaction per batch of pending messages and changes to
    messages, which take their ids from one sequence in the order they were queued."""

    def __init__(
        self, conn: ThreadConnection, on_commit: OnCommit, on_latency: OnLatency,
        inline: sqlite3.Connection | None = None,
    ) -> None:
        self._conn = conn
        self._inline = inline  # None: every batch on the writer thread (synchronous=FULL)
        # On PostgreSQL, batches of posts are awaited (_write_ahead), two at a time.
        self._awaited: PgConnection | None = inline if isinstance(inline, PgConnection) else None
        self._on_commit = on_commit
        self._on_latency = on_latency
        self._pending: list[Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Made on the loop it writes for; asking asyncio.get_running_loop() per post would
        # ask the kernel for the process id each time.
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._since_checkpoint = 0
        self._copying: asyncio.Task[None] | None = None  # the first checkpoint pass, if running
        self.deferred = 0  # batches that found the write lock taken and waited on the thread
        self.guessed = 0  # on PostgreSQL, batches whose reads were guessed (_write_ahead)
        self.read_again = 0  # and of those, the ones whose guesses were found wrong
        self._known: _Known | None = None  # on PostgreSQL: what this writer's commits left (_write_ahead)
        self._started = 0  # batches begun on PostgreSQL
        # Done once the newest batch begun has made its writes (or failed): the next may guess.
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._ready.set_result(None)
        self.writing = 0  # posts in the batches being written now
        self._in_flight: list[asyncio.Task[None]] = []  # on PostgreSQL, batches overlap (_write_ahead)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatd-message-writer")

    async def stop(self) -> None:
        """Refuse new posts, write every pending one, then end the task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def submit(
        self, room: Room, author: User, body: str, html: str, client_id: str | None,
        allowed: Callable[[], bool] = lambda: True, mentions: tuple[str, ...] = (),
    ) -> tuple[Message, bool]:
        """Queue one message; returns (message, created) after its commit."""
        if self._closing:
            raise StorageUnavailable("the server is shutting down; send again in a moment")
        future: asyncio.Future[tuple[Message, bool]] = self._loop.create_future()
        self._pending.append(Pending(room, author, body, html, client_id, time.time(), future, allowed, mentions))
        self._wake.set()
        return await future

    async def change(
        self, kind: changes.ChangeKind, message: Message, actor: User, allowed: Callable[[], bool], *,
        body: str = "", html: str = "", mentions: tuple[str, ...] = (), emoji: str = "",
    ) -> tuple[Change | None, Message | None]:
        """Queue a change to a stored message; returns (the change or None when nothing changed,
        the message as it is now or None once deleted) after its commit."""
        if self._closing:
            raise StorageUnavailable("the server is shutting down; try again in a moment")
        future: asyncio.Future[tuple[Change | None, Message | None]] = self._loop.create_future()
        self._pending.append(ChangeRequest(kind, message.id, message.room_id, actor, future, body, html,
                                           mentions, emoji, time.time(), allowed))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._inline is not None:
                await self._gather()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                if self._awaited is None:
                    await self._write(batch)
                    continue
                self._in_flight = [task for task in self._in_flight if not task.done()]
                if len(self._in_flight) >= IN_FLIGHT:
                    await asyncio.wait([self._in_flight[0]])
                previous = self._in_flight[-1] if self._in_flight else None
                self._in_flight.append(asyncio.create_task(self._write(batch, previous), name="chatd-batch"))
            if self._copying is not None and (self._copying.done() or self._closing):
                await self._copying
                self._copying = None
                await self._checkpoint()  # the rest, with posts held: the log starts over
            elif self._since_checkpoint >= CHECKPOINT_EVERY and self._copying is None and not self._closing:
                self._since_checkpoint = 0  # the first pass, while commits go on
                self._copying = asyncio.create_task(self._checkpoint(), name="chatd-checkpoint")
                self._copying.add_done_callback(lambda _: self._wake.set())
            if self._closing:
                if self._in_flight:
                    await asyncio.wait(self._in_flight)
                return

    async def _gather(self) -> None:
        """A commit costs about as much for one message as for dozens: let the posts the
        loop is already handling join the batch, for as long as each turn of the loop
        brings more. Never an idle wait: a lone post is written on the next turn."""
        waiting = len(self._pending)
        while waiting < MAX_BATCH and not self._closing:
            await asyncio.sleep(0)
            if len(self._pending) == waiting:
                return
            waiting = len(self._pending)

    @property
    def waiting(self) -> int:
        """Posts not yet committed: queued, and in the batch being written."""
        return len(self._pending) + self.writing

    async def _write(self, batch: list[Item], previous: asyncio.Task[None] | None = None) -> None:
        """Write one batch, then publish it and answer its posts, after the batch before it
        (`previous`, on PostgreSQL, where two overlap: ids and answers stay in queue order)."""
        for item in batch:
            if not item.allowed() and not item.future.done():
                item.future.set_exception(NotFound(
                    "you can no longer post in this room" if isinstance(item, Pending) else "no such message"))
        batch = [item for item in batch if not item.future.done()]  # a caller may also have gone
        if not batch:
            await _finished(previous)  # the next batch waits for this one: so for the one before
            return
        started = time.perf_counter()
        self.writing += len(batch)
        seqs: dict[int, int] = {}  # new message id -> its position in its room
        try:
            results = await self._insert(batch, seqs, previous)
        except (sqlite3.Error, ChatdError) as exc:
            self._known = None
            await _finished(previous)
            error: ChatdError = exc if isinstance(exc, ChatdError) else storage_error(exc) or StorageUnavailable(
                "the server could not store the message"
            )
            log.error("event=write_failed messages=%d error=%r", len(batch), str(exc))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self.writing -= len(batch)
        await _finished(previous)
        self._on_latency(time.perf_counter() - started)
        log_: list[Change] = []
        for result in results:
            if isinstance(result, ChatdError):
                continue
            if isinstance(result[0], Message):
                if result[1]:  # created, not a retry
                    m = result[0]
                    log_.append(Change(m.id, "message", m.room_id, m.id, m.author_id, m, seqs.get(m.id, 0)))
            elif result[0] is not None:
                log_.append(result[0])
        try:
            self._on_commit(log_)
        except Exception:  # a publishing bug must not lose acknowledgements
            log.exception("event=publish_failed")
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, ChatdError):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    async def _insert(self, batch: list[Item], seqs: dict[int, int],
                      previous: asyncio.Task[None] | None) -> list[Result | ChangeResult]:
        """Inline when the write lock is free; otherwise wait for it on the writer thread. On
        PostgreSQL a batch of posts is awaited on the loop instead (_write_ahead)."""
        if self._awaited is not None:
            self._started += 1
            ready, before = self._loop.create_future(), self._ready
            self._ready = ready
            try:
                if not any(isinstance(item, ChangeRequest) for item in batch):
                    return await self._write_ahead(self._awaited, batch, seqs, previous, self._started, before, ready)
                await _finished(previous)  # changes read as they go: after every batch before
                self._known = None  # and they take ids too: read again
            finally:
                if not ready.done():
                    ready.set_result(None)
        return await self._insert_usual(batch, seqs)

    async def _insert_usual(self, batch: list[Item], seqs: dict[int, int]) -> list[Result | ChangeResult]:
        if self._inline is not None:
            try:
                results = _insert_batch(self._inline, batch, seqs)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                self.deferred += 1
            else:
                if not getattr(self._inline, "dialect", None):  # SQLite's log; PostgreSQL keeps its own
                    self._since_checkpoint += 1
                return results
        return await self._conn.run(_insert_batch, batch, seqs)

    async def _write_ahead(
        self, conn: PgConnection, batch: list[Item], seqs: dict[int, int], previous: asyncio.Task[None] | None,
        number: int, before: asyncio.Future[None], ready: asyncio.Future[None],
    ) -> list[Result | ChangeResult]:
        """A batch of posts on PostgreSQL, its round trips awaited while the loop reads and
        renders the next posts (PgConnection.write_ahead).

        While nobody else writes messages, its reads are what this writer's own commits
        left (_Known): guessed, and checked under the lock with the writes, in one round
        trip; and it may go while the batch before is still being written, as its guesses
        include that batch (they hold only once that batch is in, so ids keep their order).
        Otherwise, or once a guess was found wrong, it waits for the batches before and
        reads with the BEGIN (_read_ahead): two round trips."""
        posts: list[Pending] = batch  # type: ignore[assignment]  # no changes (the caller)
        lookup = _retry_lookup(conn, posts)  # type: ignore[arg-type]
        if not before.done():  # the batch before has not made its writes yet: what will it leave?
            await before
        known = self._known_after(number - 1)
        guessed = known is not None and known.guess(conn, posts, lookup)
        self.guessed += guessed

        def written(results: list[Result | ChangeResult]) -> None:  # in queue order (`before`)
            self._known = _Known.after(known, guessed, posts, results, seqs, number)
            if not ready.done():
                ready.set_result(None)

        try:
            if not guessed:
                await _finished(previous)
                known = self._known_after(number - 1)
                _read_ahead(conn, posts, lookup)  # type: ignore[arg-type]
            try:
                return await conn.write_ahead(_write_batch, batch, posts, lookup, seqs, written=written)
            except Stale as exc:  # a guess found otherwise under the lock: nothing written
                log.debug("event=batch_read_again reason=%r", str(exc))
                self.read_again += 1
                self._known = None  # and a later batch's guesses from this one fail too
                await _finished(previous)
                guessed, known = False, None
                _read_ahead(conn, posts, lookup)  # type: ignore[arg-type]
                return await conn.write_ahead(_write_batch, batch, posts, lookup, seqs, written=written)
        except NotAhead:  # a read this writer did not foresee: inline, the usual way
            self._known = None
            await _finished(previous)
            return await self._insert_usual(batch, seqs)

    def _known_after(self, number: int) -> _Known | None:
        """What is known once batch `number` is in, if that is what _known holds."""
        return self._known if self._known is not None and self._known.through == number else None

    async def _checkpoint(self) -> None:
        """Copy the log into the database file, on the writer thread: the first pass as its
        own task while commits go on, the second awaited by the writer task while posts
        wait, so it completes and the next commit starts the log over (module docstring)."""
        try:
            await self._conn.run(_checkpoint)
        except (sqlite3.Error, ChatdError) as exc:  # the log keeps every commit; try again later
            log.warning("event=checkpoint_failed error=%r", str(exc))


@dataclass(slots=True)
class _Known:
    """What the message writer's own commits left in the database: the next id, and each
    room it posted in (message count, kind, not archived) with the authors who may post
    there. Trusted once a batch that read found the next id where this predicted it, so
    nobody else is writing messages; then a batch whose reads it all answers guesses them
    (PgConnection.expect), and a check that fails under the lock drops it."""

    next_id: int
    rooms: dict[int, tuple[int, str]]
    members: set[tuple[int, int]]
    trusted: bool = False
    through: int = 0  # the last batch (MessageWriter._started) it includes

    def guess(self, conn: PgConnection, posts: list[Pending], lookup: tuple[str, list[object]] | None) -> bool:
        rooms = {i.room.id for i in posts}
        if not self.trusted or not rooms <= self.rooms.keys() or any(
                i.room.kind != "public" and (i.room.id, i.author.id) not in self.members for i in posts):
            return False
        conn.expect(changes.NEXT_ID, (), [(self.next_id,)])
        if lookup is not None:
            conn.expect(*lookup, [])  # a retry is rare: then the check fails and the batch reads
        for room_id in rooms:
            count, kind = self.rooms[room_id]
            conn.expect(_ROOM_STATE, (room_id,), [(count, kind, None)])
        for room_id, author_id in {(i.room.id, i.author.id) for i in posts if i.room.kind != "public"}:
            conn.expect(_IS_MEMBER, (room_id, author_id), [(1,)])
        return True

    @staticmethod
    def after(known: _Known | None, guessed: bool, posts: list[Pending], results: list[Result | ChangeResult],
              seqs: dict[int, int], number: int) -> _Known | None:
        """What is known after a batch: a guessed batch's checks held; a batch that read is
        trusted if its first new id is the one `known` predicted."""
        created = [r[0] for r in results if not isinstance(r, ChatdError) and r[1] and isinstance(r[0], Message)]
        if not created:  # the next id as it was: a later batch's guess could hold before this is in
            return None
        if guessed and known is not None:
            pass  # its checks held: what it knew, and this batch's messages
        elif known is not None and created[0].id == known.next_id:  # nobody else wrote since
            known = _Known(0, known.rooms, known.members, trusted=True)
        else:
            known = _Known(0, {}, set())
        kinds = {p.room.id: p.room.kind for p in posts}
        for m in created:
            known.rooms[m.room_id] = (seqs[m.id], kinds[m.room_id])
            if kinds[m.room_id] != "public":
                known.members.add((m.room_id, m.author_id))
        known.next_id, known.through = created[-1].id + 1, number
        return known


async def _finished(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        await asyncio.wait([task])


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _insert_batch(conn: sqlite3.Connection, batch: list[Item], seqs: dict[int, int]) -> list[Result | ChangeResult]:
    """Write one batch in one transaction; `seqs` gets each new message's position in its room."""
    posts = [item for item in batch if isinstance(item, Pending)]
    lookup = _retry_lookup(conn, posts)
    _read_ahead(conn, posts, lookup)
    return _write_batch(conn, batch, posts, lookup, seqs)


def _write_batch(conn: sqlite3.Connection, batch: list[Item], posts: list[Pending],
                 lookup: tuple[str, list[object]] | None, seqs: dict[int, int]) -> list[Result | ChangeResult]:
    """_insert_batch's transaction, its reads already asked for (_read_ahead)."""
    seqs.clear()  # an inline attempt that found the lock taken may have begun it
    results: list[Result | ChangeResult] = []
    with transaction(conn):
        next_id = changes.next_id(conn)
        rows: list[tuple[object, ...]] = []
        known = _stored_retries(conn, posts, lookup)  # this batch's new messages join it as they come
        counts: dict[int, int] = {}  # room id -> message count so far
        last: dict[int, int] = {}  # room id -> newest message id
        marks: dict[tuple[int, int], tuple[Pending, int, int]] = {}  # posting reads the room
        checked: dict[tuple[int, int], ChatdError | None] = {}
        for item in batch:
            if isinstance(item, ChangeRequest):
                # Changes are to messages of earlier commits (a client learns an id only from
                # its commit), so applying them before this batch's inserts below is safe.
                change = changes.apply(conn, item, next_id)
                results.append(change)
                if not isinstance(change, ChatdError) and change[0] is not None:
                    next_id += 1
                continue
            # The same author, client_id, room and body as a message stored or earlier in this
            # batch is a retry of it; a reused client_id with another body or room is new.
            key = (item.author.id, item.client_id, item.room.id, item.body)
            existing = known.get(key) if item.client_id else None
            if existing is not None:
                results.append((existing, False))
                continue
            room_id = item.room.id
            where = (room_id, item.author.id)
            if where not in checked:
                checked[where] = _refusal(conn, item, counts)
            if checked[where] is not None:
                results.append(checked[where])
                continue
            counts[room_id] += 1
            message = Message(
                next_id, room_id, item.room.slug, item.author.username, item.author.id,
                item.body, item.html, item.created_at, item.client_id, item.mentions, None, (), next_id,
            )
            known[key] = message
            rows.append((next_id, room_id, item.author.id, item.body, item.html,
                         item.created_at, item.client_id, counts[room_id], " ".join(item.mentions)))
            last[room_id] = next_id
            marks[(room_id, item.author.id)] = (item, next_id, counts[room_id])
            seqs[next_id] = counts[room_id]
            results.append((message, True))
            next_id += 1
        insert_many(
            conn, "INSERT INTO messages (id, room_id, user_id, body, html, created_at, client_id, seq, mentions)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany(
            "UPDATE rooms SET last_message_id = ?, message_count = ? WHERE id = ?",
            [(mid, counts[rid], rid) for rid, mid in last.items()],
        )
        reads: dict[str, list[tuple[int, int, int, int]]] = {}
        for item, message_id, seq in marks.values():
            reads.setdefault(_POSTED_PUBLIC if item.room.kind == "public" else _READ_MEMBER, []).append(
                (item.room.id, item.author.id, message_id, seq))
        for sql, params in reads.items():
            conn.executemany(sql, params)
    return results


def _refusal(conn: sqlite3.Connection, item: Pending, counts: dict[int, int]) -> ChatdError | None:
    """Why this author may not post in this room, checked in the transaction that would store
    it (the room deleted or archived, or the author no longer a member); None if they may."""
    room_id = item.room.id
    if room_id not in counts:
        row = conn.execute(_ROOM_STATE, (room_id,)).fetchone()
        if row is None:
            return NotFound("no such room")
        if row[2] is not None:
            return Forbidden("this room is archived; it takes no new messages")
        if row[1] != "public" and not conn.execute(_IS_MEMBER, (room_id, item.author.id)).fetchone():
            return NotFound("no such room")
        counts[room_id] = row[0]
    elif item.room.kind != "public" and not conn.execute(_IS_MEMBER, (room_id, item.author.id)).fetchone():
        return NotFound("no such room")
    return None


Retry = tuple[int, str | None, int, str]  # author id, client_id, room id, body


def _retry_lookup(conn: sqlite3.Connection, batch: list[Pending]) -> tuple[str, list[object]] | None:
    """The query for messages already stored with the same author, client_id, room and body
    as one in the batch (what a retry of it would be; the body as it was sent, before any
    edit), in id order; None when no post has a client_id."""
    keys = {(i.author.id, i.client_id, i.room.id, i.body) for i in batch if i.client_id}
    if not keys:
        return None
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        # Arrays, not a VALUES list: one statement for any batch size (PgConnection plans a
        # join over arrays at each call, with the batch's arrays and the table as it is now).
        source = "unnest(?::bigint[], ?::text[], ?::bigint[], ?::text[]) AS k(column1, column2, column3, column4)"
        params: list[object] = [list(column) for column in zip(*keys, strict=True)]
    else:
        source = "(VALUES " + ", ".join(["(?, ?, ?, ?)"] * len(keys)) + ") k"
        params = [v for key in keys for v in key]
    # CROSS JOIN keeps the batch as the outer loop: one index search per key, never a scan.
    return (
        f"SELECT m.id, m.room_id, r.slug, m.body, m.html, m.created_at, m.user_id, m.client_id,"
        f" m.mentions, m.edited_at, m.reactions, m.rev, k.column4"
        f" FROM {source} CROSS JOIN messages m ON m.user_id = k.column1"
        # +m.room_id: not by the room's index (all its messages), whatever the engine guesses.
        f" AND m.client_id = k.column2 AND +m.room_id = k.column3"
        # As sent: an edited message keeps the body it was first sent with (migration 6).
        f" AND (m.body = k.column4 OR m.sent_body = k.column4)"
        f" JOIN rooms r ON r.id = m.room_id ORDER BY m.id",
        params,
    )


def _stored_retries(conn: sqlite3.Connection, batch: list[Pending],
                    lookup: tuple[str, list[object]] | None) -> dict[Retry, Message]:
    """The messages `lookup` (_retry_lookup) finds, newest of each key, in one query."""
    if lookup is None:
        return {}
    names = {(i.author.id, i.client_id, i.room.id, i.body): i.author.username for i in batch if i.client_id}
    found: dict[Retry, Message] = {}
    for row in conn.execute(*lookup):
        key = (row[6], row[7], row[1], row[12])
        found[key] = _message((row[0], row[1], row[2], names[key], row[6],
                               row[3], row[4], row[5], row[7], row[8], row[9], row[10], row[11]))
    return found


def _read_ahead(conn: sqlite3.Connection, posts: list[Pending], lookup: tuple[str, list[object]] | None) -> None:
    """On PostgreSQL, the batch's reads (the retry lookup, the room checks of _refusal) go with
    its BEGIN, under the write lock, in one round trip (PgConnection.ahead)."""
    ahead = getattr(conn, "ahead", None)
    if ahead is None or not posts:
        return
    if lookup is not None:
        ahead(*lookup)
    for room_id in dict.fromkeys(i.room.id for i in posts):  # each room once, in order
        ahead(_ROOM_STATE, (room_id,))
    for room_id, author_id in {(i.room.id, i.author.id) for i in posts if i.room.kind != "public"}:
        ahead(_IS_MEMBER, (room_id, author_id))


_ROOM_STATE = "SELECT message_count, kind, archived_at FROM rooms WHERE id = ?"
_IS_MEMBER = "SELECT 1 FROM memberships WHERE room_id = ? AND user_id = ?"


_READ_PUBLIC = (  # a public room gets a read-state row on the fly
    "INSERT INTO memberships (room_id, user_id, last_read_id, last_read_seq) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT (room_id, user_id) DO UPDATE SET"
    " last_read_id = max(memberships.last_read_id, excluded.last_read_id),"
    " last_read_seq = max(memberships.last_read_seq, excluded.last_read_seq)"
)
_POSTED_PUBLIC = (  # posting in a public room also joins it (memberships.sidebar, migration 5)
    "INSERT INTO memberships (room_id, user_id, last_read_id, last_read_seq) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT (room_id, user_id) DO UPDATE SET"
    " last_read_id = max(memberships.last_read_id, excluded.last_read_id),"
    " last_read_seq = max(memberships.last_read_seq, excluded.last_read_seq), sidebar = 1"
)
_READ_MEMBER = (  # in a private room or DM a row is membership, which reading must not create
    "UPDATE memberships SET last_read_id = max(last_read_id, ?3), last_read_seq = max(last_read_seq, ?4)"
    " WHERE room_id = ?1 AND user_id = ?2"
)


def _read_mark_sql(room: Room) -> str:
    return _READ_PUBLIC if room.kind == "public" else _READ_MEMBER


def advance_read_mark(conn: sqlite3.Connection, room: Room, user_id: int, message_id: int, seq: int) -> None:
    """Move a read mark forward, never back."""
    conn.execute(_read_mark_sql(room), (room.id, user_id, message_id, seq))
