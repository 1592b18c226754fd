"""Security at the edges: headers, CSRF, Origin, cookies, limits, redirects, revocation.

Every test runs the real app on a real SQLite file. Limits are made small with
`make_chat(...)`; nothing here asserts how long something took. Waits (for a
socket to be closed by the server) use generous timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from aiohttp import ClientSession, CookieJar, WSMsgType, WSServerHandshakeError
from yarl import URL

from chatd.state import CONFIG, SETUP_TOKEN
from conftest import PASSWORD, Chat, csrf_of, end_of, next_json

EVIL = "http://evil.example"
SESSION_COOKIE = "chatd_session"


# -- helpers --------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("no_server_tracebacks")


def origin(chat: Chat) -> str:
    return chat.url("/").rstrip("/")


def session_for(chat: Chat) -> ClientSession:
    return ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True))


async def login_csrf(session: ClientSession, headers: dict | None = None) -> str:
    page = await session.get("/login", headers=headers or {})
    assert page.status == 200
    return csrf_of(await page.text())


async def post_login(
    session: ClientSession, name: str, password: str = PASSWORD, *, csrf: str | None = "fetch",
    next_: str = "/", headers: dict | None = None,
) -> Any:
    """POST /login; csrf="fetch" takes the token from a fresh GET of the form."""
    if csrf == "fetch":
        csrf = await login_csrf(session)
    data = {"username": name, "password": password, "next": next_}
    if csrf is not None:
        data["csrf"] = csrf
    return await session.post("/login", data=data, headers=headers or {}, allow_redirects=False)


def set_cookies(resp: Any) -> dict[str, Any]:
    """The response's Set-Cookie headers, parsed, by cookie name."""
    out: dict[str, Any] = {}
    for header in resp.headers.getall("Set-Cookie", []):
        jar = SimpleCookie()
        jar.load(header)
        out.update({name: morsel for name, morsel in jar.items()})
    return out


async def signed_in(session: ClientSession) -> bool:
    return (await session.get("/api/v1/me")).status == 200


async def page_csrf(session: ClientSession, path: str = "/r/general") -> str:
    resp = await session.get(path)
    assert resp.status == 200
    return csrf_of(await resp.text())


async def handshake_status(connect: Any) -> int:
    """101 if the WebSocket upgrade succeeded, else the refusal's HTTP status."""
    try:
        ws = await connect
    except WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


# -- 7. security headers ------------------------------------------------------------------


