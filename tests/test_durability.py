"""No acknowledged message is lost: kill -9, SIGTERM, a full or read-only database."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import aiohttp
from aiohttp import ClientSession, WSMsgType

from conftest import PASSWORD, Chat, Server, end_of, next_json, run_cli

FLOOD_ENV = {"CHATD_MESSAGES_PER_SECOND": "100000", "CHATD_MESSAGE_BURST": "100000"}


def make_user(db: Path, name: str) -> str:
    assert run_cli("adduser", name, "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    return run_cli("token", name, db=db).stdout.strip()


async def test_acknowledged_messages_survive_kill_9(tmp_path: Path, server_factory) -> None:
    db = tmp_path / "chatd.db"
    token = make_user(db, "alice")
    server: Server = server_factory(env=FLOOD_ENV).start()
    headers = {"Authorization": f"Bearer {token}"}
    acked: dict[int, str] = {}
    killed = asyncio.Event()

    async def send(session: ClientSession, i: int) -> None:
        body = f"durable message {i} ✓"
        try:
            resp = await session.post(f"{server.url}/api/v1/rooms/general/messages",
                                      json={"body": body}, headers=headers)
            if resp.status == 201:
                acked[(await resp.json())["message"]["id"]] = body
        except (TimeoutError, aiohttp.ClientError):
            pass  # in flight when the process died: not acknowledged, may or may not be stored
        if len(acked) >= 300 and not killed.is_set():
            killed.set()
            server.kill()

    connector = aiohttp.TCPConnector(limit=64)
    async with ClientSession(connector=connector) as session:
        await asyncio.gather(*(send(session, i) for i in range(2000)))
    assert killed.is_set(), "the server was never killed"
    assert len(acked) >= 300
    restarted: Server = server_factory(env=FLOOD_ENV).start()
    async with ClientSession() as session:
        found: dict[int, str] = {}
        after = 0
        while True:
            resp = await session.get(
                f"{restarted.url}/api/v1/rooms/general/messages?after={after}&limit=200", headers=headers)
            page = (await resp.json())["messages"]
            if not page:
                break
            found.update({m["id"]: m["body"] for m in page})
            after = page[-1]["id"]
    missing = {mid: body for mid, body in acked.items() if found.get(mid) != body}
    assert not missing, f"{len(missing)} acknowledged messages lost"
    assert restarted.terminate() == 0


async def test_sigterm_closes_sockets_with_1012_and_exits_0(tmp_path: Path, server_factory) -> None:
    db = tmp_path / "chatd.db"
    token = make_user(db, "alice")
    server: Server = server_factory(env=FLOOD_ENV).start()
    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession() as session:
        streams = [await session.ws_connect(f"{server.url}/api/v1/stream", headers=headers) for _ in range(3)]
        posts = [asyncio.create_task(session.post(f"{server.url}/api/v1/rooms/general/messages",
                                                  json={"body": f"last {i}"}, headers=headers))
                 for i in range(50)]
        await asyncio.sleep(0)  # let the posts start before the signal
        loop = asyncio.get_running_loop()
        exit_code = loop.run_in_executor(None, server.terminate, 10)
        for ws in streams:
            msg = await end_of(ws, 15)
            assert msg.type == WSMsgType.CLOSE and msg.data == 1012, (msg.type, msg.data)
        assert await exit_code == 0
        acked = []
        for task in posts:
            try:
                resp = await task
                if resp.status == 201:
                    acked.append((await resp.json())["message"]["id"])
            except aiohttp.ClientError:
                pass
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM messages")}
    assert set(acked) <= stored


async def on_writers(store, sql: str) -> None:
    """Apply a connection setting to both connections that write messages: the inline one
    and the writer thread's (the fallback while SQLite's write lock is taken)."""
    await store._writer.run(lambda c: c.execute(sql))
    if store._inline_writer is not None:
        store._inline_writer.execute(sql)


async def test_full_disk_fails_sends_clearly_and_recovers(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    ws = await chat.stream(alice)
    ok = await chat.client.post("/api/v1/rooms/general/messages", json={"body": "before"}, headers=alice)
    assert ok.status == 201
    store = chat.services.store
    # SQLITE_FULL for real: cap the file at its current size.
    pages = await store._writer.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await on_writers(store, f"PRAGMA max_page_count = {pages}")
    big = "x" * 9000
    failures = 0
    for _ in range(50):
        resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": big}, headers=alice)
        if resp.status == 503:
            failures += 1
            assert (await resp.json())["error"]["code"] == "storage_unavailable"
            break
        assert resp.status == 201
    assert failures == 1, "the capped database never filled up"
    await ws.send_json({"type": "send", "room": "general", "body": big, "client_id": "full"})
    event = await next_json(ws, "error")
    assert event["code"] == "storage_unavailable" and event["client_id"] == "full"
    assert (await chat.client.get("/healthz")).status == 200
    # Space returns: sends work again, and nothing acknowledged was lost.
    await on_writers(store, "PRAGMA max_page_count = 1073741823")
    resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": "after"}, headers=alice)
    assert resp.status == 201
    history = await chat.client.get("/api/v1/rooms/general/messages?limit=200", headers=alice)
    bodies = [m["body"] for m in (await history.json())["messages"]]
    assert bodies[0] == "before" and bodies[-1] == "after"
    await ws.close()


async def test_read_only_database_fails_sends_clearly_and_recovers(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    store = chat.services.store
    await on_writers(store, "PRAGMA query_only = ON")
    resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": "nope"}, headers=alice)
    assert resp.status == 503
    assert "try again" in (await resp.json())["error"]["message"]
    await on_writers(store, "PRAGMA query_only = OFF")
    resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": "yes"}, headers=alice)
    assert resp.status == 201
    history = await chat.client.get("/api/v1/rooms/general/messages", headers=alice)
    assert [m["body"] for m in (await history.json())["messages"]] == ["yes"]


async def test_a_command_holding_the_write_lock_delays_messages_not_the_server(
    tmp_path: Path, server_factory
) -> None:
    """Messages are committed on the event loop; one that finds SQLite's write lock taken
    (here by another process, as a `chatd` command would) waits for it off the loop."""
    db = tmp_path / "chatd.db"
    token = make_user(db, "alice")
    headers = {"Authorization": f"Bearer {token}"}
    server: Server = server_factory().start()
    url = f"{server.url}/api/v1/rooms/general/messages"
    async with ClientSession() as session:
        assert (await session.post(url, json={"body": "before"}, headers=headers)).status == 201
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("PRAGMA busy_timeout = 5000")
        holder.execute("BEGIN IMMEDIATE")
        try:
            post = asyncio.create_task(session.post(url, json={"body": "while locked"}, headers=headers))
            # Wait (not a timing check) until the server has met the lock and deferred the batch.
            while await deferred_batches(session, server.url) == 0:
                assert not post.done(), "a message was stored while another process held the lock"
                await asyncio.sleep(0.02)
            assert "chatd_messages_waiting 1" in await (await session.get(f"{server.url}/metrics")).text()
            # Meanwhile everything else is answered: reads, health, the same user's history.
            assert (await session.get(f"{server.url}/healthz")).status == 200
            history = await (await session.get(url, headers=headers)).json()
            assert [m["body"] for m in history["messages"]] == ["before"]
            assert not post.done()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        resp = await post
        assert resp.status == 201
        assert (await session.post(url, json={"body": "after"}, headers=headers)).status == 201
        history = await (await session.get(url, headers=headers)).json()
        assert [m["body"] for m in history["messages"]] == ["before", "while locked", "after"]
        assert await deferred_batches(session, server.url) == 1
        text = await (await session.get(f"{server.url}/metrics")).text()
        assert re.search(r"^chatd_messages_waiting 0$", text, re.M)  # nothing left waiting
    assert server.terminate() == 0


async def deferred_batches(session: ClientSession, base: str) -> int:
    text = await (await session.get(f"{base}/metrics")).text()
    return int(re.search(r"^chatd_message_batches_deferred_total (\d+)$", text, re.M).group(1))
