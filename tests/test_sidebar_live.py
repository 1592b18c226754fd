"""A live sidebar: open tabs list and drop rooms as they come into, and leave, each sidebar.

The server sends each tab the entry ready-made (`room_updated`, and the `unread` frame of a
message in a room the tab does not list) with its sort key, the `data-sort` of the page's
own entries; a room that leaves a sidebar but stays readable is `room_removed` without
`here`. Absence is shown by a later marker frame (a read mark's `unread_set`) that arrives
first: frames of one socket come in the order they were sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType

from chatd import fragments
from chatd.models import Room, RoomState
from conftest import Chat, csrf_of, next_json

pytestmark = pytest.mark.usefixtures("no_server_tracebacks")
TIMEOUT = 30  # seconds to wait for a frame that must come; nothing is timed
VOID = {"input", "meta", "link", "br", "img", "hr", "source", "wbr", "area", "base", "col", "embed", "track"}
MARKUP_NAME = '<i>Ops</i> & "Co"'


# -- helpers -----------------------------------------------------------------------------------------


class Entries(HTMLParser):
    """The sidebar entries in a page or a fragment: each <li data-sort>'s list, sort key, link,
    label and badge; `strict` checks that the markup nests properly."""

    def __init__(self, strict: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.strict = strict
        self.entries: list[dict[str, Any]] = []
        self.stack: list[str] = []
        self.list_id: str | None = None
        self.entry_depth: int | None = None  # the stack's depth inside the <li> of an entry
        self.capture: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in VOID:
            return
        self.stack.append(tag)
        entry = self.entries[-1] if self.entry_depth is not None else None
        if tag == "ul" and a.get("id") in ("room-list", "dm-list"):
            self.list_id = a["id"]
        elif tag == "li" and "data-sort" in a:
            self.entries.append({"list": self.list_id, "sort": a["data-sort"], "label": "", "badge_text": ""})
            self.entry_depth = len(self.stack)
        elif entry is not None and tag == "a":
            entry.update(href=a.get("href"), link_class=a.get("class"), current=a.get("aria-current"))
        elif entry is not None and tag == "span" and a.get("class") == "label":
            self.capture = "label"
        elif entry is not None and tag == "span" and a.get("class") == "badge":
            entry["badge"] = a.get("data-unread")
            self.capture = "badge_text"

    def handle_endtag(self, tag: str) -> None:
        if self.strict:
            assert self.stack and self.stack[-1] == tag, (tag, self.stack)
        while self.stack and self.stack.pop() != tag:
            pass
        if self.entry_depth is not None and len(self.stack) < self.entry_depth:
            self.entry_depth = None
        if tag == "ul":
            self.list_id = None
        self.capture = None

    def handle_data(self, data: str) -> None:
        if self.capture and self.entry_depth is not None:
            self.entries[-1][self.capture] += data


def parse_entry(html: str) -> dict[str, Any]:
    """A frame's entry: exactly one well-formed <li> with a link and an empty badge."""
    parser = Entries(strict=True)
    parser.feed(html)
    parser.close()
    assert not parser.stack, html
    assert len(parser.entries) == 1 and html.startswith("<li ") and html.endswith("</li>"), html
    return parser.entries[0]


def page_entries(page: str) -> dict[str, list[dict[str, Any]]]:
    parser = Entries(strict=False)
    parser.feed(page)
    lists: dict[str, list[dict[str, Any]]] = {"room-list": [], "dm-list": []}
    for entry in parser.entries:
        if entry["list"] in lists:
            lists[entry["list"]].append(entry)
    return lists


def check_entry(frame: dict[str, Any], slug: str, href: str, label: str, list_name: str) -> dict[str, Any]:
    """The frame's entry is the sidebar link of that room, labelled, with its badge empty."""
    assert frame["list"] == list_name
    entry = parse_entry(frame["html"])
    assert entry["href"] == href and entry["badge"] == slug and entry["badge_text"] == ""
    assert entry["label"] == label and entry["sort"] == frame["sort"]
    assert entry["current"] is None and entry["link_class"] is None
    return entry


def origin(chat: Chat) -> dict[str, str]:
    return {"Origin": chat.url("/").rstrip("/")}


