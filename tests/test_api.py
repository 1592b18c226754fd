"""The JSON API of the contract, against the real app and a real SQLite file."""

from __future__ import annotations

import pytest

from conftest import CONFIGURATION, Chat


async def test_me_requires_credentials(chat: Chat) -> None:
    resp = await chat.client.get("/api/v1/me")
    assert resp.status == 401
    body = await resp.json()
    assert body["error"]["code"] == "unauthorized"
    resp = await chat.client.get("/api/v1/me", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401


async def test_me_with_token(chat: Chat) -> None:
    headers = await chat.bearer("alice", admin=True)
    resp = await chat.client.get("/api/v1/me", headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"username": "alice", "admin": True}


async def test_general_exists_and_rooms_list(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    resp = await chat.client.get("/api/v1/rooms", headers=headers)
    rooms = (await resp.json())["rooms"]
    assert {"slug": "general", "name": "general", "kind": "public", "unread": 0} in rooms


async def test_post_and_read_back(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    resp = await chat.client.post(
        "/api/v1/rooms/general/messages", json={"body": "hello <b>world</b>", "client_id": "c-1"},
        headers=headers,
    )
    assert resp.status == 201
    message = (await resp.json())["message"]
    assert message["author"] == "alice" and message["room"] == "general"
    assert message["body"] == "hello <b>world</b>"
    assert "&lt;b&gt;" in message["html"] and "<b>" not in message["html"]
    assert message["client_id"] == "c-1"
    assert message["created_at"].endswith("Z")
    resp = await chat.client.get("/api/v1/rooms/general/messages", headers=headers)
    assert [m["id"] for m in (await resp.json())["messages"]] == [message["id"]]


async def test_history_paging(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    ids = []
    for i in range(7):
        resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": f"m{i}"}, headers=headers)
        ids.append((await resp.json())["message"]["id"])
    assert ids == sorted(ids)

    async def page(query: str) -> list[int]:
        resp = await chat.client.get(f"/api/v1/rooms/general/messages?{query}", headers=headers)
        assert resp.status == 200
        return [m["id"] for m in (await resp.json())["messages"]]

    assert await page("limit=3") == ids[-3:]
    assert await page(f"before={ids[3]}&limit=2") == ids[1:3]
    assert await page(f"after={ids[3]}&limit=2") == ids[4:6]
    # Both: strictly between them, the lowest first (issue 14, point 6).
    assert await page(f"after={ids[1]}&before={ids[5]}") == ids[2:5]
    assert await page(f"after={ids[1]}&before={ids[5]}&limit=2") == ids[2:4]
    assert await page(f"after={ids[3]}&before={ids[4]}") == []
    assert await page(f"after={ids[5]}&before={ids[1]}") == []
    assert await page("") == ids
    for bad in ("limit=abc", "before=x", "after=-1", "limit=0"):
        resp = await chat.client.get(f"/api/v1/rooms/general/messages?{bad}", headers=headers)
        assert resp.status == 400, bad
    resp = await chat.client.get("/api/v1/rooms/general/messages?limit=1000", headers=headers)
    assert resp.status == 200


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"body": ""}, 400),
        ({"body": "   \n\t "}, 400),
        ({"body": 5}, 400),
        ({}, 400),
        ({"body": "x" * 10_001}, 413),
        ({"body": "x", "client_id": 7}, 400),
    ],
)
async def test_bad_bodies(chat: Chat, payload: dict, status: int) -> None:
    headers = await chat.bearer("alice")
    resp = await chat.client.post("/api/v1/rooms/general/messages", json=payload, headers=headers)
    assert resp.status == status
    assert "error" in await resp.json()
    resp = await chat.client.get("/api/v1/rooms/general/messages", headers=headers)
    assert (await resp.json())["messages"] == []


