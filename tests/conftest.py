"""Shared fixtures: the real app on a real SQLite file, real sockets, a real `chatd` process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import ClientSession, ClientWebSocketResponse, CookieJar
from aiohttp.test_utils import TestClient

from chatd.app import create_app
from chatd.config import Config
from chatd.models import User
from chatd.state import SERVICES

PASSWORD = "correct horse battery"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable]:
    """Tests marked `both_loops` run on asyncio's loop and on uvloop's (which `chatd serve`
    picks when it is installed); the others on asyncio's."""
    if item.get_closest_marker("both_loops"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """A config for tests: its own database file, fast auth polling, roomy flood limits.

    Tests of the limits themselves pass small values through `make_chat`.
    """
    db: Path | str = tmp_path / "chatd.db"
    if CONFIGURATION.startswith("postgresql"):
        db = database_for(tmp_path)
    base = {"db": db, "auth_poll_seconds": 0.05, "port": 0,
            "messages_per_second": 1000.0, "message_burst": 1000, "rooms_per_hour": 1000}
    base.update(overrides)
    return Config(**base)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


class Chat:
    """A running app with helpers to make users, sign in and open sockets.

    In the configuration "sqlite+redis" (CHATD_TEST_CONFIG, see `configuration`) it is two
    processes' worth of chatd on one database, joined by a real Redis: `client` is the first
    and `peer` the second; event streams connect to the second, so every test of the stream
    checks what crosses from one process to the other."""

    def __init__(self, client: TestClient, peer: TestClient | None = None) -> None:
        self.client = client
        self.peer = peer or client

    @property
    def app(self):
        return self.client.app

    @property
    def services(self):
        return self.client.app[SERVICES]

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))

    async def user(self, name: str, admin: bool = False, password: str = PASSWORD) -> User:
        return await self.services.accounts.create_user(name, password, admin)

    async def token(self, name: str) -> str:
        return await self.services.accounts.create_token(name)

    async def bearer(self, name: str, admin: bool = False) -> dict[str, str]:
        """Create the user if needed and return Authorization headers for them."""
        if await self.services.store.user_by_name(name) is None:
            await self.user(name, admin)
        return {"Authorization": f"Bearer {await self.token(name)}"}

    async def browser(self, name: str, password: str = PASSWORD) -> ClientSession:
        """A separate cookie jar signed in through the real login form."""
        session = ClientSession(base_url=str(self.client.make_url("/")), cookie_jar=CookieJar(unsafe=True))
        await login(session, name, password)
        return session

    async def stream(self, headers: dict[str, str], since: int | None = None) -> ClientWebSocketResponse:
        path = "/api/v1/stream" + (f"?since={since}" if since is not None else "")
        return await self.peer.ws_connect(path, headers=headers)


async def login(session: ClientSession, name: str, password: str = PASSWORD, next_: str = "/") -> Any:
    page = await session.get("/login")
    html = await page.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    return await session.post(
        "/login", data={"username": name, "password": password, "csrf": csrf, "next": next_},
        allow_redirects=False,
    )


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


CONFIGURATION = os.environ.get("CHATD_TEST_CONFIG", "sqlite")
# For the few tests that open the SQLite file itself (its schema, FTS5, its migrations).
sqlite_only = pytest.mark.skipif(CONFIGURATION.startswith("postgresql"),
                                 reason="reads or writes the SQLite file directly; PostgreSQL has its own tests")
CONFIGURATIONS = ("sqlite", "sqlite+redis", "postgresql+redis")
assert CONFIGURATION in CONFIGURATIONS, f"CHATD_TEST_CONFIG must be one of {CONFIGURATIONS}"


def pytest_report_header(config: pytest.Config) -> str:
    return f"chatd configuration: {CONFIGURATION}"