async def open_tab(chat: Chat, session: ClientSession, room: str) -> ClientWebSocketResponse:
    """A tab's socket, registered: its greeting (the unread counts) has arrived."""
    ws = await session.ws_connect(f"/ws?room={room}", headers=origin(chat))
    await until(ws, lambda f: "unread_all" in f)
    return ws


async def until(ws: ClientWebSocketResponse, match: Any) -> list[dict[str, Any]]:
    """Read a tab's frames up to the first one `match` accepts: [the frames before it..., it]."""
    seen = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert msg.type == WSMsgType.TEXT, f"socket ended: {msg.type.name} {msg.data!r}"
        frame = msg.json() if msg.data.startswith("{") else {"fragment": msg.data}
        seen.append(frame)
        if match(frame):
            return seen


async def next_update(ws: ClientWebSocketResponse, slug: str) -> dict[str, Any]:
    return (await until(ws, lambda f: f.get("room_updated") == slug))[-1]


async def mark(chat: Chat, *names: str) -> None:
    """The marker: a read mark in general, which every tab of these users hears about."""
    for name in names:
        user = await chat.services.store.user_by_name(name)
        await chat.services.chat.mark_read(user, "general", 0)


async def before_marker(ws: ClientWebSocketResponse) -> list[dict[str, Any]]:
    """What the tab got before the marker (see `mark`)."""
    return (await until(ws, lambda f: "unread_set" in f))[:-1]


def about(frames: list[dict[str, Any]], slug: str) -> list[dict[str, Any]]:
    """The sidebar frames among these that name this room."""
    return [f for f in frames if slug in (f.get("room_updated"), f.get("room_removed"), f.get("unread"))]


async def stream_before_marker(chat: Chat, ws: ClientWebSocketResponse, poster: dict, body: str) -> list[dict]:
    """A stream's events up to a message `body` posted in general now."""
    await post(chat, poster, "general", body)
    seen = []
    while (event := await next_json(ws))["type"] != "message" or event["message"]["body"] != body:
        seen.append(event)
    return seen


async def post(chat: Chat, headers: dict, room: str, body: str) -> dict:
    resp = await chat.client.post(f"/api/v1/rooms/{room}/messages", json={"body": body}, headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]


async def create(chat: Chat, headers: dict, slug: str, name: str | None = None, private: bool = False) -> None:
    body: dict[str, Any] = {"slug": slug, "private": private}
    if name is not None:
        body["name"] = name
    resp = await chat.client.post("/api/v1/rooms", json=body, headers=headers)
    assert resp.status == 201, await resp.text()


def insert(entries: list[dict[str, Any]], frame: dict[str, Any]) -> None:
    """What the page's script does with an entry: replace the room's own, or put it before the
    first entry with a greater sort key."""
    new = parse_entry(frame["html"])
    for i, entry in enumerate(entries):
        if entry["badge"] == new["badge"]:
            entries[i] = new
            return
    at = next((i for i, e in enumerate(entries) if frame["sort"] < e["sort"]), len(entries))
    entries.insert(at, new)


def hrefs(entries: list[dict[str, Any]]) -> list[str]:
    return [e["href"] for e in entries]


# -- rendering ---------------------------------------------------------------------------------------


def test_an_entry_is_the_pages_own_markup_with_its_sort_key_escaped() -> None:
    room = Room(7, "ops", MARKUP_NAME, "public")
    name, key, html = fragments.sidebar_entry(room, None)
    assert (name, key) == ("rooms", "0" + MARKUP_NAME.casefold())
    assert html == str(fragments.room_items_html([RoomState(room, 0, None)], current_id=None))
    assert "<i>" not in html and ">&lt;i&gt;Ops&lt;/i&gt; &amp; \"Co\"</span>" in html
    assert '<li data-sort="0&lt;i&gt;ops&lt;/i&gt; &amp; &quot;co&quot;">' in html
    entry = parse_entry(html)
    assert entry["sort"] == key and entry["label"] == MARKUP_NAME and entry["href"] == "/r/ops"
    # Private rooms after public ones; a DM by its other person.
    assert fragments.sidebar_entry(Room(8, "hidden", "Aardvark", "private"), None)[:2] == ("rooms", "1aardvark")
    dm = fragments.sidebar_entry(Room(9, "alice+bob", "alice+bob", "dm"), "alice")
    assert dm[:2] == ("dms", "alice") and parse_entry(dm[2])["href"] == "/dm/alice"


