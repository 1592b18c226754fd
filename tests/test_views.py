"""Browser pages, partials and the HTMX socket, through real HTTP and WebSockets."""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import ClientSession, CookieJar, WSMsgType

from conftest import PASSWORD, Chat, csrf_of, end_of, login


def origin(chat: Chat) -> dict[str, str]:
    return {"Origin": chat.url("/").rstrip("/")}


async def frames_until(ws, predicate, limit: int = 200) -> list[str]:
    seen = []
    for _ in range(limit):
        msg = await asyncio.wait_for(ws.receive(), 30)
        assert msg.type == WSMsgType.TEXT, msg
        seen.append(msg.data)
        if predicate(msg.data):
            return seen
    raise AssertionError(f"never matched: {seen[-5:]}")


async def test_pages_redirect_to_login_with_next(chat: Chat) -> None:
    for path in ("/", "/r/general", "/dm/bob", "/rooms/new", "/admin"):
        resp = await chat.client.get(path, allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"].startswith("/login?next=")


async def test_login_failure_and_success(chat: Chat) -> None:
    await chat.user("alice")
    session = ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True))
    async with session:
        resp = await login(session, "alice", "wrong password")
        assert resp.status == 401
        assert "wrong username or password" in await resp.text()
        resp = await login(session, "nobody", PASSWORD)
        assert resp.status == 401
        resp = await login(session, "alice", PASSWORD, next_="/r/general?x=1")
        assert resp.status == 303 and resp.headers["Location"] == "/r/general?x=1"
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    for bad in ("https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)"):
        fresh = ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True))
        async with fresh:
            resp = await login(fresh, "alice", PASSWORD, next_=bad)
            assert resp.headers["Location"] == "/", bad


async def test_room_page_has_history_and_anchors(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    ids = []
    for i in range(60):
        resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": f"line {i}\nnext"},
                                      headers=alice)
        ids.append((await resp.json())["message"]["id"])
    await chat.user("bob")
    bob = await chat.browser("bob")
    async with bob:
        resp = await bob.get("/")
        assert resp.url.path == "/r/general"
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        html = await resp.text()
        shown = [int(x) for x in re.findall(r'id="message-(\d+)"', html)]
        assert shown == ids[-50:]
        assert 'data-author="alice"' in html
        assert re.search(r'<textarea[^>]*name="body"', html)
        assert 'href="/r/general"' in html and 'data-unread="general"' in html
        assert 'id="online"' in html
        assert "line 59<br>next" in html
        # Older messages come as a partial with the next sentinel.
        older = await bob.get(f"/r/general/history?before={shown[0]}")
        part = await older.text()
        assert [int(x) for x in re.findall(r'id="message-(\d+)"', part)] == ids[:10]
        assert "This is the start of #general." in part
        assert (await bob.get("/r/general/history?before=abc")).status == 400
        # The pages' own markup is ASCII (entities for the rest): one non-ASCII character
        # makes Python hold the whole 36 KB page at two bytes a character, and encoding
        # it to send costs 25x more (docs/performance.md).
        assert html.isascii() and part.isascii()


async def test_room_page_marks_each_message_mine_mention_or_other_for_its_viewer(chat: Chat) -> None:
    tokens = {name: await chat.bearer(name) for name in ("alice", "bob", "carol")}
    await chat.services.live.refresh_users()  # as the auth watcher would within a second
    ids = {}
    for name, body in (("alice", "hi all"), ("bob", "hey @alice"), ("carol", "morning @bob"),
                       ("alice", "@carol hello"), ("bob", "mail bob@example.org")):
        resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": body},
                                      headers=tokens[name])
        ids.setdefault(name, []).append((await resp.json())["message"]["id"])

    async def variants(viewer: str) -> dict[int, str]:
        async with await chat.browser(viewer) as session:
            html = await (await session.get("/r/general")).text()
        return {int(i): v for v, i in re.findall(r'<article class="msg (\w+)" id="message-(\d+)"', html)}

    a1, a2 = ids["alice"]
    b1, b2 = ids["bob"]
    (c1,) = ids["carol"]
    assert await variants("alice") == {a1: "mine", b1: "mention", c1: "other", a2: "mine", b2: "other"}
    assert await variants("bob") == {a1: "other", b1: "mine", c1: "mention", a2: "other", b2: "mine"}
    assert await variants("carol") == {a1: "other", b1: "other", c1: "mine", a2: "mention", b2: "other"}


