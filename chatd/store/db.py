"""SQLite connections: one writer thread, a reader thread, pragmas, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from chatd.errors import ChatdError, SchemaTooNew, StorageUnavailable
from chatd.store.schema import SCHEMA_VERSION, migrate, schema_version

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000

# Errors that mean "the disk or file refused the write", not a bug in a statement.
_STORAGE_ERRORS = (
    "database or disk is full",
    "disk i/o error",
    "attempt to write a readonly database",
    "unable to open database",
    "database is locked",
    "readonly",
)


def storage_error(exc: sqlite3.Error) -> ChatdError | None:
    """Map an sqlite3 error caused by the disk or file to StorageUnavailable."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and any(s in text for s in _STORAGE_ERRORS):
        return StorageUnavailable("the server cannot store messages right now; try again")
    return None


def _prepare(conn: sqlite3.Connection, sync: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {sync.upper()}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -32000")


def connect_sync(path: Path, sync: str = "normal") -> sqlite3.Connection:
    """Open, set WAL and pragmas, migrate; refuse a database from a newer chatd."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError as exc:
        raise StorageUnavailable(f"cannot open the database {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database {path} has schema version {found}, newer than this chatd "
                f"understands ({SCHEMA_VERSION}); upgrade chatd"
            )
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        _prepare(conn, sync)
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        mapped = storage_error(exc)
        if mapped is not None:
            raise mapped from None
        raise StorageUnavailable(f"cannot use the database {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


class Connection:
    """One sqlite3 connection on its own thread; each call is one thread hop."""

    def __init__(self, path: Path, sync: str) -> None:
        self.path, self.sync = path, sync
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        # Open and migrate first, so a failure is a clean exception with no thread left behind.
        raw = await asyncio.to_thread(connect_sync, self.path, self.sync)
        self._db = aiosqlite.Connection(lambda: raw, 64)
        await self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(sqlite3_connection, *args) on the connection's thread."""
        if self._db is None:
            raise StorageUnavailable("the database is closed")
        # aiosqlite's _execute hands a whole function to the connection's thread:
        # one hop per transaction instead of one per statement.
        return await self._db._execute(fn, self._db._conn, *args)  # type: ignore[attr-defined]


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