# -- rooms coming in -----------------------------------------------------------------------------------


async def test_a_new_public_room_goes_to_its_creators_tabs_and_every_stream(chat: Chat) -> None:
    alice_h, bob_h = await chat.bearer("alice"), await chat.bearer("bob")
    alice, bob = await chat.browser("alice"), await chat.browser("bob")
    async with alice, bob:
        alice_tabs = [await open_tab(chat, alice, "general") for _ in range(2)]
        bob_tab = await open_tab(chat, bob, "general")
        alice_ws, bob_ws = await chat.stream(alice_h), await chat.stream(bob_h)
        await create(chat, alice_h, "ops", MARKUP_NAME)
        for tab in alice_tabs:
            frame = await next_update(tab, "ops")
            assert frame["sort"] == "0" + MARKUP_NAME.casefold() and frame["unread"] == 0
            check_entry(frame, "ops", "/r/ops", MARKUP_NAME, "rooms")
        for ws in (alice_ws, bob_ws):
            event = await next_json(ws, "room_updated")
            assert event == {"type": "room_updated", "room": {"slug": "ops", "name": MARKUP_NAME,
                                                              "kind": "public", "unread": 0}}
        # Bob's sidebar lists it once it brings him news, not before: its first message.
        await mark(chat, "bob")
        assert about(await before_marker(bob_tab), "ops") == []
        await post(chat, alice_h, "ops", "hello ops")
        unread = (await until(bob_tab, lambda f: f.get("unread") == "ops"))[-1]
        assert unread["from"] == "alice" and unread["text"] == "hello ops" and unread["kind"] == "public"
        check_entry(unread, "ops", "/r/ops", MARKUP_NAME, "rooms")
        # The same key as the entry of the page.
        page = page_entries(await (await alice.get("/r/general")).text())["room-list"]
        assert next(e for e in page if e["href"] == "/r/ops")["sort"] == frame["sort"]
        for ws in (*alice_tabs, bob_tab, alice_ws, bob_ws):
            await ws.close()


async def test_a_private_room_is_announced_to_its_members_only(chat: Chat) -> None:
    alice_h, bob_h = await chat.bearer("alice"), await chat.bearer("bob")
    await chat.user("carol")
    await chat.user("dave")
    alice, bob, carol, dave = [await chat.browser(n) for n in ("alice", "bob", "carol", "dave")]
    async with alice, bob, carol, dave:
        tabs = {n: await open_tab(chat, s, "general") for n, s in
                (("alice", alice), ("bob", bob), ("carol", carol), ("dave", dave))}
        bob_ws = await chat.stream(bob_h)
        await create(chat, alice_h, "plans", "Secret Plans", private=True)
        frame = await next_update(tabs["alice"], "plans")
        assert frame["sort"] == "1secret plans" and frame["unread"] == 0
        entry = check_entry(frame, "plans", "/r/plans", "Secret Plans", "rooms")
        assert entry["label"] == "Secret Plans"
        await mark(chat, "bob", "carol", "dave")
        for name in ("bob", "carol", "dave"):
            assert about(await before_marker(tabs[name]), "plans") == []
        assert [e for e in await stream_before_marker(chat, bob_ws, alice_h, "m1") if "room" in e] == []

        # Added through the API: bob's tabs and stream; nobody else.
        resp = await chat.client.post("/api/v1/rooms/plans/members", json={"username": "bob"}, headers=alice_h)
        assert resp.status == 200
        frame = await next_update(tabs["bob"], "plans")
        check_entry(frame, "plans", "/r/plans", "Secret Plans", "rooms")
        assert frame["unread"] == 0 and frame["sort"] == "1secret plans"
        assert (await next_json(bob_ws, "room_updated"))["room"]["slug"] == "plans"
        # Added on the members page: carol's tabs.
        await post(chat, alice_h, "plans", "before carol")
        members = await alice.get("/r/plans/members")
        resp = await alice.post("/r/plans/members", allow_redirects=False, data={
            "csrf": csrf_of(await members.text()), "action": "add", "username": "carol"})
        assert resp.status == 303 and "error" not in resp.headers["Location"]
        frame = await next_update(tabs["carol"], "plans")
        check_entry(frame, "plans", "/r/plans", "Secret Plans", "rooms")
        assert frame["unread"] == 0  # a new member starts with the history read
        await mark(chat, "dave")
        assert about(await before_marker(tabs["dave"]), "plans") == []
        await bob_ws.close()
        await close_all(tabs.values())


