"""PostgreSQL under the same store: `--db postgresql://...` (psycopg 3).

The store's parts (accounts.py, rooms.py, writer.py, ...) hold one set of statements, written in
the SQL the two engines share; `PgConnection` runs them on PostgreSQL, translating the few
spellings where SQLite's dialect differs (placeholders, INSERT OR IGNORE, two-argument max and
min, CROSS JOIN ... ON), and answers with the cursor methods the store uses. What cannot be
said in shared SQL (the schema, search, the data_version probe) is written for each engine.

Why psycopg 3 and its synchronous connections: the store runs each transaction as one
function on a connection of its own thread (db.ThreadConnection), and small reads inline;
psycopg's blocking API fits that shape exactly and prepares repeated statements by itself.
Write transactions take one advisory lock first, so writers are serialised across every
process and box as SQLite serialises them (BEGIN IMMEDIATE): the message writer's group
commit keeps that cheap, one lock per batch.

A batch of posts is the one transaction whose round trips are awaited, not waited for
(write_ahead), on psycopg's asyncio connections: the same function as on SQLite runs
between them without I/O, its reads answered from what came with the BEGIN, its writes
queued and sent with the COMMIT in one pipeline. Its reads are either sent with the BEGIN,
under the lock (`ahead`: the next id, the retry lookup, the room checks; two round trips),
or, while this process is the only one writing messages, guessed by the message writer from
its own commits and checked under the lock in the same pipeline as the writes (`expect`,
chatd_expect of migration 2; one round trip). A wrong guess fails the transaction before it
writes (Stale), and the batch reads instead. Meanwhile the event loop reads and renders the
next posts (docs/performance.md, "PostgreSQL"). Joins over arrays (the retry lookup) are
planned at each call, never prepared (_prepare).

Changes to credentials and rooms by other processes or commands (meta's auth_version and
rooms_version) are heard through LISTEN/NOTIFY: `PRAGMA data_version`, SQLite's cheap probe,
is answered from the notifications that arrived, without a round trip.

Errors come out as the store already knows them: a broken connection or a server that went
away as `PgFault` (an sqlite3.OperationalError, mapped by db.storage_error to "try again"),
a unique violation as sqlite3.IntegrityError. A broken connection is opened again on the
next statement outside a transaction.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from chatd.errors import Conflict, SchemaTooNew
from chatd.rules import UNSPACED_CLASS
from chatd.store.changes import NEXT_ID

try:  # the "scale" extra
    import psycopg
except ImportError:  # pragma: no cover - reported by connect()
    psycopg = None  # type: ignore[assignment]

T = TypeVar("T")
SCHEMES = ("postgresql://", "postgres://")
# Advisory lock keys (arbitrary, chatd's own): one writer at a time, one migrating process.
WRITE_LOCK = 7_336_142
SCHEMA_LOCK = 7_336_143
CONNECT_TIMEOUT = 5
# libpq's: give up connecting after CONNECT_TIMEOUT s, and find a server gone without a word
# (a lost box, a cut link) within about 15 s rather than the kernel's minutes.
_CONNECT_OPTIONS = {"connect_timeout": CONNECT_TIMEOUT, "keepalives": 1, "keepalives_idle": 10,
                    "keepalives_interval": 3, "keepalives_count": 3, "tcp_user_timeout": 15_000}
RETRY_AFTER = 1.0  # seconds between attempts to reconnect
KEEP_LOCK_SECONDS = 2.0  # how often the one-server lock is checked, and taken again after a restart
log = logging.getLogger("chatd.store")
UNSPACED_RE = f"[{UNSPACED_CLASS}]"  # a message with any of these is searched by substring too
# PostgreSQL's text search parser reads tags, URLs, hosts, paths and numbers with dots out of
# text as tokens of their own (and "<b>" not at all); SQLite's unicode61 sees words between any
# punctuation. ASCII punctuation becomes spaces first, so both find the same words.
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
SPLIT_WORDS = "translate(body, '{}', '{}')".format(PUNCTUATION.replace("'", "''"), " " * len(PUNCTUATION))


def is_postgres(db: object) -> bool:
    return isinstance(db, str) and db.lower().startswith(SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class PgBusy(sqlite3.OperationalError):
    """The write lock is taken and this connection does not wait (never_wait): SQLite's BUSY."""

    sqlite_errorcode = sqlite3.SQLITE_BUSY


