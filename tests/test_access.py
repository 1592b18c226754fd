"""Access that ends, ends at once: on every open socket, for every frame, delivery and replay.

Removing a member, leaving, deleting a room, deactivating a user, a new password or a
sign-out takes effect in the same turn of the event loop on sockets already open, tabs
and streams alike; a socket the server has closed has no further frame handled, even
when the client never answers the close. The hostile clients here are raw sockets that
keep sending after the server's close frame (aiohttp's client would answer it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType

from chatd.state import SERVICES
from conftest import Chat, csrf_of, end_of, next_json, run_cli

pytestmark = pytest.mark.usefixtures("no_server_tracebacks")


class RawSocket:
    """A WebSocket client that does only what it is told: it never answers a close frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, chat: Chat, path: str, headers: dict[str, str]) -> RawSocket:
        reader, writer = await asyncio.open_connection(chat.client.host, chat.client.port)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {chat.client.host}:{chat.client.port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 30)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return first & 0x0F, await self.reader.readexactly(n)

    async def until_close(self) -> list[bytes]:
        """Text payloads received up to the server's close frame."""
        texts = []
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                return texts
            if opcode == 0x1:
                texts.append(payload)

    def close(self) -> None:
        self.writer.close()


def own_origin(chat: Chat) -> str:
    return chat.url("/").rstrip("/")


async def post(chat: Chat, headers: dict, room: str, body: str) -> dict:
    resp = await chat.client.post(f"/api/v1/rooms/{room}/messages", json={"body": body}, headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]


async def bodies(chat: Chat, headers: dict, room: str) -> list[str]:
    resp = await chat.client.get(f"/api/v1/rooms/{room}/messages?limit=200", headers=headers)
    return [m["body"] for m in (await resp.json())["messages"]]


async def private_room(chat: Chat, owner: dict, slug: str, *members: str) -> None:
    resp = await chat.client.post("/api/v1/rooms", json={"slug": slug, "private": True}, headers=owner)
    assert resp.status == 201
    for name in members:
        resp = await chat.client.post(f"/api/v1/rooms/{slug}/members", json={"username": name}, headers=owner)
        assert resp.status == 200


def cookie_header(session: ClientSession) -> str:
    return "; ".join(f"{c.key}={c.value}" for c in session.cookie_jar)


async def test_a_removed_members_open_tab_can_no_longer_read_or_write_the_room(chat: Chat) -> None:
    alice = await chat.bearer("alice", admin=True)
    await chat.user("bob")
    await private_room(chat, alice, "secret", "bob")
    bob = await chat.browser("bob")
    async with bob:
        tab = await RawSocket.open(chat, "/ws?room=secret", {
            "Cookie": cookie_header(bob), "Origin": own_origin(chat)})
        alice_stream = await chat.stream(alice)
        resp = await chat.client.delete("/api/v1/rooms/secret/members/bob", headers=alice)
        assert resp.status == 204
        # The tab is told at once, and closed (1008: do not reconnect).
        texts = await tab.until_close()
        assert any(json.loads(t).get("room_removed") == "secret" for t in texts if t.startswith(b"{")), texts
        # A client that ignores the close and goes on: nothing it sends is handled.
        tab.send({"type": "send", "body": "still here?", "client_id": "late-1"})
        tab.send({"type": "typing"})
        tab.send({"type": "read", "message_id": "999"})
        await alice_stream.send_json({"type": "typing", "room": "secret"})
        await post(chat, alice, "secret", "after bob")
        # Everything the tab gets before the server cuts it off: no message, typing or count.
        rest = await asyncio.wait_for(tab.reader.read(), 30)
        assert b"after bob" not in rest and b"typing" not in rest and b"unread" not in rest
        tab.close()
        assert await bodies(chat, alice, "secret") == ["after bob"]
        await alice_stream.close()