async def test_unknown_room_page_is_404_html(chat: Chat) -> None:
    await chat.user("alice")
    session = await chat.browser("alice")
    async with session:
        resp = await session.get("/r/nope")
        assert resp.status == 404 and resp.content_type == "text/html"
        assert "Traceback" not in await resp.text()
        assert (await session.get("/dm/ghost")).status == 404


async def test_browser_socket_send_fragment_unread_and_read(chat: Chat) -> None:
    await chat.user("alice")
    await chat.user("bob")
    alice_token = await chat.bearer("alice")
    await chat.client.post("/api/v1/rooms", json={"slug": "random"}, headers=alice_token)
    alice, bob = await chat.browser("alice"), await chat.browser("bob")
    async with alice, bob:
        a_ws = await alice.ws_connect("/ws?room=general", headers=origin(chat))
        b_general = await bob.ws_connect("/ws?room=general", headers=origin(chat))
        b_random = await bob.ws_connect("/ws?room=random", headers=origin(chat))
        await a_ws.send_str(json.dumps({"type": "send", "body": "hi <there>", "client_id": "c-9",
                                        "headers": {"HX-Request": "true"}}))
        mine = (await frames_until(a_ws, lambda d: "message-" in d))[-1]
        assert 'class="msg mine"' in mine and 'data-client-id="c-9"' in mine and "hi &lt;there&gt;" in mine
        theirs = (await frames_until(b_general, lambda d: "message-" in d))[-1]
        assert 'class="msg other"' in theirs and "data-client-id" not in theirs
        bump = json.loads((await frames_until(b_random, lambda d: '"unread"' in d))[-1])
        assert bump["unread"] == "general" and bump["from"] == "alice" and bump["mention"] is False
        mid = int(re.search(r'id="message-(\d+)"', theirs).group(1))
        await b_general.send_str(json.dumps({"type": "read", "message_id": str(mid)}))
        cleared = json.loads((await frames_until(b_random, lambda d: "unread_set" in d))[-1])
        assert cleared == {"unread_set": {"general": 0}}
        # A mention is highlighted for the person mentioned only.
        await a_ws.send_str(json.dumps({"type": "send", "body": "@bob look", "client_id": "c-10"}))
        mention = (await frames_until(b_general, lambda d: "message-" in d))[-1]
        assert 'class="msg mention"' in mention and 'data-mention="bob"' in mention
        bump = json.loads((await frames_until(b_random, lambda d: '"unread"' in d))[-1])
        assert bump["mention"] is True
        for ws in (a_ws, b_general, b_random):
            await ws.close()


async def test_browser_socket_replays_since(chat: Chat) -> None:
    alice_token = await chat.bearer("alice")
    await chat.user("bob")
    ids = []
    for i in range(3):
        resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": f"m{i}"},
                                      headers=alice_token)
        ids.append((await resp.json())["message"]["id"])
    bob = await chat.browser("bob")
    async with bob:
        ws = await bob.ws_connect(f"/ws?room=general&since={ids[0]}", headers=origin(chat))
        frames = await frames_until(ws, lambda d: f"message-{ids[2]}" in d)
        got = [int(x) for f in frames for x in re.findall(r'id="message-(\d+)"', f)]
        assert got == ids[1:]
        await ws.close()


async def test_browser_socket_refuses_bad_origin_and_no_session(chat: Chat) -> None:
    await chat.user("alice")
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    resp = await chat.client.get("/ws?room=general", headers={**upgrade, **origin(chat)})
    assert resp.status == 401
    alice = await chat.browser("alice")
    async with alice:
        resp = await alice.get("/ws?room=general", headers={**upgrade, "Origin": "http://evil.example"})
        assert resp.status == 403
        resp = await alice.get("/ws?room=general", headers=upgrade)
        assert resp.status == 403


async def test_browser_socket_bad_frames(chat: Chat) -> None:
    await chat.user("alice")
    alice = await chat.browser("alice")
    async with alice:
        ws = await alice.ws_connect("/ws?room=general", headers=origin(chat))
        for raw, needle in [("nope", "JSON"), ("[]", "objects"), ('{"type": "zap"}', "unknown"),
                            ('{"type": "send", "body": ""}', "empty"), ('{"type": "read"}', "message_id")]:
            await ws.send_str(raw)
            frame = json.loads((await frames_until(ws, lambda d: '"error"' in d))[-1])
            assert needle in frame["error"], raw
        await ws.send_str(json.dumps({"type": "send", "body": "fine", "client_id": "ok"}))
        await frames_until(ws, lambda d: "message-" in d)
        await ws.close()


