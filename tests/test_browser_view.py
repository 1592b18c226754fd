"""Real-browser tests of the conversation view people read all day: scroll-back that keeps
the place, days and grouping, the unread line and pill, the phone layout, the keyboard and
the accessibility tree, drafts, notices, and layouts that long names cannot break.

The same setup as test_browser.py (the real `chatd serve`, Debian's Chromium through
Playwright, waiting expectations only, a clean console), with smooth scrolling off so that
a wheel step moves the list at once.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_browser import MESSAGES, Site, ids_on, make_site  # noqa: F401  (fixtures)
from test_browser_rooms import sidebar_rooms

from browser_helpers import launch, message_id, send, sign_in, wait_online, wait_until
from conftest import PASSWORD, run_cli

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect
pytestmark = pytest.mark.browser

FAST = {"CHATD_MESSAGES_PER_SECOND": "1000", "CHATD_MESSAGE_BURST": "1000"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright, "--disable-smooth-scrolling")
        yield chromium
        chromium.close()


@pytest.fixture
def site(make_site) -> Site:  # noqa: F811
    return make_site()


def read_all(site: Site, who: str, room: str, upto: int) -> None:
    status, _ = site.api(who).call("POST", f"/api/v1/rooms/{room}/read", {"message_id": upto})
    assert status == 204


def unread_of(site: Site, who: str, room: str) -> int:
    status, data = site.api(who).call("GET", "/api/v1/rooms")
    assert status == 200
    return next(r["unread"] for r in data["rooms"] if r["slug"] == room)


def restamp(site: Site, stamps: dict[int, float]) -> None:
    """Give messages other creation times, with the server stopped (the API has no past)."""
    port = site.server.port
    assert site.server.terminate() == 0
    with sqlite3.connect(site.db) as db:
        db.executemany("UPDATE messages SET created_at = ? WHERE id = ?", [(t, i) for i, t in stamps.items()])
    site.server = site.start_server().start(port=port)


def forgive_the_outage(site: Site) -> None:
    """The console's complaints about a server this test stopped on purpose."""
    site.watch.problems = [p for p in site.watch.problems
                           if not re.search("ERR_CONNECTION_REFUSED|WebSocket|ws:error", p)]


# -- 1. scroll-back --------------------------------------------------------------------------------

# Every fetch of an older page records the first message on screen and its top when the
# fetch starts; when the page has been put in, the same message's top is recorded again.
ANCHOR_PROBE = """
  window.__loads = [];
  const fetch0 = window.fetch;
  window.fetch = function (url, ...rest) {
    if (String(url).includes("/history")) {
      const box = document.getElementById("scroller").getBoundingClientRect();
      const first = [...document.querySelectorAll(".msg[data-id]")]
        .find((m) => m.getBoundingClientRect().bottom > box.top);
      const load = { url: String(url), id: first.id, top: first.getBoundingClientRect().top, after: null };
      window.__loads.push(load);
      new MutationObserver((_, observer) => {
        load.after = document.getElementById(load.id).getBoundingClientRect().top;
        observer.disconnect();
      }).observe(document.getElementById("earlier"), { childList: true });
    }
    return fetch0.call(this, url, ...rest);
  };
"""


def test_scrolling_back_with_the_wheel_loads_each_page_once_and_keeps_the_place(make_site) -> None:  # noqa: F811
    site = make_site(env=FAST)
    api = site.api("alice")
    posted = [api.post_message("general", f"message number {n}\nwith a second line")["id"] for n in range(1, 501)]
    read_all(site, "bob", "general", posted[-1])
    context = site.browser.new_context(base_url=site.url, viewport={"width": 1000, "height": 700})
    site.contexts.append(context)
    site.watch.attach_context(context)
    context.add_init_script(ANCHOR_PROBE)
    bob = context.new_page()
    sign_in(bob, "bob", PASSWORD)
    wait_online(bob)
    expect(bob.locator(MESSAGES)).to_have_count(50)
    bob.mouse.move(500, 300)
    for _ in range(2000):
        if bob.locator(".older.start").count():
            break
        bob.mouse.wheel(0, -250)
        # Two frames: the step's scroll and intersection callbacks have run (a load has started).
        bob.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
        # Wait for any load the step started to be put in before the next step.
        wait_until(lambda: bob.evaluate("window.__loads.every((l) => l.after !== null)"), "a page to go in")
    expect(bob.locator(".older.start")).to_have_text("This is the start of #general.")
    loads = bob.evaluate("window.__loads")
    urls = [load["url"] for load in loads]
    # 450 older messages, 50 a page, each page once; a full last page asks once more (and gets the start).
    assert len(urls) == 10 and len(set(urls)) == 10, urls
    for load in loads:
        assert abs(load["after"] - load["top"]) < 20, load  # less than a line
    assert ids_on(bob) == posted
    assert site.watch.problems == []