async def start_chat(aiohttp_client: Callable[..., Any], config: Config) -> Chat:
    """The app for `config`; in "sqlite+redis" and "postgresql+redis", two of them on one
    database, joined by the session's Redis."""
    if CONFIGURATION == "sqlite":
        return Chat(await aiohttp_client(create_app(config)))
    url = redis_url()
    first = await aiohttp_client(create_app(config.replace(broker=url)))
    second = await aiohttp_client(create_app(config.replace(broker=url)))
    return Chat(first, second)


@pytest.fixture
async def chat(aiohttp_client: Callable[..., Any], config: Config) -> Chat:
    return await start_chat(aiohttp_client, config)


@pytest.fixture
def make_chat(aiohttp_client: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    """Build a chat app with config overrides: `await make_chat(messages_per_second=1)`."""

    async def make(**overrides: Any) -> Chat:
        return await start_chat(aiohttp_client, make_config(tmp_path, **overrides))

    return make


# -- private Redis and PostgreSQL servers for the tests ---------------------------------------------


def _missing(message: str) -> None:
    if os.environ.get("CHATD_REQUIRE_SERVICES"):
        pytest.fail(message)
    pytest.skip(message)


class PostgresServer:
    """Debian's PostgreSQL as a private instance: a fresh cluster in a temporary directory, on a
    free loopback port, trusting local connections, for one test session. As root it runs as
    the `postgres` user (PostgreSQL refuses root). fsync is off: the tests kill chatd, never
    PostgreSQL, so what PostgreSQL acknowledged it keeps either way."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.databases = 0

    @staticmethod
    def bin_dir() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if found:
            return found[-1].parent
        exe = shutil.which("postgres")
        return Path(exe).parent if exe else None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://chatd@127.0.0.1:{self.port}/{database}"

    @staticmethod
    def _owner() -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def start(self, port: int = 0) -> PostgresServer:
        """Start it (a fresh cluster the first time; again on `port` after stop())."""
        bin_dir = self.bin_dir()
        if bin_dir is None:
            _missing("PostgreSQL is not installed (make test installs it)")
        data = self.directory / "data"
        fresh = not data.exists()
        if fresh:
            if os.geteuid() == 0:
                shutil.chown(self.directory, "postgres")
            subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "chatd", "--auth=trust", "-E", "UTF8",
                            "--locale=C.UTF-8"], check=True, capture_output=True, user=self._owner())
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "max_connections=400"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self._owner(), cwd=str(self.directory))
        import psycopg
        for _ in range(1000):
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if self.proc.poll() is not None:
                    raise AssertionError("postgres exited at start") from None
                time.sleep(0.02)
        else:
            raise AssertionError("postgres did not answer")
        if not fresh:
            return self
        # Every test's database is a copy of one migrated template (a copy takes milliseconds).
        self.execute("CREATE DATABASE chatd_template")
        from chatd.store import postgres
        postgres.connect(self.url("chatd_template")).close()
        return self

    def execute(self, sql: str) -> None:
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        self.databases += 1
        name = f"test_{self.databases}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE chatd_template")
        return self.url(name)

    def stop(self) -> None:
        """A fast shutdown: clients are cut off (a smart one would wait for chatd to leave)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


_POSTGRES: list[PostgresServer] = []
_DATABASES: dict[Path, str] = {}


def postgres_server() -> PostgresServer:
    """The session's PostgreSQL, started on first use (stopped at the end of the session)."""
    if not _POSTGRES:
        _POSTGRES.append(PostgresServer(Path(tempfile.mkdtemp(prefix="chatd-postgres-"))).start())
    return _POSTGRES[0]


def database_for(tmp_path: Path) -> str:
    """This test's own PostgreSQL database (one per test, as the SQLite file is)."""
    if tmp_path not in _DATABASES:
        _DATABASES[tmp_path] = postgres_server().new_database()
    return _DATABASES[tmp_path]


def query_db(db: Path | str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of one query straight from the database, SQLite file or PostgreSQL URL (? marks)."""
    if isinstance(db, str):
        import psycopg
        with psycopg.connect(db) as conn:
            if not params:  # as written: its literals may hold ? and %
                return [tuple(r) for r in conn.execute(sql.encode()).fetchall()]
            return [tuple(r) for r in conn.execute(sql.replace("%", "%%").replace("?", "%s"), params).fetchall()]
    import sqlite3
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def pg_url(tmp_path: Path) -> str:
    """A fresh PostgreSQL database for this test, whatever the configuration."""
    return database_for(tmp_path)


@pytest.fixture
def postgres_of_its_own() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own (tests that stop and restart it)."""
    directory = Path(tempfile.mkdtemp(prefix="chatd-postgres-"))
    server = PostgresServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


class RedisServer:
    """`redis-server` on a free loopback port, no persistence, for one test session."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int = 0) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            _missing("redis-server is not installed (make test installs it)")
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        for _ in range(500):
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    raise AssertionError("redis-server exited at start") from None
                time.sleep(0.02)
        raise AssertionError("redis-server did not answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_REDIS: list[RedisServer] = []


def redis_url() -> str:
    """The session's Redis, started on first use (stopped at the end of the session)."""
    if not _REDIS:
        _REDIS.append(RedisServer(Path(tempfile.mkdtemp(prefix="chatd-redis-"))).start())
    return _REDIS[0].url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server in (*_REDIS, *_POSTGRES):
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (tests that stop and restart it)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


async def next_json(ws: ClientWebSocketResponse, kind: str | None = None, timeout: float = 30) -> dict:
    """The next JSON event (of this type, skipping others) from a socket."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type.name != "TEXT":
            raise AssertionError(f"socket ended: {msg.type.name} {msg.data!r}")
        data = msg.json() if msg.data.startswith("{") else {"html": msg.data}
        if kind is None or data.get("type") == kind:
            return data


async def end_of(ws: ClientWebSocketResponse, timeout: float = 30) -> Any:
    """Skip the text frames still in flight; return the message that ends the socket."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type.name != "TEXT":
            return msg


@pytest.fixture
def no_server_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A client's mistake must never make the server log an error or a traceback.

    Modules of hostile-input tests use it for every test (`pytestmark`)."""
    caplog.set_level(logging.WARNING)
    yield
    gc.collect()  # "Task exception was never retrieved" is logged when the task is collected
    bad = [r for r in caplog.get_records("call") + caplog.get_records("teardown")
           if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, "server logged errors: " + "; ".join(f"{r.name}: {r.getMessage()[:300]}" for r in bad[:5])


# -- the real command as a subprocess ------------------------------------------------------


def chatd_command() -> list[str]:
    exe = shutil.which("chatd", path=str(Path(sys.executable).parent)) or shutil.which("chatd")
    return [exe] if exe else [sys.executable, "-m", "chatd"]


def run_cli(*args: str, db: Path | str, stdin: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*chatd_command(), *args, "--db", str(db)], input=stdin, capture_output=True, text=True,
        timeout=60, env=full_env, cwd=str(db.parent) if isinstance(db, Path) else None,
    )


class Server:
    """`chatd serve` in a subprocess on a free port."""

    def __init__(self, db: Path | str, *extra: str, env: dict | None = None) -> None:
        self.db, self.extra, self.env = db, extra, env or {}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.banner: list[str] = []

    def start(self, port: int = 0) -> Server:
        self.proc = subprocess.Popen(
            [*chatd_command(), "serve", "--db", str(self.db), "--port", str(port), *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **self.env}, cwd=str(self.db.parent) if isinstance(self.db, Path) else None,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise AssertionError(f"chatd did not start: {line!r} {self.proc.stderr.read()}")
        self.banner.append(line)
        self.url = line.strip().rsplit(" ", 1)[-1]
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[-1])

    def read_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.banner.append(line)
        return line

    def terminate(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def factory(*extra: str, db: Path | None = None, env: dict | None = None) -> Server:
        server = Server(db or tmp_path / "chatd.db", *extra, env=env)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.proc and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as session:
        yield session
