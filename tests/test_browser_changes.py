"""Real-browser tests of conversations that change: editing, deleting and reacting from a
message's toolbar and from the keyboard, live in every open tab without a reload; a permalink's
page far back in history that loads the newer pages on scroll with no gap; the search box; and
changes made while a tab was offline, caught up on reconnect.

The same setup as test_browser.py: the real `chatd serve`, Debian's Chromium through
Playwright, alice and bob each in their own browser context, waiting expectations only (no
timed assertion), and a console that stays clean (site.watch: console errors and warnings,
page errors, CSP violations, HTTP errors).

A reaction that is only "." or ".." cannot be taken back from a browser: the API's address for
it, /api/v1/messages/{id}/reactions/{emoji}, is resolved by every URL parser (%2E%2E too) to
the message's own address, so the page refuses to add one rather than offer a toggle that would
send DELETE /api/v1/messages/{id}.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import test_contrast
from test_browser import MESSAGES, Site, browser, ids_on, make_site  # noqa: F401  (fixtures)
from test_browser_view import forgive_the_outage

from browser_helpers import axe_violations, message_by_text, message_id, send, wait_online, wait_until
from conftest import PASSWORD, run_cli

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect
pytestmark = pytest.mark.browser

FAST = {"CHATD_MESSAGES_PER_SECOND": "1000", "CHATD_MESSAGE_BURST": "1000"}


@pytest.fixture
def site(make_site) -> Site:  # noqa: F811
    return make_site()


def reaction(page: Any, mid: int, emoji: str) -> Any:
    return page.locator(f"#message-{mid} .reactions .reaction").filter(
        has=page.locator(f".e:text-is('{emoji}')"))


def toolbar_button(page: Any, mid: int, name: str) -> Any:
    """Point at the message (its toolbar shows) and find one of the toolbar's buttons."""
    msg = page.locator(f"#message-{mid}")
    msg.hover()
    return msg.get_by_role("group", name="Message actions").get_by_role("button", name=name)


def navigations(page: Any) -> int:
    return page.evaluate("performance.getEntriesByType('navigation').length")


# -- editing ----------------------------------------------------------------------------------------


def test_an_edit_from_the_toolbar_shows_live_in_both_tabs_and_up_edits_ones_last_message(site: Site) -> None:
    alice, bob = site.page("alice"), site.page("bob")
    send(alice, "the meeting is at 10")
    mid = message_id(bob, "the meeting is at 10", author="alice")
    expect(alice.locator(f"#message-{mid}")).to_have_attribute("data-id", str(mid))

    toolbar_button(alice, mid, "Edit message").click()
    box = alice.locator(f"#message-{mid} .editor textarea")
    expect(box).to_have_value("the meeting is at 10")  # the raw text, from the API
    expect(box).to_be_focused()
    box.fill("the meeting is at 11 <b>sharp</b>")
    box.press("Enter")
    for page in (alice, bob):
        expect(page.locator(f"#message-{mid} .body")).to_have_text("the meeting is at 11 <b>sharp</b>")
        expect(page.locator(f"#message-{mid} .body b")).to_have_count(0)  # text, never markup
        expect(page.locator(f"#message-{mid} .edited")).to_have_text("(edited)")
    expect(alice.locator(f"#message-{mid} .editor")).to_have_count(0)
    expect(alice.locator(f"#message-{mid}")).to_be_focused()  # the focus is back on the message

    # ↑ in the empty composer edits one's newest message; Escape cancels and changes nothing.
    composer = alice.locator("#composer textarea")
    composer.click()
    composer.press("ArrowUp")
    expect(box).to_be_focused()
    expect(box).to_have_value("the meeting is at 11 <b>sharp</b>")
    box.press("Shift+Enter")
    box.press_sequentially("no, 12")
    box.press("Escape")
    expect(alice.locator(f"#message-{mid} .editor")).to_have_count(0)
    expect(alice.locator(f"#message-{mid}")).to_be_focused()
    expect(alice.locator(f"#message-{mid} .body")).to_have_text("the meeting is at 11 <b>sharp</b>")

    # E on the focused message edits too; saving the text unchanged just closes the box.
    patches: list[str] = []
    alice.on("request", lambda r: patches.append(r.url) if r.method == "PATCH" else None)
    alice.locator(f"#message-{mid}").press("e")
    expect(box).to_be_focused()
    box.press("Enter")
    expect(alice.locator(f"#message-{mid} .editor")).to_have_count(0)
    assert patches == []

    # The open editor, like the rest of the page, passes axe.
    composer.click()
    composer.press("ArrowUp")
    expect(box).to_be_focused()
    assert axe_violations(alice) == []
    box.press("Escape")

    # Copy link: the permalink goes to the clipboard, and a notice says so.
    alice.context.grant_permissions(["clipboard-read", "clipboard-write"])
    toolbar_button(alice, mid, "Copy link to message").click()
    expect(alice.locator("#notice")).to_have_text("Link copied")
    assert alice.evaluate("navigator.clipboard.readText()") == f"{site.url}/m/{mid}"

    # bob may not edit or delete alice's message: neither button is offered, nor the keys.
    bob_msg = bob.locator(f"#message-{mid}")
    toolbar_button(bob, mid, "Add a reaction").wait_for()
    expect(bob_msg.get_by_role("button", name="Edit message")).to_be_hidden()
    expect(bob_msg.get_by_role("button", name="Delete message")).to_be_hidden()
    bob_msg.focus()
    bob_msg.press("e")
    expect(bob_msg.locator(".editor")).to_have_count(0)
    for page in (alice, bob):
        assert navigations(page) == 1
    assert site.watch.problems == []