# The next Tab starts from the top of the page, as after a page load.
TOP_OF_PAGE = "document.body.tabIndex = -1; document.body.focus(); document.body.removeAttribute('tabindex')"


def test_moving_focus_into_the_list_loads_nothing_and_the_composer_is_near(make_site) -> None:  # noqa: F811
    site = make_site(env=FAST)
    api = site.api("alice")
    posted = [api.post_message("general", f"see https://example.com/{n}")["id"] for n in range(1, 121)]
    read_all(site, "bob", "general", posted[-1])
    bob = site.page("bob")
    history = []
    bob.on("request", lambda r: history.append(r.url) if "/history" in r.url else None)
    # The composer has the focus when the room opens.
    expect(bob.locator("#composer textarea")).to_be_focused()
    # From the top of the page, the skip link is the first stop and goes to the composer.
    bob.evaluate(TOP_OF_PAGE)
    bob.keyboard.press("Tab")
    expect(bob.locator("a.skip")).to_be_focused()
    bob.keyboard.press("Enter")
    expect(bob.locator("#composer textarea")).to_be_focused()
    # Without it, the composer is a few stops away, not one per author link.
    bob.evaluate(TOP_OF_PAGE)
    presses = 0
    while presses < 40 and not bob.evaluate("document.activeElement.name === 'body'"):
        bob.keyboard.press("Tab")
        presses += 1
    assert presses <= 12, presses
    # Into the list and up through it with the arrow keys: the place moves, nothing loads at once.
    bob.keyboard.press("Shift+Tab")
    expect(bob.locator("#log")).to_be_focused()
    bob.keyboard.press("ArrowUp")
    expect(bob.locator(f"#message-{posted[-1]}")).to_be_focused()
    bob.keyboard.press("ArrowUp")
    expect(bob.locator(f"#message-{posted[-2]}")).to_be_focused()
    bob.keyboard.press("Escape")
    expect(bob.locator("#composer textarea")).to_be_focused()
    bob.wait_for_timeout(300)  # a load would have been asked for by now; none may be
    assert history == []
    assert site.watch.problems == []


# -- 2. days and grouping --------------------------------------------------------------------------------