async def test_body_limit_counts_characters_not_bytes(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    resp = await chat.client.post(
        "/api/v1/rooms/general/messages", json={"body": "é" * 10_000}, headers=headers
    )
    assert resp.status == 201


async def test_malformed_json(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    for raw in (b"{", b"[]", b"null", b"\xff\xfe"):
        resp = await chat.client.post(
            "/api/v1/rooms/general/messages", data=raw, headers={**headers, "Content-Type": "application/json"}
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"


async def test_unknown_room_is_404(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    resp = await chat.client.get("/api/v1/rooms/nope/messages", headers=headers)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await chat.client.post("/api/v1/rooms/nope/messages", json={"body": "x"}, headers=headers)
    assert resp.status == 404


async def test_create_room(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    resp = await chat.client.post("/api/v1/rooms", json={"slug": "design", "name": "Design"}, headers=headers)
    assert resp.status == 201
    assert (await resp.json())["room"] == {"slug": "design", "name": "Design", "kind": "public", "unread": 0}
    resp = await chat.client.post("/api/v1/rooms", json={"slug": "design"}, headers=headers)
    assert resp.status == 409
    for bad in ({"slug": "Design"}, {"slug": ""}, {"slug": "a" * 65}, {"slug": "a b"}, {"slug": "x", "private": "yes"}):
        resp = await chat.client.post("/api/v1/rooms", json=bad, headers=headers)
        assert resp.status == 400, bad


async def test_unread_counts_others_messages_above_read_mark(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    bob = await chat.bearer("bob")
    ids = []
    for i in range(3):
        resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": f"hi {i}"}, headers=alice)
        ids.append((await resp.json())["message"]["id"])

    async def unread(headers: dict) -> int:
        rooms = (await (await chat.client.get("/api/v1/rooms", headers=headers)).json())["rooms"]
        return next(r["unread"] for r in rooms if r["slug"] == "general")

    assert await unread(bob) == 3
    assert await unread(alice) == 0  # one's own messages are never unread
    resp = await chat.client.post("/api/v1/rooms/general/read", json={"message_id": ids[1]}, headers=bob)
    assert resp.status == 204
    assert await unread(bob) == 1
    # A read mark never moves back.
    await chat.client.post("/api/v1/rooms/general/read", json={"message_id": ids[0]}, headers=bob)
    assert await unread(bob) == 1
    resp = await chat.client.post("/api/v1/rooms/general/read", json={"message_id": "x"}, headers=bob)
    assert resp.status == 400
    # Marking beyond the newest message is the newest message.
    await chat.client.post("/api/v1/rooms/general/read", json={"message_id": 10**9}, headers=bob)
    assert await unread(bob) == 0
    # Posting in a room reads it, as in Slack or Zulip.
    await chat.client.post("/api/v1/rooms/general/messages", json={"body": "more"}, headers=alice)
    assert await unread(bob) == 1
    await chat.client.post("/api/v1/rooms/general/messages", json={"body": "reply"}, headers=bob)
    assert await unread(bob) == 0 and await unread(alice) == 1


async def test_new_accounts_start_with_history_read(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    for i in range(3):
        await chat.client.post("/api/v1/rooms/general/messages", json={"body": f"old {i}"}, headers=alice)
    newcomer = await chat.bearer("newcomer")
    rooms = (await (await chat.client.get("/api/v1/rooms", headers=newcomer)).json())["rooms"]
    assert next(r["unread"] for r in rooms if r["slug"] == "general") == 0
    await chat.client.post("/api/v1/rooms/general/messages", json={"body": "new"}, headers=alice)
    rooms = (await (await chat.client.get("/api/v1/rooms", headers=newcomer)).json())["rooms"]
    assert next(r["unread"] for r in rooms if r["slug"] == "general") == 1


async def test_retry_with_same_client_id_is_stored_once(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    first = await chat.client.post(
        "/api/v1/rooms/general/messages", json={"body": "once", "client_id": "abc"}, headers=headers
    )
    again = await chat.client.post(
        "/api/v1/rooms/general/messages", json={"body": "once", "client_id": "abc"}, headers=headers
    )
    assert first.status == 201 and again.status == 200
    assert (await first.json())["message"]["id"] == (await again.json())["message"]["id"]
    resp = await chat.client.get("/api/v1/rooms/general/messages", headers=headers)
    assert len((await resp.json())["messages"]) == 1


async def test_healthz(chat: Chat) -> None:
    resp = await chat.client.get("/healthz")
    assert resp.status == 200
    broker = "none" if CONFIGURATION == "sqlite" else "ok"
    assert await resp.json() == {"status": "ok", "database": "ok", "broker": broker}


async def test_cookie_api_write_needs_same_origin(chat: Chat) -> None:
    await chat.user("alice")
    session = await chat.browser("alice")
    async with session:
        resp = await session.get("/api/v1/me")
        assert resp.status == 200
        resp = await session.post("/api/v1/rooms/general/messages", json={"body": "x"},
                                  headers={"Origin": "http://evil.example"})
        assert resp.status == 403
        resp = await session.post("/api/v1/rooms/general/messages", json={"body": "x"})
        assert resp.status == 403
        origin = chat.url("/").rstrip("/")
        resp = await session.post("/api/v1/rooms/general/messages", json={"body": "x"},
                                  headers={"Origin": origin})
        assert resp.status == 201


async def test_reused_client_id_with_new_body_is_a_new_message(chat: Chat) -> None:
    headers = await chat.bearer("alice")
    bodies = ["one", "two", "one"]
    ids = []
    for body in bodies:
        resp = await chat.client.post("/api/v1/rooms/general/messages",
                                      json={"body": body, "client_id": "same"}, headers=headers)
        ids.append(((await resp.json())["message"]["id"], resp.status))
    assert ids[0][1] == 201 and ids[1][1] == 201 and ids[1][0] != ids[0][0]
    # "one" again with the same client_id is a retry of the first: no new message.
    assert ids[2] == (ids[0][0], 200)
