"""Conversations that change: edit, delete and reactions in the API, the event stream and the
browser tab's frames; the change log's ids, replays with `since`, unread counts and access."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientSession
from test_sidebar_live import open_tab, until

from conftest import Chat, next_json

pytestmark = pytest.mark.usefixtures("no_server_tracebacks")


async def post(chat: Chat, headers: dict, body: str, room: str = "general") -> dict:
    resp = await chat.client.post(f"/api/v1/rooms/{room}/messages", json={"body": body}, headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]


async def call(chat: Chat, method: str, path: str, headers: dict, status: int, **kw: Any) -> Any:
    resp = await chat.client.request(method, path, headers=headers, **kw)
    assert resp.status == status, (resp.status, await resp.text())
    return None if status == 204 else await resp.json()


async def history(chat: Chat, headers: dict, room: str = "general", query: str = "") -> list[dict]:
    return (await call(chat, "GET", f"/api/v1/rooms/{room}/messages{query}", headers, 200))["messages"]


async def unread(chat: Chat, headers: dict, room: str = "general") -> int:
    rooms = (await call(chat, "GET", "/api/v1/rooms", headers, 200))["rooms"]
    return next(r["unread"] for r in rooms if r["slug"] == room)


# -- the API -------------------------------------------------------------------------------


async def test_message_object_is_complete(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    await chat.user("bob")
    await chat.services.live.refresh_users()  # as the auth watcher would within a second
    m = await post(chat, alice, "hi @bob and @nobody")
    assert m["author_name"] == "alice" and m["edited_at"] is None
    assert m["mentions"] == ["bob"] and m["reactions"] == [] and m["attachments"] == []
    got = await call(chat, "GET", f"/api/v1/messages/{m['id']}", alice, 200)
    assert got["message"] == m


async def test_edit_changes_body_html_mentions_and_sets_edited_at(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    await chat.user("carol")
    await chat.services.live.refresh_users()
    m = await post(chat, alice, "helo @bob")
    edited = (await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 200,
                         json={"body": "hello @carol <b>"}))["message"]
    assert edited["id"] == m["id"] and edited["body"] == "hello @carol <b>"
    assert "&lt;b&gt;" in edited["html"] and edited["mentions"] == ["carol"]
    assert edited["edited_at"] is not None and edited["created_at"] == m["created_at"]
    assert (await history(chat, bob))[-1] == edited
    assert (await call(chat, "GET", f"/api/v1/messages/{m['id']}", bob, 200))["message"] == edited
    # Only its author; the body rules of a post.
    err = await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", bob, 403, json={"body": "mine now"})
    assert err["error"]["code"] == "forbidden"
    await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 400, json={"body": "   "})
    await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 400, json={})
    await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 413, json={"body": "x" * 10_001})
    await call(chat, "PATCH", "/api/v1/messages/999999", alice, 404, json={"body": "nope"})
    assert (await call(chat, "GET", f"/api/v1/messages/{m['id']}", bob, 200))["message"] == edited


async def test_delete_removes_from_history_lookup_and_unread(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    admin = await chat.bearer("root", admin=True)
    await post(chat, bob, "bob reads")  # bob's read mark is at his own post
    kept = await post(chat, alice, "one")
    gone = await post(chat, alice, "two")
    third = await post(chat, alice, "three")
    assert await unread(chat, bob) == 3
    await call(chat, "DELETE", f"/api/v1/messages/{gone['id']}", bob, 403)
    await call(chat, "DELETE", f"/api/v1/messages/{gone['id']}", alice, 204)
    assert await unread(chat, bob) == 2
    assert [m["id"] for m in await history(chat, bob)][-2:] == [kept["id"], third["id"]]
    await call(chat, "GET", f"/api/v1/messages/{gone['id']}", alice, 404)
    await call(chat, "DELETE", f"/api/v1/messages/{gone['id']}", alice, 404)
    await call(chat, "PATCH", f"/api/v1/messages/{gone['id']}", alice, 404, json={"body": "back"})
    await call(chat, "POST", f"/api/v1/messages/{gone['id']}/reactions", alice, 404, json={"emoji": "x"})
    # An administrator deletes anyone's.
    await call(chat, "DELETE", f"/api/v1/messages/{third['id']}", admin, 204)
    assert await unread(chat, bob) == 1
    # A read mark past deleted messages, and new messages after them, still count right.
    await call(chat, "POST", "/api/v1/rooms/general/read", bob, 204, json={"message_id": kept["id"]})
    assert await unread(chat, bob) == 0
    await post(chat, alice, "four")
    assert await unread(chat, bob) == 1


async def test_ids_share_one_sequence(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    first = await post(chat, alice, "first")
    await call(chat, "PATCH", f"/api/v1/messages/{first['id']}", alice, 200, json={"body": "first!"})
    await call(chat, "POST", f"/api/v1/messages/{first['id']}/reactions", alice, 200, json={"emoji": "👍"})
    second = await post(chat, alice, "second")
    assert second["id"] == first["id"] + 3  # the edit and the reaction each took an id


async def test_reactions(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    m = await post(chat, alice, "ship it?")
    url = f"/api/v1/messages/{m['id']}/reactions"
    await call(chat, "POST", url, bob, 200, json={"emoji": "👍"})
    await call(chat, "POST", url, alice, 200, json={"emoji": "🎉"})
    got = (await call(chat, "POST", url, alice, 200, json={"emoji": "👍"}))["message"]
    assert got["reactions"] == [{"emoji": "👍", "users": ["bob", "alice"]}, {"emoji": "🎉", "users": ["alice"]}]
    assert got["edited_at"] is None  # reactions are not edits
    again = (await call(chat, "POST", url, bob, 200, json={"emoji": "👍"}))["message"]
    assert again == got  # adding one twice changes nothing
    # Any text up to 16 code points; not blank; not more.
    text = (await call(chat, "POST", url, bob, 200, json={"emoji": "ship it"}))["message"]
    assert text["reactions"][-1] == {"emoji": "ship it", "users": ["bob"]}
    family = "👨‍👩‍👧‍👦"  # 7 code points
    await call(chat, "POST", url, bob, 200, json={"emoji": family})
    await call(chat, "POST", url, bob, 400, json={"emoji": "x" * 17})
    await call(chat, "POST", url, bob, 400, json={"emoji": "  "})
    await call(chat, "POST", url, bob, 400, json={"emoji": 5})
    # Taking one back: one's own only, percent-encoded; one never added is 200 and unchanged.
    back = (await call(chat, "DELETE", f"{url}/{quote('👍')}", bob, 200))["message"]
    assert back["reactions"][0] == {"emoji": "👍", "users": ["alice"]}
    same = (await call(chat, "DELETE", f"{url}/{quote('🎉')}", bob, 200))["message"]
    assert same == back
    gone = (await call(chat, "DELETE", f"{url}/{quote('ship it')}", bob, 200))["message"]
    assert [r["emoji"] for r in gone["reactions"]] == ["👍", "🎉", family]


async def test_at_most_fifty_different_reactions(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    m = await post(chat, alice, "react")
    url = f"/api/v1/messages/{m['id']}/reactions"
    for i in range(50):
        await call(chat, "POST", url, alice, 200, json={"emoji": f"r{i}"})
    err = await call(chat, "POST", url, alice, 400, json={"emoji": "one more"})
    assert "50" in err["error"]["message"]
    await call(chat, "POST", url, alice, 200, json={"emoji": "r3"})  # an existing one is fine
    assert len((await call(chat, "GET", f"/api/v1/messages/{m['id']}", alice, 200))["message"]["reactions"]) == 50


async def test_private_room_messages_are_404_to_others(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    await call(chat, "POST", "/api/v1/rooms", alice, 201, json={"slug": "secret", "private": True})
    m = await post(chat, alice, "hidden", "secret")
    for method, path, kw in (
        ("GET", f"/api/v1/messages/{m['id']}", {}),
        ("PATCH", f"/api/v1/messages/{m['id']}", {"json": {"body": "x"}}),
        ("DELETE", f"/api/v1/messages/{m['id']}", {}),
        ("POST", f"/api/v1/messages/{m['id']}/reactions", {"json": {"emoji": "x"}}),
        ("DELETE", f"/api/v1/messages/{m['id']}/reactions/x", {}),
        ("GET", f"/api/v1/rooms/general/messages?around={m['id']}", {}),
    ):
        await call(chat, method, path, bob, 404, **kw)
    await call(chat, "GET", "/api/v1/messages/abc", bob, 404)


async def test_around(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    ids = [(await post(chat, alice, f"m{i}"))["id"] for i in range(30)]
    got = [m["id"] for m in await history(chat, alice, query=f"?around={ids[10]}&limit=9")]
    assert got == ids[6:15]  # (9 - 1) // 2 = 4 below it
    assert [m["id"] for m in await history(chat, alice, query=f"?around={ids[1]}&limit=9")] == ids[:9]
    assert [m["id"] for m in await history(chat, alice, query=f"?around={ids[-1]}&limit=9")] == ids[-9:]
    assert [m["id"] for m in await history(chat, alice, query=f"?around={ids[5]}&limit=1")] == [ids[5]]
    await call(chat, "GET", "/api/v1/rooms/general/messages?around=999999", alice, 404)
    await call(chat, "DELETE", f"/api/v1/messages/{ids[10]}", alice, 204)
    await call(chat, "GET", f"/api/v1/rooms/general/messages?around={ids[10]}", alice, 404)


async def test_archived_room_messages_do_not_change(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    admin = await chat.bearer("root", admin=True)
    await call(chat, "POST", "/api/v1/rooms", alice, 201, json={"slug": "old"})
    m = await post(chat, alice, "before", "old")
    await chat.services.chat.archive_room(await chat.services.store.user_by_name("root"), "old", True)
    await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 403, json={"body": "after"})
    await call(chat, "POST", f"/api/v1/messages/{m['id']}/reactions", alice, 403, json={"emoji": "x"})
    assert admin  # an admin may still delete (moderation)
    await call(chat, "DELETE", f"/api/v1/messages/{m['id']}", admin, 204)


# -- the event stream ----------------------------------------------------------------------


async def test_stream_gets_every_change_live(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    ws = await chat.stream(bob)
    m = await post(chat, alice, "draft")
    new = await next_json(ws, "message")
    assert new["id"] == m["id"] and new["message"] == m
    edited = (await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 200, json={"body": "final"}))
    upd = await next_json(ws, "message_updated")
    assert upd["message"] == edited["message"] and upd["id"] > m["id"]
    await call(chat, "POST", f"/api/v1/messages/{m['id']}/reactions", bob, 200, json={"emoji": "👍"})
    react = await next_json(ws, "message_updated")
    assert react["id"] > upd["id"] and react["message"]["reactions"] == [{"emoji": "👍", "users": ["bob"]}]
    await call(chat, "DELETE", f"/api/v1/messages/{m['id']}", alice, 204)
    gone = await next_json(ws, "message_deleted")
    assert gone == {"type": "message_deleted", "id": react["id"] + 1, "room": "general", "message_id": m["id"]}
    await ws.close()


async def test_since_replays_changes_to_older_messages(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    old = await post(chat, alice, "old one")
    doomed = await post(chat, alice, "doomed")
    mark = await post(chat, alice, "seen")  # the client saw everything up to here
    await call(chat, "PATCH", f"/api/v1/messages/{old['id']}", alice, 200, json={"body": "old, edited"})
    fresh = await post(chat, alice, "fresh")
    await call(chat, "DELETE", f"/api/v1/messages/{doomed['id']}", alice, 204)
    later = await post(chat, alice, "later, deleted")
    await call(chat, "DELETE", f"/api/v1/messages/{later['id']}", alice, 204)
    ws = await chat.stream(bob, since=mark["id"])
    got = [await next_json(ws) for _ in range(4)]
    assert [(e["type"], e.get("message", {}).get("body")) for e in got] == [
        ("message_updated", "old, edited"), ("message", "fresh"), ("message_deleted", None),
        ("message_deleted", None)]
    assert [e["id"] for e in got] == sorted(e["id"] for e in got)
    assert got[1]["message"] == fresh and got[1]["id"] == fresh["id"]
    assert got[2]["message_id"] == doomed["id"] and got[3]["message_id"] == later["id"]
    # Then live, with no gap and no duplicate.
    live = await post(chat, alice, "live")
    assert (await next_json(ws))["message"]["id"] == live["id"]
    await ws.close()


async def test_no_change_of_a_room_after_access_ends(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    admin = await chat.bearer("root", admin=True)
    await call(chat, "POST", "/api/v1/rooms", alice, 201, json={"slug": "team", "private": True})
    await call(chat, "POST", "/api/v1/rooms/team/members", alice, 200, json={"username": "bob"})
    m = await post(chat, alice, "team talk", "team")
    ws = await chat.stream(bob)
    await call(chat, "DELETE", "/api/v1/rooms/team/members/bob", admin, 204)
    assert (await next_json(ws, "room_removed"))["room"] == "team"
    await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 200, json={"body": "secret now"})
    marker = await post(chat, alice, "marker")  # in general: bob's next event must be this one
    event = await next_json(ws)
    assert event["type"] == "message" and event["message"]["id"] == marker["id"]
    await ws.close()
    # Nor in a replay.
    ws = await chat.stream(bob, since=0)
    seen = []
    while True:
        event = await next_json(ws)
        seen.append(event)
        if event.get("message", {}).get("id") == marker["id"]:
            break
    assert all(e.get("message", {}).get("room") != "team" for e in seen)
    await ws.close()


async def test_added_member_stream_gets_changes_without_reconnecting(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    await call(chat, "POST", "/api/v1/rooms", alice, 201, json={"slug": "team", "private": True})
    m = await post(chat, alice, "before bob", "team")
    ws = await chat.stream(bob)
    await call(chat, "POST", "/api/v1/rooms/team/members", alice, 200, json={"username": "bob"})
    assert (await next_json(ws, "room_updated"))["room"]["slug"] == "team"
    await call(chat, "POST", f"/api/v1/messages/{m['id']}/reactions", alice, 200, json={"emoji": "hi"})
    assert (await next_json(ws, "message_updated"))["message"]["id"] == m["id"]
    await ws.close()


# -- the browser tab ---------------------------------------------------------------------------


async def test_tab_frames_for_changes(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    await chat.user("bob")
    session: ClientSession = await chat.browser("bob")
    m = await post(chat, alice, "typo")
    ws = await open_tab(chat, session, "general")
    await call(chat, "PATCH", f"/api/v1/messages/{m['id']}", alice, 200, json={"body": "fixed"})
    upd = (await until(ws, lambda f: "message_updated" in f))[-1]
    assert upd["message_updated"] == m["id"] and upd["room"] == "general"
    assert f'id="message-{m["id"]}"' in upd["html"] and "fixed" in upd["html"] and "(edited)" in upd["html"]
    assert 'class="msg other' in upd["html"]
    await call(chat, "POST", f"/api/v1/messages/{m['id']}/reactions", alice, 200, json={"emoji": "<3"})
    upd = (await until(ws, lambda f: "message_updated" in f))[-1]
    assert 'data-emoji="&lt;3"' in upd["html"] and 'data-users="alice"' in upd["html"]
    await call(chat, "DELETE", f"/api/v1/messages/{m['id']}", alice, 204)
    gone = (await until(ws, lambda f: "message_deleted" in f))[-1]
    assert gone["message_deleted"] == m["id"] and gone["id"] > upd["id"]
    await ws.close()
    # A tab reconnecting with `since` catches up on the changes it missed.
    m2 = await post(chat, alice, "second")
    await call(chat, "PATCH", f"/api/v1/messages/{m2['id']}", alice, 200, json={"body": "second, edited"})
    ws = await session.ws_connect(f"/ws?room=general&since={m2['id']}", headers={"Origin": chat.url("/").rstrip("/")})
    upd = (await until(ws, lambda f: "message_updated" in f))[-1]
    assert upd["message_updated"] == m2["id"] and "second, edited" in upd["html"]
    await ws.close()
    await session.close()


async def test_deletion_elsewhere_lowers_the_badge(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    await chat.user("bob")
    await call(chat, "POST", "/api/v1/rooms", alice, 201, json={"slug": "other"})
    session = await chat.browser("bob")
    await session.get("/r/other")  # bob joins it
    ws = await open_tab(chat, session, "general")
    m = await post(chat, alice, "one", "other")
    await post(chat, alice, "two", "other")
    await until(ws, lambda f: f.get("unread") == "other" and f.get("id") != m["id"])
    await call(chat, "DELETE", f"/api/v1/messages/{m['id']}", alice, 204)
    got = (await until(ws, lambda f: "unread_set" in f))[-1]
    assert got["unread_set"] == {"other": 1}
    await ws.close()
    await session.close()


async def test_page_shows_edits_reactions_and_permalink(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    await chat.user("bob")
    ids = [(await post(chat, alice, f"msg {i}"))["id"] for i in range(120)]
    await call(chat, "PATCH", f"/api/v1/messages/{ids[5]}", alice, 200, json={"body": "msg 5 edited"})
    await call(chat, "POST", f"/api/v1/messages/{ids[5]}/reactions", alice, 200, json={"emoji": "🎉"})
    session = await chat.browser("bob")
    resp = await session.get(f"/m/{ids[5]}", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == f"/r/general?around={ids[5]}#message-{ids[5]}"
    page = await (await session.get(resp.headers["Location"])).text()
    assert f'aria-current="true" class="msg current other" id="message-{ids[5]}"' in page
    assert "msg 5 edited" in page and "(edited)" in page and 'data-emoji="🎉"' in page
    assert f'id="message-{ids[0]}"' in page and f'id="message-{ids[-1]}"' not in page
    assert 'id="later"' in page and "history?after=" in page
    # The newer pages load from the marker, up to the newest.
    later = page.split('id="later"')[1].split('data-href="')[1].split('"')[0]
    newer = await (await session.get(later)).text()
    assert f'id="message-{ids[-1]}"' in newer or 'id="later"' in newer
    assert (await session.get("/m/999999")).status == 404
    await call(chat, "DELETE", f"/api/v1/messages/{ids[5]}", alice, 204)
    assert (await session.get(f"/m/{ids[5]}", allow_redirects=False)).status == 404
    await session.close()


async def test_concurrent_changes_keep_id_order(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    m = await post(chat, alice, "popular")
    ws = await chat.stream(alice)
    emoji = [f"e{i}" for i in range(20)]
    await asyncio.gather(*(call(chat, "POST", f"/api/v1/messages/{m['id']}/reactions", bob, 200,
                                json={"emoji": e}) for e in emoji))
    events = [await next_json(ws, "message_updated") for _ in emoji]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert len(events[-1]["message"]["reactions"]) == 20
    await ws.close()


async def test_a_retry_of_an_edited_message_is_still_a_retry(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    url = "/api/v1/rooms/general/messages"
    first = await call(chat, "POST", url, alice, 201, json={"body": "as sent", "client_id": "r1"})
    await call(chat, "PATCH", f"/api/v1/messages/{first['message']['id']}", alice, 200, json={"body": "as edited"})
    again = await call(chat, "POST", url, alice, 200, json={"body": "as sent", "client_id": "r1"})
    assert again["message"]["id"] == first["message"]["id"] and again["message"]["body"] == "as edited"
    assert [m["body"] for m in await history(chat, alice)] == ["as edited"]