async def close_all(sockets: Iterable[ClientWebSocketResponse]) -> None:
    for ws in sockets:
        await ws.close()


async def test_joining_a_public_room_lists_it_in_the_joiners_other_tabs(chat: Chat) -> None:
    root = await chat.bearer("root", admin=True)
    bob_h = await chat.bearer("bob")
    await chat.user("carol")
    for slug in ("by-click", "by-visit", "by-post"):
        await create(chat, root, slug, slug.replace("-", " ").title())
    await post(chat, root, "by-click", "one")
    await post(chat, root, "by-click", "two")
    bob, carol = await chat.browser("bob"), await chat.browser("carol")
    async with bob, carol:
        bob_tab, carol_tab = await open_tab(chat, bob, "general"), await open_tab(chat, carol, "general")
        bob_ws = await chat.stream(bob_h)
        page = await (await bob.get("/rooms")).text()
        resp = await bob.post("/r/by-click/join", allow_redirects=False,
                              data={"csrf": csrf_of(page), "action": "join", "next": "/rooms"})
        assert resp.status == 303
        frame = await next_update(bob_tab, "by-click")
        check_entry(frame, "by-click", "/r/by-click", "By Click", "rooms")
        assert frame["unread"] == 2 and frame["sort"] == "0by click"  # joining reads nothing
        assert (await next_json(bob_ws, "room_updated"))["room"] == {
            "slug": "by-click", "name": "By Click", "kind": "public", "unread": 2}

        assert (await bob.get("/r/by-visit")).status == 200  # opening a room joins it
        frame = await next_update(bob_tab, "by-visit")
        check_entry(frame, "by-visit", "/r/by-visit", "By Visit", "rooms")
        assert (await next_json(bob_ws, "room_updated"))["room"]["slug"] == "by-visit"

        showing = await open_tab(chat, bob, "by-post")  # a tab of a room does not join it
        await post(chat, bob_h, "by-post", "first words")  # posting in it does
        frame = await next_update(bob_tab, "by-post")
        check_entry(frame, "by-post", "/r/by-post", "By Post", "rooms")
        assert frame["unread"] == 0
        assert (await next_json(bob_ws, "room_updated"))["room"]["slug"] == "by-post"
        await mark(chat, "bob")  # the tab showing the room lists it already: no entry for it
        assert [f for f in await before_marker(showing) if "room_updated" in f] == []
        assert about(await before_marker(bob_tab), "by-post") == []  # and once only

        # Once joined, a post, a visit or a join again announces nothing more; others hear nothing.
        await post(chat, bob_h, "by-post", "more words")
        assert (await bob.get("/r/by-visit")).status == 200
        await bob.post("/r/by-click/join", allow_redirects=False,
                       data={"csrf": csrf_of(page), "action": "join", "next": "/rooms"})
        await mark(chat, "bob", "carol")
        assert [f for f in await before_marker(bob_tab) if "room_updated" in f] == []
        assert [f for f in await before_marker(carol_tab) if "room_updated" in f] == []
        assert [e for e in await stream_before_marker(chat, bob_ws, root, "m2") if e["type"] == "room_updated"] == []
        # The page now lists all three where the frames put them.
        listed = page_entries(await (await bob.get("/r/general")).text())["room-list"]
        assert hrefs(listed) == ["/r/by-click", "/r/by-post", "/r/by-visit", "/r/general"]
        for ws in (bob_tab, carol_tab, bob_ws, showing):
            await ws.close()


async def test_posting_in_a_room_one_left_brings_it_back(chat: Chat) -> None:
    root = await chat.bearer("root", admin=True)
    bob_h = await chat.bearer("bob")
    await create(chat, root, "ops")
    bob = await chat.browser("bob")
    async with bob:
        tab = await open_tab(chat, bob, "general")
        page = await (await bob.get("/r/ops")).text()
        await next_update(tab, "ops")
        await bob.post("/r/ops/join", data={"csrf": csrf_of(page), "action": "leave"}, allow_redirects=False)
        assert (await until(tab, lambda f: f.get("room_removed") == "ops"))[-1] == {"room_removed": "ops", "left": True}
        await post(chat, bob_h, "ops", "I am back")
        check_entry(await next_update(tab, "ops"), "ops", "/r/ops", "ops", "rooms")
        await tab.close()


