"""Accounts, sessions, API tokens and the first-run setup token."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from chatd.errors import Conflict, NotFound
from chatd.models import User
from chatd.store.base import _USER, StoreBase, _bump_auth, _user
from chatd.store.db import transaction

T = TypeVar("T")

SESSION_CACHE = 10_000


class AccountsStore(StoreBase):
    # -- accounts -----------------------------------------------------------

    async def create_user(self, username: str, password_hash: str, admin: bool) -> User:
        def op(conn: sqlite3.Connection) -> User:
            with transaction(conn):
                try:
                    user_id = conn.execute(
                        "INSERT INTO users (username, password_hash, admin, created_at) VALUES (?, ?, ?, ?)"
                        " RETURNING id", (username, password_hash, int(admin), time.time()),
                    ).fetchone()[0]
                except sqlite3.IntegrityError:
                    raise Conflict(f"the user {username} already exists") from None
                _start_read_state(conn, user_id)
                _bump_auth(conn)
                return _user(conn.execute(f"{_USER} WHERE id = ?", (user_id,)).fetchone())

        return await self._write_credentials(op)

    async def create_first_admin(self, setup_hash: str, username: str, password_hash: str) -> User:
        """Create the first account if the setup token matches and no account exists."""

        def op(conn: sqlite3.Connection) -> User | None:
            with transaction(conn):
                row = conn.execute("SELECT value FROM meta WHERE key = 'setup_token'").fetchone()
                if row is None or row[0] != setup_hash or conn.execute(
                    "SELECT 1 FROM users LIMIT 1"
                ).fetchone():
                    return None
                conn.execute("DELETE FROM meta WHERE key = 'setup_token'")
                user_id = conn.execute(
                    "INSERT INTO users (username, password_hash, admin, created_at) VALUES (?, ?, 1, ?) RETURNING id",
                    (username, password_hash, time.time()),
                ).fetchone()[0]
                _start_read_state(conn, user_id)
                return _user(conn.execute(f"{_USER} WHERE id = ?", (user_id,)).fetchone())

        user = await self._writer.run(op)
        if user is None:
            raise NotFound("this setup link has been used or has expired")
        return user

    async def set_setup_token(self, setup_hash: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM meta WHERE key = 'setup_token'")
                if setup_hash is not None:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('setup_token', ?)", (setup_hash,)
                    )

        await self._writer.run(op)

    async def setup_token_valid(self, setup_hash: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM meta WHERE key = 'setup_token'").fetchone()
            if row is None or row[0] != setup_hash:
                return False
            return conn.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None

        return self._read(op)

    async def count_users(self) -> int:
        return self._read(lambda c: c.execute("SELECT count(*) FROM users").fetchone()[0])

    async def user_with_hash(self, username: str) -> tuple[User, str] | None:
        def op(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute(
                "SELECT id, username, admin, active, password_hash FROM users"
                " WHERE username = ?",
                (username,),
            ).fetchone()
            return None if row is None else (_user(row[:4]), row[4])

        return self._read(op)

    async def user_by_name(self, username: str) -> User | None:
        return self._read(
            lambda c: _user(c.execute(f"{_USER} WHERE username = ? AND active = 1", (username,)).fetchone())
        )

    async def list_users(self) -> list[User]:
        return self._read(
            lambda c: [_user(r) for r in c.execute(f"{_USER} ORDER BY username").fetchall()]
        )

    async def set_password(self, username: str, password_hash: str) -> None:
        """Set a password and end every session of that user."""

        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                cur = conn.execute(
                    "UPDATE users SET password_hash = ? WHERE username = ? AND active = 1",
                    (password_hash, username),
                )
                if cur.rowcount == 0:
                    raise NotFound(f"no active user named {username}")
                conn.execute(
                    "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE username = ?)",
                    (username,),
                )
                _bump_auth(conn)

        await self._write_credentials(op)

    async def deactivate_user(self, username: str) -> None:
        """Deactivate an account in one transaction; its messages stay."""

        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                row = conn.execute(
                    "UPDATE users SET active = 0 WHERE username = ? AND active = 1 RETURNING id",
                    (username,),
                ).fetchone()
                if row is None:
                    raise NotFound(f"no active user named {username}")
                conn.execute("DELETE FROM sessions WHERE user_id = ?", (row[0],))
                conn.execute("DELETE FROM tokens WHERE user_id = ?", (row[0],))
                _bump_auth(conn)

        await self._write_credentials(op)

    # -- sessions and tokens ------------------------------------------------

    async def create_session(self, user_id: int, token_hash: bytes, csrf: str, ttl: float) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
                conn.execute(
                    "INSERT INTO sessions (token_hash, user_id, csrf, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (token_hash, user_id, csrf, now, now + ttl),
                )

        await self._writer.run(op)

    async def delete_session(self, token_hash: bytes) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
                _bump_auth(conn)

        await self._write_credentials(op)

    async def user_for_session(self, token_hash: bytes) -> tuple[User, str] | None:
        """The session's user and CSRF token (cached; see `_credentials_current`)."""
        if not self._auth_looked:
            self._read(self._credentials_current)
        now = time.time()
        hit = self._sessions.get(token_hash)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        return self._read(self._read_session, token_hash, now)

    def _read_session(self, conn: sqlite3.Connection, token_hash: bytes, now: float) -> tuple[User, str] | None:
        row = conn.execute(
            "SELECT u.id, u.username, u.admin, u.active, s.csrf, s.expires_at FROM sessions s"
            " JOIN users u ON u.id = s.user_id"
            " WHERE s.token_hash = ? AND s.expires_at > ? AND u.active = 1",
            (token_hash, now),
        ).fetchone()
        if row is None:
            return None
        if len(self._sessions) >= SESSION_CACHE:
            self._sessions.clear()
        user = _user(row[:4])
        self._sessions[token_hash] = (user, row[4], row[5])
        return user, row[4]

    async def create_token(self, user_id: int, token_hash: bytes, label: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT INTO tokens (token_hash, user_id, label, created_at) VALUES (?, ?, ?, ?)",
                    (token_hash, user_id, label, time.time()),
                )

        await self._writer.run(op)

    async def user_for_token(self, token_hash: bytes) -> User | None:
        """The token's user (cached; see `_credentials_current`)."""
        if not self._auth_looked:
            self._read(self._credentials_current)
        user = self._tokens.get(token_hash)
        return user if user is not None else self._read(self._read_token, token_hash)

    def _read_token(self, conn: sqlite3.Connection, token_hash: bytes) -> User | None:
        user = _user(conn.execute(
            "SELECT u.id, u.username, u.admin, u.active FROM tokens t"
            " JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND u.active = 1",
            (token_hash,),
        ).fetchone())
        if user is not None:
            if len(self._tokens) >= SESSION_CACHE:
                self._tokens.clear()
            self._tokens[token_hash] = user
        return user

    async def _write_credentials(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a change that moves auth_version; this process's next lookup looks again,
        in whatever turn of the loop it comes, so it sees the change."""
        result = await self._writer.run(op)
        self._auth_looked = False
        self.auth_epoch += 1
        return result

    def look_for_changes(self) -> None:
        """Look (at most once per turn of the loop) whether another process changed
        credentials or rooms; auth_epoch and rooms_epoch move when one did."""
        if not self._auth_looked:
            self._read(self._credentials_current)

    def force_look(self) -> None:
        """Another process says credentials or rooms changed: read their versions at the next
        look even if this connection saw no commit (with the other process's message batch)."""
        self._watch_seen = None
        self._auth_looked = False

    def _credentials_current(self, conn: sqlite3.Connection) -> None:
        """Empty the session and token caches if a credential may have changed since.

        Every change that can revoke one (sign-out, password, deactivation; in this
        process or by a `chatd` command) moves `auth_version` in the same commit. That
        row is read only when some other connection has committed since the last look:
        PRAGMA data_version of the message-writing connection moves with every commit
        but its own message batches (with synchronous=FULL, of the inline reader, with
        every commit), and reading it costs no I/O. So a revocation holds from the next
        request on, and a busy chat does not cost each request a query.

        One look per turn of the event loop: every request handled in a turn was read
        from its socket before the turn began, so before this look, and a change that
        finished before the request was sent is seen by it.
        """
        if self._auth_looked:
            return
        self._look_at_credentials(conn)
        self._auth_looked = True
        asyncio.get_running_loop().call_soon(self._next_turn_looks)

    def _next_turn_looks(self) -> None:
        self._auth_looked = False

    def _look_at_credentials(self, conn: sqlite3.Connection) -> None:
        watch = self._inline_writer or conn  # see _credentials_current
        try:
            seen = watch.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            seen = None  # cannot tell: read the versions below
        if seen is not None and seen == self._watch_seen:
            return
        self._watch_seen = seen
        versions = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('auth_version', 'rooms_version')"))
        version = versions["auth_version"]
        if version != self._auth_seen:
            self._sessions.clear()
            self._tokens.clear()
            if self._auth_seen is not None:
                self.auth_epoch += 1
            self._auth_seen = version
        rooms = versions.get("rooms_version")
        if rooms != self._rooms_seen:
            if self._rooms_seen is not None:
                self.rooms_epoch += 1
            self._rooms_seen = rooms

    async def auth_version(self) -> int:
        return self._read(
            lambda c: int(c.execute("SELECT value FROM meta WHERE key = 'auth_version'").fetchone()[0])
        )

    def live_credentials(self, sessions: list[bytes], tokens: list[bytes]) -> set[bytes]:
        """Which of these session and token hashes still authenticate an active user.

        Inline on the event loop, so sockets of an ended session are closed before anything
        else is delivered (Live.ensure_current): one indexed query per 500 hashes."""

        def op(conn: sqlite3.Connection) -> set[bytes]:
            live: set[bytes] = set()
            now = time.time()
            for table, hashes, extra in (("sessions", sessions, " AND s.expires_at > ?"), ("tokens", tokens, "")):
                for i in range(0, len(hashes), 500):
                    chunk = hashes[i:i + 500]
                    marks = ",".join("?" * len(chunk))
                    live.update(r[0] for r in conn.execute(
                        f"SELECT s.token_hash FROM {table} s JOIN users u ON u.id = s.user_id"
                        f" WHERE s.token_hash IN ({marks}) AND u.active = 1{extra}",
                        (*chunk, now) if extra else chunk))
            return live

        return self._read(op)


def _start_read_state(conn: sqlite3.Connection, user_id: int) -> None:
    """A new account has read every public room so far (old history is not news to it), and
    has joined `general`: other rooms join its sidebar as they bring it unread messages, or
    when it opens them (migration 5)."""
    conn.execute(
        "INSERT INTO memberships (room_id, user_id, last_read_id, last_read_seq, sidebar)"
        " SELECT id, ?, last_message_id, message_count, CASE WHEN slug = 'general' THEN 1 ELSE 0 END"
        " FROM rooms WHERE kind = 'public'",
        (user_id,),
    )
