"""Storage: migrations from the oldest schema, refusing newer ones, online backup under load."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chatd.errors import SchemaTooNew
from chatd.store import SCHEMA_VERSION, Store
from chatd.store.schema import migrate
from conftest import PASSWORD, Chat, run_cli


def oldest_database(path: Path) -> None:
    """A database exactly as the first released schema left it, with some data."""
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, upto=1)
    conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('old', 'x', 0)")
    conn.execute("INSERT INTO rooms (slug, name, created_at) VALUES ('general', 'general', 0)")
    conn.execute("INSERT INTO messages (room_id, user_id, body, html, created_at) VALUES (1, 1, 'hi', 'hi', 0)")
    conn.close()


async def test_upgrades_the_oldest_schema_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    oldest_database(db)
    store = Store(db)
    await store.open()
    try:
        room = (await store.rooms_for((await store.list_users())[0]))[0].room
        assert room.slug == "general" and room.kind == "public" and room.last_message_id == 1
        messages = await store.messages(room)
        assert [(m.id, m.body, m.author) for m in messages] == [(1, "hi", "old")]
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_refuses_a_database_from_a_newer_chatd(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = Store(db)
    with pytest.raises(SchemaTooNew, match="newer"):
        await store.open()
    result = run_cli("users", db=db)
    assert result.returncode == 1
    assert "newer than this chatd" in result.stderr and "Traceback" not in result.stderr


def test_migrations_are_idempotent_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    errors = []

    def open_one() -> None:
        try:
            conn = sqlite3.connect(db, isolation_level=None, timeout=10)
            migrate(conn)
            conn.close()
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM rooms WHERE slug = 'general'").fetchone()[0] == 1


async def test_backup_while_the_server_writes(make_chat: Any, tmp_path: Path) -> None:
    # Four writers post as fast as the server answers for as long as the backup takes:
    # on a quick machine that outruns even the tests' roomy flood limit, so it is lifted.
    chat = await make_chat(messages_per_second=1e9, message_burst=10**9)
    alice = await chat.bearer("alice")
    stop = asyncio.Event()
    posted = 0

    async def writer() -> None:
        nonlocal posted
        while not stop.is_set():
            resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": "load"},
                                          headers=alice)
            assert resp.status == 201
            posted += 1

    tasks = [asyncio.create_task(writer()) for _ in range(4)]
    while posted < 50:
        await asyncio.sleep(0.01)
    dest = tmp_path / "backup.db"
    # The real CLI, in another process, against the database the app is writing.
    result = await asyncio.to_thread(run_cli, "backup", str(dest), db=chat.services.store.path)
    stop.set()
    await asyncio.gather(*tasks)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(dest) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert 50 <= count <= posted
        assert conn.execute("SELECT max(last_message_id) FROM rooms").fetchone()[0] == \
            conn.execute("SELECT max(id) FROM messages").fetchone()[0]
    # The copy is a working database: the CLI can use it.
    assert run_cli("users", db=dest).stdout.split() == ["alice"]


async def test_restore_from_backup(tmp_path: Path, server_factory) -> None:
    db = tmp_path / "chatd.db"
    run_cli("adduser", "alice", "--password-stdin", db=db, stdin=PASSWORD + "\n")
    backup = tmp_path / "backup.db"
    assert run_cli("backup", str(backup), db=db).returncode == 0
    run_cli("adduser", "bob", "--password-stdin", db=db, stdin=PASSWORD + "\n")
    restored = tmp_path / "restored.db"
    restored.write_bytes(backup.read_bytes())
    assert run_cli("users", db=restored).stdout.split() == ["alice"]
    server = server_factory(db=restored).start()
    assert server.terminate() == 0


async def test_in_memory_room_table_and_read_marks_agree_with_the_database(chat: Chat) -> None:
    """The sidebar's counts come from memory; after any mix of writes they equal SQL's."""
    import random

    rng = random.Random(7)
    services, store = chat.services, chat.services.store
    names = ["ann", "ben", "cat", "dan"]
    users = [await chat.user(n) for n in names]
    await services.chat.create_room(users[0], "pub", None, False)
    await services.chat.create_room(users[0], "priv", None, True)
    await services.chat.add_member(users[0], "priv", "ben")
    for step in range(300):
        user = rng.choice(users)
        action = rng.random()
        states = await services.chat.rooms_for(user)  # also loads this user's marks
        room = rng.choice(states).room
        if action < 0.55:
            await services.chat.post_in(user, room, f"step {step}")
        elif action < 0.8:
            await services.chat.mark_read_in(user, room, rng.randint(0, room.last_message_id + 2))
        elif action < 0.87:
            await services.chat.open_dm(user, rng.choice(names))
        elif action < 0.93 and user.username == "ann":
            await services.chat.add_member(user, "priv", rng.choice(names[1:]))
        elif action < 1 and room.kind == "private" and user.username != "ann":
            await services.chat.remove_member(user, "priv", user.username)
    for user in users:
        for state in await store.rooms_for(user):
            (sql,) = store._inline.execute(
                "SELECT max(0, r.message_count - coalesce(m.last_read_seq, 0)) FROM rooms r"
                " LEFT JOIN memberships m ON m.room_id = r.id AND m.user_id = ? WHERE r.id = ?",
                (user.id, state.room.id)).fetchone()
            assert state.unread == sql == await store.unread(user, state.room), (user.username, state.room.slug)
            fresh, shown = store.rooms[state.room.id], state.room
            assert (fresh.message_count, fresh.last_message_id) == (shown.message_count, shown.last_message_id)
    # A cold start (empty caches, everything read from the file) agrees too.
    cold = Store(store.path)
    await cold.open()
    try:
        for user in users:
            warm = {s.room.slug: s.unread for s in await store.rooms_for(user)}
            assert {s.room.slug: s.unread for s in await cold.rooms_for(user)} == warm
    finally:
        await cold.close()


async def test_latest_page_from_memory_matches_sql_while_posting(chat: Chat) -> None:
    services, store = chat.services, chat.services.store
    user = await chat.user("eve")
    room = await services.chat.room_for(user, "general")
    for round_ in range(5):
        await asyncio.gather(*(services.chat.post_in(user, room, f"r{round_} m{i}") for i in range(60)))
        page = await store.messages(room, limit=50)
        sql = [r[0] for r in store._inline.execute(
            "SELECT id FROM messages WHERE room_id = ? ORDER BY id DESC LIMIT 50", (room.id,))][::-1]
        assert [m.id for m in page] == sql
        assert len({m.id for m in page}) == 50


async def test_the_log_starts_over_after_checkpoints_under_steady_posting(
    chat: Chat, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message batches commit inline on a connection that never checkpoints and never waits
    for the write lock; the writer thread checkpoints every CHECKPOINT_EVERY commits (its
    second pass while posts queue), so the log restarts instead of growing while posting lasts."""
    from chatd.store import writer

    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 3)
    store = chat.services.store
    inline = store._inline_writer
    assert inline.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert inline.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    alice = await chat.bearer("alice")
    commits = 150
    for i in range(commits):  # one at a time: one commit each
        resp = await chat.client.post("/api/v1/rooms/general/messages", json={"body": f"m{i}"},
                                      headers=alice)
        assert resp.status == 201
    # The log's header counts its restarts (checkpoint sequence, bytes 12-15): it restarted
    # again and again while posting went on (without the second pass it never would; how often
    # depends on how fast the disk takes the first pass's copy, so only "repeatedly" is asked).
    # The file's size is no measure since search indexes came: an FTS5 segment merge now and
    # then writes hundreds of pages in one commit.
    wal = Path(f"{store.path}-wal")
    restarts = int.from_bytes(wal.read_bytes()[12:16], "big")
    assert restarts >= 5, restarts
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == commits