async def test_a_removed_members_stream_gets_room_removed_and_nothing_more(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice", admin=True), await chat.bearer("bob")
    await private_room(chat, alice, "secret", "bob")
    bob_ws = await chat.stream(bob)
    await post(chat, alice, "secret", "while a member")
    assert (await next_json(bob_ws, "message"))["message"]["body"] == "while a member"
    assert (await chat.client.delete("/api/v1/rooms/secret/members/bob", headers=alice)).status == 204
    assert await next_json(bob_ws, "room_removed") == {"type": "room_removed", "room": "secret"}
    await bob_ws.send_json({"type": "send", "room": "secret", "body": "let me in", "client_id": "x1"})
    assert (await next_json(bob_ws, "error"))["code"] == "not_found"
    await bob_ws.send_json({"type": "typing", "room": "secret"})
    assert (await next_json(bob_ws, "error"))["code"] == "not_found"
    await post(chat, alice, "secret", "after bob")
    await post(chat, alice, "general", "sentinel")
    seen = []
    while (event := await next_json(bob_ws, "message"))["message"]["body"] != "sentinel":
        seen.append(event["message"]["body"])
    assert seen == []
    # Replay asks the same question: reconnecting with since=0 brings nothing of the room.
    again = await chat.stream(bob, since=0)
    await post(chat, alice, "general", "sentinel 2")
    replayed = []
    while (event := await next_json(again, "message"))["message"]["body"] != "sentinel 2":
        replayed.append(event["message"]["room"])
    assert "secret" not in replayed
    assert await bodies(chat, alice, "secret") == ["while a member", "after bob"]
    await bob_ws.close()
    await again.close()


async def test_an_added_member_gets_the_room_on_an_open_stream_without_reconnecting(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    await private_room(chat, alice, "secret")
    bob_ws = await chat.stream(bob)
    resp = await chat.client.post("/api/v1/rooms/secret/members", json={"username": "bob"}, headers=alice)
    assert resp.status == 200
    assert (await next_json(bob_ws, "room_updated"))["room"]["slug"] == "secret"
    await post(chat, alice, "secret", "welcome")
    assert (await next_json(bob_ws, "message"))["message"]["body"] == "welcome"
    await bob_ws.close()


async def test_leaving_from_the_members_page_closes_the_rooms_tab(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    await chat.user("bob")
    await private_room(chat, alice, "secret", "bob")
    bob = await chat.browser("bob")
    async with bob:
        tab = await bob.ws_connect("/ws?room=secret", headers={"Origin": own_origin(chat)})
        other = await bob.ws_connect("/ws?room=general", headers={"Origin": own_origin(chat)})
        page = await bob.get("/r/secret/members")
        resp = await bob.post("/r/secret/members", data={"csrf": csrf_of(await page.text()), "action": "leave"},
                              allow_redirects=False)
        assert resp.status == 303
        frames = []
        while (msg := await asyncio.wait_for(tab.receive(), 30)).type == WSMsgType.TEXT:
            frames.append(msg.data)
        assert tab.close_code == 1008
        assert any('"room_removed":"secret"' in f and '"here":true' in f for f in frames), frames
        # bob's tab of another room only drops it from the sidebar, and stays open.
        while '"room_removed":"secret"' not in (await asyncio.wait_for(other.receive(), 30)).data:
            pass
        assert not other.closed
        await other.close()


async def test_a_post_queued_before_access_ends_is_refused_when_its_batch_is_written(chat: Chat) -> None:
    """The store itself refuses a message from a non-member, in the transaction that would
    store it: access cannot be slipped past by a post already on its way."""
    alice_h = await chat.bearer("alice")
    await private_room(chat, alice_h, "secret")
    services = chat.services
    carol = await chat.user("carol")
    room = services.store.room_named("secret")
    with pytest.raises(Exception) as refused:
        await services.store.messages_writer.submit(room, carol, "sneaking in", "sneaking in", None)
    assert getattr(refused.value, "status", None) == 404
    assert await bodies(chat, alice_h, "secret") == []


async def test_a_revoked_socket_that_never_answers_the_close_has_no_frame_handled(chat: Chat) -> None:
    token = await chat.bearer("bob")
    await chat.user("alice")
    bob = await chat.browser("bob")
    async with bob:
        sockets = {
            "token stream": await RawSocket.open(chat, "/api/v1/stream", {"Authorization": token["Authorization"]}),
            "cookie stream": await RawSocket.open(chat, "/api/v1/stream", {"Cookie": cookie_header(bob)}),
            "tab": await RawSocket.open(chat, "/ws?room=general", {
                "Cookie": cookie_header(bob), "Origin": own_origin(chat)}),
        }
        await chat.services.accounts.deactivate("bob")
        for name, ws in sockets.items():
            await ws.until_close()  # the server's close frame (not answered)
            for i in range(10):
                if name == "tab":
                    ws.send({"type": "send", "body": f"{name} {i}", "client_id": f"t{i}"})
                else:
                    ws.send({"type": "send", "room": "general", "body": f"{name} {i}", "client_id": f"s{i}"})
        for ws in sockets.values():
            await asyncio.wait_for(ws.reader.read(), 30)  # until the server cuts it off
            ws.close()
    alice = await chat.bearer("alice")
    assert await bodies(chat, alice, "general") == []


async def test_a_session_ended_by_a_command_is_closed_before_the_next_message_is_delivered(
    chat: Chat, config: Any
) -> None:
    """`chatd deluser` in another process: the next message anyone posts finds bob's stream
    already closed, however long the server's own poll would have taken."""
    await chat.services.stop()  # no poller: only the path of the next message can notice
    bob, alice = await chat.bearer("bob"), await chat.bearer("alice")
    bob_ws = await chat.stream(bob)
    assert (await asyncio.to_thread(run_cli, "deluser", "bob", db=config.db)).returncode == 0
    await post(chat, alice, "general", "after the command")
    msg = await end_of(bob_ws)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and bob_ws.close_code == 1008


async def test_a_replay_to_a_client_that_never_reads_is_sent_in_pieces_and_dropped(make_chat) -> None:
    """since=0 over a room of long messages, from sockets that read nothing: what the server
    holds for each stays near send_buffer_bytes, and each is dropped as a slow consumer."""
    limit = 262_144
    chat = await make_chat(send_buffer_bytes=limit)
    hub = chat.services.hub
    hub.replay_stall = 1.0  # seconds without reading before a replaying socket is dropped
    alice = await chat.bearer("alice")
    body = "x" * 9_000
    for i in range(0, 600, 50):
        await asyncio.gather(*(post(chat, alice, "general", f"{n} {body}") for n in range(i, i + 50)))
    sockets = []
    for _ in range(3):
        raw = await RawSocket.open(chat, "/api/v1/stream?since=0", {"Authorization": alice["Authorization"]})
        sockets.append(raw)
    most = 0
    async with asyncio.timeout(120):  # a bound on the wait, so that a server that never drops fails
        # Dropped, then gone from the hub: its socket's handler ends a turn or more after the drop.
        while hub.metrics.dropped_slow < 3 or hub.conns:
            most = max([most, *(c.transport.get_write_buffer_size() for c in list(hub.conns))])
            await asyncio.sleep(0.01)
    assert most <= limit + 16_384, most  # the bound, and at most one message over it
    assert hub.metrics.dropped_slow == 3 and not hub.conns
    for raw in sockets:
        raw.close()


async def test_a_long_replay_arrives_whole_in_order_across_pages(make_chat) -> None:
    chat = await make_chat()
    alice = await chat.bearer("alice")
    ids = []
    for i in range(0, 1200, 100):
        ids += [m["id"] for m in await asyncio.gather(
            *(post(chat, alice, "general", f"m{n}") for n in range(i, i + 100)))]
    ids.sort()
    ws = await chat.stream(alice, since=0)
    live = await post(chat, alice, "general", "live")
    got = []
    while True:
        event = await next_json(ws, "message")
        got.append(event["message"]["id"])
        if event["message"]["id"] == live["id"]:
            break
    assert got == ids[-1000:] + [live["id"]]
    await ws.close()


@pytest.mark.parametrize("change", ["deactivate", "password"])
async def test_deactivation_and_a_new_password_close_open_sockets_in_the_same_turn(chat: Chat, change: str) -> None:
    token = await chat.bearer("bob")
    bob = await chat.browser("bob")
    async with bob:
        tab = await bob.ws_connect("/ws?room=general", headers={"Origin": own_origin(chat)})
        stream = await chat.stream(token)
        hub, user = chat.services.hub, await chat.services.store.user_by_name("bob")
        hubs = {id(h): h for h in (hub, chat.peer.app[SERVICES].hub)}.values()  # two with sqlite+redis
        while sum(len(h.by_user.get(user.id, ())) for h in hubs) < 2:
            await asyncio.sleep(0.01)  # both sockets registered (the stream on the peer, if there is one)
        if change == "deactivate":
            await chat.services.accounts.deactivate("bob")
        else:
            await chat.services.accounts.set_password("bob", "another good password")
        # No poll, no next message needed: the sockets that lost their credential are closing
        # already (a new password ends sessions; API tokens go on working, as `chatd passwd` says).
        # On this process in this turn; a peer's sockets close when its broker brings the news.
        still_open = {conn.kind for conn in hub.by_user.get(user.id, ()) if conn.open}
        assert still_open == (set() if change == "deactivate" or chat.peer is not chat.client else {"stream"})
        for ws in (tab, stream) if change == "deactivate" else (tab,):
            await end_of(ws)
            assert ws.close_code == 1008
        await stream.close()