class NotAhead(Exception):
    """A statement in a transaction run by write_ahead that was not sent ahead with its BEGIN:
    the transaction is rolled back, and the caller writes it the other way."""


class Stale(NotAhead):
    """A read guessed with expect() was found otherwise under the write lock: nothing was
    written, and the caller writes the batch the other way."""


STALE = "CHD01"  # chatd_expect's SQLSTATE (migration 2)


class PgFault(sqlite3.OperationalError):
    """PostgreSQL cannot be reached, or the connection to it broke (SQLite's nearest: an I/O
    error; db.storage_error maps it to its own sentence)."""

    sqlite_errorcode = sqlite3.SQLITE_IOERR

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


# -- schema ----------------------------------------------------------------------------------------

# Ordered, append-only, like schema.MIGRATIONS; version N is the first N applied. Version 1 is
# SQLite's schema 6 as one step (this store was born with it). Words search: a tsvector column
# kept by PostgreSQL itself (generated), with accents and case folded by the chatd_words
# configuration; text without spaces: a pg_trgm index over the messages that have such text.
MIGRATIONS: list[str] = [
    f"""
    CREATE EXTENSION IF NOT EXISTS unaccent;
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE COLLATION IF NOT EXISTS nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
    CREATE TEXT SEARCH CONFIGURATION chatd_words (COPY = simple);
    ALTER TEXT SEARCH CONFIGURATION chatd_words
        ALTER MAPPING FOR asciiword, word, numword, int, uint WITH unaccent, simple;
    CREATE TABLE users (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        username TEXT COLLATE nocase NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE sessions (
        token_hash BYTEA PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id),
        csrf TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE tokens (
        token_hash BYTEA PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id),
        label TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('auth_version', '0'), ('message_id_floor', '0'),
        ('room_id_floor', '0'), ('rooms_version', '0');
    CREATE TABLE rooms (
        id BIGINT PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL DEFAULT 'public' CHECK (kind IN ('public', 'private', 'dm')),
        created_by BIGINT REFERENCES users(id),
        last_message_id BIGINT NOT NULL DEFAULT 0,
        message_count BIGINT NOT NULL DEFAULT 0,
        archived_at DOUBLE PRECISION
    );
    INSERT INTO rooms (id, slug, name, created_at) VALUES (1, 'general', 'general', extract(epoch FROM now()));
    CREATE TABLE messages (
        id BIGINT PRIMARY KEY,
        room_id BIGINT NOT NULL REFERENCES rooms(id),
        user_id BIGINT NOT NULL REFERENCES users(id),
        body TEXT NOT NULL,
        html TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        client_id TEXT,
        seq BIGINT NOT NULL DEFAULT 0,
        mentions TEXT,
        edited_at DOUBLE PRECISION,
        reactions TEXT,
        rev BIGINT,
        sent_body TEXT,
        words TSVECTOR GENERATED ALWAYS AS (to_tsvector('chatd_words'::regconfig, {SPLIT_WORDS})) STORED
    );
    CREATE INDEX messages_room ON messages(room_id, id);
    CREATE INDEX messages_client ON messages(user_id, client_id) WHERE client_id IS NOT NULL;
    CREATE INDEX messages_words ON messages USING gin (words);
    CREATE INDEX messages_grams ON messages USING gin (body gin_trgm_ops) WHERE body ~ '{UNSPACED_RE}';
    CREATE TABLE memberships (
        room_id BIGINT NOT NULL REFERENCES rooms(id),
        user_id BIGINT NOT NULL REFERENCES users(id),
        last_read_id BIGINT NOT NULL DEFAULT 0,
        last_read_seq BIGINT NOT NULL DEFAULT 0,
        sidebar INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (room_id, user_id)
    );
    CREATE INDEX memberships_user ON memberships(user_id, room_id, last_read_seq);
    CREATE TABLE events (
        id BIGINT PRIMARY KEY,
        room_id BIGINT NOT NULL,
        message_id BIGINT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('updated', 'deleted')),
        seq BIGINT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX events_room ON events(room_id, id);
    CREATE INDEX events_deleted ON events(room_id, seq) WHERE kind = 'deleted';
    CREATE FUNCTION chatd_meta_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('chatd_meta', NEW.key); RETURN NULL; END $$;
    CREATE TRIGGER meta_changed AFTER UPDATE ON meta FOR EACH ROW
        WHEN (NEW.key IN ('auth_version', 'rooms_version')) EXECUTE FUNCTION chatd_meta_changed();
    """,
    # 2: the check that a read the message writer guessed is still so (PgConnection.expect).
    """
    CREATE FUNCTION chatd_expect(ok boolean) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            IF ok IS NOT TRUE THEN
                RAISE EXCEPTION 'a read guessed ahead is no longer so' USING ERRCODE = 'CHD01';
            END IF;
            RETURN true;
        END $$;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: PgConnection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS chatd_schema (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM chatd_schema").fetchone()
    return row[0] or 0


def migrate(conn: PgConnection) -> int:
    """Apply pending migrations, each in its own transaction, one process at a time."""
    conn.execute("BEGIN")
    try:
        conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        found = schema_version(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(f"the database {redacted(conn.url)} has schema version {found}, newer than this "
                           f"chatd understands ({SCHEMA_VERSION}); upgrade chatd")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN")
        try:
            conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
            if schema_version(conn) < version:
                conn.raw(MIGRATIONS[version - 1])
                conn.execute(f"INSERT INTO chatd_schema (version) VALUES ({version})")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
    return found


# -- the connection --------------------------------------------------------------------------------


class PgConnection:
    """One psycopg connection speaking the store's SQL (module docstring)."""

    dialect = "postgresql"  # for the few statements said otherwise here (sqlite3's has none)

    def __init__(self, url: str) -> None:
        self.url = url
        # The message writer's connection on the event loop (base.py) must not wait for the
        # write lock: PgBusy instead, and the batch goes to the writer thread, which waits.
        self.never_wait = False
        # Used on the event loop (base.py): connects again on a thread (_connect).
        self.on_loop = False
        self._connected_once = False
        self._connecting: threading.Thread | None = None
        self._queued: list[Callable[[Any], Any]] = []  # executemany's, inside a transaction
        self._next_id: int | None = None  # read with the write lock (_begin_write)
        self._ahead: list[tuple[str, Any]] = []  # reads to send with the next BEGIN IMMEDIATE (ahead)
        self._expected: list[tuple[str, Any, list[tuple]]] = []  # reads guessed, checked with it (expect)
        self._answers: dict[tuple[str, Any], list[tuple]] = {}  # their rows, until the transaction writes
        self._listening = False
        self._meta_changes = 0
        self._conn: Any = None
        self._idle: list[Any] = []  # write_ahead's asynchronous connections, opened as needed
        self._deferring = False  # in write_ahead's function: every statement answered or queued
        self._commit_asked = False
        self._retry_at = 0.0
        self._connect()

    def _connect(self) -> None:
        """Connect; after a failure, fail at once for RETRY_AFTER seconds (the inline
        connection runs on the event loop, which must not wait on every request for a
        server that is down)."""
        if psycopg is None:
            raise PgFault("PostgreSQL support is not installed (pip install 'chatd[scale]')")
        if time.monotonic() < self._retry_at:
            raise PgFault("the PostgreSQL server is not answering")
        if self.on_loop and self._connected_once:
            # Connecting again, from the event loop: on a thread, so that a server that does
            # not answer (a lost box) never holds the loop for the connect timeout.
            if self._connecting is None or not self._connecting.is_alive():
                self._connecting = threading.Thread(target=self._connect_quietly, name="chatd-pg-connect",
                                                    daemon=True)
                self._connecting.start()
            raise PgFault("connecting to the PostgreSQL server again")
        self._connect_now()

    def _connect_now(self) -> None:
        try:
            conn = psycopg.connect(self.url, autocommit=True, application_name="chatd", **_CONNECT_OPTIONS)
            if self._listening:  # a new connection listens again, and may have missed some
                conn.execute("LISTEN chatd_meta")
                self._meta_changes += 1
        except psycopg.Error as exc:
            self._retry_at = time.monotonic() + RETRY_AFTER
            raise PgFault(_first_line(exc)) from None
        self._conn, self._connected_once = conn, True

    def _connect_quietly(self) -> None:
        with contextlib.suppress(PgFault):
            self._connect_now()

    @property
    def in_transaction(self) -> bool:
        if self._deferring:
            return True
        return self._conn is not None and self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self._deferring:
            return self._answered(sql, params)
        special = _SPECIAL.get(sql)
        if special is not None:
            return special(self)
        rows = self._at_hand(sql, params)
        if rows is not None:
            return _Rows(rows)
        if self._answers and not sql.startswith("SELECT"):
            self._answers = {}  # a write: what was read ahead may be out of date
        text, order = translate(sql)
        prepare = _prepare(text)
        return self._send(lambda c: c.execute(text, _ordered(params, order), prepare=prepare))

    def ahead(self, sql: str, params: Any = ()) -> None:
        """A read the next write transaction will make: sent in the same round trip as its
        BEGIN IMMEDIATE, after the write lock is taken, and answered from there when it is
        asked, until the transaction first writes (the message writer's retry lookup and
        room checks: a batch is then two round trips, not four)."""
        self._ahead.append((sql, params))

    def expect(self, sql: str, params: Any, rows: list[tuple]) -> None:
        """A read write_ahead's next transaction will make, whose rows the caller knows
        already (the message writer: what its own last commits left): answered with them,
        and checked under the write lock in the same round trip as the writes. If the
        database says otherwise, the transaction fails with Stale before it writes. Values
        are integers, None and plain words (compared as PostgreSQL prints a row)."""
        for row in rows:
            for value in row:
                if not (value is None or isinstance(value, int) or (isinstance(value, str) and value.isalnum())):
                    raise ValueError(f"cannot expect {value!r}")
        self._expected.append((sql, params, rows))

    def executemany(self, sql: str, rows: Any) -> None:
        """Inside a transaction, queued and sent with the next statement (the COMMIT, for the
        message writer) in one pipeline: one round trip for all of a batch's writes. Its
        errors come out of that statement, still inside the transaction."""
        rows = list(rows)
        if not rows:
            return
        self._next_id, self._answers = None, {}
        found = _INSERT_VALUES.match(sql)
        if found is not None and len(rows) > 1:
            op = self._insert_many(found, rows)
        else:
            text, order = translate(sql)
            ordered = [_ordered(r, order) for r in rows]
            op = lambda c: c.cursor().executemany(text, ordered)  # noqa: E731
        if self.in_transaction:
            self._queued.append(op)
        else:
            self._run(op)

    def _send(self, op: Any) -> Any:
        if not self._queued:
            return self._run(op)
        queued, self._queued = self._queued, []

        def pipelined(conn: Any) -> Any:
            with conn.pipeline():
                for earlier in queued:
                    earlier(conn)
                cur = op(conn)
            return cur

        return self._run(pipelined)

    def _insert_many(self, found: re.Match[str], rows: list[Any]) -> Callable[[Any], Any]:
        """INSERT ... VALUES (?, ...) for many rows as one statement over arrays, one per column
        (INSERT ... SELECT * FROM unnest(...)): one execution, and the same text whatever the
        number of rows, so PostgreSQL plans it once. What follows VALUES (ON CONFLICT ...) stays."""
        table, columns = found.group("table"), [c.strip() for c in found.group("columns").split(",")]
        types = self._column_types(table)
        arrays = ", ".join(f"?::{types[c]}[]" for c in columns)
        sql = (f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) AS k"
               f"{found.group('rest')}")
        marks = [int(m) - 1 for m in re.findall(r"\?(\d+)", found.group("values"))] or list(range(len(columns)))
        text, _ = translate(sql)
        params = [[row[i] for row in rows] for i in marks]
        return lambda c: c.execute(text, params)

    def _column_types(self, table: str) -> dict[str, str]:
        known = _COLUMN_TYPES.get(table)
        if known is None:
            # On the synchronous connection, in a transaction or not: the catalog, not the store.
            known = _COLUMN_TYPES[table] = dict(self._run(lambda c: c.execute(
                "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
                " WHERE attrelid = CAST(%s AS regclass) AND attnum > 0 AND NOT attisdropped", (table,)).fetchall()))
        return known

    def copy_rows(self, table: str, columns: tuple[str, ...], rows: Any) -> int:
        """COPY these rows into a table (chatd migrate-db); returns how many."""

        def op(conn: Any) -> int:
            count = 0
            with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
            return count

        return self._run(op)

    def raw(self, script: str) -> None:
        """Run a script of several statements as it is (migrations)."""
        self._run(lambda c: c.execute(script.encode()))

    def listen_for_meta(self) -> None:
        """Hear when credentials or rooms change (auth_version, rooms_version), from any
        process or command: the trigger meta_changed notifies at commit."""
        self._listening = True
        self._run(lambda c: c.execute("LISTEN chatd_meta"))

    def meta_changes(self) -> int | None:
        """How many such notifications came (None when not listening): what SQLite's
        data_version tells, read off the socket without a round trip. Between a commit
        elsewhere and its notification arriving here there is a window of a moment, which
        the server's poll (auth_poll_seconds) closes."""
        if not self._listening:
            return None
        try:
            if self._conn is None or self._conn.closed:
                self._connect()
            pgconn = self._conn.pgconn
            pgconn.consume_input()
            while pgconn.notifies() is not None:
                self._meta_changes += 1
        except (psycopg.Error, PgFault):
            if self._conn is not None:
                self._drop()
            return None  # cannot tell: the caller reads the versions
        return self._meta_changes

    def rollback(self) -> None:
        self._queued, self._next_id, self._answers = [], None, {}
        if self.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except psycopg.Error:
                self._drop()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        while self._idle:  # closed without awaiting: nothing is in flight at close
            self._idle.pop().pgconn.finish()

    def _drop(self) -> None:
        with contextlib.suppress(Exception):  # it is broken already
            self._conn.close()
        self._conn = None

    def _run(self, fn: Any) -> Any:
        if self._conn is None or self._conn.closed:
            self._connect()  # broken before, and not in a transaction (that would have failed)
        try:
            return fn(self._conn)
        except psycopg.Error as exc:
            if self._conn.broken or self._conn.closed:
                self._drop()
            raise self._fault(exc) from None

    # -- a write transaction awaited on the event loop --

    async def write_ahead(self, fn: Callable[..., T], *args: Any, written: Callable[[T], None] | None = None) -> T:
        """fn(self, *args), a write transaction whose reads were all sent ahead (ahead) or
        guessed (expect), with its round trips awaited instead of waited for, on an
        asynchronous connection of this one's own: the BEGIN with the write lock, the next id
        and the reads sent ahead, if any; then the queued writes with the COMMIT (with the
        BEGIN and the checks of the guesses, when every read was guessed: one round trip).
        fn itself runs between them without I/O, and `written(its result)` right after it,
        before the COMMIT is sent. Meanwhile the event loop goes on (the message writer:
        reading the next posts while PostgreSQL writes these), and waiting for the lock holds
        nobody else. Calls may overlap, each on a connection of its own: the lock orders
        their transactions. A statement fn makes that was neither sent ahead nor guessed
        raises NotAhead, a guess found otherwise Stale; nothing is written then."""
        ahead, self._ahead = self._ahead, []
        expected, self._expected = self._expected, []
        answers = {(sql, _hashable(params)): rows for sql, params, rows in expected}
        aconn = await self._async_connection()
        begun, next_id = False, None
        try:
            if ahead or (NEXT_ID, ()) not in answers:  # reads to make: a round trip first
                async with aconn.pipeline():
                    cursors = [await aconn.execute(text, params, prepare=prepare) for text, params, prepare
                               in _begin("pg_advisory_xact_lock", expected, ahead)]
                begun = True
                reads = cursors[-len(ahead) - 1:]  # the next id's, then those sent ahead
                next_id = (await reads[0].fetchone())[0]
                for (sql, params), cur in zip(ahead, reads[1:], strict=True):
                    answers[(sql, _hashable(params))] = await cur.fetchall()
            self._next_id, self._answers = next_id, answers
            self._deferring, self._commit_asked = True, False
            try:
                result = fn(self, *args)
            finally:
                self._deferring = False
                queued, self._queued, self._next_id, self._answers = self._queued, [], None, {}
            if not self._commit_asked:
                raise RuntimeError("write_ahead's function ended without COMMIT")
            if written is not None:
                written(result)
            async with aconn.pipeline():
                if not begun:  # every read guessed: BEGIN, checks, writes and COMMIT at once
                    for text, params, prepare in _begin("pg_advisory_xact_lock", expected, None):
                        await aconn.execute(text, params, prepare=prepare)
                for op in queued:
                    await op(aconn)  # executemany's, on this connection: coroutines
                await aconn.execute("COMMIT")
            return result
        except BaseException as exc:
            await self._async_rollback(aconn)
            if isinstance(exc, psycopg.Error):
                if exc.sqlstate == STALE:
                    raise Stale(_first_line(exc)) from None
                raise self._fault(exc) from None
            raise
        finally:
            if not aconn.closed and aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self._idle.append(aconn)
            else:
                aconn.pgconn.finish()  # broken: another is opened next time

    async def _async_connection(self) -> Any:
        while self._idle:
            aconn = self._idle.pop()
            if not aconn.closed:
                return aconn
        if time.monotonic() < self._retry_at:
            raise PgFault("the PostgreSQL server is not answering")
        try:
            return await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name="chatd", **_CONNECT_OPTIONS)
        except psycopg.Error as exc:
            self._retry_at = time.monotonic() + RETRY_AFTER
            raise PgFault(_first_line(exc)) from None

    @staticmethod
    async def _async_rollback(aconn: Any) -> None:
        if aconn.closed or aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return
        with contextlib.suppress(psycopg.Error):  # broken: write_ahead drops it
            await aconn.execute("ROLLBACK")

    @staticmethod
    def _fault(exc: BaseException) -> sqlite3.Error:
        """A psycopg error as the store knows it: a unique violation among IntegrityError, a
        broken connection or a server gone PgFault (db.storage_error's "try again")."""
        if isinstance(exc, psycopg.errors.IntegrityError):
            return sqlite3.IntegrityError(_first_line(exc))
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return PgFault(_first_line(exc))
        return sqlite3.DatabaseError(_first_line(exc))

    def _answered(self, sql: str, params: Any) -> Any:
        """A statement in write_ahead's function: answered from what came with the BEGIN."""
        if sql == "BEGIN IMMEDIATE":
            return _Rows([])  # begun already, with the lock
        if sql == "COMMIT":
            self._commit_asked = True  # sent after the function, with the queued writes
            return _Rows([])
        if sql == "ROLLBACK":
            self._queued = []  # write_ahead rolls back as the function's error passes
            return _Rows([])
        rows = self._at_hand(sql, params)
        if rows is None:
            raise NotAhead(sql)
        return _Rows(rows)

    def _at_hand(self, sql: str, params: Any) -> list[tuple] | None:
        """The rows of a read that came with the BEGIN (or was guessed), if this is one: the
        next id only as the transaction's first statement, as nothing was written since."""
        known, self._next_id = self._next_id, None
        if known is not None and sql == NEXT_ID:
            return [(known,)]
        return self._answers.get((sql, _hashable(params))) if self._answers else None

    # -- statements said otherwise on PostgreSQL --

    def _begin_write(self) -> None:
        take = "pg_try_advisory_xact_lock" if self.never_wait else "pg_advisory_xact_lock"
        ahead, self._ahead = self._ahead, []

        def op(conn: Any) -> Any:
            with conn.pipeline():
                lock, next_id, *reads = [conn.execute(text, params, prepare=prepare)
                                         for text, params, prepare in _begin(take, [], ahead)][1:]
            got = lock.fetchone()[0]  # False: taken elsewhere (try); None: waited for (void)
            if got is not False:
                self._next_id = next_id.fetchone()[0]
                self._answers = {(sql, _hashable(params)): cur.fetchall()
                                 for (sql, params), cur in zip(ahead, reads, strict=True)}
            return got

        try:
            got = self._run(op)
        except BaseException:
            self.rollback()  # never left in a transaction holding the lock
            raise
        if got is False:
            self.rollback()
            raise PgBusy("another process is writing")


