"""Live connections: routing, presence and bounded fan-out. No SQL here.

A message is encoded once into a finished WebSocket frame (server frames are
unmasked, so the bytes are the same for every recipient) and the same bytes
are written to each recipient's transport. The transport's write buffer is the
connection's bounded outbound queue: a socket whose buffer passes
`send_buffer_bytes` is a slow consumer and is dropped, never awaited, so one
stalled reader cannot hold up a broadcast or grow memory without bound.
A later broker (Redis) would sit behind `publish` and feed the same local fan-out.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from aiohttp import WSMsgType, web

from chatd.access import Access
from chatd.models import Change, Credential, User, variant

log = logging.getLogger("chatd.hub")
CLOSE_GRACE = 3.0  # seconds a client has to answer the server's close frame
REPLAY_STALL = 10.0  # seconds a replaying socket may read nothing before it is dropped
OP_TEXT = 0x1
OP_CLOSE = 0x8

ConnKind = Literal["stream", "browser"]


def close_frame(code: int, reason: bytes) -> bytes:
    """A complete, unmasked close frame (the reason must fit a control frame: 123 bytes)."""
    payload = struct.pack("!H", code) + reason[:123]
    return struct.pack("!BB", 0x80 | OP_CLOSE, len(payload)) + payload


def text_frame(payload: bytes) -> bytes:
    """A complete, unmasked, final WebSocket text frame carrying payload."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | OP_TEXT, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | OP_TEXT, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | OP_TEXT, 127, n) + payload


@dataclass(eq=False, slots=True)
class Conn:
    """One open socket: an event-stream client or a browser tab."""

    user: User
    kind: ConnKind
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    credential: Credential
    # Browser tabs show one room; typing and message fragments go to its viewers.
    room_id: int | None = None
    ip: str = ""
    dropped: bool = False
    # The server sent its close frame and waits for the client's answer (Hub.close).
    closing: bool = False
    # While a `since` replay is being sent, live frames wait here (at most the send buffer's bound).
    held: list[tuple[int, bytes]] | None = field(default=None, repr=False)
    held_bytes: int = 0

    @property
    def open(self) -> bool:
        return not (self.dropped or self.closing or self.ws.closed or self.transport.is_closing())


class Encoder(Protocol):
    """Builds the wire forms of a change (chatd.services.live.Live): the hub carries changes
    as plain data and asks this for bytes, once per form."""

    def encode(self, change: Change, form: str) -> bytes: ...


class Envelope:
    """One committed change, with each wire form built at most once, on demand."""

    __slots__ = ("change", "message", "message_id", "room_id", "author_id", "kind", "_encoder", "_cache")

    def __init__(self, change: Change, encoder: Encoder) -> None:
        self.change = change
        self.message_id = change.id  # the change log's id: replays hold and release by it
        self.room_id = change.room_id
        self.author_id = change.author_id
        self.kind = change.kind
        self.message = change.message
        self._encoder = encoder
        self._cache: dict[str, bytes] = {}

    def frame(self, form: str) -> bytes:
        """form: stream; for a new message mine, other, mention, unread, unread-mention; for an
        update mine, other, mention; for a deletion deleted."""
        data = self._cache.get(form)
        if data is None:
            data = self._cache[form] = text_frame(self._encoder.encode(self.change, form))
        return data


