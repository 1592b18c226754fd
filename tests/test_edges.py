"""The HTTP edge against hostile or careless clients: slow and malformed requests, the Host
and Origin a request names (public_url), invisible and reordering characters.

What the process does with its sockets is tested on the real `chatd serve` (a subprocess);
what a request gets back, on the app in-process. Waits use generous timeouts and nothing
asserts how long something took.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from aiohttp import ClientSession, WSServerHandshakeError

from chatd.app import create_app
from chatd.config import load_config
from chatd.errors import BadInput
from conftest import PASSWORD, Chat, Server, chatd_command, make_config, run_cli

pytestmark = pytest.mark.usefixtures("no_server_tracebacks")

PUBLIC = "https://chat.example.org"
WAIT = 60  # seconds: the most any wait below may take before the test fails


def make_user(db: Path, name: str) -> str:
    assert run_cli("adduser", name, "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    return run_cli("token", name, db=db).stdout.strip()


async def exchange(server: Server, data: bytes) -> bytes:
    """Send raw bytes on a new connection; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


def split_response(raw: bytes) -> tuple[int, str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1"), body


# -- 6. slow clients ---------------------------------------------------------------------


async def test_a_request_whose_headers_stop_halfway_is_closed_while_others_are_served(server_factory) -> None:
    server: Server = server_factory(env={"CHATD_HEADER_TIMEOUT_SECONDS": "1"}).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /heal")  # half a request line, then nothing
    await writer.drain()
    async with ClientSession() as session:
        assert (await session.get(f"{server.url}/healthz")).status == 200
    # The server closes it (without an answer); before the fix it waited for an hour.
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()
    async with ClientSession() as session:
        assert (await session.get(f"{server.url}/healthz")).status == 200
    assert server.terminate() == 0
    assert "event=header_timeout ip=127.0.0.1" in server.stderr()


async def test_a_body_that_stops_halfway_gets_408_and_the_connection_closes(tmp_path: Path, server_factory) -> None:
    """A POST that promises 100 bytes and sends 10 is answered 408 in chatd's error shape
    (JSON for the API, a page for a form), then the server closes the connection."""
    token = make_user(tmp_path / "chatd.db", "alice")
    server: Server = server_factory(env={"CHATD_BODY_TIMEOUT_SECONDS": "1"}).start()
    api = (f"POST /api/v1/rooms/general/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
           "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode() + b'{"body": "'
    form = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\nusername=a")
    api_answer, form_answer = await asyncio.gather(exchange(server, api), exchange(server, form))
    status, head, body = split_response(api_answer)
    assert status == 408 and "Connection: close" in head
    assert body == b'{"error": {"code": "request_timeout", "message": "the request body did not arrive in time"}}'
    status, head, body = split_response(form_answer)
    assert status == 408 and "text/html" in head and b"did not arrive in time" in body
    async with ClientSession() as session:
        resp = await session.post(f"{server.url}/api/v1/rooms/general/messages", json={"body": "after"},
                                  headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 201
    assert server.terminate() == 0


async def test_idle_keep_alive_connections_close_after_75_seconds_not_an_hour(tmp_path: Path) -> None:
    """aiohttp's default keeps an idle connection 3630 s; `chatd serve`'s runner, 75 s."""
    from aiohttp import web

    from chatd.server import KEEPALIVE_SECONDS, Runner

    runner = Runner(create_app(make_config(tmp_path)), header_timeout=5, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        async with ClientSession() as session:
            assert (await session.get(f"http://127.0.0.1:{site.port}/healthz")).status == 200
            assert runner.server is not None
            assert [conn.keepalive_timeout for conn in runner.server.connections] == [KEEPALIVE_SECONDS] == [75.0]
    finally:
        await runner.cleanup()


def test_serve_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    """Started from a shell with `ulimit -Sn 256`, the server can still hold many connections."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard limit on open files here ({hard}) leaves nothing to raise to")
    proc = subprocess.Popen(["sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", *chatd_command(), "serve",
                             "--db", str(tmp_path / "chatd.db"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening on" in proc.stdout.readline()
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M)
        assert soft and int(soft.group(1)) == hard, limits
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert f"open_files_limit={hard}" in err


# -- 9. malformed requests ---------------------------------------------------------------

MARK = b"zq7mark"
MALFORMED = {
    "bad method bytes": b"G\x01" + MARK + b" / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "bad header line": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header " + MARK + b"\r\n\r\n",
    "invalid chunked encoding": b"POST /api/v1/rooms/general/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n" + MARK + b"\r\nhello\r\n0\r\n\r\n",
    "request line over 8190 bytes": b"GET /" + MARK * 1300 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    # A TLS ClientHello (record, handshake header, version, random, then a server name).
    "tls client hello": bytes.fromhex("16030100c8010000c40303") + os.urandom(32)
                        + bytes.fromhex("000002130101000015000000110f0000000c") + MARK + b".example",
}


async def test_malformed_requests_get_a_short_answer_with_security_headers_and_one_log_line_each(
    server_factory,
) -> None:
    server: Server = server_factory().start()
    sent = [data for data in MALFORMED.values() for _ in range(60)]  # 300 requests
    gate = asyncio.Semaphore(50)

    async def one(data: bytes) -> bytes:
        async with gate:
            return await exchange(server, data)

    answers = await asyncio.gather(*(one(data) for data in sent))
    for data, raw in zip(sent, answers, strict=True):
        status, head, body = split_response(raw)
        assert status == 400 and body == b"Bad request\n", raw[:200]
        assert "X-Content-Type-Options: nosniff" in head and "Content-Security-Policy: default-src" in head
        assert MARK not in raw and data[:12] not in raw
    async with ClientSession() as session:
        assert (await session.get(f"{server.url}/healthz")).status == 200
    assert server.terminate() == 0
    log = server.stderr()
    assert "Traceback" not in log
    assert len(log.splitlines()) <= len(sent) + 10  # start-up and shut-down lines besides
    assert log.count("event=bad_request") == len(sent)
    assert MARK.decode() not in log


# -- 13. Host and Origin with public_url -------------------------------------------------


def test_public_url_entries_are_kept_as_the_origins_browsers_send() -> None:
    config = load_config({}, env={"CHATD_PUBLIC_URL": "https://Chat.Example.org/, http://10.0.0.5:8080,"
                                                      " https://chat.example.org:443, http://[::1]:80/"})
    assert config.public_url == ("https://chat.example.org", "http://10.0.0.5:8080", "https://chat.example.org",
                                 "http://[::1]")


@pytest.mark.parametrize("entry", ["chat.example.org", "ftp://chat.example.org", "https://", "https://x.org/chat",
                                   "https://x.org/?a=1", "https://x.org/#top", "https://me@x.org", "https://x.org:99999"])
def test_public_url_must_be_an_http_or_https_origin(entry: str) -> None:
    with pytest.raises(BadInput, match="public_url"):
        load_config({}, env={"CHATD_PUBLIC_URL": entry})


@pytest.mark.parametrize("name", ["CHATD_HEADER_TIMEOUT_SECONDS", "CHATD_BODY_TIMEOUT_SECONDS"])
def test_read_timeouts_must_be_positive(name: str) -> None:
    with pytest.raises(BadInput, match="must be positive"):
        load_config({}, env={name: "0"})


async def test_with_public_url_another_host_is_refused_421(make_chat) -> None:
    chat: Chat = await make_chat(public_url=(PUBLIC,))
    for path in ("/healthz", "/api/v1/me", "/login"):
        resp = await chat.client.get(path, headers={"Host": "evil.example", "Origin": "http://evil.example"})
        assert resp.status == 421, path
    resp = await chat.client.get("/healthz", headers={"Host": "evil.example"})
    assert await resp.json() == {"error": {"code": "misdirected_request",
                                           "message": "this server does not answer for that host name"}}
    page = await chat.client.get("/login", headers={"Host": "chat.example.org:8443"})
    assert page.status == 421 and "text/html" in page.headers["Content-Type"]


async def test_with_public_url_its_host_and_loopback_names_are_answered(make_chat) -> None:
    chat: Chat = await make_chat(public_url=(PUBLIC,))
    port = chat.client.port
    for host in ("chat.example.org", "CHAT.example.org:443", f"127.0.0.1:{port}", "localhost", f"[::1]:{port}"):
        assert (await chat.client.get("/healthz", headers={"Host": host})).status == 200, host
    assert (await chat.client.get("/healthz")).status == 200  # the test client's own Host: 127.0.0.1:PORT


async def test_with_public_url_cookie_writes_need_its_origin_whatever_the_scheme(make_chat) -> None:
    """The test client speaks plain HTTP, as chatd behind a TLS proxy does: the Origin is
    compared with public_url's origin, not with the request's scheme and Host."""
    chat: Chat = await make_chat(public_url=(PUBLIC,))
    await chat.user("alice")
    url = "/api/v1/rooms/general/messages"
    async with await chat.browser("alice") as browser:
        ours = await browser.post(url, json={"body": "hi"}, headers={"Host": "chat.example.org", "Origin": PUBLIC})
        assert ours.status == 201
        for origin in ("https://evil.example", "http://chat.example.org", f"http://127.0.0.1:{chat.client.port}"):
            resp = await browser.post(url, json={"body": "no"}, headers={"Host": "chat.example.org", "Origin": origin})
            assert resp.status == 403, origin
            assert (await resp.json())["error"]["code"] == "forbidden"


async def test_with_public_url_websocket_upgrades_need_its_origin(make_chat) -> None:
    chat: Chat = await make_chat(public_url=(PUBLIC,))
    bearer = await chat.bearer("alice")
    ws = await chat.client.ws_connect("/api/v1/stream", headers={**bearer, "Origin": PUBLIC})
    await ws.close()
    ws = await chat.client.ws_connect("/api/v1/stream", headers=bearer)  # no Origin: a bot
    await ws.close()
    with pytest.raises(WSServerHandshakeError) as refused:
        await chat.client.ws_connect("/api/v1/stream", headers={**bearer, "Origin": "https://evil.example"})
    assert refused.value.status == 403
    async with await chat.browser("alice") as browser:
        ws = await browser.ws_connect("/ws?room=general", headers={"Origin": PUBLIC})
        await ws.close()
        with pytest.raises(WSServerHandshakeError) as refused:
            await browser.ws_connect("/ws?room=general", headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403


async def test_without_public_url_hosts_are_not_checked(chat: Chat) -> None:
    """Nothing changes without public_url: the Origin is compared with the request's own Host."""
    assert (await chat.client.get("/healthz", headers={"Host": "evil.example"})).status == 200


async def test_the_first_run_setup_url_uses_public_url(server_factory) -> None:
    server: Server = server_factory(env={"CHATD_PUBLIC_URL": PUBLIC + "/"}).start()
    line = server.read_line()
    match = re.fullmatch(r"No accounts yet\. Create the first admin account at: (\S+)\n", line)
    assert match and match.group(1).startswith(f"{PUBLIC}/setup?token="), line
    token = match.group(1).split("token=", 1)[1]
    async with ClientSession() as session:  # through loopback, as a proxy would forward it
        assert (await session.get(f"{server.url}/setup?token={token}")).status == 200
    assert server.terminate() == 0


# -- 12. room addresses and invisible characters -----------------------------------------


async def test_a_taken_room_address_is_refused_in_the_same_words_public_or_private(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    for slug, private in (("lobby", False), ("hideout", True)):
        resp = await chat.client.post("/api/v1/rooms", json={"slug": slug, "private": private}, headers=bob)
        assert resp.status == 201
    answers = []
    for slug in ("lobby", "hideout"):
        resp = await chat.client.post("/api/v1/rooms", json={"slug": slug}, headers=alice)
        assert resp.status == 409
        text = await resp.text()
        assert slug not in text
        answers.append(await resp.json())
    assert answers[0] == answers[1]
    assert answers[0]["error"]["code"] == "conflict"


async def test_a_body_of_only_invisible_characters_is_refused(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    url = "/api/v1/rooms/general/messages"
    for body in ("\u200b", "\u200b\u200c\u200d \u2060\ufeff", "\u3164\u2800", "\u00ad\n\u202e"):
        resp = await chat.client.post(url, json={"body": body}, headers=alice)
        assert resp.status == 400, repr(body)
        assert (await resp.json())["error"]["message"] == "body must not be empty"
    assert (await chat.client.post(url, json={"body": "\u200bhi"}, headers=alice)).status == 201


async def test_bidi_controls_show_in_message_html_and_stay_in_the_body(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    body = "see https://evil.example/\u202egnp.exe"
    resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": body}, headers=alice)
    message = (await resp.json())["message"]
    assert message["body"] == body
    assert "\u202e" not in message["html"]
    assert '<a href="https://evil.example/" ' in message["html"]
    assert '<span class="bidi" title="U+202E">U+202E</span>gnp.exe' in message["html"]


async def test_bidi_controls_are_stripped_from_room_names(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    resp = await chat.client.post("/api/v1/rooms", json={"slug": "pics", "name": "cat \u202egnp.exe"}, headers=alice)
    assert resp.status == 201
    assert (await resp.json())["room"]["name"] == "cat gnp.exe"
    resp = await chat.client.post("/api/v1/rooms", json={"slug": "blank", "name": "\u200b\u2066"}, headers=alice)
    assert (await resp.json())["room"]["name"] == "blank"