async def test_logout_ends_session_and_closes_sockets(chat: Chat) -> None:
    await chat.user("alice")
    alice = await chat.browser("alice")
    async with alice:
        page = await alice.get("/r/general")
        csrf = csrf_of(await page.text())
        ws = await alice.ws_connect("/ws?room=general", headers=origin(chat))
        resp = await alice.post("/logout", data={"csrf": "wrong"}, allow_redirects=False)
        assert resp.status == 403
        resp = await alice.post("/logout", data={"csrf": csrf}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login"
        msg = await end_of(ws)
        assert msg.type == WSMsgType.CLOSE and msg.data == 1008
        assert (await alice.get("/r/general", allow_redirects=False)).status == 303


async def test_create_room_from_ui(chat: Chat) -> None:
    await chat.user("alice")
    alice = await chat.browser("alice")
    async with alice:
        form = await alice.get("/rooms/new")
        csrf = csrf_of(await form.text())
        resp = await alice.post("/rooms/new", data={"csrf": csrf, "slug": "book-club", "name": "Book club"},
                                allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/r/book-club"
        resp = await alice.post("/rooms/new", data={"csrf": csrf, "slug": "book-club"})
        assert resp.status == 409 and "already taken" in await resp.text()
        resp = await alice.post("/rooms/new", data={"csrf": csrf, "slug": "Bad Slug!"})
        assert resp.status == 400
        resp = await alice.post("/rooms/new", data={"csrf": csrf, "slug": "hidden", "private": "on"},
                                allow_redirects=False)
        assert resp.headers["Location"] == "/r/hidden"
        page = await alice.get("/r/hidden")
        assert "Members" in await page.text()


async def test_members_page_add_and_leave(chat: Chat) -> None:
    await chat.user("alice")
    await chat.user("bob")
    alice_token = await chat.bearer("alice")
    await chat.client.post("/api/v1/rooms", json={"slug": "team", "private": True}, headers=alice_token)
    alice = await chat.browser("alice")
    async with alice:
        page = await alice.get("/r/team/members")
        csrf = csrf_of(await page.text())
        resp = await alice.post("/r/team/members", data={"csrf": csrf, "action": "add", "username": "bob"},
                                allow_redirects=False)
        assert resp.status == 303
        assert ">bob<" in await (await alice.get("/r/team/members")).text()
        resp = await alice.post("/r/team/members", data={"csrf": csrf, "action": "add", "username": "ghost"},
                                allow_redirects=False)
        assert resp.status == 404 and "no user named ghost" in await resp.text()  # test_forms.py: where
        resp = await alice.post("/r/team/members", data={"csrf": csrf, "action": "leave"}, allow_redirects=False)
        assert resp.headers["Location"] == "/r/general"
        assert (await alice.get("/r/team")).status == 404


async def test_admin_page_is_for_admins(chat: Chat) -> None:
    await chat.user("root", admin=True)
    await chat.user("alice")
    alice = await chat.browser("alice")
    async with alice:
        assert (await alice.get("/admin")).status == 403
    root = await chat.browser("root")
    async with root:
        resp = await root.get("/admin")
        assert resp.status == 200 and "general" in await resp.text()


async def test_favicon_and_static(chat: Chat) -> None:
    resp = await chat.client.get("/favicon.ico")
    assert resp.status == 200 and "svg" in resp.content_type
    resp = await chat.client.get("/static/vendor/htmx-4.0.1.min.js")
    assert resp.status == 200
    assert (await chat.client.get("/static/../chatd/app.py")).status == 404


async def test_logout_from_a_script_without_form_token(chat: Chat) -> None:
    await chat.user("alice")
    alice = await chat.browser("alice")
    async with alice:
        resp = await alice.post("/logout", headers={"Origin": "http://evil.example"}, allow_redirects=False)
        assert resp.status == 403
        assert (await alice.get("/api/v1/me")).status == 200
        resp = await alice.post("/logout", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login"
        assert (await alice.get("/api/v1/me")).status == 401
