"""chatd on PostgreSQL (`--db postgresql://...`): what differs from SQLite, from outside.

The contract's behaviour on PostgreSQL is the contract suite run with
CHATD_TEST_CONFIG=postgresql+redis (make test), and the several-process tests in
test_cluster.py run on it too. Here: start-up faults, the commands, PostgreSQL going away
while chatd runs, and `chatd migrate-db`. A real PostgreSQL (Debian's) on a free loopback
port; the real `chatd` as a subprocess.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
import psycopg
import pytest
from aiohttp import ClientSession
from test_durability import FLOOD_ENV, make_user
from test_startup import one_sentence, serve

from conftest import PASSWORD, PostgresServer, free_port, run_cli

QUIET = ("--log-level", "warning")


def test_an_unreachable_database_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    url = f"postgresql://chatd:hunter2@127.0.0.1:{free_port()}/chat"  # nothing listens there
    line = one_sentence(serve(url, cwd=tmp_path))
    assert line.startswith("Error: Cannot use the PostgreSQL database postgresql://chatd@127.0.0.1:"), line
    assert "hunter2" not in line
    result = run_cli("users", db=url)
    assert result.returncode == 1 and "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: Cannot use the PostgreSQL database"), result.stderr


def test_a_database_from_a_newer_chatd_is_refused(pg_url: str, tmp_path: Path) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO chatd_schema (version) VALUES (999)")
    line = one_sentence(serve(pg_url, cwd=tmp_path))
    assert "schema version 999, newer than this chatd understands" in line and "upgrade chatd" in line, line


def test_account_commands_work_and_backup_points_to_pg_dump(pg_url: str, tmp_path: Path) -> None:
    assert run_cli("adduser", "alice", "--admin", "--password-stdin", db=pg_url, stdin=PASSWORD + "\n").returncode == 0
    again = run_cli("adduser", "ALICE", "--password-stdin", db=pg_url, stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "already exists" in again.stderr, "usernames are unique in any case"
    assert run_cli("adduser", "bob", "--password-stdin", db=pg_url, stdin=PASSWORD + "\n").returncode == 0
    assert run_cli("users", db=pg_url).stdout.split() == ["alice", "bob"]
    assert run_cli("token", "bob", db=pg_url).stdout.strip().startswith("chatd_")
    assert run_cli("deluser", "bob", db=pg_url).returncode == 0
    assert run_cli("users", db=pg_url).stdout.split() == ["alice"]
    result = run_cli("backup", str(tmp_path / "copy.db"), db=pg_url)
    assert result.returncode == 1 and "pg_dump" in result.stderr, result.stderr
    assert not (tmp_path / "copy.db").exists()


def test_check_names_the_database_without_its_password(pg_url: str) -> None:
    with_password = pg_url.replace("chatd@", "chatd:s3cret@")  # trust auth: the password is ignored
    result = run_cli("serve", "--check", db=with_password)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout and "database postgresql://chatd@127.0.0.1:" in result.stdout


def test_a_second_server_without_a_broker_is_refused(pg_url: str, server_factory, tmp_path: Path) -> None:
    make_user(pg_url, "alice")
    first = server_factory(*QUIET, db=pg_url).start()
    line = one_sentence(serve(pg_url, cwd=tmp_path))
    assert line == f"Error: Another chatd serve is already using the database {pg_url}; stop it first.", line
    assert first.terminate() == 0


async def test_postgresql_going_away_gives_503_and_chatd_reconnects_by_itself(
    postgres_of_its_own: PostgresServer, server_factory, tmp_path: Path,
) -> None:
    pg = postgres_of_its_own
    url = pg.new_database()
    token = make_user(url, "alice")
    server = server_factory(*QUIET, db=url, env=FLOOD_ENV).start()
    auth = {"Authorization": f"Bearer {token}"}
    async with ClientSession() as session:
        post = f"{server.url}/api/v1/rooms/general/messages"
        before = [(await (await session.post(post, json={"body": f"before {i}"}, headers=auth)).json())["message"]["id"]
                  for i in range(5)]
        port = pg.port
        pg.stop()
        resp = await session.post(post, json={"body": "while it is down"}, headers=auth)
        assert resp.status == 503, await resp.text()
        body = await resp.json()
        assert body["error"]["code"] == "storage_unavailable" and "Traceback" not in await resp.text()
        health = await session.get(f"{server.url}/healthz")
        assert health.status == 503 and (await health.json())["database"] == "unavailable"
        pg.start(port)
        while (await session.get(f"{server.url}/healthz")).status != 200:
            await asyncio.sleep(0.2)
        while (resp := await session.post(post, json={"body": "after"}, headers=auth)).status != 201:
            assert resp.status == 503  # the writer's connection is opened again on its next batch
            await asyncio.sleep(0.2)
        after = (await resp.json())["message"]["id"]
        history = await (await session.get(f"{post}?limit=100", headers=auth)).json()
        assert [m["id"] for m in history["messages"]] == [*before, after], "every acknowledged message, once"
        # The one-server lock ended with PostgreSQL's sessions; the server takes it again.
        for _ in range(300):  # a minute at most, not a measure: the keeper looks every 2 s
            if _server_lock_held(url):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the server never took its lock again after PostgreSQL restarted")
        line = one_sentence(serve(url, cwd=tmp_path))
        assert line.startswith("Error: Another chatd serve is already using the database"), line
    assert server.terminate() == 0
    assert "Traceback" not in server.stderr()


def _server_lock_held(url: str) -> bool:
    from chatd.store.postgres import SERVER_LOCK
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                            (SERVER_LOCK,)).fetchone()[0] > 0


# -- chatd migrate-db ------------------------------------------------------------------------------


async def test_migrate_db_copies_everything_and_the_server_carries_on(
    tmp_path: Path, pg_url: str, server_factory,
) -> None:
    db = tmp_path / "chatd.db"
    alice, bob = make_user(db, "alice"), make_user(db, "bob")
    old = server_factory(*QUIET, db=db, env=FLOOD_ENV).start()
    a_auth, b_auth = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    async with ClientSession() as session:
        api = f"{old.url}/api/v1"
        assert (await session.post(f"{api}/rooms", json={"slug": "ops", "private": True}, headers=a_auth)).status == 201
        assert (await session.post(f"{api}/rooms/ops/members", json={"username": "bob"}, headers=a_auth)).status == 200
        ids = []
        for i, body in enumerate(["Ångström café deploy", "我们明天部署新版本", "third", "fourth"]):
            resp = await session.post(f"{api}/rooms/{'ops' if i % 2 else 'general'}/messages", json={"body": body},
                                      headers=a_auth)
            ids.append((await resp.json())["message"]["id"])
        assert (await session.patch(f"{api}/messages/{ids[2]}", json={"body": "third, edited"},
                                    headers=a_auth)).status == 200
        assert (await session.post(f"{api}/messages/{ids[0]}/reactions", json={"emoji": "👍"},
                                   headers=b_auth)).status == 200
        assert (await session.delete(f"{api}/messages/{ids[3]}", headers=a_auth)).status in (200, 204)
        before = {room: await (await session.get(f"{api}/rooms/{room}/messages", headers=b_auth)).json()
                  for room in ("general", "ops")}
        rooms_before = await (await session.get(f"{api}/rooms", headers=b_auth)).json()

        refused = run_cli("migrate-db", "--to", pg_url, db=db)
        assert refused.returncode == 1 and "already using the database" in refused.stderr, refused.stderr
        assert old.terminate() == 0

        done = run_cli("migrate-db", "--to", pg_url, db=db)
        assert done.returncode == 0, done.stderr
        assert "Copied 2 accounts, 2 rooms and 3 messages" in done.stderr, done.stderr
        twice = run_cli("migrate-db", "--to", pg_url, db=db)
        assert twice.returncode == 1 and "already holds data" in twice.stderr

        new = server_factory(*QUIET, db=pg_url, env=FLOOD_ENV).start()
        api = f"{new.url}/api/v1"
        # The same tokens, rooms, members, messages, edits, reactions and unread counts.
        for room in ("general", "ops"):
            assert await (await session.get(f"{api}/rooms/{room}/messages", headers=b_auth)).json() == before[room]
        assert await (await session.get(f"{api}/rooms", headers=b_auth)).json() == rooms_before
        found = await (await session.get(f"{api}/search", params={"q": "angstrom cafe"}, headers=b_auth)).json()
        assert [r["message"]["id"] for r in found["results"]] == [ids[0]]
        found = await (await session.get(f"{api}/search", params={"q": "明天部署"}, headers=b_auth)).json()
        assert [r["message"]["id"] for r in found["results"]] == [ids[1]]
        # Ids carry on above every id given out before, the deleted message's included.
        resp = await session.post(f"{api}/rooms/general/messages", json={"body": "on postgres"}, headers=a_auth)
        assert resp.status == 201 and (await resp.json())["message"]["id"] > max(ids)
        assert run_cli("adduser", "carol", "--password-stdin", db=pg_url, stdin=PASSWORD + "\n").returncode == 0
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT id FROM users WHERE username = 'carol'").fetchone()[0] == 3
        assert new.terminate() == 0
    with sqlite3.connect(db) as conn:  # the file is left as it was
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 3


def test_migrate_db_refuses_what_it_cannot_copy(tmp_path: Path, pg_url: str) -> None:
    missing = run_cli("migrate-db", "--to", pg_url, db=tmp_path / "nothing.db")
    assert missing.returncode == 1 and "No database at" in missing.stderr
    make_user(tmp_path / "chatd.db", "alice")
    not_pg = run_cli("migrate-db", "--to", str(tmp_path / "other.db"), db=tmp_path / "chatd.db")
    assert not_pg.returncode == 1 and "postgresql://" in not_pg.stderr


def test_reads_sent_ahead_come_with_the_begin_and_never_outlive_a_write(pg_url: str) -> None:
    """The message writer's reads go with its BEGIN (PgConnection.ahead): answered from
    there, in the transaction, until it first writes; after a write, from the server."""
    from chatd.store.postgres import connect
    conn = connect(pg_url)
    other = psycopg.connect(pg_url, autocommit=True)
    try:
        other.execute("INSERT INTO meta (key, value) VALUES ('probe', 'before')")
        read = "SELECT value FROM meta WHERE key = ?"
        conn.ahead(read, ("probe",))
        conn.ahead("SELECT count(*) FROM meta WHERE key = ?", ("probe",))
        conn.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE meta SET value = 'elsewhere' WHERE key = 'probe'")  # after the read ahead
        assert conn.execute(read, ("probe",)).fetchone() == ("before",), "answered from the BEGIN's round trip"
        conn.execute("UPDATE meta SET value = 'mine' WHERE key = ?", ("probe",))
        assert conn.execute("SELECT count(*) FROM meta WHERE key = ?", ("probe",)).fetchone() == (1,)
        assert conn.execute(read, ("probe",)).fetchone() == ("mine",), "after a write, the server answers"
        conn.execute("ROLLBACK")
        assert conn.execute(read, ("probe",)).fetchone() == ("elsewhere",)
    finally:
        conn.close()
        other.close()


def test_a_join_over_arrays_is_planned_at_each_call(pg_url: str) -> None:
    """A generic plan made while the messages table was small (a hash join over all of it,
    the retry lookup's once) would be kept as the table grows: such reads are never
    prepared. Other statements are, once they have run a few times."""
    from chatd.store.postgres import connect
    conn = connect(pg_url)
    try:
        for _ in range(8):
            assert conn.execute("SELECT k.v FROM unnest(?::bigint[]) AS k(v) JOIN users u ON u.id = k.v",
                                ([1, 2],)).fetchall() is not None
            conn.execute("SELECT count(*) FROM users WHERE id > ?", (0,)).fetchone()
        prepared = [row[0] for row in conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()]
        assert any("count(*) FROM users" in s for s in prepared), prepared
        assert not any("unnest(" in s for s in prepared), prepared
    finally:
        conn.close()


# -- message batches awaited on the event loop (PgConnection.write_ahead) --------------------------


def _write_probe(conn, value: str) -> str:
    """A write transaction as the message writer's: every read answered ahead, writes queued."""
    from chatd.store.db import transaction
    with transaction(conn):
        seen = conn.execute("SELECT value FROM meta WHERE key = ?", ("probe",)).fetchone()[0]
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(value, "probe")])
    return seen


