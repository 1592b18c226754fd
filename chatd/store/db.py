"""SQLite connections: the writer thread, reader threads, pragmas, error mapping."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from chatd.errors import SchemaTooNew, StorageUnavailable
from chatd.store import postgres
from chatd.store.postgres import PgFault, is_postgres, redacted
from chatd.store.schema import SCHEMA_VERSION, migrate, schema_version

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000

_RETRY = "the server cannot store messages right now; try again"
_FULL = "cannot write the database {path}: the disk is full ({cause})"
_READ_ONLY = "cannot write the database {path}: it is read-only ({cause})"
_LOCKED = "the database {path} is locked by another program ({cause})"
_UNREADABLE = ("the database could not be read", "the database {path} could not be read: {cause}")
# SQLite's primary result codes that mean the file or its disk failed, not a statement:
# (what a client is told, what the operator is told).
_FAULTS = {
    sqlite3.SQLITE_CORRUPT: _UNREADABLE,
    sqlite3.SQLITE_NOTADB: _UNREADABLE,
    sqlite3.SQLITE_READONLY: (_RETRY, _READ_ONLY),
    sqlite3.SQLITE_FULL: (_RETRY, _FULL),
    sqlite3.SQLITE_IOERR: (_RETRY, "the disk failed while reading or writing the database {path} ({cause})"),
    sqlite3.SQLITE_BUSY: (_RETRY, _LOCKED),
    sqlite3.SQLITE_LOCKED: (_RETRY, _LOCKED),
    sqlite3.SQLITE_CANTOPEN: (_RETRY, "cannot open the database {path}: {cause}"),
    sqlite3.SQLITE_PERM: (_RETRY, "cannot open the database {path}: permission denied ({cause})"),
}


class DatabaseFault(StorageUnavailable):
    """The database file or its disk failed (damaged, read-only, full...), not a statement.

    `message` is for clients and names no file; `describe(path)` is the operator's sentence,
    naming the file and the cause, which the CLI prints (`chatd serve`'s start-up included)."""

    def __init__(self, message: str, sentence: str, cause: str, sqlite_code: int) -> None:
        super().__init__(message)
        self.sentence, self.cause, self.sqlite_code = sentence, cause, sqlite_code

    def describe(self, path: Path | str) -> str:
        if is_postgres(path):
            return self.sentence.format(path=redacted(str(path)), cause=self.cause)
        sentence, folder = self.sentence, os.path.dirname(os.path.abspath(path))
        # SQLite says "disk I/O error" when a full disk stops its shared-memory file growing,
        # and "unable to open" when a read-only directory keeps it from creating that file.
        if self.sqlite_code == sqlite3.SQLITE_IOERR and _no_space_left(folder):
            sentence = _FULL
        elif self.sqlite_code == sqlite3.SQLITE_CANTOPEN and os.path.isdir(folder) and not os.access(folder, os.W_OK):
            sentence = _READ_ONLY
        return sentence.format(path=os.path.abspath(path), cause=self.cause)


def _no_space_left(folder: str) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def storage_error(exc: sqlite3.Error) -> DatabaseFault | None:
    """The DatabaseFault for an sqlite3 error caused by the disk or the file (or PostgreSQL out
    of reach), else None."""
    if isinstance(exc, PgFault):
        return DatabaseFault(_RETRY, "cannot use the PostgreSQL database {path}: {cause}", exc.cause, 0)
    code = getattr(exc, "sqlite_errorcode", None)  # an extended code; its low byte is the primary
    primary = code & 0xFF if isinstance(code, int) else None
    found = _FAULTS.get(primary) if primary is not None else None
    return None if found is None else DatabaseFault(found[0], found[1], str(exc), primary)


def _prepare(conn: sqlite3.Connection, sync: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {sync.upper()}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -32000")


def connect_sync(path: Path | str, sync: str = "normal") -> sqlite3.Connection:
    """Open, set WAL and pragmas, migrate; refuse a database from a newer chatd. A
    postgresql:// URL opens a PgConnection instead, which speaks the same methods."""
    if is_postgres(path):
        try:
            return postgres.connect(str(path))  # type: ignore[return-value]
        except PgFault as exc:
            raise storage_error(exc) from None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise storage_error(exc) or StorageUnavailable(f"cannot open the database {path}: {exc}") from None
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


class ThreadConnection:
    """One sqlite3 connection on a thread of its own (a single-worker executor); each call
    hands it a whole function, one thread hop per transaction or big read."""

    def __init__(self, path: Path, sync: str, name: str = "chatd-db") -> None:
        self.path, self.sync, self.name = path, sync, name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)
        try:
            self._conn = await asyncio.wrap_future(executor.submit(connect_sync, self.path, self.sync))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        executor, conn = self._executor, self._conn
        self._executor = self._conn = None
        if executor is not None and conn is not None:
            await asyncio.wrap_future(executor.submit(conn.close))
            executor.shutdown(wait=False)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(sqlite3_connection, *args) on the connection's thread."""
        if self._executor is None:
            raise StorageUnavailable("the database is closed")
        return await asyncio.wrap_future(self._executor.submit(fn, self._conn, *args))


INSERT_CHUNK = 256  # rows per statement: 9 columns of messages stay far under SQLite's 32,766 variables


def insert_many(conn: sqlite3.Connection, sql: str, rows: list[tuple[object, ...]]) -> None:
    """`INSERT INTO t (...) VALUES (?, ...)` for many rows in as few statements as may be.
    On SQLite that matters for messages: FTS5 writes what it holds pending as a new index
    segment whenever a statement begins inside the transaction (its savepoint), so one
    statement per row wrote the search index once per message, not once per batch: 29 us a
    message instead of 10 at 16 a batch (docs/performance.md, "Search at one segment a
    batch"). PostgreSQL's connection makes one statement of executemany itself."""
    if not isinstance(conn, sqlite3.Connection) or len(rows) < 2:
        conn.executemany(sql, rows)
        return
    head, _, row = sql.rpartition(" VALUES ")
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start:start + INSERT_CHUNK]
        conn.execute(f"{head} VALUES {', '.join([row] * len(chunk))}", [v for r in chunk for v in r])


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

