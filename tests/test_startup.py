"""Starting `chatd serve` (and the commands) on a database that cannot be used, or that
another server already uses; what killed backups leave behind.

Every failure is one sentence on stderr naming the file and the cause, exit status 1, and
the process is gone: under systemd, Restart=on-failure only fires for a process that exits.
The real command runs as a subprocess; its timeouts are generous, and only there so that a
process that hangs fails the test instead of stopping the suite.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import ClientSession

from chatd.app import create_app
from conftest import PASSWORD, Server, chatd_command, make_config, run_cli

FLOOD_ENV = {"CHATD_MESSAGES_PER_SECOND": "100000", "CHATD_MESSAGE_BURST": "100000"}
PAGE = 4096


def make_user(db: Path, name: str) -> str:
    assert run_cli("adduser", name, "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    return run_cli("token", name, db=db).stdout.strip()


def serve(db: Path | str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`chatd serve` expected to fail at start: it must exit by itself."""
    where = cwd or (db.parent if isinstance(db, Path) else None)
    return subprocess.run([*chatd_command(), "serve", "--db", str(db), "--port", "0", *args],
                          capture_output=True, text=True, timeout=120, cwd=None if where is None else str(where))


def one_sentence(result: subprocess.CompletedProcess) -> str:
    """The failure's only line on stderr, after checking it is one and that nothing served."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "listening on" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- a database that cannot be read or written ------------------------------------------------


@pytest.fixture
def damaged_db(tmp_path: Path, server_factory) -> Path:
    """A database with an intact header whose later pages are garbage."""
    db = tmp_path / "chatd.db"
    token = make_user(db, "alice")
    server: Server = server_factory(env=FLOOD_ENV).start()

    async def fill() -> None:
        async with ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:
            async def post(i: int) -> None:
                resp = await session.post(f"{server.url}/api/v1/rooms/general/messages",
                                          json={"body": f"message {i} " + "words " * 40},
                                          headers={"Authorization": f"Bearer {token}"})
                assert resp.status == 201

            await asyncio.gather(*(post(i) for i in range(300)))

    asyncio.run(fill())
    assert server.terminate() == 0
    assert db.stat().st_size > 25 * PAGE
    with db.open("r+b") as fh:
        fh.seek(5 * PAGE)
        fh.write(random.Random(7).randbytes(20 * PAGE))
    return db


def test_serve_on_a_damaged_database_exits_1_with_one_sentence(damaged_db: Path) -> None:
    line = one_sentence(serve(damaged_db))
    assert line == f"Error: The database {damaged_db} could not be read: database disk image is malformed."


def test_users_on_a_damaged_database_exits_1_with_one_sentence(damaged_db: Path) -> None:
    result = run_cli("users", db=damaged_db)
    line = one_sentence(result)
    assert line == f"Error: The database {damaged_db} could not be read: database disk image is malformed."


def test_serve_on_a_file_that_is_not_a_database_exits_1_with_one_sentence(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_bytes(b"shopping list: milk, eggs\n" * 400)
    line = one_sentence(serve(db))
    assert line == f"Error: The database {db} could not be read: file is not a database."
    assert db.read_bytes() == b"shopping list: milk, eggs\n" * 400


def _namespace_works() -> bool:
    """Can this process make private mounts (root with CAP_SYS_ADMIN, util-linux unshare)?"""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _namespace_works(),
    reason="needs a private mount namespace (root, unshare -m) for a read-only or full file system: "
           "the tests run as root, whom file modes do not stop",
)


def in_namespace(setup: str, *command: str) -> subprocess.CompletedProcess:
    """Run a `chatd` command in a private mount namespace after the shell lines `setup`:
    the mounts vanish with the process, whatever happens to the test."""
    script = f'set -e\n{setup}\nexec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           *chatd_command(), *command], capture_output=True, text=True, timeout=120)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A database with an account, seen through a read-only bind mount (mounted per command)."""
    source, view = tmp_path / "data", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    make_user(source / "chatd.db", "alice")
    yield view, f"mount --bind {source} {view}\nmount -o remount,ro,bind {view}"