def _write_lock_free(url: str) -> bool:
    from chatd.store.postgres import WRITE_LOCK
    with psycopg.connect(url) as other:
        return other.execute("SELECT pg_try_advisory_xact_lock(%s)", (WRITE_LOCK,)).fetchone()[0]


def test_guessed_reads_are_checked_under_the_lock_and_a_wrong_guess_writes_nothing(pg_url: str) -> None:
    from chatd.store.changes import NEXT_ID
    from chatd.store.postgres import NotAhead, Stale, connect
    conn = connect(pg_url)
    other = psycopg.connect(pg_url, autocommit=True)
    read = "SELECT value FROM meta WHERE key = ?"
    next_id = conn.execute(NEXT_ID).fetchone()[0]

    async def attempts() -> None:
        # Every read guessed: one round trip, and the guess is what the function is answered.
        conn.expect(NEXT_ID, (), [(next_id,)])
        conn.expect(read, ("probe",), [("before",)])
        assert await conn.write_ahead(_write_probe, "first") == "before"
        assert other.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone() == ("first",)
        # Another writer changed it since: the check fails under the lock, nothing is written.
        other.execute("UPDATE meta SET value = 'elsewhere' WHERE key = 'probe'")
        conn.expect(NEXT_ID, (), [(next_id,)])
        conn.expect(read, ("probe",), [("first",)])
        with pytest.raises(Stale):
            await conn.write_ahead(_write_probe, "second")
        assert other.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone() == ("elsewhere",)
        assert _write_lock_free(pg_url), "the failed transaction let the lock go"
        # Read with the BEGIN instead: the value as it is.
        conn.ahead(read, ("probe",))
        assert await conn.write_ahead(_write_probe, "third") == "elsewhere"
        # A read neither sent ahead nor guessed: refused, nothing written, the lock free.
        with pytest.raises(NotAhead):
            await conn.write_ahead(_write_probe, "fourth")
        assert other.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone() == ("third",)
        assert _write_lock_free(pg_url)

    try:
        other.execute("INSERT INTO meta (key, value) VALUES ('probe', 'before')")
        asyncio.run(attempts())
    finally:
        conn.close()
        other.close()