# -- deleting ---------------------------------------------------------------------------------------


def test_a_deletion_asks_once_and_takes_the_message_out_of_both_tabs(site: Site) -> None:
    alice, bob = site.page("alice"), site.page("bob")
    for text in ("first of three", "second of three", "third of three"):
        send(alice, text)
    first, second, third = (message_id(bob, f"{n} of three", author="alice") for n in ("first", "second", "third"))
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    alice.once("dialog", accept)
    toolbar_button(alice, second, "Delete message").click()
    for page in (alice, bob):
        expect(page.locator(f"#message-{second}")).to_have_count(0)
        expect(page.locator(f"#message-{first}")).to_have_count(1)
        # The one after it is grouped under the first, as if the second had never been.
        expect(page.locator(f"#message-{third}")).to_have_class(re.compile(r"\bcont\b"))
    assert len(asked) == 1 and "Delete this message?" in asked[0], asked

    # From the keyboard: Delete on the focused message; declining keeps it.
    alice.once("dialog", lambda dialog: dialog.dismiss())
    alice.locator(f"#message-{third}").focus()
    alice.keyboard.press("Delete")
    wait_until(lambda: alice.locator(f"#message-{third}").count() == 1, "the message kept")
    alice.once("dialog", lambda dialog: dialog.accept())
    alice.locator(f"#message-{third}").focus()
    alice.keyboard.press("Backspace")
    for page in (alice, bob):
        expect(page.locator(f"#message-{third}")).to_have_count(0)
    expect(alice.locator(f"#message-{first}")).to_be_focused()  # the focus goes to a neighbour
    # A day with no message left loses its separator.
    alice.once("dialog", lambda dialog: dialog.accept())
    alice.keyboard.press("Delete")
    for page in (alice, bob):
        expect(page.locator(MESSAGES)).to_have_count(0)
        expect(page.locator("#messages .day")).to_have_count(0)

    # An administrator may delete anyone's message (and edit only their own).
    result = run_cli("adduser", "root", "--admin", "--password-stdin", db=site.db, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    send(bob, "a message by bob")
    by_bob = message_id(alice, "a message by bob", author="bob")
    root = site.page("root")
    expect(toolbar_button(root, by_bob, "Delete message")).to_be_visible()
    expect(root.locator(f"#message-{by_bob}").get_by_role("button", name="Edit message")).to_be_hidden()
    root.once("dialog", lambda dialog: dialog.accept())
    toolbar_button(root, by_bob, "Delete message").click()
    for page in (alice, bob, root):
        expect(page.locator(f"#message-{by_bob}")).to_have_count(0)
    for page in (alice, bob):
        assert navigations(page) == 1
    assert site.watch.problems == []


# -- reacting ---------------------------------------------------------------------------------------


def test_reactions_from_the_picker_and_the_pills_show_in_both_tabs_with_ones_own_pressed(site: Site) -> None:
    alice, bob = site.page("alice"), site.page("bob")
    send(alice, "shall we ship the release?")
    mid = message_id(bob, "shall we ship the release?", author="alice")

    toolbar_button(bob, mid, "Add a reaction").click()
    picker = bob.get_by_role("dialog", name="Add a reaction")
    expect(picker).to_be_visible()
    expect(picker.get_by_role("button", name="thumbs up")).to_be_focused()
    picker.get_by_role("button", name="thumbs up").click()
    expect(picker).to_be_hidden()
    # Any text as a reaction, from R on the focused message: the box takes up to 16 characters.
    bob.locator(f"#message-{mid}").focus()
    bob.keyboard.press("r")
    expect(picker).to_be_visible()
    assert axe_violations(bob) == []
    custom = picker.get_by_role("textbox", name=re.compile("Any reaction"))
    expect(custom).to_have_attribute("maxlength", "16")
    custom.fill("ship it")
    custom.press("Enter")
    expect(picker).to_be_hidden()
    for page in (alice, bob):
        expect(reaction(page, mid, "👍").locator(".n")).to_have_text("1")
        expect(reaction(page, mid, "ship it").locator(".n")).to_have_text("1")
    expect(reaction(bob, mid, "👍")).to_have_attribute("aria-pressed", "true")
    expect(reaction(bob, mid, "ship it")).to_have_attribute("aria-pressed", "true")
    expect(reaction(alice, mid, "👍")).to_have_attribute("aria-pressed", "false")

    # alice adds hers by clicking bob's pill; both are pressed in their own tab only.
    reaction(alice, mid, "👍").click()
    for page in (alice, bob):
        expect(reaction(page, mid, "👍").locator(".n")).to_have_text("2")
        expect(reaction(page, mid, "👍")).to_have_attribute("aria-pressed", "true")
    expect(reaction(alice, mid, "ship it")).to_have_attribute("aria-pressed", "false")

    # Clicking one's own takes it back.
    reaction(bob, mid, "👍").click()
    reaction(bob, mid, "ship it").click()
    for page in (alice, bob):
        expect(reaction(page, mid, "👍").locator(".n")).to_have_text("1")
        expect(reaction(page, mid, "ship it")).to_have_count(0)
    expect(reaction(bob, mid, "👍")).to_have_attribute("aria-pressed", "false")
    expect(reaction(alice, mid, "👍")).to_have_attribute("aria-pressed", "true")

    # Only dots would not do: /reactions/.. is resolved to the message itself by any URL parser,
    # so such a reaction could never be taken back from a browser (see the module's docstring).
    bob.locator(f"#message-{mid}").focus()
    bob.keyboard.press("r")
    custom.fill("..")
    custom.press("Enter")
    expect(bob.locator("#notice")).to_contain_text("cannot be taken back")
    expect(reaction(bob, mid, "..")).to_have_count(0)
    expect(bob.locator(f"#message-{mid} .body")).to_have_text("shall we ship the release?")

    # Escape closes the picker and the focus goes back to the message.
    bob.locator(f"#message-{mid}").focus()
    bob.keyboard.press("r")
    expect(picker).to_be_visible()
    bob.keyboard.press("Escape")
    expect(picker).to_be_hidden()
    expect(bob.locator(f"#message-{mid}")).to_be_focused()
    for page in (alice, bob):
        assert navigations(page) == 1
    assert site.watch.problems == []


# -- the reader's place -----------------------------------------------------------------------------

FIRST_ON_SCREEN = """() => {
  const box = document.getElementById('scroller').getBoundingClientRect();
  const m = [...document.querySelectorAll('#messages .msg[data-id]')]
    .find((el) => el.getBoundingClientRect().bottom > box.top + 1);
  return [m.id, m.getBoundingClientRect().top];
}"""
AT_END = """() => {
  const s = document.getElementById('scroller');
  return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
}"""


def test_changes_above_and_below_keep_the_readers_place_and_the_end_stays_the_end(make_site) -> None:  # noqa: F811
    site = make_site(env=FAST)
    api = site.api("alice")
    posted = [api.post_message("general", f"line {n}")["id"] for n in range(1, 41)]
    assert site.api("bob").call("POST", "/api/v1/rooms/general/read", {"message_id": posted[-1]})[0] == 204
    bob = site.page("bob", viewport={"width": 1000, "height": 600})
    expect(bob.locator(f"#message-{posted[-1]}")).to_be_attached()
    assert bob.evaluate(AT_END)
    # Stuck to the end: the last message growing keeps the reader at the end.
    long = "\n".join(f"now much longer, line {n}" for n in range(8))
    assert api.call("PATCH", f"/api/v1/messages/{posted[-1]}", {"body": long})[0] == 200
    expect(bob.locator(f"#message-{posted[-1]} .edited")).to_be_visible()
    assert bob.evaluate(AT_END)
    # Scrolled up: changes above what is on screen move nothing on screen.
    bob.evaluate("(id) => document.getElementById('message-' + id).scrollIntoView({block: 'start'})", posted[20])
    before = bob.evaluate(FIRST_ON_SCREEN)
    assert api.call("PATCH", f"/api/v1/messages/{posted[3]}", {"body": long})[0] == 200
    assert api.call("POST", f"/api/v1/messages/{posted[5]}/reactions", {"emoji": "👀"})[0] == 200
    assert api.call("DELETE", f"/api/v1/messages/{posted[7]}")[0] == 204
    expect(bob.locator(f"#message-{posted[7]}")).to_have_count(0)
    expect(bob.locator(f"#message-{posted[3]} .edited")).to_be_attached()
    expect(reaction(bob, posted[5], "👀")).to_be_attached()
    after = bob.evaluate(FIRST_ON_SCREEN)
    assert after[0] == before[0] and abs(after[1] - before[1]) < 2, (before, after)
    assert not bob.evaluate(AT_END)
    assert site.watch.problems == []

# -- a permalink far back ---------------------------------------------------------------------------


def room_ids(site: Site, room: str = "general") -> list[int]:
    """Every message id of the room, oldest first, from the API."""
    api, ids, before = site.api("alice"), [], ""
    while True:
        status, data = api.call("GET", f"/api/v1/rooms/{room}/messages?limit=200{before}")
        assert status == 200, (status, data)
        page = [m["id"] for m in data["messages"]]
        ids[:0] = page
        if len(page) < 200:
            return ids
        before = f"&before={page[0]}"


def test_a_permalink_opens_at_its_message_and_scrolling_down_loads_up_to_the_newest_without_a_gap(make_site) -> None:  # noqa: F811
    site = make_site(env=FAST)
    api = site.api("alice")
    posted = [api.post_message("general", f"history number {n}")["id"] for n in range(1, 121)]
    target = posted[30]
    bob = site.page("bob", f"/m/{target}")
    expect(bob).to_have_url(re.compile(rf"/r/general\?around={target}#message-{target}$"))
    current = bob.locator(f"#message-{target}")
    expect(current).to_have_attribute("aria-current", "true")
    expect(current).to_have_class(re.compile(r"\bcurrent\b"))
    expect(current).to_be_in_viewport()
    # Near the middle of the conversation's box, not at an edge.
    middle = bob.evaluate("""(id) => {
      const box = document.getElementById('scroller').getBoundingClientRect();
      const r = document.getElementById('message-' + id).getBoundingClientRect();
      return (r.top + r.bottom) / 2 - box.top - box.height / 2; }""", target)
    assert abs(middle) < 150, middle
    expect(bob.locator("#later")).to_be_attached()
    assert posted[-1] not in ids_on(bob)

    # Messages posted while the page stops short come with the newer pages, not below this one.
    frames: list[str] = []
    bob.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    bob.reload()  # (a socket opened after the listener)
    wait_online(bob)
    live = [api.post_message("general", f"posted while bob reads the past {n}")["id"] for n in range(2)]
    # (Playwright hands events over while it is called: the evaluate lets them in.)
    wait_until(lambda: bob.evaluate("1") and any(f'id="message-{live[-1]}"' in f for f in frames),
               "the live message on bob's socket")
    assert max(ids_on(bob)) < posted[-1], "a live message shown below a page far back"

    def at_newest() -> bool:
        bob.evaluate("document.getElementById('scroller').scrollTop = 1e9")
        return bob.locator("#later").count() == 0 and ids_on(bob)[-1] == live[-1]

    wait_until(at_newest, "the newest messages loaded", every=0.3)
    shown = ids_on(bob)
    everything = room_ids(site)
    assert shown[0] <= target
    assert shown == everything[everything.index(shown[0]):], "a gap or a duplicate"
    # Back at the newest, live messages come in at the end again.
    after = api.post_message("general", "now live again")["id"]
    expect(bob.locator(f"#message-{after}")).to_have_count(1)
    assert ids_on(bob)[-1] == after
    assert navigations(bob) == 1  # since the reload above

    # Writing from a page far back takes it to the newest messages, where the message is.
    bob.goto(f"/m/{posted[5]}")
    wait_online(bob)
    expect(bob.locator("#later")).to_be_attached()
    with bob.expect_navigation(url=re.compile(r"/r/general$")):
        send(bob, "replying from the past")
    wait_online(bob)
    expect(message_by_text(bob, "replying from the past", "bob")).to_have_count(1)
    assert site.watch.problems == []


# -- search -----------------------------------------------------------------------------------------


def test_slash_goes_to_the_search_box_and_results_mark_the_words_and_link_to_the_message(site: Site) -> None:
    alice_api = site.api("alice")
    found = alice_api.post_message("general", "the quarterly report is ready for review")["id"]
    alice_api.post_message("general", "lunch at noon?")
    bob = site.page("bob")
    message_id(bob, "lunch at noon?")
    bob.locator("#log").focus()  # "/" in a text field is a character
    bob.keyboard.press("/")
    box = bob.get_by_role("searchbox", name="Search messages")
    expect(box).to_be_focused()
    box.press_sequentially("quarterly")
    with bob.expect_navigation():
        box.press("Enter")
    expect(bob).to_have_url(re.compile(r"/search\?q=quarterly"))
    expect(bob.locator("#search-q")).to_be_focused()  # the search page's own box
    results = bob.locator("ol.results > li.result")
    expect(results).to_have_count(1)
    expect(results.locator("mark")).to_have_text(re.compile("quarterly", re.I))
    link = results.locator("a.result-link")
    expect(link).to_have_attribute("href", f"/m/{found}")
    for scheme in ("light", "dark"):
        bob.emulate_media(color_scheme=scheme)
        assert axe_violations(bob) == []
    link.click()
    expect(bob.locator(f"#message-{found}")).to_have_attribute("aria-current", "true")
    wait_online(bob)
    # Every other page of a signed-in person has the box too.
    bob.goto("/rooms")
    expect(bob.get_by_role("search", name="Search messages").get_by_role("searchbox")).to_be_visible()
    assert site.watch.problems == []


# -- offline ----------------------------------------------------------------------------------------


def test_changes_made_while_a_tab_was_offline_show_after_it_reconnects(site: Site) -> None:
    alice, bob = site.page("alice"), site.page("bob")
    send(alice, "an early version")
    send(alice, "to be deleted")
    edited = message_id(bob, "an early version", author="alice")
    deleted = message_id(bob, "to be deleted", author="alice")
    # A change seen before going offline: its id is above every message's, and the reconnect
    # resumes after it.
    status, _ = site.api("bob").call("POST", f"/api/v1/messages/{edited}/reactions", {"emoji": "👀"})
    assert status == 200
    expect(reaction(bob, edited, "👀").locator(".n")).to_have_text("1")
    sockets: list[str] = []
    bob.on("websocket", lambda ws: sockets.append(ws.url))
    # Offline emulation keeps an open loopback socket open: the server's restart closes it, and
    # bob's tab cannot come back until it is online again.
    bob.context.set_offline(True)
    site.restart()
    expect(bob.locator("#conn-state")).not_to_have_attribute("data-state", "online")
    wait_online(alice)
    api = site.api("alice")
    status, _ = api.call("PATCH", f"/api/v1/messages/{edited}", {"body": "the final version"})
    assert status == 200
    status, _ = api.call("POST", f"/api/v1/messages/{edited}/reactions", {"emoji": "🎉"})
    assert status == 200
    status, _ = api.call("DELETE", f"/api/v1/messages/{deleted}")
    assert status == 204
    expect(alice.locator(f"#message-{edited} .body")).to_have_text("the final version")
    expect(bob.locator(f"#message-{edited} .body")).to_have_text("an early version")
    bob.context.set_offline(False)
    wait_online(bob)
    expect(bob.locator(f"#message-{edited} .body")).to_have_text("the final version")
    expect(bob.locator(f"#message-{edited} .edited")).to_have_text("(edited)")
    expect(reaction(bob, edited, "🎉").locator(".n")).to_have_text("1")
    expect(bob.locator(f"#message-{deleted}")).to_have_count(0)
    since = int(re.search(r"[?&]since=(\d+)", sockets[-1]).group(1))
    assert since > deleted, sockets
    # Live again: the next change comes as it happens.
    status, _ = api.call("PATCH", f"/api/v1/messages/{edited}", {"body": "the final version, really"})
    assert status == 200
    expect(bob.locator(f"#message-{edited} .body")).to_have_text("the final version, really")
    assert navigations(bob) == 1
    forgive_the_outage(site)
    assert site.watch.problems == []


# -- colours ----------------------------------------------------------------------------------------

# What the new parts of a message put together, as tests/test_contrast.py checks the rest: the
# reactions' text and borders on every kind of message, the pressed one, the "(edited)" mark,
# a permalink's message and a search hit.
CHANGE_PAIRS = [
    ("reaction text", "fg", "panel", test_contrast.TEXT),
    ("pressed reaction text", "fg", ("accent", 0.14, "panel"), test_contrast.TEXT),
    ("pressed reaction count", "accent", ("accent", 0.14, "panel"), test_contrast.TEXT),
    *[(f"reaction and toolbar border on {bg}", "pill-line", bg, test_contrast.NON_TEXT)
      for bg in ("panel", "bg", "mine", "mention")],
    *[(f"pressed reaction border on {bg}", "accent", bg, test_contrast.NON_TEXT)
      for bg in ("panel", "mine", "mention")],
    ("pressed reaction border on its pill", "accent", ("accent", 0.14, "panel"), test_contrast.NON_TEXT),
    *[(f"(edited) on {bg}", "muted", bg, test_contrast.TEXT) for bg in ("panel", "mine", "mention")],
    *[(f"{fg} on a permalink's message", fg, "current", test_contrast.TEXT) for fg in ("fg", "muted", "accent")],
    ("a permalink's mark on its message", "accent", "current", test_contrast.NON_TEXT),
    ("a search hit", "fg", "mention", test_contrast.TEXT),
]


@pytest.mark.parametrize("pair", CHANGE_PAIRS, ids=[p[0] for p in CHANGE_PAIRS])
def test_the_colours_of_changing_messages_meet_wcag_contrast_in_light_and_dark(pair: tuple) -> None:
    what, fg, bg, minimum = pair
    schemes = test_contrast.custom_properties(test_contrast.CSS.read_text())
    for name, scheme in schemes.items():
        got = test_contrast.ratio(test_contrast.resolve(fg, scheme), test_contrast.resolve(bg, scheme))
        assert got >= minimum, f"{what} in {name}: {got:.2f}, need {minimum}"
