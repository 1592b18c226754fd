"""Several `chatd serve` processes on one database, joined by a real Redis (docs/scaling.md).

Real subprocesses, a real redis-server on a free loopback port, real sockets: what the
contract's "Running several processes" promises, including kill -9 of one process and a
Redis restart in the middle of traffic. Servers run with `--log-level warning` (their
stderr is read only when they have stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import ClientSession, ClientWebSocketResponse
from test_durability import FLOOD_ENV, make_user
from test_startup import one_sentence, serve

from conftest import PASSWORD, RedisServer, Server, chatd_command, database_for, next_json, run_cli

QUIET = ("--log-level", "warning")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The database the processes share: a SQLite file (one box), or PostgreSQL (several)."""
    return tmp_path / "chatd.db" if request.param == "sqlite" else database_for(tmp_path)


def pair(server_factory, redis: RedisServer, db: Path | str, env: dict | None = None) -> tuple[Server, Server]:
    a = server_factory("--broker", redis.url, *QUIET, db=db, env=env or FLOOD_ENV).start()
    b = server_factory("--broker", redis.url, *QUIET, db=db, env=env or FLOOD_ENV).start()
    return a, b


async def post(session: ClientSession, server: Server, token: str, body: str, room: str = "general") -> int:
    resp = await session.post(f"{server.url}/api/v1/rooms/{room}/messages", json={"body": body},
                              headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 201, (resp.status, await resp.text())
    return (await resp.json())["message"]["id"]


async def stream(session: ClientSession, server: Server, token: str, since: int | None = None
                 ) -> ClientWebSocketResponse:
    query = f"?since={since}" if since is not None else ""
    return await session.ws_connect(f"{server.url}/api/v1/stream{query}",
                                    headers={"Authorization": f"Bearer {token}"})


async def messages_until(ws: ClientWebSocketResponse, wanted: set[int], timeout: float = 60) -> list[int]:
    """The ids of message events, in the order they came, until every wanted id has come."""
    seen: list[int] = []
    while not wanted <= set(seen):
        try:
            event = await next_json(ws, "message", timeout)
        except TimeoutError:
            raise AssertionError(f"never came: {sorted(wanted - set(seen))[:10]}; came: {seen[:5]}...{seen[-5:]}"
                                 ) from None
        seen.append(event["id"])
    return seen


async def all_ids(session: ClientSession, server: Server, token: str, room: str = "general") -> list[int]:
    found: list[int] = []
    after = 0
    while True:
        resp = await session.get(f"{server.url}/api/v1/rooms/{room}/messages?after={after}&limit=200",
                                 headers={"Authorization": f"Bearer {token}"})
        page = [m["id"] for m in (await resp.json())["messages"]]
        if not page:
            return found
        found += page
        after = page[-1]


# -- start: bad addresses, one sentence -------------------------------------------------------


def test_an_unreachable_broker_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "chatd.db"
    make_user(db, "alice")
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    line = one_sentence(serve(db, "--broker", f"redis://:secret@127.0.0.1:{port}/0"))
    assert line.startswith(f"Error: Cannot reach the broker redis://:***@127.0.0.1:{port}/0: "), line
    assert "secret" not in line
    line = one_sentence(serve(db, "--broker", "http://127.0.0.1:1/"))
    assert "redis://" in line, line


def test_several_workers_need_a_broker(tmp_path: Path) -> None:
    db = tmp_path / "chatd.db"
    make_user(db, "alice")
    line = one_sentence(serve(db, "--workers", "2"))
    assert "needs a broker" in line, line


def test_a_server_without_a_broker_refuses_a_database_a_cluster_uses(db: Path | str, server_factory,
                                                                     redis_server: RedisServer) -> None:
    make_user(db, "alice")
    server_factory("--broker", redis_server.url, *QUIET, db=db).start()
    line = one_sentence(serve(db))
    assert line.startswith(f"Error: Another chatd serve is already using the database {db}"), line


# -- the change log across processes ------------------------------------------------------------


async def test_posts_on_both_processes_reach_streams_on_both_in_id_order_and_replay_across(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    a, b = pair(server_factory, redis_server, db)
    async with ClientSession() as session:
        on_a, on_b = await stream(session, a, bob), await stream(session, b, bob)
        ids = await asyncio.gather(*(post(session, (a, b)[i % 2], alice, f"hello {i}") for i in range(200)))
        for ws in (on_a, on_b):
            seen = await messages_until(ws, set(ids))
            assert seen == sorted(ids), "every message once, in id order, on either process"
        # `since` on the other process replays what this one stored, with no gap or duplicate.
        ids.sort()
        replay = await stream(session, b, bob, since=ids[99])
        more = await post(session, a, alice, "after the replay began")
        seen = await messages_until(replay, {*ids[100:], more})
        assert seen == [*ids[100:], more]
        assert await all_ids(session, b, bob) == sorted([*ids, more])
    assert a.terminate() == 0 and b.terminate() == 0


async def test_kill_9_of_one_process_during_posts_to_both_loses_no_acknowledged_message(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    a, b = pair(server_factory, redis_server, db)
    acked: set[int] = set()
    killed = asyncio.Event()

    async def send(session: ClientSession, i: int) -> None:
        server = (a, b)[i % 2]
        if server is a and killed.is_set():
            server = b
        with contextlib.suppress(AssertionError, aiohttp.ClientError):  # in flight on the process that died
            acked.add(await post(session, server, alice, f"message {i}"))
        if len(acked) >= 200 and not killed.is_set():
            killed.set()
            a.kill()

    async with ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        watcher = await stream(session, b, bob)
        await asyncio.gather(*(send(session, i) for i in range(800)))
        assert killed.is_set()
        found = await all_ids(session, b, bob)
        assert acked <= set(found), f"{len(acked - set(found))} acknowledged messages missing on the survivor"
        seen = await messages_until(watcher, acked)
        assert len(seen) == len(set(seen)), "no duplicate on the survivor's stream"
        assert seen == sorted(seen), "in id order"
    assert b.terminate() == 0


async def test_a_redis_restart_mid_traffic_loses_and_duplicates_nothing(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    a, b = pair(server_factory, redis_server, db)
    async with ClientSession() as session:
        watcher = await stream(session, b, bob)
        before = [await post(session, a, alice, f"before {i}") for i in range(20)]
        redis_server.stop()
        for server in (a, b):
            while (await session.get(f"{server.url}/healthz")).status != 503:
                await asyncio.sleep(0.1)
            body = await (await session.get(f"{server.url}/healthz")).json()
            assert body == {"status": "unavailable", "database": "ok", "broker": "unavailable"}
        during = [await post(session, a, alice, f"during {i}") for i in range(20)]  # the database is fine
        redis_server.start(redis_server.port)
        for server in (a, b):
            while (await session.get(f"{server.url}/healthz")).status != 200:
                await asyncio.sleep(0.1)
        after = [await post(session, a, alice, f"after {i}") for i in range(20)]
        wanted = [*before, *during, *after]
        seen = await messages_until(watcher, set(wanted))
        assert seen == sorted(wanted), "every message once, in order, across the restart"
    assert a.terminate() == 0 and b.terminate() == 0


# -- shared live state ---------------------------------------------------------------------------


async def test_presence_and_typing_cross_processes_and_a_killed_process_goes_offline(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    a, b = pair(server_factory, redis_server, db)
    async with ClientSession() as session:
        watcher = await stream(session, a, bob)
        typist = await stream(session, b, alice)
        assert await next_json(watcher, "presence") == {"type": "presence", "user": "alice", "online": True}
        await typist.send_json({"type": "typing", "room": "general"})
        assert await next_json(watcher, "typing") == {"type": "typing", "room": "general", "user": "alice"}
        b.kill()  # no goodbye: the others find out from its silence (offline within 30 s)
        assert await next_json(watcher, "presence", timeout=45) == {
            "type": "presence", "user": "alice", "online": False}
    assert a.terminate() == 0


async def test_removal_on_one_process_ends_access_on_the_other(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    assert run_cli("adduser", "root", "--admin", "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    admin = run_cli("token", "root", db=db).stdout.strip()
    bob = make_user(db, "bob")
    a, b = pair(server_factory, redis_server, db)
    auth = {"Authorization": f"Bearer {admin}"}
    async with ClientSession() as session:
        assert (await session.post(f"{a.url}/api/v1/rooms", json={"slug": "secret", "private": True},
                                   headers=auth)).status == 201
        assert (await session.post(f"{a.url}/api/v1/rooms/secret/members", json={"username": "bob"},
                                   headers=auth)).status == 200
        watcher = await stream(session, b, bob)
        first = await post(session, a, admin, "for bob's eyes", room="secret")
        assert (await next_json(watcher, "message"))["id"] == first
        assert (await session.delete(f"{a.url}/api/v1/rooms/secret/members/bob", headers=auth)).status == 204
        assert await next_json(watcher, "room_removed") == {"type": "room_removed", "room": "secret"}
        await post(session, a, admin, "not for bob", room="secret")
        marker = await post(session, a, admin, "in general")
        assert (await next_json(watcher, "message"))["id"] == marker, "nothing more of the room he left"
        # And a revoked credential closes his socket on the other process.
        assert run_cli("deluser", "bob", db=db).returncode == 0
        while True:
            msg = await asyncio.wait_for(watcher.receive(), 30)
            if msg.type.name != "TEXT":
                break
        assert watcher.close_code == 1008
    assert a.terminate() == 0 and b.terminate() == 0


async def test_a_member_added_on_one_process_gets_what_another_delivered_before_it_heard(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    """Bob is added on A; before B hears of it, a message is posted on B (Redis holds A's
    notice back: CLIENT PAUSE). B delivered it to the room's members then, not to Bob: when
    the notice comes, his stream on B gets the room and that message, then what follows."""
    import redis
    assert run_cli("adduser", "root", "--admin", "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    admin = run_cli("token", "root", db=db).stdout.strip()
    bob = make_user(db, "bob")
    a, b = pair(server_factory, redis_server, db)
    auth = {"Authorization": f"Bearer {admin}"}
    control = redis.Redis(port=redis_server.port)
    async with ClientSession() as session:
        assert (await session.post(f"{a.url}/api/v1/rooms", json={"slug": "secret", "private": True},
                                   headers=auth)).status == 201
        watcher = await stream(session, b, bob)
        control.execute_command("CLIENT", "PAUSE", "30000", "WRITE")  # PUBLISH waits in Redis
        try:
            assert (await session.post(f"{a.url}/api/v1/rooms/secret/members", json={"username": "bob"},
                                       headers=auth)).status == 200
            missed = await post(session, b, admin, "posted on B before B heard of bob", room="secret")
        finally:
            control.execute_command("CLIENT", "UNPAUSE")
        added = await next_json(watcher, "room_updated")
        assert added["room"]["slug"] == "secret"
        marker = await post(session, b, admin, "and after", room="secret")
        assert await messages_until(watcher, {marker}) == [missed, marker]
    control.close()
    assert a.terminate() == 0 and b.terminate() == 0


async def test_the_rate_limit_counts_a_users_messages_on_every_process(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    slow = {"CHATD_MESSAGES_PER_SECOND": "0.01", "CHATD_MESSAGE_BURST": "5"}
    a, b = pair(server_factory, redis_server, db, env=slow)
    async with ClientSession() as session:
        watcher = await stream(session, b, bob)
        for i in range(5):
            await post(session, a, alice, f"burst {i}")  # the whole burst, on A
        # A notice from A after the spending: when B shows it, B has taken the spending too.
        typist = await stream(session, a, alice)
        await typist.send_json({"type": "typing", "room": "general"})
        await next_json(watcher, "typing")
        resp = await session.post(f"{b.url}/api/v1/rooms/general/messages", json={"body": "one too many"},
                                  headers={"Authorization": f"Bearer {alice}"})
        assert resp.status == 429, "the burst spent on A counts on B"
    assert a.terminate() == 0 and b.terminate() == 0


async def test_sign_in_and_room_creation_limits_count_on_every_process(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    limits = {**FLOOD_ENV, "CHATD_LOGIN_ATTEMPTS_PER_ACCOUNT": "3", "CHATD_ROOMS_PER_HOUR": "2"}
    a, b = pair(server_factory, redis_server, db, env=limits)

    async def sign_in(server: Server, password: str) -> int:
        async with ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as fresh:
            page = await (await fresh.get(f"{server.url}/login")).text()
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            resp = await fresh.post(f"{server.url}/login", allow_redirects=False, data={
                "username": "alice", "password": password, "csrf": csrf, "next": "/"})
            return resp.status

    async def after_a_notice_from_a(session: ClientSession, room: str) -> None:
        """A's notices arrive in order: once B shows a typing notice A sent after the steps
        on A's limits, B has taken those steps too (one per room: typing is spaced out)."""
        typist = await stream(session, a, alice)
        await typist.send_json({"type": "typing", "room": room})
        await next_json(watcher, "typing")
        await typist.close()

    async with ClientSession() as session:
        watcher = await stream(session, b, bob)
        for _ in range(3):
            assert await sign_in(a, "wrong password") == 401
        await after_a_notice_from_a(session, "general")
        assert await sign_in(b, PASSWORD) == 429, "the attempts spent on A count on B"
        auth = {"Authorization": f"Bearer {alice}"}
        for slug in ("one", "two"):
            assert (await session.post(f"{a.url}/api/v1/rooms", json={"slug": slug}, headers=auth)).status == 201
        await after_a_notice_from_a(session, "one")
        resp = await session.post(f"{b.url}/api/v1/rooms", json={"slug": "three"}, headers=auth)
        assert resp.status == 429, "the rooms created on A count on B"
    assert a.terminate() == 0 and b.terminate() == 0


# -- one address for N processes -----------------------------------------------------------------


async def test_workers_share_one_port_one_setup_link_and_stop_on_sigterm(
    tmp_path: Path, db: Path | str, redis_server: RedisServer,
) -> None:
    proc = subprocess.Popen([*chatd_command(), "serve", "--db", str(db), "--port", "0", "--workers", "2",
                             "--broker", redis_server.url, *QUIET],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        assert proc.stdout is not None
        listening = proc.stdout.readline()
        assert "listening on http://" in listening and "(2 workers, pids " in listening, listening
        setup = proc.stdout.readline()
        assert "/setup?token=" in setup, setup
        url = listening.split("listening on ", 1)[1].split(" ", 1)[0]
        async with ClientSession() as session:
            for _ in range(20):  # the kernel spreads connections: every one gets an answer
                async with ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as fresh:
                    resp = await fresh.get(f"{url}/healthz")
                    assert resp.status == 200
                    assert (await resp.json())["broker"] == "ok"
            token = setup.strip().rsplit("token=", 1)[1]
            page = await session.get(f"{url}/setup?token={token}")
            assert page.status == 200, "the one setup link works on whichever process answers"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_two_processes_on_a_fresh_database_print_the_same_setup_link(
    db: Path | str, server_factory, redis_server: RedisServer,
) -> None:
    a, b = pair(server_factory, redis_server, db)
    links = [server.read_line() for server in (a, b)]
    assert all("/setup?token=" in line for line in links), links
    assert links[0].rsplit("token=", 1)[1] == links[1].rsplit("token=", 1)[1]
    assert a.terminate() == 0 and b.terminate() == 0