# -- rooms going out ---------------------------------------------------------------------------------


async def test_leaving_drops_the_room_from_the_leavers_tabs_and_no_one_elses(chat: Chat) -> None:
    root = await chat.bearer("root", admin=True)
    bob_h = await chat.bearer("bob")
    await chat.user("carol")
    await create(chat, root, "ops")
    bob, carol = await chat.browser("bob"), await chat.browser("carol")
    async with bob, carol:
        page = await (await bob.get("/r/ops")).text()
        await carol.get("/r/ops")
        bob_tabs = [await open_tab(chat, bob, "general"), await open_tab(chat, bob, "ops")]
        carol_tab = await open_tab(chat, carol, "ops")
        bob_ws = await chat.stream(bob_h)
        resp = await bob.post("/r/ops/join", data={"csrf": csrf_of(page), "action": "leave", "next": "/r/ops"},
                              allow_redirects=False)
        assert resp.status == 303
        for tab in bob_tabs:  # the room's own tab too, without "here": it can still read it
            assert (await until(tab, lambda f: f.get("room_removed") == "ops"))[-1] == {"room_removed": "ops",
                                                                                        "left": True}
        await mark(chat, "bob", "carol")
        assert about(await before_marker(carol_tab), "ops") == []
        for tab in bob_tabs:
            await before_marker(tab)  # open still, and still hearing
            assert not tab.closed
        # The tab of the room still gets its messages; the stream hears of no change.
        await post(chat, root, "ops", "still readable")
        assert "still readable" in (await until(bob_tabs[1], lambda f: "still readable" in f.get("fragment", "")))[-1][
            "fragment"]
        assert [e for e in await stream_before_marker(chat, bob_ws, root, "m3") if "room" in e] == []
        listed = page_entries(await (await bob.get("/r/general")).text())["room-list"]
        assert hrefs(listed) == ["/r/general"]
        for ws in (*bob_tabs, carol_tab, bob_ws):
            await ws.close()


async def test_archiving_drops_the_room_from_its_readers_tabs_and_unarchiving_brings_it_back(chat: Chat) -> None:
    root_h = await chat.bearer("root", admin=True)
    await chat.user("bob")
    await chat.user("carol")
    await create(chat, root_h, "ops", "Ops")
    await create(chat, root_h, "board", "Board", private=True)
    root, bob, carol = await chat.browser("root"), await chat.browser("bob"), await chat.browser("carol")
    async with root, bob, carol:
        await bob.get("/r/ops")  # bob joins ops; carol neither joins nor leaves it
        bob_tab, carol_tab = await open_tab(chat, bob, "general"), await open_tab(chat, carol, "general")
        viewer = await open_tab(chat, carol, "ops")
        root_tab = await open_tab(chat, root, "general")
        csrf = csrf_of(await (await root.get("/admin")).text())

        async def admin(slug: str, action: str) -> None:
            resp = await root.post(f"/admin/rooms/{slug}", data={"csrf": csrf, "action": action},
                                   allow_redirects=False)
            assert resp.status == 303 and resp.headers["Location"] == "/admin"

        await admin("ops", "archive")
        for tab in (bob_tab, carol_tab, root_tab):
            assert (await until(tab, lambda f: f.get("room_removed") == "ops"))[-1] == {"room_removed": "ops"}
        frames = await until(viewer, lambda f: "reload" in f or f.get("room_removed") == "ops")
        assert frames[-1] == {"reload": True}
        # A private room's archiving reaches its members' tabs only.
        await admin("board", "archive")
        assert (await until(root_tab, lambda f: f.get("room_removed") == "board"))[-1] == {"room_removed": "board"}
        await mark(chat, "bob")
        assert about(await before_marker(bob_tab), "board") == []

        await admin("ops", "unarchive")
        frame = await next_update(bob_tab, "ops")
        check_entry(frame, "ops", "/r/ops", "Ops", "rooms")
        assert frame["unread"] == 0
        await mark(chat, "carol")
        assert about(await before_marker(carol_tab), "ops") == []  # not in carol's sidebar
        await admin("board", "unarchive")
        check_entry(await next_update(root_tab, "board"), "board", "/r/board", "Board", "rooms")
        await mark(chat, "bob")
        assert about(await before_marker(bob_tab), "board") == []
        for ws in (bob_tab, carol_tab, viewer, root_tab):
            await ws.close()