class _Rows:
    """A cursor over rows already at hand (read ahead, or answered without SQL)."""

    def __init__(self, rows: list[tuple]) -> None:
        self._rows = rows

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple]:
        return self._rows

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._rows)


def _begin(take: str, expected: list[tuple[str, Any, list[tuple]]],
           ahead: list[tuple[str, Any]] | None) -> list[tuple[str, list[Any], bool | None]]:
    """A write transaction's first statements, to send in one pipeline (statement, parameters,
    prepare): BEGIN, the write lock (`take`), the checks of the reads guessed (expect), and,
    unless `ahead` is None, the change log's next id (changes.NEXT_ID, which a write
    transaction asks first) and the reads sent ahead: all under the lock."""
    statements: list[tuple[str, list[Any], bool | None]] = [("BEGIN", [], None),
                                                            (f"SELECT {take}({WRITE_LOCK})", [], None)]
    for sql, params, rows in expected:
        text, order = translate(sql)
        printed = ["(" + ",".join("" if v is None else str(v) for v in row) + ")" for row in rows]
        statements.append((f"SELECT chatd_expect(ARRAY(SELECT t::text FROM ({text}) t) = %s::text[])",
                           [*_ordered(params, order), printed], _prepare(text)))
    if ahead is not None:
        statements.append((translate(NEXT_ID)[0], [], None))
        for sql, params in ahead:
            text, order = translate(sql)
            statements.append((text, _ordered(params, order), _prepare(text)))
    return statements


