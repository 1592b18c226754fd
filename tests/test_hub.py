"""The hub on its own: routing by the access table, forms per socket, held frames during a
replay, slow consumers. Real loopback TCP connections carry the frames, read back and parsed."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from chatd.access import Access
from chatd.hub import Conn, Hub
from chatd.models import Change, Credential, Message, User, variant

ALICE, BOB, CAROL = User(1, "alice", False), User(2, "bob", False), User(3, "carol", False)
PUBLIC, SECRET = 10, 20


class Forms:
    """The hub's Encoder, recording what it was asked to build (Live is the real one)."""

    def __init__(self, pad: int = 0) -> None:
        self.built: list[tuple[int, str]] = []
        self.pad = "x" * pad

    def encode(self, change: Change, form: str) -> bytes:
        self.built.append((change.id, form))
        data = {"id": change.id, "kind": change.kind, "form": form}
        return json.dumps({**data, "pad": self.pad} if self.pad else data).encode()


class Peer:
    """A connected socket pair: the server side's transport for the hub, the client side read."""

    def __init__(self, transport: asyncio.Transport, reader: asyncio.StreamReader) -> None:
        self.transport, self.reader = transport, reader

    async def frames(self, n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            head = await asyncio.wait_for(self.reader.readexactly(2), 10)
            size = head[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            out.append(json.loads(await self.reader.readexactly(size)))
        return out


@pytest.fixture
async def peers() -> AsyncIterator[Any]:
    accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(writer.transport)  # type: ignore[arg-type]
        await asyncio.Event().wait()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    opened: list[asyncio.StreamWriter] = []

    async def connect() -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        return Peer(await accepted.get(), reader)

    yield connect
    for writer in opened:
        writer.close()
    server.close()


def hub_with(forms: Forms, limit: int = 1 << 20) -> Hub:
    access = Access()
    access.add_room(PUBLIC, "public")
    access.add_room(SECRET, "private", [ALICE.id])
    hub = Hub(limit, access=access)
    hub.encoder = forms
    return hub


async def attach(hub: Hub, connect: Any, user: User, kind: str, room: int | None = None) -> tuple[Conn, Peer]:
    peer = await connect()
    conn = Conn(user, kind, web.WebSocketResponse(), peer.transport, Credential("token", b"x"), room)  # type: ignore[arg-type]
    hub.add(conn)
    return conn, peer


def message(mid: int, room: int, author: User, mentions: tuple[str, ...] = ()) -> Message:
    return Message(mid, room, "r", author.username, author.id, "b", "b", 0.0, None, mentions, rev=mid)


def new(mid: int, room: int, author: User, mentions: tuple[str, ...] = ()) -> Change:
    return Change(mid, "message", room, mid, author.id, message(mid, room, author, mentions))


async def test_forms_by_socket_and_access(peers: Any) -> None:
    forms = Forms()
    hub = hub_with(forms)
    stream_a, pa = await attach(hub, peers, ALICE, "stream")
    tab_b, pb = await attach(hub, peers, BOB, "browser", PUBLIC)
    tab_c, pc = await attach(hub, peers, CAROL, "browser", SECRET)  # not a member: reads nothing of it
    hub.publish([new(1, PUBLIC, ALICE, ("bob",)), new(2, SECRET, ALICE)])
    assert [f["form"] for f in await pa.frames(2)] == ["stream", "stream"]
    assert [(f["id"], f["form"]) for f in await pb.frames(1)] == [(1, "mention")]
    hub.publish([new(3, PUBLIC, BOB)])
    assert (await pb.frames(1))[0]["form"] == "mine"
    assert (await pc.frames(1))[0] == {"id": 1, "kind": "message", "form": "unread"}
    # Each form was built once, whoever got it.
    assert len(forms.built) == len(set(forms.built))


async def test_changes_go_to_the_rooms_tabs_and_streams_only(peers: Any) -> None:
    forms = Forms()
    hub = hub_with(forms)
    stream_b, ps = await attach(hub, peers, BOB, "stream")
    here, ph = await attach(hub, peers, BOB, "browser", PUBLIC)
    elsewhere, pe = await attach(hub, peers, CAROL, "browser", SECRET)
    edited = message(1, PUBLIC, ALICE)._replace(rev=5)
    hub.publish([Change(5, "updated", PUBLIC, 1, ALICE.id, edited), Change(6, "deleted", PUBLIC, 1, ALICE.id, None),
                 new(7, PUBLIC, ALICE)])
    assert [(f["id"], f["form"]) for f in await ps.frames(3)] == [(5, "stream"), (6, "stream"), (7, "stream")]
    assert [(f["id"], f["form"]) for f in await ph.frames(3)] == [(5, "other"), (6, "deleted"), (7, "other")]
    # The tab elsewhere hears of the new message (unread), not of changes to others.
    assert [(f["id"], f["form"]) for f in await pe.frames(1)] == [(7, "unread")]


async def test_access_taken_away_stops_delivery_at_once(peers: Any) -> None:
    hub = hub_with(Forms())
    stream, peer = await attach(hub, peers, ALICE, "stream")
    hub.publish([new(1, SECRET, ALICE)])
    hub.access.revoke(SECRET, ALICE.id)
    hub.publish([new(2, SECRET, BOB), new(3, PUBLIC, BOB)])
    assert [f["id"] for f in await peer.frames(2)] == [1, 3]


async def test_frames_held_during_a_replay_are_released_in_order(peers: Any) -> None:
    hub = hub_with(Forms())
    conn, peer = await attach(hub, peers, BOB, "stream")
    conn.held = []
    hub.publish([new(4, PUBLIC, ALICE)])  # already in the replay, which reads up to 5
    hub.publish([new(6, PUBLIC, ALICE)])
    hub.publish([Change(7, "deleted", PUBLIC, 4, ALICE.id, None)])
    hub.release(conn, 5)
    assert [f["id"] for f in await peer.frames(2)] == [6, 7]


async def test_a_slow_consumer_is_dropped_not_awaited(peers: Any) -> None:
    hub = hub_with(Forms(pad=20_000), limit=100_000)
    slow, _ = await attach(hub, peers, BOB, "stream")  # its client never reads: the kernel's
    fast, peer = await attach(hub, peers, CAROL, "stream")  # buffers fill, then the transport's
    for i in range(1, 3000):
        hub.publish([new(i, PUBLIC, ALICE)])
        await peer.frames(1)
        if slow.dropped:
            break
    assert slow.dropped and hub.metrics.dropped_slow == 1
    assert not fast.dropped


def test_one_rule_for_variants() -> None:
    m = message(1, PUBLIC, ALICE, ("bob",))
    assert [variant(m, u) for u in (ALICE, BOB, CAROL)] == ["mine", "mention", "other"]
