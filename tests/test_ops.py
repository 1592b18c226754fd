"""Operations: Prometheus metrics, quiet structured logs without bodies or secrets."""

from __future__ import annotations

import logging
import os
import re

import pytest
from aiohttp import ClientSession, CookieJar

from conftest import CONFIGURATION, PASSWORD, Chat, login


async def test_metrics_from_loopback(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    ws = await chat.stream(alice)
    await chat.client.post("/api/v1/rooms/general/messages", json={"body": "count me"}, headers=alice)
    await ws.receive()
    resp = await chat.client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert 'chatd_connections{kind="stream"} 1' in text
    assert "chatd_messages_stored_total 1" in text
    assert re.search(r"chatd_deliveries_total [1-9]", text)
    assert "chatd_slow_consumers_dropped_total 0" in text
    assert 'chatd_sqlite_write_seconds_bucket{le="+Inf"} 1' in text
    assert "chatd_sqlite_write_seconds_count 1" in text
    # Which process these are from: with several, each is scraped on its own (docs/scaling.md).
    info = re.search(r'chatd_process_info\{pid="(\d+)",node="([0-9a-f]*)",database="(\w+)"\} 1', text)
    assert info is not None and int(info.group(1)) == os.getpid()  # the app runs in this process here
    assert info.group(3) == ("postgresql" if CONFIGURATION.startswith("postgresql") else "sqlite")
    assert (info.group(2) != "") == (CONFIGURATION != "sqlite")
    await ws.close()


async def test_metrics_through_a_proxy_need_an_admin_token(chat: Chat) -> None:
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert (await chat.client.get("/metrics", headers=proxied)).status == 403
    member = await chat.bearer("bob")
    assert (await chat.client.get("/metrics", headers={**proxied, **member})).status == 403
    admin = await chat.bearer("root", admin=True)
    assert (await chat.client.get("/metrics", headers={**proxied, **admin})).status == 200


async def test_logs_have_no_bodies_or_secrets(chat: Chat, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chatd")
    await chat.user("alice")
    token = await chat.token("alice")
    headers = {"Authorization": f"Bearer {token}"}
    ws = await chat.stream(headers)
    await chat.client.post("/api/v1/rooms/general/messages", json={"body": "top secret body"}, headers=headers)
    await ws.receive()
    await ws.close()
    async with ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True)) as session:
        resp = await login(session, "alice", "the wrong password")
        assert resp.status == 401
    text = caplog.text
    for secret in ("top secret body", token, PASSWORD, "the wrong password"):
        assert secret not in text
    assert "event=connect user=alice kind=stream" in text
    assert "event=login_failed user=alice" in text
    assert all("\n" not in r.getMessage() for r in caplog.records)


async def test_login_log_line_cannot_be_forged(chat: Chat, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chatd")
    async with ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True)) as session:
        resp = await login(session, "x\nevent=login user=root", "whatever password")
        assert resp.status == 401
    assert "event=login user=root" not in caplog.text
    assert "event=login_failed user=- " in caplog.text