def parse_csp(value: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in value.split(";"):
        tokens = part.split()
        if tokens:
            out.setdefault(tokens[0].lower(), [t.lower() for t in tokens[1:]])
    return out


class _Inline(HTMLParser):
    """Finds what a strict CSP would block: inline scripts and styles, handlers, js: URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "script" and not (dict(attrs).get("src") or "").startswith("/static/"):
            self.problems.append(f"script from elsewhere: {dict(attrs).get('src')}")
        if tag == "style":
            self.problems.append("<style> element")
        for k, v in attrs:
            if k.startswith("on"):
                self.problems.append(f"event handler {k} on <{tag}>")
            if k == "style":
                self.problems.append(f"style attribute on <{tag}>")
            if k in ("href", "src", "action", "formaction") and (v or "").strip().lower().startswith(
                ("javascript:", "data:", "vbscript:")
            ):
                self.problems.append(f"{k}={v!r} on <{tag}>")


async def test_security_headers_on_pages_static_errors_and_api(chat: Chat) -> None:
    await chat.user("alice")
    browser = await chat.browser("alice")
    async with browser:
        responses = {
            "/login (signed out)": await chat.client.get("/login"),
            "/r/general": await browser.get("/r/general"),
            "/rooms/new": await browser.get("/rooms/new"),
            "/static/chatd.css": await chat.client.get("/static/chatd.css"),
            "/static/chatd.js": await chat.client.get("/static/chatd.js"),
            "404 page": await browser.get("/no/such/page"),
            "404 room": await browser.get("/r/no-such-room"),
            "/api/v1/me 401": await chat.client.get("/api/v1/me"),
            "/api/v1/me 200": await browser.get("/api/v1/me"),
            "/healthz": await chat.client.get("/healthz"),
        }
        assert responses["/r/general"].status == 200
        assert responses["404 page"].status == 404 and responses["404 room"].status == 404
        assert responses["/api/v1/me 401"].status == 401
        for what, resp in responses.items():
            csp = resp.headers.get("Content-Security-Policy")
            assert csp, f"{what}: no Content-Security-Policy"
            directives = parse_csp(csp)
            script_src = directives.get("script-src", directives.get("default-src"))
            assert script_src is not None, f"{what}: CSP restricts no scripts: {csp}"
            for unsafe in ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"):
                assert unsafe not in script_src, f"{what}: script-src allows {unsafe}: {csp}"
            assert directives.get("frame-ancestors") == ["'none'"], f"{what}: {csp}"
            assert directives.get("object-src", directives.get("default-src")) in (["'none'"], ["'self'"])
            assert resp.headers.get("X-Content-Type-Options", "").lower() == "nosniff", what
            assert resp.headers.get("Referrer-Policy", "").lower() in (
                "no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin",
            ), f"{what}: Referrer-Policy {resp.headers.get('Referrer-Policy')!r}"
            # Over plain http there is no HSTS (it would be ignored, and wrong behind no TLS).
            assert "Strict-Transport-Security" not in resp.headers, what
        # JSON is never a document: API responses get a policy that allows nothing at all,
        # and pages the document policies besides.
        for what in ("/api/v1/me 401", "/api/v1/me 200"):
            csp = parse_csp(responses[what].headers["Content-Security-Policy"])
            assert csp == {"default-src": ["'none'"], "frame-ancestors": ["'none'"]}, what
            assert responses[what].headers["Cache-Control"] == "no-store", what
        for what in ("/login (signed out)", "/r/general", "404 page"):
            assert responses[what].headers.get("X-Frame-Options") == "DENY", what
            assert responses[what].headers.get("Cross-Origin-Opener-Policy") == "same-origin", what
            assert "camera=()" in responses[what].headers.get("Permissions-Policy", ""), what
        # The pages work under that policy: nothing inline that the CSP would block.
        for what in ("/login (signed out)", "/r/general", "/rooms/new", "404 page"):
            finder = _Inline()
            finder.feed(await responses[what].text())
            assert finder.problems == [], f"{what}: {finder.problems}"


# -- 8. CSRF ----------------------------------------------------------------------------------


async def test_login_without_or_with_wrong_csrf_is_403_and_starts_no_session(chat: Chat) -> None:
    await chat.user("alice")
    async with session_for(chat) as session:
        cases = {
            "no token": dict(csrf=None),
            "wrong token": dict(csrf="x" * 32),
            "empty token": dict(csrf=""),
            "cross-site origin": dict(headers={"Origin": EVIL}),
            "origin null": dict(headers={"Origin": "null"}),
        }
        for what, kwargs in cases.items():
            resp = await post_login(session, "alice", **kwargs)
            assert resp.status == 403, what
            assert SESSION_COOKIE not in set_cookies(resp), what
            assert not await signed_in(session), what
    # A token from someone else's form (double submit: the form cookie must match).
    async with session_for(chat) as victim, session_for(chat) as attacker:
        attackers_token = await login_csrf(attacker)
        await login_csrf(victim)  # the victim has a form cookie of their own
        resp = await post_login(victim, "alice", csrf=attackers_token)
        assert resp.status == 403 and not await signed_in(victim)
    # Without the form cookie at all.
    async with session_for(chat) as session:
        token = await login_csrf(session)
        session.cookie_jar.clear()
        resp = await post_login(session, "alice", csrf=token)
        assert resp.status == 403 and not await signed_in(session)
    # The real form, from our own origin, works.
    async with session_for(chat) as session:
        resp = await post_login(session, "alice", headers={"Origin": origin(chat)})
        assert resp.status == 303 and SESSION_COOKIE in set_cookies(resp)
        assert await signed_in(session)


async def test_setup_form_needs_csrf(chat: Chat) -> None:
    token = chat.app[SETUP_TOKEN][0]
    assert token, "a fresh database offers a setup link"
    async with session_for(chat) as session:
        page = await session.get(f"/setup?token={token}")
        assert page.status == 200
        csrf = csrf_of(await page.text())
        form = {"token": token, "username": "root", "password": PASSWORD, "password2": PASSWORD}
        for what, data, headers in (
            ("no token", form, {}),
            ("wrong token", {**form, "csrf": "nope"}, {}),
            ("cross-site origin", {**form, "csrf": csrf}, {"Origin": EVIL}),
        ):
            resp = await session.post("/setup", data=data, headers=headers, allow_redirects=False)
            assert resp.status == 403, what
            assert not await signed_in(session), what
        assert await chat.services.store.user_by_name("root") is None
        resp = await session.post("/setup", data={**form, "csrf": csrf}, allow_redirects=False)
        assert resp.status == 303 and await signed_in(session)


async def test_state_changing_browser_posts_need_the_session_csrf(chat: Chat) -> None:
    await chat.user("alice")
    await chat.user("bob")
    alice, bob_session = await chat.browser("alice"), await chat.browser("bob")
    async with alice, bob_session:
        csrf = await page_csrf(alice)
        bobs_csrf = await page_csrf(bob_session)
        own = origin(chat)
        # A private room for the members form.
        resp = await alice.post("/rooms/new", data={"csrf": csrf, "slug": "secret", "private": "on"},
                                headers={"Origin": own}, allow_redirects=False)
        assert resp.status == 303

        attempts = [
            ("/rooms/new", {"slug": "forged"}),
            ("/r/secret/members", {"action": "add", "username": "bob"}),
            ("/logout", {}),
        ]
        for path, data in attempts:
            for what, extra, headers in (
                ("no token", {}, {}),
                ("no token, cross-site", {}, {"Origin": EVIL}),
                ("wrong token", {"csrf": "forged"}, {}),
                ("wrong token, own origin", {"csrf": "forged"}, {"Origin": own}),
                ("token of another session", {"csrf": bobs_csrf}, {}),
                ("cross-site origin", {"csrf": csrf}, {"Origin": EVIL}),
                ("another site's https origin", {"csrf": csrf}, {"Origin": "https://evil.example"}),
            ):
                if path == "/logout" and what == "no token":
                    continue  # a bare, not cross-site sign-out is accepted (see views.logout)
                resp = await alice.post(path, data={**data, **extra}, headers=headers, allow_redirects=False)
                assert resp.status == 403, f"{path} {what}: {resp.status}"
        # Nothing happened.
        assert await signed_in(alice)
        me = await chat.bearer("alice")
        rooms = (await (await chat.client.get("/api/v1/rooms", headers=me)).json())["rooms"]
        assert "forged" not in {r["slug"] for r in rooms}
        bob = await chat.bearer("bob")
        assert (await chat.client.get("/api/v1/rooms/secret/messages", headers=bob)).status == 404
        # With the session's token from our own page, each works.
        resp = await alice.post("/r/secret/members", data={"csrf": csrf, "action": "add", "username": "bob"},
                                allow_redirects=False)
        assert resp.status == 303
        assert (await chat.client.get("/api/v1/rooms/secret/messages", headers=bob)).status == 200
        resp = await alice.post("/logout", data={"csrf": csrf}, headers={"Origin": own}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/login"
        assert not await signed_in(alice)


async def test_sign_in_issues_a_fresh_session_and_sign_out_revokes_it(chat: Chat) -> None:
    await chat.user("alice")
    async with session_for(chat) as session:
        # Session fixation: a session id planted before sign-in is never adopted.
        planted = "planted-by-an-attacker-0123456789abcdef"
        session.cookie_jar.update_cookies({SESSION_COOKIE: planted}, response_url=URL(chat.url("/")))
        resp = await post_login(session, "alice")
        assert resp.status == 303
        token = set_cookies(resp)[SESSION_COOKIE].value
        assert token != planted
        async with session_for(chat) as attacker:
            attacker.cookie_jar.update_cookies({SESSION_COOKIE: planted}, response_url=URL(chat.url("/")))
            assert not await signed_in(attacker)
        csrf = await page_csrf(session)
        resp = await session.post("/logout", data={"csrf": csrf}, allow_redirects=False)
        assert resp.status == 303
    # The old cookie, replayed, no longer works: the session ended on the server.
    async with session_for(chat) as replay:
        replay.cookie_jar.update_cookies({SESSION_COOKIE: token}, response_url=URL(chat.url("/")))
        assert not await signed_in(replay)
        assert await handshake_status(replay.ws_connect("/ws?room=general", headers={"Origin": origin(chat)})) == 401


async def test_cookie_authenticated_api_writes_refuse_cross_site(chat: Chat) -> None:
    await chat.user("alice")
    alice = await chat.browser("alice")
    async with alice:
        for path, body in (("/api/v1/rooms/general/messages", {"body": "forged"}),
                           ("/api/v1/rooms", {"slug": "forged"}),
                           ("/api/v1/rooms/general/read", {"message_id": 1})):
            resp = await alice.post(path, json=body, headers={"Origin": EVIL})
            assert resp.status == 403, path
            assert "error" in await resp.json()
            resp = await alice.post(path, json=body, headers={"Origin": EVIL, "X-CSRF-Token": "nope"})
            assert resp.status == 403, path
        msgs = (await (await alice.get("/api/v1/rooms/general/messages")).json())["messages"]
        assert msgs == []


# -- 9. Origin on WebSocket upgrades -------------------------------------------------------------


async def test_websocket_upgrades_check_origin(chat: Chat) -> None:
    token = await chat.bearer("alice")
    browser = await chat.browser("alice")
    own = origin(chat)
    port = urlsplit(own).port
    async with browser:
        def tab(headers: dict[str, str]) -> Any:
            return browser.ws_connect("/ws?room=general", headers=headers)

        def stream(headers: dict[str, str], via: Any = None) -> Any:
            return (via or chat.client).ws_connect("/api/v1/stream", headers=headers)

        refused = [EVIL, "null", "https://evil.example", f"http://127.0.0.1.evil.example:{port}",
                   f"http://localhost:{port + 1 if port < 65535 else 1}", own + ".evil.example",
                   own.replace("http://", "https://")]
        for bad in refused:
            assert await handshake_status(tab({"Origin": bad})) == 403, bad
            assert await handshake_status(stream({**token, "Origin": bad})) == 403, bad
            # The session cookie alone (what a hijacking page would ride on) is refused too.
            assert await handshake_status(stream({"Origin": bad}, via=browser)) == 403, bad
        # The browser socket is for our own pages only: an Origin is required.
        assert await handshake_status(tab({})) == 403
        assert await handshake_status(tab({"Origin": own})) == 101
        # Bots and scripts send no Origin: a bearer token is enough.
        assert await handshake_status(stream(token)) == 101
        assert await handshake_status(stream({**token, "Origin": own})) == 101
        # No credentials: 401 whatever the Origin.
        assert await handshake_status(stream({})) == 401
        assert await handshake_status(stream({"Authorization": "Bearer nope"})) == 401
        # The browser socket takes a session, not a token.
        assert await handshake_status(chat.client.ws_connect(
            "/ws?room=general", headers={**token, "Origin": own})) == 401


# -- 10. cookies ------------------------------------------------------------------------------------


async def test_session_cookie_flags_over_plain_http(chat: Chat) -> None:
    await chat.user("alice")
    async with session_for(chat) as session:
        page = await session.get("/login")
        form_cookie = set_cookies(page)["chatd_form"]
        assert form_cookie["httponly"] and not form_cookie["secure"]
        resp = await post_login(session, "alice")
        assert resp.status == 303
        cookie = set_cookies(resp)[SESSION_COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"].lower() == "lax"
        assert not cookie["secure"], "Secure over plain http would lose the session"
        assert cookie["path"] == "/"
        assert len(cookie.value) >= 32, "a session token needs enough randomness"
        # The database keeps only a hash of the token.
        with contextlib.closing(sqlite3.connect(f"file:{chat.app[CONFIG].db}?mode=ro", uri=True)) as db:
            stored = [bytes(row[0]) for row in db.execute("SELECT token_hash FROM sessions")]
        assert stored and all(cookie.value.encode() not in h and cookie.value not in h.hex() for h in stored)


async def test_session_cookie_is_secure_behind_a_trusted_https_proxy(make_chat: Any) -> None:
    chat = await make_chat(behind_proxy=True)  # trusted_proxies defaults to loopback
    await chat.user("alice")
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    async with session_for(chat) as session:
        token = await login_csrf(session)  # the form cookie over http, so the jar sends it back
        resp = await post_login(session, "alice", csrf=token, headers=https)
        assert resp.status == 303
        cookie = set_cookies(resp)[SESSION_COOKIE]
        assert cookie["secure"] is True
        assert cookie["httponly"] is True and cookie["samesite"].lower() == "lax"
        assert "Strict-Transport-Security" in resp.headers
        # The origin a browser would send through the proxy is https://host.
        https_origin = origin(chat).replace("http://", "https://")
        ws_status = await handshake_status(chat.client.ws_connect(
            "/api/v1/stream", headers={**(await chat.bearer("alice")), **https, "Origin": https_origin}))
        assert ws_status == 101


async def test_forwarded_proto_from_an_untrusted_peer_is_ignored(make_chat: Any) -> None:
    chat = await make_chat(behind_proxy=True, trusted_proxies=("10.9.9.9",))
    await chat.user("alice")
    async with session_for(chat) as session:
        token = await login_csrf(session)
        resp = await post_login(session, "alice", csrf=token,
                                headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
        assert resp.status == 303
        cookie = set_cookies(resp)[SESSION_COOKIE]
        assert not cookie["secure"]
        assert "Strict-Transport-Security" not in resp.headers


async def test_trusted_proxies_may_be_a_network(make_chat: Any) -> None:
    chat = await make_chat(behind_proxy=True, trusted_proxies=("10.0.0.0/8", "127.0.0.0/8"))
    await chat.user("alice")
    async with session_for(chat) as session:
        token = await login_csrf(session)
        resp = await post_login(session, "alice", csrf=token, headers={"X-Forwarded-Proto": "https"})
        assert resp.status == 303 and set_cookies(resp)[SESSION_COOKIE]["secure"] is True


async def test_forwarded_proto_is_ignored_when_not_behind_a_proxy(chat: Chat) -> None:
    await chat.user("alice")
    async with session_for(chat) as session:
        token = await login_csrf(session)
        resp = await post_login(session, "alice", csrf=token, headers={"X-Forwarded-Proto": "https"})
        assert resp.status == 303 and not set_cookies(resp)[SESSION_COOKIE]["secure"]


# -- 11. limits ---------------------------------------------------------------------------------------


async def test_login_attempts_are_limited_per_account(make_chat: Any) -> None:
    chat = await make_chat(login_attempts_per_account=3, login_attempts_per_ip=1000)
    await chat.user("alice")
    await chat.user("bob")
    async with session_for(chat) as session:
        for _ in range(3):
            resp = await post_login(session, "alice", "wrong password")
            assert resp.status == 401
        # The 4th attempt is refused even with the right password, and starts no session.
        for password in (PASSWORD, "wrong password"):
            resp = await post_login(session, "alice", password)
            assert resp.status == 429, await resp.text()
            assert int(resp.headers["Retry-After"]) >= 1
            assert SESSION_COOKIE not in set_cookies(resp)
            assert not await signed_in(session)
        # The name is compared as the account is: case and spaces do not reset the count.
        resp = await post_login(session, " ALICE ", PASSWORD)
        assert resp.status == 429
        # Another account, from the same address, is not affected.
        resp = await post_login(session, "bob", PASSWORD)
        assert resp.status == 303 and await signed_in(session)


async def test_login_attempts_are_limited_per_ip(make_chat: Any) -> None:
    chat = await make_chat(login_attempts_per_account=1000, login_attempts_per_ip=3)
    await chat.user("alice")
    async with session_for(chat) as session:
        for name in ("nobody", "someone", "alice"):
            resp = await post_login(session, name, "wrong password")
            assert resp.status == 401
        resp = await post_login(session, "alice", PASSWORD)
        assert resp.status == 429 and not await signed_in(session)
        # Without a trusted proxy, X-Forwarded-For does not buy a fresh budget.
        resp = await post_login(session, "alice", PASSWORD, headers={"X-Forwarded-For": "198.51.100.9"})
        assert resp.status == 429 and not await signed_in(session)


async def test_login_limit_counts_the_forwarded_client_behind_a_trusted_proxy(make_chat: Any) -> None:
    chat = await make_chat(behind_proxy=True, login_attempts_per_account=1000, login_attempts_per_ip=2)
    await chat.user("alice")
    attacker = {"X-Forwarded-For": "198.51.100.9"}
    async with session_for(chat) as session:
        for _ in range(2):
            assert (await post_login(session, "alice", "wrong password", headers=attacker)).status == 401
        assert (await post_login(session, "alice", PASSWORD, headers=attacker)).status == 429
        # A spoofed extra hop in front does not change who the proxy says the client is.
        spoofed = {"X-Forwarded-For": "1.2.3.4, 198.51.100.9"}
        assert (await post_login(session, "alice", PASSWORD, headers=spoofed)).status == 429
        # Another client of the same proxy signs in.
        resp = await post_login(session, "alice", PASSWORD, headers={"X-Forwarded-For": "203.0.113.5"})
        assert resp.status == 303


async def test_message_flood_is_limited_per_user_and_others_are_not_affected(make_chat: Any) -> None:
    # A rate far below one per second makes "the 3rd in a row" independent of machine speed.
    chat = await make_chat(messages_per_second=0.01, message_burst=2)
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")

    async def post(headers: dict, body: str) -> Any:
        return await chat.client.post("/api/v1/rooms/general/messages", json={"body": body}, headers=headers)

    assert (await post(alice, "one")).status == 201
    assert (await post(alice, "two")).status == 201
    resp = await post(alice, "three")
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    # Alice keeps flooding, concurrently with bob's posts: bob is not limited by her.
    flood = [post(alice, f"flood {i}") for i in range(30)]
    results = await asyncio.gather(*flood, post(bob, "bob one"), post(bob, "bob two"))
    assert [r.status for r in results[:-2]] == [429] * 30
    assert [r.status for r in results[-2:]] == [201, 201]
    # The limit is per user, whatever the path: the stream and the browser socket count too.
    ws = await chat.stream(alice)
    await ws.send_json({"type": "send", "room": "general", "body": "via stream", "client_id": "s1"})
    event = await next_json(ws, "error")
    assert event["code"] == "rate_limited" and event["client_id"] == "s1"
    await ws.close()
    stored = (await (await chat.client.get("/api/v1/rooms/general/messages", headers=bob)).json())["messages"]
    assert sorted(m["body"] for m in stored) == ["bob one", "bob two", "one", "two"]


async def test_a_frame_over_max_frame_bytes_closes_the_stream_with_1009(make_chat: Any) -> None:
    """aiohttp's reader refuses a frame over max_msg_size: the server sends close 1009
    (message too big) and ends the socket; the handler sees no message at all."""
    chat = await make_chat(max_frame_bytes=2048)
    token = await chat.bearer("alice")
    ws = await chat.stream(token)
    await ws.send_str('{"type": "send", "room": "general", "body": "' + "x" * 3000 + '"}')
    msg = await end_of(ws)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1009, msg
    # The server is fine and the user can reconnect (the slot was given back).
    stored = await chat.client.get("/api/v1/rooms/general/messages", headers=token)
    assert (await stored.json())["messages"] == []
    ws = await chat.stream(token)
    await ws.send_json({"type": "send", "room": "general", "body": "small", "client_id": "ok"})
    assert (await next_json(ws, "message"))["message"]["client_id"] == "ok"
    await ws.close()


async def test_browser_socket_frame_over_the_limit_closes_with_1009(make_chat: Any) -> None:
    chat = await make_chat(max_frame_bytes=2048)
    await chat.user("alice")
    browser = await chat.browser("alice")
    async with browser:
        ws = await browser.ws_connect("/ws?room=general", headers={"Origin": origin(chat)})
        await ws.send_str('{"type": "send", "body": "' + "y" * 3000 + '"}')
        msg = await end_of(ws)
        # The server's close frame carries 1009; the client's own close_code can read 1006
        # when the server drops the transport before the client's reply is written.
        assert msg.type == WSMsgType.CLOSE and msg.data == 1009


async def test_a_long_body_inside_a_small_enough_frame_gets_too_large(make_chat: Any) -> None:
    chat = await make_chat(max_frame_bytes=32_768)
    token = await chat.bearer("alice")
    ws = await chat.stream(token)
    # 10,001 characters in about 20 KB of UTF-8: under the frame limit, over the body limit.
    frame = json.dumps({"type": "send", "room": "general", "body": "é" * 10_001, "client_id": "big"},
                       ensure_ascii=False)
    assert len(frame.encode()) < 32_768
    await ws.send_str(frame)
    event = await next_json(ws, "error")
    assert event == {"type": "error", "code": "too_large", "message": event["message"], "client_id": "big"}
    # Still open: a good send is acknowledged.
    await ws.send_str(json.dumps({"type": "send", "room": "general", "body": "é" * 10_000, "client_id": "fits"},
                                 ensure_ascii=False))
    ack = await next_json(ws, "message")
    assert ack["message"]["client_id"] == "fits" and len(ack["message"]["body"]) == 10_000
    # Over the frame limit: 1009.
    await ws.send_str("x" * 40_000)
    msg = await end_of(ws)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1009


async def test_request_body_over_the_limit_is_413_json(make_chat: Any) -> None:
    chat = await make_chat(max_request_bytes=1024)
    token = await chat.bearer("alice")
    for path in ("/api/v1/rooms/general/messages", "/api/v1/rooms", "/api/v1/dms",
                 "/api/v1/rooms/general/read"):
        resp = await chat.client.post(path, json={"body": "x" * 2048, "slug": "a"}, headers=token)
        assert resp.status == 413, path
        body = await resp.json()
        assert body["error"]["code"] == "too_large" and body["error"]["message"], path
    # Under the limit, fine.
    resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": "x" * 900}, headers=token)
    assert resp.status == 201
    # Forms too: an oversize login form is refused with 413, not a dropped connection.
    resp = await chat.client.post("/login", data={"username": "a", "password": "p" * 4096, "csrf": "x"})
    assert resp.status == 413


async def test_open_connections_per_user_are_limited(make_chat: Any) -> None:
    chat = await make_chat(connections_per_user=2)
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    first, second = await chat.stream(alice), await chat.stream(alice)
    with pytest.raises(WSServerHandshakeError) as refused:
        await chat.stream(alice)
    assert refused.value.status == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    # A browser tab counts as a connection too.
    await chat.user("carol")
    carol = await chat.browser("carol")
    async with carol:
        tabs = [await carol.ws_connect("/ws?room=general", headers={"Origin": origin(chat)}) for _ in range(2)]
        assert await handshake_status(
            carol.ws_connect("/ws?room=general", headers={"Origin": origin(chat)})) == 429
        for tab in tabs:
            await tab.close()
    # Another user is not affected.
    other = await chat.stream(bob)
    await other.close()
    # Closing one gives the slot back (the server forgets it once it has seen the close).
    await first.close()
    third = None
    for _ in range(200):
        try:
            third = await chat.stream(alice)
            break
        except WSServerHandshakeError as exc:
            assert exc.status == 429
            await asyncio.sleep(0.05)
    assert third is not None
    await third.close()
    await second.close()


# -- 12. `next` stays on this site -----------------------------------------------------------------------


OFFSITE = [
    "https://evil.example", "//evil.example", "/\\evil.example", "\\\\evil.example", "javascript:alert(1)",
    "JaVaScRiPt:alert(1)", "http:evil.example", "https:/evil.example", "///evil.example",
    "/\t/evil.example", " //evil.example", "\n//evil.example", "/%0a/evil.example\n",
    "data:text/html,<script>alert(1)</script>", "evil.example", "@evil.example", "/\r\nSet-Cookie: x=y",
]


def assert_local(location: str, base: str) -> None:
    assert location.startswith("/") and not location.startswith("//") and "\\" not in location, location
    assert not any(ord(c) < 32 for c in location), repr(location)
    resolved = urlsplit(urljoin(base + "/", location))
    assert resolved.netloc == urlsplit(base).netloc and resolved.scheme == urlsplit(base).scheme, location


@pytest.mark.parametrize("target", OFFSITE)
async def test_login_next_never_leaves_the_site(chat: Chat, target: str) -> None:
    await chat.user("alice")
    async with session_for(chat) as session:
        # The form carries only a safe `next`.
        page = await session.get("/login", params={"next": target})
        shown = re.search(r'name="next" value="([^"]*)"', await page.text()).group(1)
        assert shown == "/"
        resp = await post_login(session, "alice", next_=target)
        assert resp.status == 303
        assert resp.headers["Location"] == "/"
        assert "Set-Cookie: x" not in str(resp.headers)
        # Already signed in, GET /login?next=... also redirects only locally.
        resp = await session.get("/login", params={"next": target}, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/"


async def test_a_local_next_is_escaped_in_the_form_and_the_redirect(chat: Chat) -> None:
    await chat.user("alice")
    target = '/r/general?q="><script>alert(1)</script>'
    async with session_for(chat) as session:
        page = await session.get("/login", params={"next": target})
        html = await page.text()
        assert "<script>alert(1)" not in html
        finder = _Inline()
        finder.feed(html)
        assert finder.problems == []
        resp = await post_login(session, "alice", next_=target)
        assert resp.status == 303
        assert_local(resp.headers["Location"], origin(chat))


async def test_login_next_keeps_a_local_path(chat: Chat) -> None:
    await chat.user("alice")
    async with session_for(chat) as session:
        resp = await post_login(session, "alice", next_="/r/general?x=1#m")
        assert resp.status == 303
        assert_local(resp.headers["Location"], origin(chat))
        assert resp.headers["Location"].startswith("/r/general")
    # A page asked for without a session sends to /login with a local `next`.
    resp = await chat.client.get("/r/general", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=")


# -- 13. revocation -------------------------------------------------------------------------------------


async def test_a_deactivated_user_is_locked_out_at_once(chat: Chat) -> None:
    token = await chat.bearer("bob")
    browser = await chat.browser("bob")
    async with browser:
        stream = await chat.stream(token)
        tab = await browser.ws_connect("/ws?room=general", headers={"Origin": origin(chat)})
        cookie_stream = await browser.ws_connect("/api/v1/stream")
        assert (await chat.client.get("/api/v1/me", headers=token)).status == 200

        await chat.services.accounts.deactivate("bob")

        assert (await chat.client.get("/api/v1/me", headers=token)).status == 401
        assert (await browser.get("/api/v1/me")).status == 401
        resp = await browser.get("/r/general", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/login")
        # Every open socket of bob's is closed by the server (a wait, not a timing check).
        for ws in (stream, tab, cookie_stream):
            msg = await end_of(ws)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
            assert ws.closed or ws.close_code is not None
        assert stream.close_code == 1008
        # New connections and sign-ins are refused.
        assert await handshake_status(chat.stream(token)) == 401
        async with session_for(chat) as again:
            assert (await post_login(again, "bob")).status == 401


async def test_a_password_change_ends_sessions_at_once(chat: Chat) -> None:
    await chat.user("bob")
    browser = await chat.browser("bob")
    async with browser:
        tab = await browser.ws_connect("/ws?room=general", headers={"Origin": origin(chat)})
        await chat.services.accounts.set_password("bob", "a brand new password")
        assert (await browser.get("/api/v1/me")).status == 401
        msg = await end_of(tab)
        assert tab.close_code == 1008 and msg.type != WSMsgType.TEXT
        async with session_for(chat) as again:
            assert (await post_login(again, "bob")).status == 401
            assert (await post_login(again, "bob", "a brand new password")).status == 303


async def test_a_revoked_client_that_never_answers_the_close_is_cut_off(chat: Chat) -> None:
    """The server's close frame waits for the client's answer only so long.

    A raw socket, because aiohttp's client answers a close frame on its next read."""
    headers = await chat.bearer("bob")
    reader, writer = await asyncio.open_connection(chat.client.host, chat.client.port)
    try:
        writer.write((
            "GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: {headers['Authorization']}\r\n\r\n"
        ).encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        await chat.services.accounts.deactivate("bob")
        # Everything the server sends until it drops the connection (EOF) by itself.
        rest = await asyncio.wait_for(reader.read(), 30)
        assert rest.endswith(b"\x88\x0c\x03\xf0signed out"), rest[-40:]  # close 1008, then nothing
    finally:
        writer.close()