def _hashable(params: Any) -> Any:
    return tuple(tuple(p) if isinstance(p, list) else p for p in params)


_SPECIAL = {
    "BEGIN IMMEDIATE": lambda conn: conn._begin_write(),
    "ROLLBACK": lambda conn: conn.rollback(),  # queued writes are dropped, never sent
    # SQLite's probe for commits by other connections: here, a count of the notifications
    # that meta's versions moved (the meta_changed trigger), read without a round trip.
    "PRAGMA data_version": lambda conn: _Rows([(conn.meta_changes(),)]),
}


# INSERT INTO t (a, b) VALUES (?, ?) [rest]: rows that executemany may send as arrays.
_INSERT_VALUES = re.compile(
    r"INSERT INTO (?P<table>\w+) \((?P<columns>[\w, ]+)\) VALUES \((?P<values>(?:\s*\?\d*\s*,)*\s*\?\d*\s*)\)"
    r"(?P<rest>.*)\Z", re.DOTALL)
_COLUMN_TYPES: dict[str, dict[str, str]] = {}  # the schema is chatd's own: the same in every database


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _ordered(params: Any, order: tuple[int, ...] | None) -> Any:
    if order is None:
        return list(params)  # never None: the statement is always read for placeholders
    return [params[i] for i in order]