@needs_mounts
def test_commands_on_a_read_only_database_name_the_file_and_say_read_only(read_only_dir: tuple[Path, str]) -> None:
    view, setup = read_only_dir
    db = view / "chatd.db"
    line = one_sentence(in_namespace(setup, "users", "--db", str(db)))
    assert line == f"Error: Cannot write the database {db}: it is read-only (unable to open database file)."
    line = one_sentence(in_namespace(setup, "serve", "--db", str(db), "--port", "0"))
    assert line == (f"Error: Cannot write the database {db}: its directory is read-only "
                    "(cannot open chatd.db.lock for writing: Read-only file system).")


@needs_mounts
def test_commands_on_a_full_disk_name_the_file_and_say_the_disk_is_full(tmp_path: Path) -> None:
    source, disk = tmp_path / "data", tmp_path / "disk"
    source.mkdir()
    disk.mkdir()
    make_user(source / "chatd.db", "alice")
    db = disk / "chatd.db"
    setup = (f"mount -t tmpfs -o size=1m tmpfs {disk}\ncp {source}/chatd.db {disk}/\n"
             f"dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null || true")
    for command in (("users",), ("serve", "--port", "0")):
        line = one_sentence(in_namespace(setup, *command, "--db", str(db)))
        assert line.startswith(f"Error: Cannot write the database {db}: the disk is full ("), line


# -- one server per database -------------------------------------------------------------------


async def test_a_second_server_on_the_same_database_is_refused_while_the_first_serves(
    tmp_path: Path, server_factory,
) -> None:
    db = tmp_path / "chatd.db"
    token = make_user(db, "alice")
    first: Server = server_factory().start()
    line = one_sentence(await asyncio.to_thread(serve, db))
    assert line == (f"Error: Another chatd serve is already using the database {db} (pid {first.proc.pid}); "
                    "stop it first.")
    async with ClientSession() as session:
        resp = await session.post(f"{first.url}/api/v1/rooms/general/messages", json={"body": "still here"},
                                  headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 201
    # The commands take no lock: they work beside the server (serve --check included).
    assert run_cli("adduser", "bob", "--password-stdin", db=db, stdin=PASSWORD + "\n").returncode == 0
    assert run_cli("users", db=db).stdout.split() == ["alice", "bob"]
    assert run_cli("token", "bob", db=db).returncode == 0
    assert run_cli("backup", str(tmp_path / "copy.db"), db=db).returncode == 0
    assert run_cli("serve", "--check", db=db).returncode == 0
    assert first.terminate() == 0
    second: Server = server_factory().start()  # after SIGTERM
    second.kill()
    third: Server = server_factory().start()  # after kill -9: the kernel dropped the lock
    assert third.terminate() == 0


async def test_an_app_in_process_holds_the_lock_too(tmp_path: Path, aiohttp_client) -> None:
    """create_app takes the lock in its start-up, so in-process tests and `chatd serve` alike."""
    config = make_config(tmp_path)
    await aiohttp_client(create_app(config))
    line = one_sentence(await asyncio.to_thread(serve, config.db))
    assert line.startswith(f"Error: Another chatd serve is already using the database {config.db} (pid ")


# -- backups killed midway ---------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_backup_removes_what_killed_backups_left_but_not_a_running_backups_file(tmp_path: Path) -> None:
    db = tmp_path / "chatd.db"
    make_user(db, "alice")
    folder = tmp_path / "backups"
    folder.mkdir()
    # A killed backup's copy and journal, and the write-ahead log of a copy already gone.
    left = [folder / f".chatd-backup-{name}" for name in ("k1ll3d", "k1ll3d-journal", "0rphan-wal")]
    for path in left:
        path.write_bytes(b"half a copy")
    running = folder / ".chatd-backup-runn1ng"
    running.write_bytes(b"being written")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(running)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        result = run_cli("backup", str(folder / "chatd-copy.db"), db=db)
        assert result.returncode == 0, result.stderr
    finally:
        holder.communicate("", timeout=30)
    assert [path for path in left if path.exists()] == []
    assert running.read_bytes() == b"being written"
    assert sorted(p.name for p in folder.iterdir()) == [".chatd-backup-runn1ng", "chatd-copy.db"]
    with sqlite3.connect(folder / "chatd-copy.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT username FROM users").fetchall() == [("alice",)]