async def test_posts_wait_for_the_write_lock_without_holding_up_the_server(
    pg_url: str, server_factory,
) -> None:
    """Another writer holds the write lock (a long `chatd` command, another process): posts
    wait for it and are answered once it is free, each stored once, while the server answers
    everything else meanwhile."""
    from chatd.store.postgres import WRITE_LOCK
    token = make_user(pg_url, "alice")
    server = server_factory(*QUIET, db=pg_url, env=FLOOD_ENV).start()
    auth = {"Authorization": f"Bearer {token}"}
    holder = psycopg.connect(pg_url)
    async with ClientSession() as session:
        post = f"{server.url}/api/v1/rooms/general/messages"
        first = await session.post(post, json={"body": "before", "client_id": "c0"}, headers=auth)
        assert first.status == 201
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))  # held until the rollback
        sends = [asyncio.create_task(session.post(post, json={"body": f"held {i}", "client_id": f"c{i + 1}"},
                                                  headers=auth)) for i in range(20)]
        waiting = 0
        while waiting < 20:  # every post received and waiting, read off the metrics
            metrics = await (await session.get(f"{server.url}/metrics")).text()
            waiting = int(next(line.split()[1] for line in metrics.splitlines()
                               if line.startswith("chatd_messages_waiting ")))
            history = await session.get(f"{post}?limit=5", headers=auth)
            assert history.status == 200, "the server answers while posts wait for the lock"
            await asyncio.sleep(0.05)
        assert not any(s.done() for s in sends)
        holder.rollback()
        answers = {(await (await s).json())["message"]["id"] for s in sends}
        history = await (await session.get(f"{post}?limit=100", headers=auth)).json()
    holder.close()
    stored = [m["id"] for m in history["messages"]]
    assert stored[1:] == sorted(answers) and len(answers) == 20, (stored, answers)
    assert sorted(m["body"] for m in history["messages"][1:]) == sorted(f"held {i}" for i in range(20))
    assert server.terminate() == 0
    assert "Traceback" not in server.stderr()


