"""Processes for the benchmark: the real `chatd` CLI and server, the reference servers,
the load generator, each pinned to its core; and the databases they start from.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
PASSWORD = "bench-password-1234"
# chatd's per-user limits protect a real community; the benchmark is one community
# sending as fast as it can, so they are lifted (every Config field has a CHATD_ variable).
CHATD_ENV = {
    "CHATD_MESSAGES_PER_SECOND": "1000000",
    "CHATD_MESSAGE_BURST": "1000000",
    "CHATD_CONNECTIONS_PER_USER": "100000",
}
LISTENING = re.compile(r"listening on (http://\S+)")


class BenchError(Exception):
    """The benchmark could not run (a server did not start, a command failed)."""


# -- pinning ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    """Server on one core, load generator on another; unpinned, results went bimodal."""

    server_cpu: int | None
    loadgen_cpu: int | None

    @staticmethod
    def choose(server: int, loadgen: int) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or server not in cpus or loadgen not in cpus or server == loadgen:
            print(f"note: cannot pin to cores {server}/{loadgen} (have {cpus}); running unpinned",
                  file=sys.stderr)
            return Pinning(None, None)
        return Pinning(server, loadgen)

    def describe(self) -> str:
        if self.server_cpu is None:
            return "unpinned"
        return f"server on core {self.server_cpu}, load generator on core {self.loadgen_cpu}"


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """Prefix argv with taskset when there is a core to pin to (affinity set afterwards otherwise)."""
    if cpu is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *argv]
    return list(argv)


def pin_after_start(pid: int, cpu: int | None) -> None:
    if cpu is not None and not shutil.which("taskset"):
        os.sched_setaffinity(pid, {cpu})


# -- the chatd command ---------------------------------------------------------------------------------


def chatd_command() -> list[str]:
    """The chatd installed next to this Python (the venv `make bench` fills), else `-m chatd`."""
    exe = shutil.which("chatd", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "chatd"]


def run_cli(*args: str, db: Path, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [*chatd_command(), *args, "--db", str(db)], input=stdin, capture_output=True, text=True,
        timeout=120, env={**os.environ, **CHATD_ENV},
    )
    if proc.returncode != 0:
        raise BenchError(f"chatd {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# -- servers -------------------------------------------------------------------------------------------


class ServerProcess:
    """A server subprocess that prints `... listening on http://HOST:PORT` first."""

    def __init__(
        self, argv: list[str], name: str, cpu: int | None, log: Path, env: dict[str, str] | None = None,
        db: Path | None = None,
    ) -> None:
        self.argv, self.name, self.cpu, self.log_path = argv, name, cpu, log
        self.db = db  # the SQLite file it stores messages in, checked after it stops
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stop_seconds = 0.0
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> ServerProcess:
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            pinned(self.argv, self.cpu), stdout=subprocess.PIPE, stderr=log, text=True, env=self.env,
            start_new_session=True,  # a Ctrl-C on the bench reaches us, not the server mid-run
        )
        log.close()
        pin_after_start(self.proc.pid, self.cpu)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.url:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.kill()
                raise BenchError(f"{self.name} did not start: {self.log_tail()}")
            found = LISTENING.search(line)
            if found:
                self.url = found.group(1)
        wait_healthy(self.url, timeout=max(1.0, deadline - time.monotonic()))
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait (chatd closes its sockets and writes what is pending); kill if stuck."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM") from None
        self.stop_seconds = time.monotonic() - started
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_healthy(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, _ = http_request(url, "GET", "/healthz")
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{url}/healthz did not answer 200")
        time.sleep(0.05)


def chatd_server(db: Path | str, cpu: int | None, log: Path, broker: str = "") -> ServerProcess:
    argv = [*chatd_command(), "serve", "--db", str(db), "--port", "0"]
    if broker:
        argv += ["--broker", broker]
    return ServerProcess(argv, "chatd serve", cpu, log, CHATD_ENV, db=db)


class RedisProcess:
    """Debian's redis-server on a free loopback port, no persistence, for the broker workloads."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisProcess:
        exe = shutil.which("redis-server")
        if exe is None:
            raise BenchError("the broker workloads need redis-server (apt-get install redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--loglevel", "warning"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        self.__exit__()
        raise BenchError("redis-server did not answer")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class PostgresProcess:
    """Debian's PostgreSQL as a private cluster (initdb in the work directory, a free loopback
    port), with its default durability: fsync and synchronous commits on, so an acknowledged
    message is on disk. As root it runs as the `postgres` user (PostgreSQL refuses root)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.directory = workdir  # set on entry: a directory of its own the postgres user can reach
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.databases = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://chatd@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PostgresProcess:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if not found:
            raise BenchError("the PostgreSQL workload needs postgresql (apt-get install postgresql)")
        bin_dir = found[-1].parent
        owner = "postgres" if os.geteuid() == 0 else None
        self.directory = Path(tempfile.mkdtemp(prefix="chatd-bench-postgres-"))
        if owner:
            shutil.chown(self.directory, owner)
        subprocess.run([str(bin_dir / "initdb"), "-D", str(self.directory / "data"), "-U", "chatd",
                        "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True,
                       user=owner)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.directory / "data"), "-p", str(self.port),
             "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=owner, cwd=str(self.directory))
        import psycopg
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(self.url(), connect_timeout=1).close()
                return self
            time.sleep(0.05)
        self.__exit__()
        raise BenchError("postgres did not answer")

    def database_from(self, template_db: Path) -> str:
        """A new database holding the template's users and tokens (chatd migrate-db)."""
        import psycopg
        self.databases += 1
        name = f"bench_{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = self.url(name)
        proc = subprocess.run([*chatd_command(), "migrate-db", "--db", str(template_db), "--to", url],
                              capture_output=True, text=True, timeout=300, env={**os.environ, **CHATD_ENV})
        if proc.returncode != 0:
            raise BenchError(f"chatd migrate-db failed: {proc.stderr.strip()}")
        return url

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            self.proc.wait(30)
        if self.directory != self.workdir:
            shutil.rmtree(self.directory, ignore_errors=True)


def reference_server(
    mode: str, workdir: Path, cpu: int | None, loop: str, pages_db: Path | None = None
) -> ServerProcess:
    argv = [sys.executable, str(BENCH_DIR / "refserver.py"), "--mode", mode, "--port", "0", "--loop", loop]
    db = None
    if mode == "sqlite":
        db = workdir / "reference.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        argv += ["--db", str(db)]
    if pages_db is not None:
        argv += ["--pages-db", str(pages_db)]
    return ServerProcess(argv, f"reference {mode}", cpu, workdir / f"reference-{mode}.log", db=db)


def event_loop_of(pid: int) -> str:
    """Which loop a running server uses: uvloop's extension shows up in its memory map."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "asyncio"
    return "uvloop" if "uvloop" in maps else "asyncio"


class Profiler:
    """py-spy sampling a running server (all threads, without pausing it) into a flame graph."""

    def __init__(self, pid: int, out: Path, cpu: int | None) -> None:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if exe is None:
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        self.out = out
        self.proc = subprocess.Popen(
            pinned([exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--threads",
                    "--format", "flamegraph", "--output", str(out)], cpu),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    def stop(self) -> None:
        """SIGINT makes py-spy write its output and exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def count_messages(db: Path | str) -> int:
    if isinstance(db, str):  # PostgreSQL
        import psycopg
        with psycopg.connect(db) as pg:
            return pg.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


def changes_problems(db: Path, result: dict[str, Any]) -> list[str]:
    """After the edits workload's server stopped: its seeded messages are all there, one
    change event per acknowledged change, and each edited message has its last acknowledged body."""
    conn = sqlite3.connect(db)
    try:
        problems = []
        found = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        if found != result.get("seeded"):
            problems.append(f"{found} messages in the database, {result.get('seeded')} posted")
        changes = conn.execute("SELECT count(*) FROM events WHERE kind = 'updated'").fetchone()[0]
        if changes != result.get("changes"):
            problems.append(f"{changes} change events in the database, {result.get('changes')} acknowledged")
        bodies = {int(mid): body for mid, body in result.get("bodies", {}).items()}
        stored = dict(conn.execute(
            f"SELECT id, body FROM messages WHERE id IN ({','.join('?' * len(bodies))})", list(bodies)).fetchall())
        wrong = [mid for mid, body in bodies.items() if stored.get(mid) != body]
        if wrong:
            problems.append(f"{len(wrong)} edited messages without their last acknowledged body, e.g. {wrong[0]}")
        return problems
    finally:
        conn.close()


# -- the load generator ---------------------------------------------------------------------------------


def run_loadgen(spec: dict[str, Any], workdir: Path, cpu: int | None, timeout: float) -> dict[str, Any]:
    """Run bench/loadgen.py on its core with this spec; return its JSON result."""
    path = workdir / f"spec-{spec['workload']}.json"
    path.write_text(json.dumps(spec))
    argv = pinned([sys.executable, str(BENCH_DIR / "loadgen.py"), str(path)], cpu)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the load generator ({spec['workload']}) ran over {timeout:.0f} s") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"the load generator failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


# -- HTTP from the orchestrator (sign-in, checks) ----------------------------------------------------------


def http_request(url: str, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, list[str]], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        found: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            found.setdefault(name.lower(), []).append(value)
        return response.status, found, response.read()
    finally:
        conn.close()


def _cookie(headers: dict[str, list[str]], name: str) -> str | None:
    for value in headers.get("set-cookie", []):
        key, _, rest = value.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    return None


def login(url: str, username: str, password: str) -> str:
    """Sign in through the real form (CSRF field and form cookie); return the session cookie."""
    status, headers, page = http_request(url, "GET", "/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page)
    form_cookie = _cookie(headers, "chatd_form")
    if status != 200 or csrf is None or form_cookie is None:
        raise BenchError(f"GET /login gave {status} without a CSRF field and cookie")
    from urllib.parse import urlencode

    fields = {"username": username, "password": password, "csrf": csrf.group(1).decode(), "next": "/"}
    form = urlencode(fields)
    status, headers, _ = http_request(url, "POST", "/login", form.encode(), {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"chatd_form={form_cookie}",
        "Origin": url,
    })
    session = _cookie(headers, "chatd_session")
    if status != 303 or session is None:
        raise BenchError(f"POST /login as {username} gave {status} without a session cookie")
    return session


# -- databases --------------------------------------------------------------------------------------------


def copy_db(source: Path, dest: Path) -> Path:
    """Copy a closed, checkpointed SQLite file, replacing dest and any WAL it had."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, dest)
    return dest


@dataclass
class Template:
    """A migrated chatd database with users, API tokens and browser sessions; copied per run."""

    db: Path
    users: list[str]
    tokens: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    loop: str = "asyncio"  # the event loop chatd serve ran on while the template was made

    def copy_to(self, dest: Path) -> Path:
        return copy_db(self.db, dest)

    def bearer_headers(self) -> list[dict[str, str]]:
        return [{"Authorization": f"Bearer {t}"} for t in self.tokens]

    def browser_headers(self, url: str) -> list[dict[str, str]]:
        return [{"Cookie": f"chatd_session={s}", "Origin": url} for s in self.sessions]


def build_template(workdir: Path, n_users: int, log: Path) -> Template:
    """Users and tokens with the real CLI, sessions through the real login form."""
    db = workdir / "template.db"
    run_cli("users", db=db)  # creates and migrates the file once, before the parallel commands
    users = [f"user{i:02d}" for i in range(n_users)]
    # Each adduser is a process start plus a scrypt hash (~0.3 s); a few at a time.
    add = lambda u: run_cli("adduser", u, "--password-stdin", db=db, stdin=f"{PASSWORD}\n")  # noqa: E731
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(add, users))
        tokens = list(pool.map(lambda u: run_cli("token", u, "--label", "bench", db=db).strip(), users))
    template = Template(db, users, tokens)
    server = chatd_server(db, None, log).start()
    template.loop = event_loop_of(server.pid)
    try:
        with ThreadPoolExecutor(4) as pool:
            template.sessions = list(pool.map(lambda u: login(server.url, u, PASSWORD), users))
    finally:
        server.stop()
    return template


def build_pages_db(
    template: Template, dest: Path, messages: int, rooms: int, page: int = 50
) -> dict[str, list[int]]:
    """`messages` messages across `rooms` rooms, written straight into chatd's schema.

    Posting a million messages through the API would take minutes. The file is migrated by the
    real CLI first; the derived columns chatd keeps (each message's position in its room `seq`,
    each room's `last_message_id` and `message_count`, each read mark's `last_read_seq`) are filled
    the way chatd's writer fills them, when the schema has them. Each user has read all but the
    newest `READ_LAG` messages of every room, so the sidebar shows real unread counts.
    Returns each room's newest `page` message ids, which every response is checked against.
    """
    template.copy_to(dest)
    run_cli("users", db=dest)  # migrate, in case the template predates a schema change
    conn = sqlite3.connect(dest, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        room_ids = _make_rooms(conn, rooms)
        user_ids = [r[0] for r in conn.execute("SELECT id FROM users ORDER BY id")]
        counts = _insert_messages(conn, room_ids, user_ids, messages)
        _update_rooms(conn, counts)
        expected = _newest_ids(conn, page)
        _set_read_marks(conn, user_ids)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return expected


READ_LAG = 25


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _make_rooms(conn: sqlite3.Connection, rooms: int) -> list[int]:
    now = time.time()
    for i in range(1, rooms):
        conn.execute(
            "INSERT OR IGNORE INTO rooms (slug, name, kind, created_at) VALUES (?, ?, 'public', ?)",
            (f"room-{i:02d}", f"room {i:02d}", now),
        )
    return [r[0] for r in conn.execute("SELECT id FROM rooms WHERE kind = 'public' ORDER BY id")][:rooms]


# Words for the search workload: each replaces "rollback" (as long as it, so bodies, pages and
# what the pages workload measures keep their sizes) in about 1% of the messages, chosen by a
# generator of their own (rooms, authors and the rest of each body are what they were). None is
# a prefix of another word of the bodies (chatd matches a query's last word as a prefix too),
# and none can occur inside the hexadecimal tail.
SEARCH_WORDS = (
    "aardvark", "bluebird", "cinnamon", "dinosaur", "eggplant", "flamingo", "gondolas", "hedgehog",
    "icebergs", "jalapeno", "kangaroo", "lavender", "mandolin", "nautilus", "obsidian", "pelicans",
    "quagmire", "raindrop", "sapphire", "tortoise",
)
SEARCH_SHARE = 100  # each word in 1 message of this many


def _insert_messages(
    conn: sqlite3.Connection, room_ids: list[int], user_ids: list[int], total: int
) -> dict[int, int]:
    """Plain-text bodies (so `html` is the escaped body, as chatd renders them); returns counts per room."""
    rng = random.Random(5)
    words = random.Random(6)  # which messages hold a search word: apart, so `rng` draws as before
    marked = len(SEARCH_WORDS)
    start = time.time() - total * 0.5
    with_seq = "seq" in _columns(conn, "messages")
    counts = dict.fromkeys(room_ids, 0)
    sql = (f"INSERT INTO messages (id, room_id, user_id, body, html, created_at{', seq' if with_seq else ''})"
           f" VALUES (?, ?, ?, ?, ?, ?{', ?' if with_seq else ''})")
    chunk: list[tuple[Any, ...]] = []
    for i in range(1, total + 1):
        room = rng.choice(room_ids)
        counts[room] += 1
        k = words.randrange(SEARCH_SHARE)
        word = SEARCH_WORDS[k] if k < marked else "rollback"
        body = f"message {i}: did you see the <b>deploy</b> & the \"{word}\"? {rng.randrange(1 << 30):x}"
        row = (i, room, rng.choice(user_ids), body, html.escape(body, quote=False), start + i * 0.5)
        chunk.append((*row, counts[room]) if with_seq else row)
        if len(chunk) == 50_000 or i == total:
            conn.executemany(sql, chunk)
            chunk.clear()
    return counts


def _update_rooms(conn: sqlite3.Connection, counts: dict[int, int]) -> None:
    last = "last_message_id = coalesce((SELECT max(id) FROM messages WHERE room_id = rooms.id), 0)"
    if "message_count" in _columns(conn, "rooms"):
        conn.executemany(f"UPDATE rooms SET {last}, message_count = ? WHERE id = ?",
                         [(n, room) for room, n in counts.items()])
    else:
        conn.execute(f"UPDATE rooms SET {last}")


def _newest_ids(conn: sqlite3.Connection, page: int) -> dict[str, list[int]]:
    expected = {}
    for room_id, slug in conn.execute("SELECT id, slug FROM rooms WHERE kind = 'public'").fetchall():
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM messages WHERE room_id = ? ORDER BY id DESC LIMIT ?", (room_id, page))]
        expected[slug] = ids[::-1]
    return expected


def _set_read_marks(conn: sqlite3.Connection, user_ids: list[int]) -> None:
    """Every user has read up to the READ_LAG-th newest message of every room."""
    with_seq = "last_read_seq" in _columns(conn, "memberships")
    marks = []
    for (room_id,) in conn.execute("SELECT id FROM rooms").fetchall():
        row = conn.execute(
            "SELECT id, (SELECT count(*) FROM messages WHERE room_id = ?) - ? FROM messages"
            " WHERE room_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
            (room_id, READ_LAG, room_id, READ_LAG),
        ).fetchone()
        mark_id, mark_seq = row if row else (0, 0)
        mark = (mark_id, mark_seq) if with_seq else (mark_id,)
        marks += [(room_id, uid, *mark) for uid in user_ids]
    columns = "room_id, user_id, last_read_id" + (", last_read_seq" if with_seq else "")
    values = "?, ?, ?" + (", ?" if with_seq else "")
    conn.executemany(f"INSERT OR REPLACE INTO memberships ({columns}) VALUES ({values})", marks)


def search_expected(db: Path, limit: int = 20) -> dict[str, list[int]]:
    """For each search word, the ids of the newest `limit` messages holding it, newest first,
    read from the messages table (not from an index): what every search answer must list."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {word: [r[0] for r in conn.execute(
            "SELECT id FROM messages WHERE body LIKE ? ORDER BY id DESC LIMIT ?", (f'% "{word}"? %', limit))]
            for word in SEARCH_WORDS}
    finally:
        conn.close()


def check_unread(url: str, token: str, rooms: int) -> list[str]:
    """Cross-check the hand-built database against chatd itself: every room shows READ_LAG unread."""
    status, _, body = http_request(url, "GET", "/api/v1/rooms", headers={"Authorization": f"Bearer {token}"})
    if status != 200:
        return [f"GET /api/v1/rooms gave {status}"]
    found = {room["slug"]: room["unread"] for room in json.loads(body)["rooms"]}
    wrong = {slug: n for slug, n in found.items() if n != READ_LAG}
    if len(found) != rooms or wrong:
        return [f"the pages database does not match chatd's schema (update bench/harness.py): "
                f"{len(found)} rooms, unread counts {dict(list(wrong.items())[:3])} instead of {READ_LAG}"]
    return []
