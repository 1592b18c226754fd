"""The life of a WebSocket, shared by the event stream and browser tabs.

Upgrade under the per-user limit, attach (with `since` replay), then read frames
until the socket closes: each text frame becomes a task, and any mistake in it is
answered on the socket in the caller's error shape. Detach happens whatever ends it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import WSMsgType, web

from chatd import rules
from chatd.auth import client_ip
from chatd.errors import BadInput, ChatdError, RateLimited
from chatd.hub import Conn
from chatd.models import Credential, Room, User
from chatd.services import Services
from chatd.state import CONFIG, SERVICES

log = logging.getLogger("chatd.sockets")
MAX_IN_FLIGHT = 64

Handler = Callable[[dict[str, Any]], Awaitable[None]]
# (code, message, client_id to echo) -> the frame that tells the client
ErrorShape = Callable[[str, str, "str | None"], dict[str, Any]]


def echoed_id(frame: object) -> str | None:
    """The frame's client_id if it is one we may send back, else None."""
    cid = frame.get("client_id") if isinstance(frame, dict) else None
    return cid if isinstance(cid, str) and rules.CLIENT_ID_RE.fullmatch(cid) else None


def parse_frame(raw: str) -> dict[str, Any]:
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise BadInput("frames must be JSON") from None
    if not isinstance(frame, dict):
        raise BadInput("frames must be JSON objects")
    return frame


async def open_socket(
    request: web.Request, user: User, credential: Credential, kind: Literal["stream", "browser"],
    room: Room | None = None,
) -> Conn:
    """Upgrade the request, unless the user already has as many sockets as allowed (429)."""
    config, services = request.app[CONFIG], request.app[SERVICES]
    if services.hub.count_for(user.id) >= config.connections_per_user:
        raise RateLimited("too many open connections for this user", 5)
    # autoclose off: run_socket answers a client's close frame itself, and does not
    # answer the reply to a close frame of ours with a second one.
    # writer_limit: a replay waits for the client to read after this many bytes (Hub.replay).
    ws = web.WebSocketResponse(heartbeat=30, compress=False, max_msg_size=config.max_frame_bytes,
                               autoclose=False, writer_limit=max(4096, min(1 << 18, config.send_buffer_bytes // 2)))
    await ws.prepare(request)
    return Conn(user, kind, ws, request.transport, credential,  # type: ignore[arg-type]
                room_id=room.id if room else None, ip=client_ip(request))


async def run_socket(
    services: Services, conn: Conn, since: int | None, room: Room | None, handle: Handler,
    error: ErrorShape, greet: Callable[[], Awaitable[None]] | None = None,
) -> web.WebSocketResponse:
    """Attach, optionally greet, then hand every frame to `handle` until the socket closes."""
    tasks: set[asyncio.Task[None]] = set()
    try:
        await services.live.attach(conn, since, room)
        if greet is not None:
            await greet()
        async for msg in conn.ws:
            if not conn.open:
                continue  # closed by the server (revoked, no access): nothing more of it is handled
            if msg.type == WSMsgType.BINARY:
                services.live.send(conn, error("bad_request", "frames must be JSON text", None))
            elif msg.type == WSMsgType.TEXT:
                if len(tasks) >= MAX_IN_FLIGHT:
                    services.live.send(conn, error("rate_limited", "too many frames in flight", None))
                    continue
                task = asyncio.create_task(_answer(services, conn, msg.data, handle, error))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        services.live.detach(conn)
        for task in tasks:
            task.cancel()
        if conn.closing:  # our close frame was answered (or the client was cut off)
            conn.transport.close()
        else:  # answer the client's close frame; a no-op when aiohttp already closed
            await conn.ws.close()
    return conn.ws


async def _answer(services: Services, conn: Conn, raw: str, handle: Handler, error: ErrorShape) -> None:
    frame: Any = None
    try:
        # A session ended by another process is seen here, before the frame is handled.
        services.live.ensure_current()
        if not conn.open:
            return
        frame = parse_frame(raw)
        await handle(frame)
    except ChatdError as exc:
        services.live.send(conn, error(exc.code, exc.message, echoed_id(frame)))
    except Exception:  # a bug must not leave the client without an answer, nor reach it
        log.exception("event=frame_failed user=%s", conn.user.username)
        services.live.send(conn, error("internal", "the server could not handle that frame", None))


async def handle_frame(services: Services, conn: Conn, frame: dict[str, Any]) -> None:
    """One client frame, from a stream or a tab: the one dispatcher for both.

    A tab's frames are about the room it shows (asked anew for every frame: access may have
    ended) and default to `send`, the composer's form; a stream's name their room. Then the
    same handling: send, typing, or (tabs, and streams as an extension) a read mark."""
    chat = services.chat
    if conn.kind == "browser":
        room = services.live.socket_room(conn)
        kind = frame.get("type", "send")
    else:
        kind = frame.get("type")
        if kind not in ("send", "typing", "read"):
            raise BadInput("unknown frame type")
        if kind == "send" and not isinstance(frame.get("room"), str):
            raise BadInput("room is required")
        if kind == "send" and "body" not in frame:
            raise BadInput("body is required")
        room = await chat.room_for(conn.user, frame.get("room"))
    if kind == "send":
        message, created = await chat.post_in(conn.user, room, frame.get("body"), frame.get("client_id"), conn=conn)
        services.live.acknowledge_retry(conn, message, created)
    elif kind == "typing":
        chat.typing(conn.user, room)
    elif kind == "read":
        await chat.mark_read_in(conn.user, room, frame.get("message_id"))
    else:
        raise BadInput("unknown frame type")