async def test_what_the_writer_guesses_gives_way_to_what_changed(pg_url: str, server_factory) -> None:
    """On PostgreSQL the message writer guesses a batch's reads from its own last commits
    (store/writer.py, _Known) and checks them under the lock. Whatever changed them between
    two posts is still seen: a retry is the same message, and a member removed or a room
    archived by another process in the moment before its notice arrives here (done below
    straight in the database, so that no notice comes) takes no message."""
    assert run_cli("adduser", "alice", "--admin", "--password-stdin", db=pg_url, stdin=PASSWORD + "\n").returncode == 0
    admin = {"Authorization": f"Bearer {run_cli('token', 'alice', db=pg_url).stdout.strip()}"}
    bob = {"Authorization": f"Bearer {make_user(pg_url, 'bob')}"}
    server = server_factory(*QUIET, db=pg_url, env=FLOOD_ENV).start()
    api = f"{server.url}/api/v1"
    other = psycopg.connect(pg_url, autocommit=True)
    async with ClientSession() as session:
        assert (await session.post(f"{api}/rooms", json={"slug": "ops", "private": True}, headers=admin)).status == 201
        assert (await session.post(f"{api}/rooms/ops/members", json={"username": "bob"}, headers=admin)).status == 200
        assert (await session.post(f"{api}/rooms", json={"slug": "town"}, headers=admin)).status == 201

        async def send(room: str, headers: dict[str, str], body: str, client_id: str) -> tuple[int, dict]:
            resp = await session.post(f"{api}/rooms/{room}/messages", json={"body": body, "client_id": client_id},
                                      headers=headers)
            return resp.status, await resp.json()

        sent = [(await send("ops", bob, f"ops {i}", f"b{i}"))[1]["message"]["id"] for i in range(5)]
        status, again = await send("ops", bob, "ops 4", "b4")  # a retry of the last one
        assert status in (200, 201) and again["message"]["id"] == sent[-1], again
        for i in range(5, 8):  # a retry creates nothing, so the writer learns again (two batches)
            assert (await send("ops", bob, f"ops {i}", f"b{i}"))[0] == 201
        other.execute("DELETE FROM memberships WHERE user_id = (SELECT id FROM users WHERE username = 'bob')")
        status, refused = await send("ops", bob, "after removal", "b9")
        assert status == 404, refused

        for i in range(4):
            assert (await send("town", admin, f"town {i}", f"a{i}"))[0] == 201
        other.execute("UPDATE rooms SET archived_at = 1 WHERE slug = 'town'")
        status, refused = await send("town", admin, "after archive", "a9")
        assert status == 403 and "archived" in refused["error"]["message"], refused
        history = await (await session.get(f"{api}/rooms/ops/messages?limit=100", headers=admin)).json()
        metrics = dict(line.split() for line in (await (await session.get(f"{server.url}/metrics")).text())
                       .splitlines() if line.startswith("chatd_message_batches_"))
    other.close()
    assert [m["body"] for m in history["messages"]] == [f"ops {i}" for i in range(8)]
    # Each of the three was found by a guessed batch's check, which then read again.
    assert int(metrics["chatd_message_batches_read_again_total"]) == 3, metrics
    assert int(metrics["chatd_message_batches_guessed_total"]) >= 6, metrics
    assert server.terminate() == 0
    assert "Traceback" not in server.stderr()