def test_days_times_and_groups_follow_the_readers_zone_on_pages_scroll_back_and_live(make_site) -> None:  # noqa: F811
    site = make_site(env={**FAST, "CHATD_HISTORY_PAGE": "4"})
    alice, bob_api = site.api("alice"), site.api("bob")
    zone = ZoneInfo("Pacific/Auckland")
    now = time.time()
    today = dt.datetime.fromtimestamp(now, zone).replace(hour=0, minute=0, second=0, microsecond=0)
    plan = [  # (who, local time) oldest first
        (alice, today - dt.timedelta(days=3) + dt.timedelta(hours=9)),
        (alice, today - dt.timedelta(days=3) + dt.timedelta(hours=9, minutes=1)),
        (bob_api, today - dt.timedelta(days=3) + dt.timedelta(hours=9, minutes=2)),
        (alice, today - dt.timedelta(days=1) + dt.timedelta(hours=23, minutes=50)),
        (alice, today + dt.timedelta(minutes=2)),  # after midnight: a new day, so a new header
        (bob_api, today + dt.timedelta(minutes=3)),
        (bob_api, today + dt.timedelta(minutes=40)),  # same author, much later: a new header
    ]
    ids = [who.post_message("general", f"planned {n}")["id"] for n, (who, _) in enumerate(plan)]
    stamps = {i: min(when.timestamp(), now - 60) for i, (_, when) in zip(ids, plan, strict=True)}
    if max(stamps.values()) < max(w.timestamp() for _, w in plan):
        pytest.skip("runs within 41 minutes after midnight in Auckland: the plan would be in the future")
    restamp(site, stamps)
    read_all(site, "bob", "general", ids[-1])
    bob = site.page("bob", timezone_id="Pacific/Auckland", locale="en-GB", viewport={"width": 1000, "height": 500})
    # Scroll back to the start (4 a page), so that every message went through a page load.
    wait_until(lambda: bob.evaluate("document.getElementById('scroller').scrollTop = 0, "
                                    "document.querySelector('.older.start') !== null"), "the start")
    expect(bob.locator(MESSAGES)).to_have_count(len(ids))
    first = dt.datetime.fromtimestamp(stamps[ids[0]], zone)
    expected_days = [first.strftime("%A %-d %B"), "Yesterday", "Today"]
    assert bob.eval_on_selector_all(".day", "els => els.map(e => e.textContent)") == expected_days
    # Each day separator sits right above the first message of its day.
    assert bob.eval_on_selector_all(".day + .msg", "els => els.map(e => Number(e.dataset.id))") == \
        [ids[0], ids[3], ids[4]]
    grouped = bob.eval_on_selector_all(MESSAGES, "els => els.map(e => e.classList.contains('cont'))")
    assert grouped == [False, True, False, False, False, False, False]
    times = bob.eval_on_selector_all(f"{MESSAGES} time [aria-hidden=true]", "els => els.map(e => e.textContent)")
    assert times == [dt.datetime.fromtimestamp(stamps[i], zone).strftime("%-H:%M") for i in ids]
    full = bob.locator(f"#message-{ids[0]} time")
    expect(full).to_have_attribute("title", re.compile(first.strftime("%A, %-d %B %Y at %H:%M")))
    # Screen readers get the full date and time (it is in the message's accessible name).
    expect(bob.get_by_role("article", name=re.compile(re.escape(first.strftime("%A, %-d %B %Y"))))).to_have_count(3)
    # Live: bob's last message is long ago, so the next starts a header; the one after joins it.
    send(bob, "live one")
    live_one = message_id(bob, "live one", "bob")
    send(bob, "live two")
    live_two = message_id(bob, "live two", "bob")
    expect(bob.locator(f"#message-{live_one}")).not_to_have_class(re.compile(r"\bcont\b"))
    expect(bob.locator(f"#message-{live_two}")).to_have_class(re.compile(r"\bcont\b"))
    assert bob.locator(".day").count() == 3  # still today
    # The grouped message keeps its author and time for screen readers.
    expect(bob.get_by_role("article", name=re.compile(r"^bob .*live two$"))).to_have_count(1)
    assert site.watch.problems == []


# -- 3. unread ------------------------------------------------------------------------------------------------

def test_opening_a_room_shows_the_new_messages_line_and_reads_only_what_is_seen(make_site) -> None:  # noqa: F811
    site = make_site(env=FAST)
    api = site.api("alice")
    posted = [api.post_message("general", f"catch up {n}")["id"] for n in range(1, 61)]
    read_all(site, "bob", "general", posted[17])  # 42 unread
    bob = site.page("bob", viewport={"width": 1000, "height": 600})
    line = bob.locator("#unread-line")
    expect(line).to_have_text("New messages")
    assert bob.evaluate("document.getElementById('unread-line').nextElementSibling.id") == f"message-{posted[18]}"
    expect(line).to_be_in_viewport()
    expect(bob.locator(f"#message-{posted[18]}")).to_be_in_viewport()
    # What is below the screen is not read yet; the pill says how much there is.
    pill = bob.locator("#new-pill")
    expect(pill).to_have_text(re.compile(r"^\d+ new messages ↓$"))
    wait_until(lambda: 0 < unread_of(site, "bob", "general") < 42, "the read mark to cover what is on screen")
    pill.click()
    expect(bob.locator(f"#message-{posted[-1]}")).to_be_in_viewport()
    wait_until(lambda: unread_of(site, "bob", "general") == 0, "everything to be read at the end")
    expect(pill).to_be_hidden()
    # Scrolled up, arriving messages wait below under the pill and stay unread.
    bob.mouse.move(500, 300)
    for _ in range(8):
        bob.mouse.wheel(0, -400)
    expect(bob.locator(f"#message-{posted[-1]}")).not_to_be_in_viewport()
    for n in range(3):
        api.post_message("general", f"while away {n}")
    expect(pill).to_have_text("3 new messages ↓")
    assert unread_of(site, "bob", "general") == 3
    line_next = bob.evaluate("document.getElementById('unread-line').nextElementSibling.textContent")
    assert "while away 0" in line_next
    pill.click()
    wait_until(lambda: unread_of(site, "bob", "general") == 0, "the read mark to move once they are seen")
    assert site.watch.problems == []