# -- messages and DMs ---------------------------------------------------------------------------------


async def test_unread_and_a_dms_first_message_carry_the_entry_as_its_recipient_sees_it(chat: Chat) -> None:
    alice_h = await chat.bearer("alice")
    await chat.bearer("bob")
    alice, bob = await chat.browser("alice"), await chat.browser("bob")
    async with alice, bob:
        alice_tab, bob_tab = await open_tab(chat, alice, "general"), await open_tab(chat, bob, "general")
        resp = await chat.client.post("/api/v1/dms", json={"username": "bob"}, headers=alice_h)
        slug = (await resp.json())["room"]["slug"]
        assert slug == "alice+bob"
        await post(chat, alice_h, slug, "psst")
        unread = (await until(bob_tab, lambda f: f.get("unread") == slug))[-1]
        assert unread["kind"] == "dm" and unread["from"] == "alice" and unread["text"] == "psst"
        check_entry(unread, slug, "/dm/alice", "alice", "dms")
        assert unread["sort"] == "alice"
        # The author's other tabs list the conversation from its first message, by the other name.
        frame = await next_update(alice_tab, slug)
        check_entry(frame, slug, "/dm/bob", "bob", "dms")
        assert frame["sort"] == "bob" and frame["unread"] == 0
        await post(chat, alice_h, slug, "again")
        await mark(chat, "alice")
        assert about(await before_marker(alice_tab), slug) == []
        for ws in (alice_tab, bob_tab):
            await ws.close()


async def test_the_pages_data_sort_and_the_frames_keys_order_the_sidebar_alike(chat: Chat) -> None:
    alice_h = await chat.bearer("alice")
    for name in ("zoe", "al", "bob", "alicia"):
        await chat.bearer(name)
    alice = await chat.browser("alice")
    async with alice:
        tab = await open_tab(chat, alice, "general")
        lists = page_entries(await (await alice.get("/r/general")).text())
        rooms, dms = lists["room-list"], lists["dm-list"]
        assert hrefs(rooms) == ["/r/general"] and dms == []
        for slug, name, private in (("zed", "Zed", False), ("beta", "beta", False), ("gamma", "Gamma", True),
                                    ("alpha", "Alpha", False), ("aa", "aardvark", True), ("eclair", "Éclair", False),
                                    ("markup", MARKUP_NAME, False)):
            await create(chat, alice_h, slug, name, private)
            insert(rooms, await next_update(tab, slug))
        for peer in ("zoe", "al", "bob", "alicia"):
            resp = await chat.client.post("/api/v1/dms", json={"username": peer}, headers=alice_h)
            slug = (await resp.json())["room"]["slug"]
            if peer in ("al", "zoe"):  # from alice: her tab gets room_updated
                await post(chat, alice_h, slug, "hi")
                insert(dms, await next_update(tab, slug))
            else:  # to alice: her tab gets the unread frame
                await post(chat, {"Authorization": f"Bearer {await chat.token(peer)}"}, slug, "hi")
                insert(dms, (await until(tab, lambda f, s=slug: f.get("unread") == s))[-1])
        page = page_entries(await (await alice.get("/r/general")).text())
        assert hrefs(page["room-list"]) == hrefs(rooms) == [
            "/r/markup", "/r/alpha", "/r/beta", "/r/general", "/r/zed", "/r/eclair", "/r/aa", "/r/gamma"]
        assert hrefs(page["dm-list"]) == hrefs(dms) == ["/dm/al", "/dm/alicia", "/dm/bob", "/dm/zoe"]
        for listed in page.values():
            keys = [e["sort"] for e in listed]
            assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert [e["sort"] for e in page["room-list"]] == [e["sort"] for e in rooms]
        assert [e["sort"] for e in page["dm-list"]] == [e["sort"] for e in dms]
        await tab.close()
