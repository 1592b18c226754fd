"""Private rooms and direct messages: only members read them, by every route."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType

from conftest import Chat, next_json


async def post(chat: Chat, headers: dict, room: str, body: str) -> dict:
    resp = await chat.client.post(f"/api/v1/rooms/{room}/messages", json={"body": body}, headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]


async def rooms_of(chat: Chat, headers: dict) -> dict[str, dict]:
    resp = await chat.client.get("/api/v1/rooms", headers=headers)
    return {r["slug"]: r for r in (await resp.json())["rooms"]}


async def drain_messages(ws) -> list[dict]:
    """Everything that arrives on a socket until a sentinel message in general."""
    seen = []
    while True:
        event = await next_json(ws)
        if event.get("type") == "message":
            if event["message"]["body"] == "sentinel":
                return seen
            seen.append(event["message"])


async def test_dm_is_one_room_for_both_and_hidden_from_others(chat: Chat) -> None:
    alice, bob, carol = [await chat.bearer(n) for n in ("alice", "bob", "carol")]
    carol_ws = await chat.stream(carol)
    resp = await chat.client.post("/api/v1/dms", json={"username": "bob"}, headers=alice)
    assert resp.status == 200
    room = (await resp.json())["room"]
    assert room["kind"] == "dm"
    resp = await chat.client.post("/api/v1/dms", json={"username": "ALICE"}, headers=bob)
    assert (await resp.json())["room"]["slug"] == room["slug"]
    slug = room["slug"]
    secret = await post(chat, alice, slug, "psst bob")
    bob_view = await rooms_of(chat, bob)
    assert bob_view[slug]["unread"] == 1
    assert slug not in await rooms_of(chat, carol)
    for method, path in [("GET", f"/api/v1/rooms/{slug}/messages"), ("POST", f"/api/v1/rooms/{slug}/messages"),
                         ("POST", f"/api/v1/rooms/{slug}/read"), ("GET", f"/api/v1/rooms/{slug}")]:
        resp = await chat.client.request(method, path, json={"body": "x", "message_id": 1}, headers=carol)
        assert resp.status == 404, (method, path)
        nothing = await chat.client.request(method, path.replace(slug, "no-such-room"),
                                            json={"body": "x", "message_id": 1}, headers=carol)
        assert (await resp.json()) == await nothing.json()  # the same answer as a missing room
    await post(chat, alice, "general", "sentinel")
    assert all(m["id"] != secret["id"] for m in await drain_messages(carol_ws))
    # Replays up to the first sentinel: the DM is in bob's and never in carol's.
    replay = await chat.stream(carol, since=0)
    assert await drain_messages(replay) == []
    bob_replay = await chat.stream(bob, since=0)
    assert [m["body"] for m in await drain_messages(bob_replay)] == ["psst bob"]
    for ws in (carol_ws, replay, bob_replay):
        await ws.close()


async def test_dm_with_unknown_user_is_404(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    for name in ("nobody", "", 5, "../x"):
        resp = await chat.client.post("/api/v1/dms", json={"username": name}, headers=alice)
        assert resp.status == 404


async def test_dm_pages_and_sockets_are_closed_to_a_third_user(chat: Chat) -> None:
    alice, _bob = await chat.bearer("alice"), await chat.bearer("bob")
    await chat.user("carol")
    resp = await chat.client.post("/api/v1/dms", json={"username": "bob"}, headers=alice)
    slug = (await resp.json())["room"]["slug"]
    await post(chat, alice, slug, "for bob only")
    carol = await chat.browser("carol")
    async with carol:
        for path in (f"/r/{slug}", f"/r/{slug}/history?before=999", f"/r/{slug}/members"):
            resp = await carol.get(path, allow_redirects=False)
            assert resp.status == 404, path
            assert "for bob only" not in await resp.text()
        origin = chat.url("/").rstrip("/")
        resp = await carol.get(f"/ws?room={slug}", headers={
            "Origin": origin, "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert resp.status == 404
        page = await carol.get("/r/general")
        assert slug not in await page.text()


async def test_private_room_membership(chat: Chat) -> None:
    alice, bob, carol = [await chat.bearer(n) for n in ("alice", "bob", "carol")]
    admin = await chat.bearer("root", admin=True)
    resp = await chat.client.post("/api/v1/rooms", json={"slug": "ops", "name": "Ops", "private": True},
                                  headers=alice)
    assert resp.status == 201 and (await resp.json())["room"]["kind"] == "private"
    assert "ops" in await rooms_of(chat, alice)
    assert "ops" not in await rooms_of(chat, bob)
    bob_ws = await chat.stream(bob)
    hidden = await post(chat, alice, "ops", "before bob")
    # Non-members cannot read, post or add themselves.
    assert (await chat.client.get("/api/v1/rooms/ops/messages", headers=bob)).status == 404
    resp = await chat.client.post("/api/v1/rooms/ops/members", json={"username": "bob"}, headers=bob)
    assert resp.status == 404
    # A member adds bob; bob then reads it (history included) and gets its live messages.
    resp = await chat.client.post("/api/v1/rooms/ops/members", json={"username": "bob"}, headers=alice)
    assert resp.status == 200 and (await resp.json())["room"]["slug"] == "ops"
    assert (await rooms_of(chat, bob))["ops"]["unread"] == 0
    history = await chat.client.get("/api/v1/rooms/ops/messages", headers=bob)
    assert [m["id"] for m in (await history.json())["messages"]] == [hidden["id"]]
    live = await post(chat, alice, "ops", "welcome bob")
    got = await next_json(bob_ws, "message")
    assert got["message"]["id"] == live["id"]
    assert (await rooms_of(chat, bob))["ops"]["unread"] == 1
    # Carol still sees nothing; the admin can manage membership without being a member.
    assert "ops" not in await rooms_of(chat, carol)
    resp = await chat.client.get("/api/v1/rooms/ops/members", headers=admin)
    assert (await resp.json())["members"] == ["alice", "bob"]
    resp = await chat.client.post("/api/v1/rooms/ops/members", json={"username": "carol"}, headers=admin)
    assert resp.status == 200
    resp = await chat.client.delete("/api/v1/rooms/ops/members/carol", headers=admin)
    assert resp.status == 204
    assert "ops" not in await rooms_of(chat, carol)
    # Bob cannot remove alice, but can leave.
    assert (await chat.client.delete("/api/v1/rooms/ops/members/alice", headers=bob)).status == 404
    assert (await chat.client.delete("/api/v1/rooms/ops/members/bob", headers=bob)).status == 204
    assert (await chat.client.get("/api/v1/rooms/ops/messages", headers=bob)).status == 404
    await post(chat, alice, "ops", "after bob left")
    await post(chat, alice, "general", "sentinel")
    assert "after bob left" not in [m["body"] for m in await drain_messages(bob_ws)]
    # Public rooms have no membership to manage.
    resp = await chat.client.post("/api/v1/rooms/general/members", json={"username": "bob"}, headers=alice)
    assert resp.status == 400
    await bob_ws.close()


async def test_typing_in_private_room_stays_inside(chat: Chat) -> None:
    alice, carol = await chat.bearer("alice"), await chat.bearer("carol")
    await chat.client.post("/api/v1/rooms", json={"slug": "secret", "private": True}, headers=alice)
    carol_ws = await chat.stream(carol)
    alice_ws = await chat.stream(alice)
    await alice_ws.send_json({"type": "typing", "room": "secret"})
    await alice_ws.send_json({"type": "typing", "room": "general"})
    event = await next_json(carol_ws, "typing")
    assert event["room"] == "general"
    await carol_ws.send_json({"type": "typing", "room": "secret"})
    assert (await next_json(carol_ws, "error"))["code"] == "not_found"
    await carol_ws.send_json({"type": "send", "room": "secret", "body": "x", "client_id": "c"})
    assert (await next_json(carol_ws, "error"))["code"] == "not_found"
    await carol_ws.close()
    await alice_ws.close()


async def test_unread_never_leaks_closed_rooms_over_browser_socket(chat: Chat) -> None:
    alice, _ = await chat.bearer("alice"), await chat.bearer("bob")
    await chat.user("carol")
    resp = await chat.client.post("/api/v1/dms", json={"username": "bob"}, headers=alice)
    slug = (await resp.json())["room"]["slug"]
    carol = await chat.browser("carol")
    async with carol:
        ws = await carol.ws_connect("/ws?room=general", headers={"Origin": chat.url("/").rstrip("/")})
        await post(chat, alice, slug, "dm text")
        await post(chat, alice, "general", "public text")
        frames = []
        while True:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert msg.type == WSMsgType.TEXT
            frames.append(msg.data)
            if "public text" in msg.data:
                break
        assert not any(slug in f or "dm text" in f for f in frames)
        await ws.close()


async def test_reopening_a_dm_writes_nothing(chat: Chat) -> None:
    alice, bob = await chat.user("alice"), await chat.user("bob")
    first = await chat.services.chat.open_dm(alice, "bob")
    epoch = chat.services.store.epoch
    again = await chat.services.chat.open_dm(bob, "alice")
    assert again.id == first.id
    assert chat.services.store.epoch == epoch  # no write transaction for a page view