# -- 4. phone ------------------------------------------------------------------------------------------

PHONE = {"viewport": {"width": 390, "height": 800}, "is_mobile": True, "has_touch": True}


def test_a_phone_shows_the_room_name_unread_total_and_connection_without_the_drawer(make_site) -> None:  # noqa: F811
    site = make_site(env=FAST)
    root = site.api("alice")
    root.create_room("design", "Design team reviews")
    phone = site.page("bob", "/r/design", **PHONE)
    title = phone.locator(".room-header h1")
    expect(title).to_have_text("#Design team reviews")
    assert phone.evaluate("(h => h.scrollWidth <= h.clientWidth)(document.querySelector('.room-header h1'))")
    expect(phone.locator("#notify")).to_be_hidden()  # in the room menu, not in the header
    # Unread elsewhere shows on the menu button.
    root.post_message("general", "hello @bob")
    total = phone.locator("#unread-total")
    expect(total).to_have_text("1")
    expect(total).to_be_in_viewport()
    expect(phone.locator("#menu")).to_have_attribute("aria-label", "Conversations, 1 unread")
    # A lost connection shows over the conversation, not only in the closed drawer.
    port = site.server.port
    assert site.server.terminate() == 0
    banner = phone.locator("#conn-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Reconnecting")
    expect(banner).to_be_in_viewport()
    site.server = site.start_server().start(port=port)
    wait_online(phone)
    expect(banner).to_be_hidden()
    forgive_the_outage(site)
    assert site.watch.problems == []


def test_the_phone_drawer_is_a_modal_for_the_keyboard(site: Site) -> None:
    phone = site.page("bob", **PHONE)
    # Closed: nothing in it takes the focus.
    for _ in range(15):
        phone.keyboard.press("Tab")
        assert not phone.evaluate("document.getElementById('sidebar').contains(document.activeElement)")
    phone.locator("#menu").focus()
    phone.keyboard.press("Enter")
    expect(phone.locator("#sidebar")).to_be_in_viewport(ratio=0.95)
    expect(phone.locator("#menu")).to_have_attribute("aria-expanded", "true")
    assert phone.evaluate("document.getElementById('sidebar').contains(document.activeElement)")
    for _ in range(25):  # the focus goes round inside
        phone.keyboard.press("Tab")
        assert phone.evaluate("document.getElementById('sidebar').contains(document.activeElement)")
    phone.keyboard.press("Escape")
    expect(phone.locator("#sidebar")).not_to_be_in_viewport()
    expect(phone.locator("#menu")).to_be_focused()
    expect(phone.locator("#menu")).to_have_attribute("aria-expanded", "false")
    assert site.watch.problems == []


# -- 5. keyboard and screen reader ----------------------------------------------------------------------

def test_alt_arrows_move_between_rooms_and_escape_closes_the_room_menu(site: Site) -> None:
    alice = site.api("alice")
    for slug in ("alpha", "beta"):
        alice.create_room(slug, slug.title())
    bob = site.page("bob", "/r/alpha")
    bob.goto("/r/beta")
    bob.goto("/r/general")
    wait_online(bob)
    links = bob.eval_on_selector_all("#room-list a", "els => els.map(a => a.getAttribute('href'))")
    assert links == ["/r/alpha", "/r/beta", "/r/general"]
    with bob.expect_navigation():
        bob.keyboard.press("Alt+ArrowUp")
    assert bob.url.endswith("/r/beta")
    wait_online(bob)
    with bob.expect_navigation():
        bob.keyboard.press("Alt+ArrowDown")
    assert bob.url.endswith("/r/general")
    wait_online(bob)
    bob.locator("#room-menu summary").click()
    expect(bob.locator("#room-menu .menu-items")).to_be_visible()
    bob.keyboard.press("Escape")
    expect(bob.locator("#room-menu .menu-items")).to_be_hidden()
    expect(bob.locator("#room-menu summary")).to_be_focused()
    assert site.watch.problems == []