class Metrics:
    """Counters the hub and the writer keep for /metrics."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.dropped_slow = 0
        self.messages_stored = 0
        self.write_buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
        self.write_counts = [0] * (len(self.write_buckets) + 1)
        self.write_sum = 0.0

    def observe_write(self, seconds: float) -> None:
        self.write_sum += seconds
        for i, bound in enumerate(self.write_buckets):
            if seconds <= bound:
                self.write_counts[i] += 1
                return
        self.write_counts[-1] += 1


class Hub:
    """Who is connected, what each may read, and delivery of ready-made frames."""

    def __init__(self, send_buffer_bytes: int, metrics: Metrics | None = None, access: Access | None = None) -> None:
        self.limit = send_buffer_bytes
        self.metrics = metrics or Metrics()
        # Who may read what: every delivery below asks it (chatd/access.py).
        self.access = access or Access()
        self.replay_stall = REPLAY_STALL
        self.conns: set[Conn] = set()
        self._emptied: asyncio.Event | None = None  # set when the last socket goes (shutdown)
        self.by_user: dict[int, set[Conn]] = {}
        self.viewers: dict[int, set[Conn]] = {}
        self.streams: set[Conn] = set()
        self.usernames: dict[int, str] = {}
        self.encoder: Encoder | None = None
        # The other processes' sockets, by process (chatd.services.peers): user id -> how many.
        self.remote: dict[str, dict[int, int]] = {}

    # -- routing, by the access table ---------------------------------------

    def readers(self, room_id: int) -> Iterable[Conn]:
        """Every socket whose user may read the room now."""
        access = self.access
        if room_id in access.public:
            return self.conns
        members = access.members(room_id) or ()
        return [c for uid in members for c in self.by_user.get(uid, ())]

    def watchers(self, room_id: int) -> list[Conn]:
        """Sockets that follow a room's live activity: its tabs, and streams, whose user may read it."""
        may_read = self.access.may_read
        if room_id in self.access.public:
            streams: Iterable[Conn] = self.streams
        else:
            streams = [c for c in self.readers(room_id) if c.kind == "stream"]
        return [*(c for c in self.viewers.get(room_id, ()) if may_read(c.user.id, room_id)), *streams]

    # -- connections --------------------------------------------------------

    def add(self, conn: Conn) -> bool:
        """Register a socket; True when it is the user's first (they came online)."""
        self.conns.add(conn)
        self.usernames[conn.user.id] = conn.user.username
        mine = self.by_user.setdefault(conn.user.id, set())
        mine.add(conn)
        if conn.room_id is not None:
            self.viewers.setdefault(conn.room_id, set()).add(conn)
        if conn.kind == "stream":
            self.streams.add(conn)
        return len(mine) == 1

    def remove(self, conn: Conn) -> bool:
        """Forget a socket; True when it was the user's last (they went offline)."""
        if conn not in self.conns:
            return False
        self.conns.discard(conn)
        if not self.conns and self._emptied is not None:
            self._emptied.set()
        self.streams.discard(conn)
        if conn.room_id is not None:
            viewers = self.viewers.get(conn.room_id)
            if viewers is not None:
                viewers.discard(conn)
                if not viewers:
                    del self.viewers[conn.room_id]
        mine = self.by_user.get(conn.user.id)
        if mine is None:
            return False
        mine.discard(conn)
        if not mine:
            del self.by_user[conn.user.id]
            return True
        return False

    def count_for(self, user_id: int) -> int:
        """The user's open sockets, on every process of the server."""
        return len(self.by_user.get(user_id, ())) + sum(r.get(user_id, 0) for r in self.remote.values())

    def count_here(self, user_id: int) -> int:
        return len(self.by_user.get(user_id, ()))

    def online_elsewhere(self, user_id: int) -> bool:
        """Has another process a socket of this user's?"""
        return any(user_id in r for r in self.remote.values())

    def online(self) -> list[str]:
        return sorted(self.usernames[uid] for uid in self.online_ids())

    def online_ids(self) -> set[int]:
        """Users with a socket open on any process of the server."""
        if not self.remote:
            return set(self.by_user)
        return set(self.by_user).union(*self.remote.values())

    # -- delivery -----------------------------------------------------------

    def publish(self, changes: list[Change]) -> None:
        """Deliver committed changes, in id order, to everyone who may read their room.

        A batch of several goes to each socket as one write."""
        encoder = self.encoder
        assert encoder is not None, "the hub publishes once an encoder is set (Live sets itself)"
        envelopes = [Envelope(change, encoder) for change in changes]
        if len(envelopes) == 1:
            env = envelopes[0]
            stream = None  # the same bytes for every event-stream socket, looked up once
            for conn in self.readers(env.room_id):
                if conn.kind == "stream":
                    data = stream = stream or env.frame("stream")
                else:
                    data = self._frame_for(env, conn)
                    if data is None:
                        continue
                if conn.held is not None:
                    self.hold(conn, env.message_id, data)
                else:
                    self.write(conn, data, 1)
            return
        outgoing: dict[Conn, list[bytes]] = {}
        for env in envelopes:
            for conn in self.readers(env.room_id):
                data = self._frame_for(env, conn)
                if data is None:
                    continue
                if conn.held is not None:
                    self.hold(conn, env.message_id, data)
                else:
                    outgoing.setdefault(conn, []).append(data)
        for conn, frames in outgoing.items():
            self.write(conn, frames[0] if len(frames) == 1 else b"".join(frames), len(frames))

    def _frame_for(self, env: Envelope, conn: Conn) -> bytes | None:
        """Which form of the change this socket gets, or None."""
        if conn.kind == "stream":
            return env.frame("stream")
        uid = conn.user.id
        if conn.room_id == env.room_id:
            if env.message is None:
                return env.frame("deleted")
            return env.frame(variant(env.message, conn.user))
        if env.kind != "message" or env.message is None:  # changes elsewhere: Live recounts unread
            return None
        if uid == env.author_id:
            return None  # one's own message in a room one is not looking at changes nothing
        return env.frame("unread-mention" if conn.user.username in env.message.mentions else "unread")

    def send_to(self, conns: Iterable[Conn], data: bytes) -> None:
        """Send one ready frame to each of these sockets (presence, typing, unread)."""
        for conn in conns:
            if conn.held is not None:
                self.hold(conn, 0, data)
            else:
                self.write(conn, data, 1)

    def hold(self, conn: Conn, message_id: int, data: bytes) -> None:
        """Keep a live frame until the socket's replay is sent; past the send buffer's bound,
        the socket is a slow consumer like any other."""
        assert conn.held is not None
        if conn.dropped:
            return
        conn.held_bytes += len(data)
        if conn.held_bytes > self.limit:
            self.drop(conn)
            conn.held = []
            return
        conn.held.append((message_id, data))

    def write(self, conn: Conn, data: bytes, count: int) -> None:
        transport = conn.transport  # Conn.open, spelled out: this runs once per delivery
        if conn.dropped or conn.closing or conn.ws.closed or transport.is_closing():
            return
        if transport.get_write_buffer_size() > self.limit:
            self.drop(conn)
            return
        transport.write(data)
        self.metrics.deliveries += count

    def drop(self, conn: Conn) -> None:
        """Disconnect a consumer that stopped reading; it comes back with `since`."""
        if conn.dropped:
            return
        conn.dropped = True
        self.metrics.dropped_slow += 1
        log.warning("event=slow_consumer_dropped user=%s kind=%s", conn.user.username, conn.kind)
        conn.transport.abort()

    async def replay(self, conn: Conn, payloads: list[bytes]) -> bool:
        """Send replayed events as the client reads them; False if it was dropped.

        aiohttp's send_frame waits for the socket to drain whenever its writer has sent
        writer_limit bytes (sockets.open_socket sets it below send_buffer_bytes), so a replay
        of any size holds at most about that much in the socket's buffer. A client that
        reads nothing for replay_stall seconds is dropped, as live traffic drops it."""
        for payload in payloads:
            if not conn.open:
                return False
            try:
                await asyncio.wait_for(conn.ws.send_frame(payload, WSMsgType.TEXT), self.replay_stall)
            except TimeoutError:
                self.drop(conn)
                return False
            except (ConnectionError, RuntimeError):  # the client went away meanwhile
                return False
            self.metrics.deliveries += 1
        return conn.open

    def release(self, conn: Conn, after_id: int) -> None:
        """End a replay: send held frames newer than the replay, in order."""
        held, conn.held, conn.held_bytes = conn.held or [], None, 0
        frames = [data for mid, data in held if mid == 0 or mid > after_id]
        if frames:
            self.write(conn, b"".join(frames), len(frames))

    def close(self, conns: Iterable[Conn], code: int, reason: bytes) -> int:
        """Start the closing handshake on these sockets; returns how many were open.

        The close frame goes out now and nothing follows it. The client's answering
        close frame ends the socket's read loop, which closes the connection
        (sockets.run_socket): aiohttp's own close() from another task would drop the
        connection without waiting for that answer, and clients would then report
        1006 instead of the code sent. A client that does not answer within
        CLOSE_GRACE seconds is cut off."""
        frame = close_frame(code, reason)
        loop = asyncio.get_running_loop()
        count = 0
        for conn in conns:
            if not conn.open:
                continue
            conn.closing = True
            conn.transport.write(frame)
            loop.call_later(CLOSE_GRACE, conn.transport.abort)  # a no-op once it is closed
            count += 1
        return count

    async def wait_empty(self, timeout: float) -> None:
        """Wait until every socket has gone, or `timeout` seconds."""
        if not self.conns:
            return
        self._emptied = asyncio.Event()
        try:
            await asyncio.wait_for(self._emptied.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._emptied = None