_TOKEN = re.compile(r"'(?:[^']|'')*'|\?(\d*)|%|\bmax\(|\bmin\(|\bINSERT OR IGNORE INTO\b|\bCROSS JOIN\b"
                    r"|\bAS INTEGER\)", re.IGNORECASE)


def _prepare(text: str) -> bool | None:
    """Whether psycopg may prepare a statement (None: once it has run a few times). A join
    over arrays (unnest) is planned at each call instead: its best plan depends on the
    table's size, and a plan made once while the table was small (a hash join over every
    message) would be kept as the table grows, until PostgreSQL next analyzes it."""
    return False if text.startswith("SELECT") and "unnest(" in text else None


@lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """SQLite's spelling of a statement as PostgreSQL's, with the order its parameters go in
    (None: as given). ?N numbered parameters may repeat, as in SQLite; an unnumbered ? takes
    the number after the highest used so far."""
    out: list[str] = []
    order: list[int] = []
    numbered = False
    highest = 0
    ignore = False
    pos = 0
    for match in _TOKEN.finditer(sql):
        out.append(sql[pos:match.start()])
        pos = match.end()
        token = match.group(0)
        upper = token.upper()
        if token.startswith("'"):
            out.append(token.replace("%", "%%"))  # psycopg reads % everywhere, literals too
        elif token.startswith("?"):
            number = int(match.group(1)) if match.group(1) else highest + 1
            numbered = numbered or bool(match.group(1))
            highest = max(highest, number)
            order.append(number - 1)
            out.append("%s")
        elif token == "%":
            out.append("%%")
        elif upper in ("MAX(", "MIN("):
            several = _several_arguments(sql, match.end())
            out.append(("greatest(" if upper == "MAX(" else "least(") if several else token)
        elif upper.startswith("INSERT"):
            ignore = True
            out.append("INSERT INTO")
        elif upper.startswith("AS"):
            out.append("AS BIGINT)")  # SQLite's INTEGER is 64 bits
        else:
            out.append("JOIN")
    out.append(sql[pos:])
    text = "".join(out)
    if ignore:
        returning = re.search(r"\sRETURNING\s", text, re.IGNORECASE)
        at = returning.start() if returning else len(text)
        text = text[:at] + " ON CONFLICT DO NOTHING" + text[at:]
    return text, (tuple(order) if numbered else None)