def test_the_accessibility_tree_names_messages_badges_and_announces_only_connection(site: Site) -> None:
    alice_api = site.api("alice")
    alice_api.create_room("design", "Design team")
    bob = site.page("bob", "/r/design")
    bob.goto("/r/general")
    wait_online(bob)
    alice_api.post_message("general", "hello there")
    alice_api.post_message("design", "a mock-up")
    alice_api.post_message("design", "another")
    expect(bob.locator('[data-unread="design"]')).to_have_text("2")
    tree = bob.locator("body").aria_snapshot()
    assert re.search(r'log "Messages in #general"', tree), tree
    assert re.search(r'- article "alice .*hello there"', tree), tree
    assert re.search(r'- link "# Design team 2 unread"', tree), tree
    assert "aria-live" not in (bob.locator("#online").get_attribute("aria-live") or "")
    assert bob.locator("#log").get_attribute("role") == "log"
    assert bob.locator("#messages").get_attribute("aria-live") is None
    # Someone coming online is shown, not announced.
    run_cli("adduser", "carol", "--password-stdin", db=site.db, stdin=PASSWORD + "\n")
    carol_page = site.page("carol")
    expect(bob.locator("#online")).to_contain_text("carol")
    assert bob.locator("#announcer").text_content() == ""
    carol_page.close()
    # A lost connection is announced once, and so is its return.
    port = site.server.port
    assert site.server.terminate() == 0
    expect(bob.locator("#announcer")).to_have_text("Connection lost. Reconnecting…")
    site.server = site.start_server().start(port=port)
    wait_online(bob)
    expect(bob.locator("#announcer")).to_have_text("Connected again.")
    forgive_the_outage(site)
    assert site.watch.problems == []


# -- 7. robust layout, drafts, notices ---------------------------------------------------------------------

LONG_USER = "a" * 32
LONG_ROOM = "Quarterly planning for the platform infrastructure and operations"[:64]


def test_long_names_never_cover_controls_and_show_in_full_on_hover(make_site) -> None:  # noqa: F811
    site = make_site("alice", LONG_USER, env=FAST)
    site.api("alice").create_room("q-planning", LONG_ROOM)
    page = site.page(LONG_USER, "/r/q-planning", viewport={"width": 1100, "height": 700})
    site.page("alice")  # online, next to the long name
    sign_out = page.get_by_role("button", name="Sign out")
    expect(sign_out).to_be_in_viewport()
    hit = page.evaluate("""() => {
      const b = [...document.querySelectorAll('button')].find(x => x.textContent === 'Sign out');
      const r = b.getBoundingClientRect();
      return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === b; }""")
    assert hit, "something covers Sign out"
    who = page.locator(".me .who")
    expect(who).to_have_attribute("title", LONG_USER)
    assert page.evaluate("(e => getComputedStyle(e).textOverflow)(document.querySelector('.me .who'))") == "ellipsis"
    header = page.locator(".room-header h1")
    expect(header).to_have_attribute("title", f"#{LONG_ROOM}")
    name = page.locator(f"#online a[href='/dm/{LONG_USER}']")
    expect(name).to_have_attribute("title", LONG_USER)
    labels = (".room-header h1", f"#online a[href='/dm/{LONG_USER}'] .label", "#room-list a[aria-current] .label")
    for selector in labels:
        box = page.evaluate("s => { const e = document.querySelector(s); const c = getComputedStyle(e);"
                            " return [c.textOverflow, e.getBoundingClientRect().right]; }", selector)
        assert box[0] == "ellipsis", (selector, box)
    # Nothing sticks out of the header: the menu button stays on screen and clickable.
    expect(page.locator("#room-menu summary")).to_be_in_viewport()
    assert site.watch.problems == []


