"""Accounts, sessions, API tokens and first-run setup."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TypeVar

from chatd import rules, security
from chatd.broker import Broker
from chatd.config import Config
from chatd.errors import BadInput, NotFound, RateLimited, Unauthorized
from chatd.limits import Window
from chatd.models import Credential, User
from chatd.store import Store

T = TypeVar("T")
log = logging.getLogger("chatd.auth")
PASSWORD_CHECKS_AT_ONCE = 1  # scrypt takes a core for ~50 ms: the event loop keeps the other
PASSWORD_CHECKS_WAITING = 32  # more than this waiting, and a sign-in is told to come back


class PasswordWork:
    """scrypt (hashing and checking passwords) on a thread, a bounded number at a time, so a
    flood of sign-ins cannot take every core from the event loop; past a short queue,
    callers are refused at once rather than queued without end."""

    def __init__(self, at_once: int = PASSWORD_CHECKS_AT_ONCE, waiting: int = PASSWORD_CHECKS_WAITING) -> None:
        self.max_waiting = waiting
        self._slots = asyncio.Semaphore(at_once)
        self.waiting = 0
        self.running = 0
        self.peak = 0  # the most that ever ran at once (for tests and curiosity)
        self.runs = 0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.waiting >= self.max_waiting:
            raise RateLimited("the server is busy signing people in; try again in a moment", 2)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            self.running += 1
            self.peak, self.runs = max(self.peak, self.running), self.runs + 1
            work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                await asyncio.wait([work])  # the thread runs on: keep its slot until it is done
                raise
        finally:
            self.running -= 1
            self._slots.release()


class Accounts:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.by_account = Window(config.login_attempts_per_account, config.login_window_seconds)
        self.by_ip = Window(config.login_attempts_per_ip, config.login_window_seconds)
        self.passwords = PasswordWork()
        # Called right after a change that can end sessions (Services sets it to close their
        # sockets in the same turn of the loop; the CLI has no sockets).
        self.revoked: Callable[[], None] = lambda: None

    async def create_user(self, username: object, password: object, admin: bool = False) -> User:
        """Validate and create an account (the password is hashed off the event loop)."""
        name = rules.check_username(username)
        secret = rules.check_password(password)
        hashed = await self.passwords.run(security.hash_password, secret)
        user = await self.store.create_user(name, hashed, admin)
        log.info("event=user_created user=%s admin=%s", name, admin)
        return user

    async def set_password(self, username: object, password: object) -> None:
        name = rules.check_username(username)
        secret = rules.check_password(password)
        hashed = await self.passwords.run(security.hash_password, secret)
        await self.store.set_password(name, hashed)
        self.revoked()
        log.info("event=password_changed user=%s", name)

    async def deactivate(self, username: object) -> None:
        name = rules.check_username(username)
        await self.store.deactivate_user(name)
        self.revoked()
        log.info("event=user_deactivated user=%s", name)

    async def create_token(self, username: object, label: str = "") -> str:
        """A new API token for that user; only its hash is stored."""
        name = rules.check_username(username)
        user = await self.store.user_by_name(name)
        if user is None:
            raise NotFound(f"no active user named {name}")
        token = security.new_token("chatd_")
        await self.store.create_token(user.id, security.token_hash(token), label[:100])
        log.info("event=token_created user=%s", name)
        return token

    async def authenticate(self, username: object, password: object, ip: str) -> User:
        """Check a login; attempts are limited per account and per address.

        The attempt is counted before the password is checked, so guesses sent all at once
        cannot all pass the limit while the first ones are still being checked: at most
        login_attempts_per_account checks run per window. A success takes its count back."""
        name = username.strip().lower() if isinstance(username, str) else ""
        wait = max(self.by_ip.blocked(ip), self.by_account.blocked(name))
        if wait:
            log.warning("event=login_limited user=%s ip=%s", _loggable(name), ip)
            raise RateLimited("too many failed sign-in attempts; wait a few minutes", wait)
        if not isinstance(password, str) or not name or len(password) > rules.MAX_PASSWORD:
            raise Unauthorized("wrong username or password")
        self.by_ip.hit(ip)
        self.by_account.hit(name)
        found = await self.store.user_with_hash(name) if rules.USERNAME_RE.fullmatch(name) else None
        stored = found[1] if found and found[0].active else None
        try:
            right = await self.passwords.run(security.verify_password, password, stored)
        except RateLimited:  # the server was too busy to check: not an attempt
            self.by_ip.forget_last(ip)
            self.by_account.forget_last(name)
            raise
        if not right:
            log.info("event=login_failed user=%s ip=%s", _loggable(name), ip)
            raise Unauthorized("wrong username or password")
        self.by_account.clear(name)
        self.by_ip.forget_last(ip)
        assert found is not None
        return found[0]

    async def start_session(self, user: User) -> tuple[str, str]:
        """Create a server-side session; returns (cookie token, CSRF token)."""
        token, csrf = security.new_token(), secrets.token_urlsafe(24)
        ttl = self.config.session_days * 86400
        await self.store.create_session(user.id, security.token_hash(token), csrf, ttl)
        log.info("event=login user=%s", user.username)
        return token, csrf

    async def end_session(self, credential: Credential) -> None:
        if credential.kind == "session":
            await self.store.delete_session(credential.token_hash)

    async def user_for_session(self, token: str) -> tuple[User, Credential] | None:
        digest = security.token_hash(token)
        found = await self.store.user_for_session(digest)
        if found is None:
            return None
        return found[0], Credential("session", digest, found[1])

    async def user_for_token(self, token: str) -> tuple[User, Credential] | None:
        digest = security.token_hash(token)
        user = await self.store.user_for_token(digest)
        return None if user is None else (user, Credential("token", digest))

    # -- first run ------------------------------------------------------------

    async def prepare_setup(self, broker: Broker | None = None) -> str | None:
        """With no account yet, store a one-time setup token and return it. Processes joined
        by a broker all print the same one: the first offered to the broker."""
        if await self.store.count_users():
            await self.store.set_setup_token(None)
            if broker is not None:
                await broker.forget_setup_token()
            return None
        token = security.new_token()
        if broker is not None:
            token = await broker.setup_token(token)
        await self.store.set_setup_token(security.setup_hash(token))
        return token

    async def setup_open(self, token: str) -> bool:
        return bool(token) and await self.store.setup_token_valid(security.setup_hash(token))

    async def complete_setup(self, token: str, username: object, password: object) -> User:
        name = rules.check_username(username)
        secret = rules.check_password(password)
        if not token:
            raise BadInput("the setup link is incomplete")
        hashed = await self.passwords.run(security.hash_password, secret)
        user = await self.store.create_first_admin(security.setup_hash(token), name, hashed)
        log.info("event=setup_complete user=%s", name)
        return user


def _loggable(name: str) -> str:
    """A username fit for a log line: anything that is not a valid name is logged as '-'."""
    return name if rules.USERNAME_RE.fullmatch(name) else "-"
