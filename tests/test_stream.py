"""The event stream: live delivery, acknowledgements, replay with `since`, presence, typing."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType

from conftest import Chat, end_of, next_json

# The hub writes frames straight to each socket's transport and reads its buffer size to
# drop slow consumers: every test here runs on both loops `chatd serve` may use (conftest).
pytestmark = pytest.mark.both_loops


async def test_runs_on_the_loop_of_its_parameter(request: pytest.FixtureRequest) -> None:
    wanted = request.node.callspec.id
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == wanted


async def post(chat: Chat, headers: dict, body: str, room: str = "general") -> dict:
    resp = await chat.client.post(f"/api/v1/rooms/{room}/messages", json={"body": body}, headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]


async def test_unauthenticated_upgrade_is_401(chat: Chat) -> None:
    resp = await chat.client.get(
        "/api/v1/stream",
        headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )
    assert resp.status == 401


async def test_send_is_acknowledged_and_broadcast(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    ws_a, ws_b = await chat.stream(alice), await chat.stream(bob)
    await ws_a.send_json({"type": "send", "room": "general", "body": "hello", "client_id": "k1"})
    ack = await next_json(ws_a, "message")
    got = await next_json(ws_b, "message")
    assert ack["message"]["client_id"] == "k1" and ack["message"]["body"] == "hello"
    assert got["message"]["id"] == ack["message"]["id"]
    stored = await chat.client.get("/api/v1/rooms/general/messages", headers=bob)
    assert [m["id"] for m in (await stored.json())["messages"]] == [ack["message"]["id"]]
    await ws_a.close()
    await ws_b.close()


async def test_messages_arrive_in_id_order_across_rooms(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    await chat.client.post("/api/v1/rooms", json={"slug": "two"}, headers=alice)
    ws = await chat.stream(bob)
    sent = await asyncio.gather(*(post(chat, alice, f"m{i}", "general" if i % 2 else "two") for i in range(40)))
    ids = [(await next_json(ws, "message"))["message"]["id"] for _ in sent]
    assert ids == sorted(m["id"] for m in sent)
    await ws.close()


async def test_since_replays_missed_messages_without_gap_or_duplicate(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    first = await post(chat, alice, "before")
    missed = [await post(chat, alice, f"missed {i}") for i in range(5)]
    ws = await chat.stream(bob, since=first["id"])
    # Messages posted while the replay is being read must come once, after it.
    live = asyncio.gather(*(post(chat, alice, f"live {i}") for i in range(5)))
    got = [(await next_json(ws, "message"))["message"]["id"] for _ in range(10)]
    posted = await live
    assert got == sorted([m["id"] for m in missed] + [m["id"] for m in posted])
    await ws.send_json({"type": "send", "room": "general", "body": "tail", "client_id": "t"})
    tail = await next_json(ws, "message")
    assert tail["message"]["client_id"] == "t"
    await ws.close()


async def test_since_replay_is_capped_at_newest_1000(make_chat) -> None:
    chat = await make_chat(messages_per_second=100000, message_burst=100000)
    alice = await chat.bearer("alice")
    room = await chat.services.chat.room_for(await chat.services.store.user_by_name("alice"), "general")
    user = await chat.services.store.user_by_name("alice")
    ids = []
    for chunk in range(11):
        results = await asyncio.gather(
            *(chat.services.chat.post_in(user, room, f"m{chunk}-{i}") for i in range(100))
        )
        ids += [m.id for m, _ in results]
    ws = await chat.stream(alice, since=0)
    got = [(await next_json(ws, "message"))["message"]["id"] for _ in range(1000)]
    assert got == sorted(ids)[-1000:]
    await ws.close()


async def test_bad_frames_get_error_events_and_connection_stays(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    ws = await chat.stream(alice)
    cases = [
        "not json", "[1,2]", '{"type": "nope"}', '{"type": "send", "room": "general"}',
        '{"type": "send", "body": "x", "client_id": "c"}', '{"type": "send", "room": "zzz", "body": "x"}',
        '{"type": "send", "room": "general", "body": "   "}',
    ]
    for raw in cases:
        await ws.send_str(raw)
        event = await next_json(ws, "error")
        assert event["code"] in ("bad_request", "not_found"), raw
    await ws.send_str('{"type": "send", "room": "general", "body": "' + "x" * 10_001 + '", "client_id": "big"}')
    event = await next_json(ws, "error")
    assert event["code"] == "too_large" and event["client_id"] == "big"
    await ws.send_bytes(b"\x00\x01")
    assert (await next_json(ws, "error"))["code"] == "bad_request"
    await ws.send_json({"type": "send", "room": "general", "body": "still here", "client_id": "ok"})
    assert (await next_json(ws, "message"))["message"]["client_id"] == "ok"
    await ws.close()


async def test_presence_events(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    ws_a = await chat.stream(alice)
    ws_b = await chat.stream(bob)
    event = await next_json(ws_a, "presence")
    assert event == {"type": "presence", "user": "bob", "online": True}
    # A second connection of bob's is not news; closing the last one is.
    ws_b2 = await chat.stream(bob)
    await ws_b.close()
    await ws_b2.close()
    event = await next_json(ws_a, "presence")
    assert event == {"type": "presence", "user": "bob", "online": False}
    await ws_a.close()


async def test_typing_reaches_others_only(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    ws_a, ws_b = await chat.stream(alice), await chat.stream(bob)
    await ws_a.send_json({"type": "typing", "room": "general"})
    assert await next_json(ws_b, "typing") == {"type": "typing", "room": "general", "user": "alice"}
    await ws_a.send_json({"type": "typing", "room": "nope"})
    assert (await next_json(ws_a, "error"))["code"] == "not_found"
    await ws_a.close()
    await ws_b.close()


async def test_slow_consumer_is_dropped_without_delaying_others(make_chat) -> None:
    chat = await make_chat(send_buffer_bytes=16_384, messages_per_second=100000, message_burst=100000)
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    # Many sockets that never read; their kernel buffers and then the server's fill up.
    sleepers = [await chat.client.ws_connect("/api/v1/stream", headers=bob, autoping=False) for _ in range(20)]
    reader = await chat.stream(alice)
    counted = {"n": 0}

    async def consume() -> None:
        async for msg in reader:
            if msg.type == WSMsgType.TEXT and '"type":"message"' in msg.data:
                counted["n"] += 1

    consumer = asyncio.create_task(consume())
    body = "x" * 9000
    sent = 0
    while chat.services.hub.metrics.dropped_slow < len(sleepers):
        await asyncio.gather(*(post(chat, alice, body) for _ in range(20)))
        sent += 20
        assert sent < 20_000, "slow consumers were never dropped"
    bob_id = (await chat.services.store.user_by_name("bob")).id
    async with asyncio.timeout(30):  # a dropped socket's handler ends a turn or more after the drop
        while chat.services.hub.count_for(bob_id):
            await asyncio.sleep(0.01)
    assert chat.services.hub.count_for(bob_id) == 0
    # The reading client got every message although the others stalled.
    await chat.client.post("/api/v1/rooms/general/messages", json={"body": "end"}, headers=alice)
    sent += 1
    while counted["n"] < sent:
        await asyncio.sleep(0.01)
        assert not consumer.done(), "the reading client was disconnected"
    assert counted["n"] == sent
    assert chat.services.hub.metrics.dropped_slow == len(sleepers)
    consumer.cancel()
    for ws in sleepers:
        await ws.close()
    await reader.close()


async def test_revoked_token_closes_stream(chat: Chat) -> None:
    bob = await chat.bearer("bob")
    ws = await chat.stream(bob)
    await chat.services.accounts.deactivate("bob")
    msg = await end_of(ws)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    resp = await chat.client.get("/api/v1/me", headers=bob)
    assert resp.status == 401