async def test_batches_in_flight_together_keep_ids_answers_and_deliveries_in_order(
    pg_url: str, server_factory,
) -> None:
    """Two batches of posts may be written at once on PostgreSQL (store/writer.py): every
    post is answered once, with its own message, and a stream gets each message once, in id
    order, with nothing missing from the history."""
    from test_cluster import messages_until, post, stream
    alice, bob = make_user(pg_url, "alice"), make_user(pg_url, "bob")
    server = server_factory(*QUIET, db=pg_url, env=FLOOD_ENV).start()
    async with ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
        watcher = await stream(session, server, bob)
        ids = await asyncio.gather(*(post(session, server, alice, f"together {i}") for i in range(400)))
        assert len(set(ids)) == 400
        seen = await messages_until(watcher, set(ids))
        assert seen == sorted(ids), "each once, in id order"
        history = await (await session.get(f"{server.url}/api/v1/rooms/general/messages?limit=200&after={min(ids) - 1}",
                                           headers={"Authorization": f"Bearer {alice}"})).json()
        assert [m["id"] for m in history["messages"]] == sorted(ids)[:200]
        bodies = {m["id"]: m["body"] for m in history["messages"]}
        assert all(bodies[i] == f"together {n}" for n, i in enumerate(ids) if i in bodies), "each its own answer"
        metrics = await (await session.get(f"{server.url}/metrics")).text()
    guessed = next(line for line in metrics.splitlines() if line.startswith("chatd_message_batches_guessed_total"))
    assert int(guessed.split()[1]) > 0, "batches were guessed (and so could overlap)"
    assert server.terminate() == 0
    assert "Traceback" not in server.stderr()