def _several_arguments(sql: str, start: int) -> bool:
    """Does the call whose arguments begin at `start` take more than one (a comma outside any
    inner parentheses before its closing one)?"""
    depth = 0
    for ch in sql[start:]:
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                return False
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def connect(url: str) -> PgConnection:
    """Open and migrate; a server that cannot be reached is PgFault, a newer schema SchemaTooNew."""
    conn = PgConnection(url)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


SERVER_LOCK = 7_336_144


@contextlib.contextmanager
def hold_server(url: str, shared: bool) -> Iterator[None]:
    """lock.hold_database for PostgreSQL: a session advisory lock on a connection of its own,
    held while the server runs (the server drops it when the connection ends, a killed
    process's too). Processes joined by a broker share it; a server without one has it alone.
    A thread looks every KEEP_LOCK_SECONDS that it is still held: PostgreSQL restarting ends
    the session, and the lock is taken again on the next connection."""
    conn = PgConnection(url)  # PgFault when PostgreSQL cannot be reached: the caller's sentence
    take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    stop = threading.Event()
    keeper = threading.Thread(target=_keep_lock, args=(conn, take, stop), name="chatd-pg-server-lock", daemon=True)
    try:
        if not conn.execute(f"SELECT {take}({SERVER_LOCK})").fetchone()[0]:
            if shared:
                raise Conflict(f"a chatd serve without --broker is using the database {redacted(url)}; "
                               "stop it first, or give it the same --broker")
            raise Conflict(f"another chatd serve is already using the database {redacted(url)}; stop it first")
        keeper.start()
        yield
    finally:
        stop.set()
        if keeper.is_alive():
            keeper.join(5)
        conn.close()


def _keep_lock(conn: PgConnection, take: str, stop: threading.Event) -> None:
    # Advisory locks of one 32-bit key show in pg_locks with the key as objid.
    held = ("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = ?"
            " AND pid = pg_backend_pid() AND granted)")
    lost = False
    while not stop.wait(KEEP_LOCK_SECONDS):
        try:
            if conn.execute(held, (SERVER_LOCK,)).fetchone()[0]:
                continue
            if conn.execute(f"SELECT {take}({SERVER_LOCK})").fetchone()[0]:
                log.warning("event=server_lock_taken_again reason=%r", "PostgreSQL's session ended (a restart)")
                lost = False
            elif not lost:
                lost = True
                log.error("event=server_lock_lost error=%r", "while PostgreSQL restarted, another chatd serve "
                          "(not joined by the same --broker) took the database; stop one of them")
        except sqlite3.Error:  # PgFault among them
            continue  # PostgreSQL away: the next look connects again
