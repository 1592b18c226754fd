"""Rooms at scale: creation limited per member, archive and delete by administrators, a
sidebar that stays usable with hundreds of rooms, and read marks that cannot flood the writer."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import WSMsgType

from conftest import Chat, csrf_of, next_json, query_db, run_cli

pytestmark = pytest.mark.usefixtures("no_server_tracebacks")


async def create(chat: Chat, headers: dict, slug: str, private: bool = False) -> int:
    resp = await chat.client.post("/api/v1/rooms", json={"slug": slug, "private": private}, headers=headers)
    return resp.status


async def post(chat: Chat, headers: dict, room: str, body: str) -> dict:
    resp = await chat.client.post(f"/api/v1/rooms/{room}/messages", json={"body": body}, headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]


def origin(chat: Chat) -> str:
    return chat.url("/").rstrip("/")


# -- creation limits ------------------------------------------------------------------------------


async def test_room_creation_is_limited_per_member_even_when_requests_race(make_chat) -> None:
    chat: Chat = await make_chat(rooms_per_hour=3)
    bob, root = await chat.bearer("bob"), await chat.bearer("root", admin=True)
    statuses = await asyncio.gather(*(create(chat, bob, f"room-{i}") for i in range(10)))
    assert sorted(statuses) == [201] * 3 + [429] * 7
    resp = await chat.client.post("/api/v1/rooms", json={"slug": "one-more"}, headers=bob)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"]["code"] == "rate_limited"
    # A refused creation (a taken slug) does not use up the allowance of another member.
    carol = await chat.bearer("carol")
    assert await create(chat, carol, "room-0") == 409
    assert [await create(chat, carol, f"carol-{i}") for i in range(3)] == [201] * 3
    # Administrators are not limited.
    assert [await create(chat, root, f"admin-{i}") for i in range(5)] == [201] * 5


async def test_rooms_per_hour_zero_leaves_room_creation_to_administrators(make_chat) -> None:
    chat: Chat = await make_chat(rooms_per_hour=0)
    bob, root = await chat.bearer("bob"), await chat.bearer("root", admin=True)
    resp = await chat.client.post("/api/v1/rooms", json={"slug": "mine"}, headers=bob)
    assert resp.status == 403 and "administrators" in (await resp.json())["error"]["message"]
    assert await create(chat, root, "theirs") == 201


# -- archive ----------------------------------------------------------------------------------------------


async def test_an_archived_room_stays_readable_and_takes_no_messages(chat: Chat) -> None:
    root = await chat.bearer("root", admin=True)
    bob = await chat.bearer("bob")
    assert await create(chat, root, "old-project") == 201
    kept = await post(chat, bob, "old-project", "the decision")
    browser = await chat.browser("bob")
    async with browser:
        tab = await browser.ws_connect("/ws?room=old-project", headers={"Origin": origin(chat)})
        stream = await chat.stream(bob)
        await chat.services.chat.archive_room(await chat.services.store.user_by_name("root"), "old-project", True)
        while '"reload":true' not in (await asyncio.wait_for(tab.receive(), 30)).data:
            pass  # an open tab of the room loads it again, now without a composer
        resp = await chat.client.post("/api/v1/rooms/old-project/messages", json={"body": "more"}, headers=bob)
        assert resp.status == 403 and "archived" in (await resp.json())["error"]["message"]
        await stream.send_json({"type": "send", "room": "old-project", "body": "more", "client_id": "a1"})
        assert (await next_json(stream, "error"))["code"] == "forbidden"
        await tab.send_json({"type": "send", "body": "from the tab", "client_id": "t1"})
        while '"code"' not in (frame := (await asyncio.wait_for(tab.receive(), 30)).data):
            pass
        assert '"code":"forbidden"' in frame
        history = await chat.client.get("/api/v1/rooms/old-project/messages", headers=bob)
        assert [m["id"] for m in (await history.json())["messages"]] == [kept["id"]]
        rooms = (await (await chat.client.get("/api/v1/rooms", headers=bob)).json())["rooms"]
        assert next(r for r in rooms if r["slug"] == "old-project")["archived"] is True
        page = await (await browser.get("/r/old-project")).text()
        assert "is archived" in page and 'id="composer"' in page and "hidden>" in page.split('id="composer"')[1][:200]
        # Out of the sidebar of other rooms' pages, on the rooms page under "Archived".
        assert 'href="/r/old-project"' not in await (await browser.get("/r/general")).text()
        listing = await (await browser.get("/rooms")).text()
        assert "Archived" in listing and 'href="/r/old-project"' in listing.split("Archived")[1]
        await tab.close()
        await stream.close()
    await chat.services.chat.archive_room(await chat.services.store.user_by_name("root"), "old-project", False)
    assert (await post(chat, bob, "old-project", "back again"))["body"] == "back again"


async def test_archive_and_delete_are_for_administrators_and_spare_general(chat: Chat) -> None:
    await chat.user("bob")
    root = await chat.bearer("root", admin=True)
    assert await create(chat, root, "team") == 201
    bob = await chat.browser("bob")
    async with bob:
        page = await bob.get("/r/general")
        csrf = csrf_of(await page.text())
        assert (await bob.post("/admin/rooms/team", data={"csrf": csrf, "action": "archive"})).status == 403
        assert (await bob.get("/admin/rooms/team/delete")).status == 403
        resp = await bob.post("/admin/rooms/team/delete", data={"csrf": csrf, "confirm": "team"})
        assert resp.status == 403
    admin = await chat.services.store.user_by_name("root")
    for attempt in (chat.services.chat.archive_room(admin, "general", True),
                    chat.services.chat.delete_room(admin, "general")):
        with pytest.raises(Exception) as refused:
            await attempt
        assert getattr(refused.value, "status", None) == 400
    assert chat.services.store.room_named("team") is not None


# -- delete ----------------------------------------------------------------------------------------------


async def test_deleting_a_room_asks_once_and_takes_its_messages_with_it(chat: Chat, config) -> None:
    root_h = await chat.bearer("root", admin=True)
    bob = await chat.bearer("bob")
    await chat.user("carol")
    assert await create(chat, root_h, "spam") == 201
    before = await post(chat, bob, "general", "kept")
    doomed = [await post(chat, bob, "spam", f"spam {i}") for i in range(5)]
    spam_id = chat.services.store.room_named("spam").id
    stream = await chat.stream(bob)
    root = await chat.browser("root")
    carol = await chat.browser("carol")
    async with root, carol:
        tab = await carol.ws_connect("/ws?room=spam", headers={"Origin": origin(chat)})
        form = await root.get("/admin/rooms/spam/delete")
        text = await form.text()
        assert form.status == 200 and "5 messages" in text and "cannot be undone" in text
        # A wrong confirmation deletes nothing.
        resp = await root.post("/admin/rooms/spam/delete", data={"csrf": csrf_of(text), "confirm": "spa"},
                               allow_redirects=False)
        assert resp.status == 400 and 'aria-invalid="true"' in await resp.text()
        assert (await chat.client.get("/api/v1/rooms/spam/messages", headers=bob)).status == 200
        resp = await root.post("/admin/rooms/spam/delete", data={"csrf": csrf_of(text), "confirm": "spam"},
                               allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/admin?deleted=spam"
        assert await next_json(stream, "room_removed") == {"type": "room_removed", "room": "spam"}
        frames = []
        while (msg := await asyncio.wait_for(tab.receive(), 30)).type == WSMsgType.TEXT:
            frames.append(msg.data)
        assert tab.close_code == 1008 and any('"room_removed":"spam"' in f for f in frames)
        assert "#spam was deleted" in await (await root.get(resp.headers["Location"])).text()
    assert (await chat.client.get("/api/v1/rooms/spam/messages", headers=bob)).status == 404
    for table in ("messages", "memberships"):
        assert query_db(config.db, f"SELECT count(*) FROM {table} WHERE room_id = ?", (spam_id,)) == [(0,)]
    # Ids never go back: the deleted room held the newest messages, yet the next is higher.
    after = await post(chat, bob, "general", "after")
    assert after["id"] > max(m["id"] for m in doomed) > before["id"]
    assert await create(chat, root_h, "spam") == 201  # the slug is free again, with a new room id
    assert chat.services.store.room_named("spam").id > spam_id
    history = await chat.client.get("/api/v1/rooms/spam/messages", headers=bob)
    assert (await history.json())["messages"] == []
    await stream.close()


# -- the sidebar with hundreds of rooms ------------------------------------------------------------------


async def test_hundreds_of_rooms_stay_out_of_the_sidebar_until_they_concern_you(chat: Chat) -> None:
    root = await chat.bearer("root", admin=True)
    for i in range(300):
        assert await create(chat, root, f"room-{i:03}") == 201
    bob_h = await chat.bearer("bob")
    await post(chat, root, "room-042", "news in 42")
    await post(chat, root, "room-043", "news in 43")
    bob = await chat.browser("bob")
    async with bob:
        page = await (await bob.get("/r/general")).text()
        sidebar = page.split('id="room-list"')[1].split("</ul>")[0]
        listed = re.findall(r'href="/r/([a-z0-9-]+)"', sidebar)
        # general (joined at sign-up) and the two rooms with unread messages; not 300 rooms.
        assert listed == ["general", "room-042", "room-043"], listed
        assert 'data-unread="room-042">1<' in sidebar
        assert len(page) < 30_000
        # Every room is on the rooms page, which filters by name.
        listing = await (await bob.get("/rooms?q=room-29")).text()
        assert set(re.findall(r'href="/r/(room-\d+)"', listing)) == {f"room-{i}" for i in range(290, 300)}
        # Leaving keeps a room out even when it has news; opening one joins it.
        csrf = csrf_of(page)
        resp = await bob.post("/r/room-043/join", data={"csrf": csrf, "action": "leave", "next": "/r/general"},
                              allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/r/general"
        await bob.get("/r/room-100")
        await post(chat, root, "room-043", "more news in 43")
        page = await (await bob.get("/r/general")).text()
        listed = re.findall(r'href="/r/([a-z0-9-]+)"', page.split('id="room-list"')[1].split("</ul>")[0])
        assert listed == ["general", "room-042", "room-100"], listed
        assert 'data-left="room-043"' in page
    # The API still lists every public room (the contract), with unread counts.
    rooms = (await (await chat.client.get("/api/v1/rooms", headers=bob_h)).json())["rooms"]
    assert len([r for r in rooms if r["kind"] == "public"]) == 301


async def test_a_new_public_room_is_in_its_creators_sidebar(chat: Chat) -> None:
    await chat.user("bob")
    bob = await chat.browser("bob")
    async with bob:
        form = await bob.get("/rooms/new")
        resp = await bob.post("/rooms/new", data={"csrf": csrf_of(await form.text()), "slug": "quiet"},
                              allow_redirects=False)
        assert resp.status == 303
        page = await (await bob.get("/r/general")).text()
        assert 'href="/r/quiet"' in page.split('id="room-list"')[1].split("</ul>")[0]


# -- read marks --------------------------------------------------------------------------------------------


async def test_a_flood_of_read_frames_is_written_in_a_few_transactions(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    await chat.user("bob")
    last = None
    for i in range(20):
        last = await post(chat, alice, "general", f"m{i}")
    reads = chat.services.chat.read_marks
    before = reads.transactions
    bob = await chat.browser("bob")
    async with bob:
        tabs = [await bob.ws_connect("/ws?room=general", headers={"Origin": origin(chat)}) for _ in range(4)]
        for _ in range(3):  # rounds of 50 frames a tab: below a socket's 64 frames in flight
            for n in range(50):
                for tab in tabs:
                    await tab.send_json({"type": "read", "message_id": str(last["id"] - 20 + n % 21)})
            # Every frame is answered: each of bob's tabs hears the count after each of the 200 reads.
            for tab in tabs:
                answers = 0
                while answers < 200:
                    if '"unread_set"' in (await asyncio.wait_for(tab.receive(), 30)).data:
                        answers += 1
        for tab in tabs:
            await tab.close()
        resp = await bob.get("/api/v1/rooms")
        general = next(r for r in (await resp.json())["rooms"] if r["slug"] == "general")
        assert general["unread"] == 0
    assert reads.transactions - before <= 30, reads.transactions - before  # for 600 read frames


# -- the same from the shell, while the server runs -------------------------------------------------------


async def test_room_commands_archive_and_delete_beside_a_running_server(chat: Chat, config) -> None:
    root = await chat.bearer("root", admin=True)
    bob = await chat.bearer("bob")
    assert await create(chat, root, "ops") == 201
    assert await create(chat, root, "spam") == 201
    await post(chat, bob, "spam", "buy now")

    def cli(*args: str, stdin: str | None = None):
        return run_cli("room", *args, db=config.db, stdin=stdin)

    listed = (await asyncio.to_thread(cli, "list")).stdout.splitlines()
    assert "spam\tpublic\t1\tactive" in listed and "general\tpublic\t0\tactive" in listed
    assert (await asyncio.to_thread(cli, "archive", "ops")).returncode == 0
    # The server takes it in before it answers the next request (no restart, no poll needed).
    resp = await chat.client.post("/api/v1/rooms/ops/messages", json={"body": "hello?"}, headers=bob)
    assert resp.status == 403
    assert "ops\tpublic\t0\tarchived" in (await asyncio.to_thread(cli, "list", "--all")).stdout
    assert "ops" not in (await asyncio.to_thread(cli, "list")).stdout
    assert (await asyncio.to_thread(cli, "unarchive", "ops")).returncode == 0
    assert (await chat.client.post("/api/v1/rooms/ops/messages", json={"body": "back"}, headers=bob)).status == 201

    await chat.services.stop()  # no poller from here: the next request alone must see the change
    stream = await chat.stream(bob)
    refused = await asyncio.to_thread(cli, "delete", "spam")  # no terminal to confirm on
    assert refused.returncode == 1 and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    done = await asyncio.to_thread(cli, "delete", "spam", "--yes")
    assert done.returncode == 0 and "1 messages" in done.stderr
    assert (await chat.client.get("/api/v1/rooms/spam/messages", headers=bob)).status == 404
    assert await next_json(stream, "room_removed") == {"type": "room_removed", "room": "spam"}
    for args in (("delete", "general", "--yes"), ("archive", "nowhere")):
        result = await asyncio.to_thread(cli, *args)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    await stream.close()
