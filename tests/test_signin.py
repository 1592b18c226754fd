"""Sign-in limits hold under concurrency, and password checks cannot starve the server.

Every request here goes through the real form with its CSRF token; the limits are made
small with make_chat. Nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import ClientSession, CookieJar

from conftest import PASSWORD, Chat

pytestmark = pytest.mark.usefixtures("no_server_tracebacks")


async def form_session(chat: Chat) -> tuple[ClientSession, str]:
    session = ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True))
    page = await session.get("/login")
    return session, re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)


async def attempt(session: ClientSession, csrf: str, name: str, password: str) -> int:
    resp = await session.post("/login", data={"username": name, "password": password, "csrf": csrf, "next": "/"},
                              allow_redirects=False)
    return resp.status


async def test_concurrent_guesses_for_one_account_run_at_most_the_limit_of_checks(make_chat) -> None:
    chat: Chat = await make_chat(login_attempts_per_account=5, login_attempts_per_ip=10_000)
    await chat.user("alice")
    accounts = chat.services.accounts
    before = accounts.passwords.runs
    session, csrf = await form_session(chat)
    async with session:
        guesses = [attempt(session, csrf, "alice", f"wrong guess {i}") for i in range(200)]
        statuses = await asyncio.gather(*guesses, attempt(session, csrf, "alice", PASSWORD))
    checked = [s for s in statuses if s != 429]
    assert len(checked) <= 5, statuses
    assert statuses.count(429) >= 196
    assert accounts.passwords.runs - before <= 5  # no more scrypt runs than the limit allows
    # The right password, sent in the same batch, got through only if it was one of the five checked.
    assert statuses[-1] in (303, 429)


async def test_a_flood_of_sign_ins_runs_one_password_check_at_a_time_and_others_are_served(make_chat) -> None:
    chat: Chat = await make_chat(login_attempts_per_ip=10_000, login_attempts_per_account=10_000)
    for i in range(3):
        await chat.user(f"user{i}")
    accounts = chat.services.accounts
    session, csrf = await form_session(chat)
    async with session:
        flood = [attempt(session, csrf, f"user{i % 3}", f"wrong {i}") for i in range(80)]
        during = [chat.client.get("/healthz") for _ in range(10)]
        results = await asyncio.gather(*flood, *during)
    statuses, health = results[:80], results[80:]
    assert all(r.status == 200 for r in health)
    assert set(statuses) <= {401, 429}
    assert 429 in statuses  # past the waiting queue, sign-ins are told to come back
    assert accounts.passwords.peak == 1
    # After the flood, signing in works at once.
    fresh, csrf = await form_session(chat)
    async with fresh:
        assert await attempt(fresh, csrf, "user0", PASSWORD) == 303


async def test_a_successful_sign_in_does_not_count_against_the_address(make_chat) -> None:
    chat: Chat = await make_chat(login_attempts_per_ip=3)
    for i in range(5):
        await chat.user(f"member{i}")
    for i in range(5):  # five people behind one address sign in, one after the other
        session, csrf = await form_session(chat)
        async with session:
            assert await attempt(session, csrf, f"member{i}", PASSWORD) == 303