async def test_the_log_starts_over_when_posting_never_pauses_for_a_checkpoint(
    make_chat: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first checkpoint pass copies the log while batches keep committing; the second,
    with posts held, copies what landed meanwhile, so the log still restarts when posting
    goes on through every checkpoint (copying alone, it would grow without end)."""
    from chatd.store import writer

    monkeypatch.setattr(writer, "CHECKPOINT_EVERY", 3)
    chat = await make_chat(messages_per_second=1e6, message_burst=1e6)
    services, store = chat.services, chat.services.store
    user = await chat.user("eve")
    room = await services.chat.room_for(user, "general")
    wal = Path(f"{store.path}-wal")

    def restarts() -> int:  # the log's header counts them: checkpoint sequence, bytes 12-15
        return int.from_bytes(wal.read_bytes()[12:16], "big")

    posts = 0
    while restarts() < 3 and posts < 4000:  # rounds of 8 concurrent posts, no pause between
        sent = await asyncio.gather(*(services.chat.post_in(user, room, f"m{posts + i}") for i in range(8)))
        posts += len(sent)
    # Restarted, the log is overwritten from its start: the file stays at its longest stretch
    # between two restarts (about 100-150 pages here; copying alone grew it past 1,200).
    frames = (wal.stat().st_size - 32) // (24 + 4096)
    assert restarts() >= 3, (restarts(), posts)
    assert frames < 500, (frames, posts)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == posts


async def test_one_batch_finds_every_retry_and_moves_every_read_mark(chat: Chat) -> None:
    """A batch looks its retries up in one query and writes its read marks together: the
    same author, client_id, room and body as a stored message is that message, any
    difference is a new one; posting reads the room, public or private."""
    services, store = chat.services, chat.services.store
    alice, bob = await chat.user("alice"), await chat.user("bob")
    general = await services.chat.room_for(alice, "general")
    team = await services.chat.create_room(alice, "team", "team", True)
    await services.chat.add_member(alice, "team", "bob")
    stored, created = await services.chat.post_in(alice, general, "hello", "c1")
    assert created
    before = sum(services.hub.metrics.write_counts)
    # No await between these submissions: they are one batch (checked below).
    results = await asyncio.gather(
        services.chat.post_in(alice, general, "hello", "c1"),  # a retry of the stored one
        services.chat.post_in(alice, general, "other", "c1"),  # same client_id, new body
        services.chat.post_in(bob, general, "hello", "c1"),  # another author
        services.chat.post_in(alice, team, "hello", "c1"),  # another room
        services.chat.post_in(alice, general, "fresh", "c2"),
        services.chat.post_in(alice, general, "fresh", "c2"),  # a retry within the batch
        services.chat.post_in(bob, team, "in team", None),
        services.chat.post_in(alice, general, "hello", "c1"),  # after "other": still the stored one
    )
    assert sum(services.hub.metrics.write_counts) == before + 1
    assert results[0] == (stored, False)
    assert [created for _, created in results] == [False, True, True, True, True, False, True, False]
    assert results[7] == (stored, False)
    assert results[5][0] == results[4][0]
    new_ids = [m.id for m, created in results if created]
    assert len(set(new_ids)) == 5 and stored.id not in new_ids
    count = store._inline.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert count == 6
    marks = dict(((r, u), m) for r, u, m in store._inline.execute(
        "SELECT room_id, user_id, last_read_id FROM memberships WHERE room_id IN (?, ?)",
        (general.id, team.id)))
    assert marks[(general.id, alice.id)] == results[4][0].id  # her newest there
    assert marks[(general.id, bob.id)] == results[2][0].id
    assert marks[(team.id, alice.id)] == results[3][0].id
    assert marks[(team.id, bob.id)] == results[6][0].id


async def test_a_command_revoking_a_token_holds_for_the_next_request(chat: Chat) -> None:
    """Token and session lookups are cached, and whether another process changed a
    credential is looked at once per turn of the event loop: a `chatd` command that
    finished before a request was sent holds for it, while requests keep coming."""
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")

    async def statuses() -> set[tuple[str, int]]:
        pairs = [("alice", alice), ("bob", bob)] * 8  # several requests in each turn
        resps = await asyncio.gather(*(chat.client.get("/api/v1/me", headers=h) for _, h in pairs))
        return {(name, resp.status) for (name, _), resp in zip(pairs, resps, strict=True)}

    assert await statuses() == {("alice", 200), ("bob", 200)}  # both now cached
    done = await asyncio.to_thread(run_cli, "deluser", "alice", db=chat.services.store.path)
    assert done.returncode == 0, done.stderr
    assert await statuses() == {("alice", 401), ("bob", 200)}
    # Signing out in this process holds for the very next lookup, in any turn.
    store = chat.services.store
    user = await store.user_by_name("bob")
    assert user is not None
    await store.create_session(user.id, b"s" * 32, "csrf", 3600)
    assert await store.user_for_session(b"s" * 32) is not None
    await store.delete_session(b"s" * 32)
    assert await store.user_for_session(b"s" * 32) is None
