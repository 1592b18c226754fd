"""The real `chatd` command as a subprocess: set up, serve, sign in, post, read back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar

from conftest import PASSWORD, Server, csrf_of, end_of, next_json, run_cli


async def sign_in(session: ClientSession, base: str, name: str, password: str = PASSWORD) -> int:
    page = await session.get(f"{base}/login")
    data = {"username": name, "password": password, "csrf": csrf_of(await page.text()), "next": "/"}
    resp = await session.post(f"{base}/login", data=data, allow_redirects=False)
    return resp.status


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_adduser_serve_login_post_read_back(tmp_path: Path, server_factory, loop: str) -> None:
    db = tmp_path / "chatd.db"
    assert run_cli("adduser", "alice", "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    token = run_cli("token", "alice", db=db).stdout.strip()
    server: Server = server_factory(env={"CHATD_EVENT_LOOP": loop}).start()
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as session:
        assert (await session.get(f"{server.url}/healthz")).status == 200
        resp = await session.get(f"{server.url}/r/general", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=")
        assert await sign_in(session, server.url, "alice", "wrong password") == 401
        assert await sign_in(session, server.url, "alice") == 303
        page = await session.get(f"{server.url}/")
        assert page.url.path == "/r/general"
        headers = {"Authorization": f"Bearer {token}"}
        resp = await session.post(f"{server.url}/api/v1/rooms/general/messages",
                                  json={"body": "smoke <test>"}, headers=headers)
        assert resp.status == 201
        message = (await resp.json())["message"]
        page = await session.get(f"{server.url}/r/general")
        html = await page.text()
        assert f'id="message-{message["id"]}"' in html and "smoke &lt;test&gt;" in html
        async with session.ws_connect(f"{server.url}/api/v1/stream", headers=headers) as ws:
            await ws.send_json({"type": "send", "room": "general", "body": "over the stream", "client_id": "s1"})
            ack = await next_json(ws, "message")
            assert ack["message"]["client_id"] == "s1" and ack["message"]["id"] > message["id"]
    assert server.terminate() == 0
    assert f"loop={loop}" in server.stderr()


async def test_first_run_setup_url_creates_admin_once(tmp_path: Path, server_factory) -> None:
    server: Server = server_factory().start()
    line = server.read_line()
    match = re.search(r"(http://\S+/setup\?token=\S+)", line)
    assert match, line
    setup_url = match.group(1)
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as session:
        assert (await session.get(f"{server.url}/setup?token=wrong")).status == 404
        form = await session.get(setup_url)
        assert form.status == 200
        token = setup_url.split("token=", 1)[1]
        data = {"username": "root", "password": PASSWORD, "password2": PASSWORD,
                "csrf": csrf_of(await form.text()), "token": token}
        resp = await session.post(f"{server.url}/setup", data=data, allow_redirects=False)
        assert resp.status == 303
        me = await session.get(f"{server.url}/api/v1/me")
        assert await me.json() == {"username": "root", "admin": True}
        again = await session.get(setup_url)
        assert again.status == 404
    assert server.terminate() == 0
    # With an account present, a restart prints no setup link.
    second: Server = server_factory().start()
    assert second.terminate() == 0
    assert "setup" not in "".join(second.banner + [second.proc.stdout.read()])


async def test_cli_changes_apply_to_running_server(tmp_path: Path, server_factory) -> None:
    db = tmp_path / "chatd.db"
    run_cli("adduser", "alice", "--password-stdin", db=db, stdin=PASSWORD + "\n")
    server: Server = server_factory().start()
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as session:
        # A user added while the server runs can sign in at once.
        assert run_cli("adduser", "bob", "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
        assert await sign_in(session, server.url, "bob") == 303
        assert (await session.get(f"{server.url}/api/v1/me")).status == 200
        token = run_cli("token", "bob", db=db).stdout.strip()
        bearer = {"Authorization": f"Bearer {token}"}
        stream = await session.ws_connect(f"{server.url}/api/v1/stream", headers=bearer)
        # The server answers credentials from memory while only its own message commits
        # happen; every change by another process is seen on the next request.
        posts = f"{server.url}/api/v1/rooms/general/messages"
        for body in ("one", "two"):
            assert (await session.post(posts, json={"body": body}, headers=bearer)).status == 201
        # passwd ends bob's sessions at once.
        assert run_cli("passwd", "bob", "--password-stdin", db=db, stdin="a new password\n").returncode == 0
        assert (await session.get(f"{server.url}/api/v1/me")).status == 401
        assert await sign_in(session, server.url, "bob", "a new password") == 303
        assert (await session.post(posts, json={"body": "three"}, headers=bearer)).status == 201
        # deluser ends sessions and tokens, and closes open sockets.
        assert run_cli("deluser", "bob", db=db).returncode == 0
        assert (await session.get(f"{server.url}/api/v1/me")).status == 401
        assert (await session.post(posts, json={"body": "four"}, headers=bearer)).status == 401
        resp = await session.get(f"{server.url}/api/v1/me", headers=bearer)
        assert resp.status == 401
        msg = await end_of(stream)
        assert msg.type.name in ("CLOSE", "CLOSED")
        assert await sign_in(session, server.url, "bob", "a new password") == 401
    assert server.terminate() == 0


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "chatd", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "adduser" in result.stdout


def test_serve_on_busy_port_is_one_sentence(tmp_path: Path, server_factory) -> None:
    first: Server = server_factory().start()
    second = server_factory(db=tmp_path / "other.db")
    import subprocess

    from conftest import chatd_command

    result = subprocess.run([*chatd_command(), "serve", "--db", str(tmp_path / "other.db"),
                             "--port", str(first.port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "cannot listen" in result.stderr.lower()
    assert first.terminate() == 0
    del second


def test_templates_and_static_ship_inside_the_installed_package() -> None:
    """`chatd serve` works from any directory: the wheel carries templates/ and static/."""
    import chatd
    from chatd.app import resource_dir

    package = Path(chatd.__file__).resolve().parent
    if (package.parent / "pyproject.toml").exists():
        pytest.skip("chatd is imported from a checkout here; `make test` runs the suite on the installed wheel")
    for name in ("templates", "static"):
        assert resource_dir(name) == package / name
    assert (package / "templates" / "room.html").is_file()
    assert (package / "static" / "vendor" / "htmx-4.0.1.min.js").is_file()