def test_drafts_survive_reloads_and_room_switches_and_go_when_sent(site: Site) -> None:
    site.api("alice").create_room("other", "Other")
    bob = site.page("bob")
    box = bob.locator("#composer textarea")
    box.fill("half a thought")
    bob.wait_for_timeout(400)  # the draft is saved a moment after typing stops
    bob.goto("/r/other")
    wait_online(bob)
    expect(bob.locator("#composer textarea")).to_have_value("")
    bob.locator("#composer textarea").fill("elsewhere")
    bob.goto("/r/general")
    wait_online(bob)
    expect(box).to_have_value("half a thought")
    bob.reload()
    wait_online(bob)
    expect(box).to_have_value("half a thought")
    box.press("Enter")
    message_id(bob, "half a thought", "bob")
    bob.reload()
    wait_online(bob)
    expect(box).to_have_value("")
    bob.goto("/r/other")
    wait_online(bob)
    expect(bob.locator("#composer textarea")).to_have_value("elsewhere")
    assert site.watch.problems == []


def test_notices_replace_each_other_instead_of_stacking(make_site) -> None:  # noqa: F811
    site = make_site(env={"CHATD_MESSAGES_PER_SECOND": "0.2", "CHATD_MESSAGE_BURST": "1"})
    bob = site.page("bob")
    for n in range(4):
        send(bob, f"quick {n}")
    expect(bob.locator(".msg.failed")).to_have_count(3)
    expect(bob.locator(".toast:visible")).to_have_count(1)
    expect(bob.locator("#notice")).to_contain_text(re.compile("rate|fast|slow", re.I))
    site.watch.problems = [p for p in site.watch.problems if "429" not in p]
    assert site.watch.problems == []


# -- 6. the live sidebar ---------------------------------------------------------------------------------

def test_the_sidebar_follows_rooms_created_joined_left_and_added_in_sorted_place(site: Site) -> None:
    alice = site.api("alice")
    alice.create_room("zebra", "Zebra")
    bob = site.page("bob")  # one tab stays on general throughout
    assert sidebar_rooms(bob) == ["/r/general"]
    # Added to a private room: it appears, after the public rooms.
    alice.create_room("ops", "Ops", private=True)
    alice.add_member("ops", "bob")
    expect(bob.locator("#room-list a[href='/r/ops']")).to_have_count(1)
    assert sidebar_rooms(bob) == ["/r/general", "/r/ops"]
    # A room bob creates in another tab appears here too, in its place by name.
    other = site.page("bob")
    other.goto("/rooms/new")
    other.fill("input[name=slug]", "aardvark")
    other.fill("input[name=name]", "Aardvark")
    with other.expect_navigation():
        other.get_by_role("button", name=re.compile("Create")).click()
    expect(bob.locator("#room-list a[href='/r/aardvark']")).to_have_count(1)
    assert sidebar_rooms(bob) == ["/r/aardvark", "/r/general", "/r/ops"]
    # News in a public room bob has not joined brings it in, in its place, with its count.
    alice.create_room("middle", "Middle")
    alice.post_message("middle", "news")
    expect(bob.locator('[data-unread="middle"]')).to_have_text("1")
    assert sidebar_rooms(bob) == ["/r/aardvark", "/r/general", "/r/middle", "/r/ops"]
    # Joining in the other tab, then leaving there: here it comes and goes at once.
    other.goto("/r/zebra")
    wait_online(other)
    expect(bob.locator("#room-list a[href='/r/zebra']")).to_have_count(1)
    assert sidebar_rooms(bob) == ["/r/aardvark", "/r/general", "/r/middle", "/r/zebra", "/r/ops"]
    other.locator("#room-menu summary").click()
    with other.expect_navigation():
        other.get_by_role("button", name="Leave #Zebra").click()
    expect(bob.locator("#room-list a[href='/r/zebra']")).to_have_count(0)
    # ...and its next message does not bring it back.
    alice.post_message("zebra", "still here")
    alice.post_message("general", "marker")
    message_id(bob, "marker", "alice")
    expect(bob.locator("#room-list a[href='/r/zebra']")).to_have_count(0)
    # Leaving the private room (through the API, from elsewhere): gone.
    status, _ = site.api("bob").call("DELETE", "/api/v1/rooms/ops/members/bob")
    assert status == 204
    expect(bob.locator("#room-list a[href='/r/ops']")).to_have_count(0)
    assert site.watch.problems == []
