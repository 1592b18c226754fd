"""Real-browser tests: the real `chatd serve` subprocess driven by headless Chromium.

Debian's Chromium (/usr/bin/chromium, `apt-get install chromium`) through Playwright's sync
API; Playwright's own browser download is never used. One Chromium per module, a fresh
browser context (cookies, storage) per user. No timed assertions: every check is one of
Playwright's waiting expectations, or a poll with a generous deadline that ends as soon as
its condition holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from browser_helpers import (
    CHROMIUM,
    NOT_ONLINE,
    WAIT_MS,
    Api,
    Watch,
    launch,
    message_by_text,
    message_id,
    new_user_page,
    send,
    sign_in,
    wait_online,
    wait_until,
)
from conftest import PASSWORD, Server, run_cli

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package (apt-get install chromium)",
                allow_module_level=True)

pytestmark = pytest.mark.browser
expect.set_options(timeout=WAIT_MS)

MESSAGES = "#messages article[id^='message-']"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@dataclass
class Site:
    """A running `chatd serve` with alice and bob, and the browser contexts opened on it."""

    server: Server
    db: Path
    browser: Any
    start_server: Callable[..., Server]
    contexts: list[Any] = field(default_factory=list)
    watch: Watch = field(default_factory=Watch)

    @property
    def url(self) -> str:
        return self.server.url

    def page(self, username: str, path: str = "/r/general", **context_options: Any) -> Any:
        page = new_user_page(self.browser, self.url, username, PASSWORD, path, watch=self.watch,
                             **context_options)
        self.contexts.append(page.context)
        return page

    def api(self, username: str) -> Api:
        result = run_cli("token", username, db=self.db)
        assert result.returncode == 0, result.stderr
        return Api(self.url, result.stdout.strip())

    def restart(self) -> None:
        """SIGTERM (which must exit 0), then a new server on the same port and database."""
        port = self.server.port
        assert self.server.terminate() == 0, self.server.stderr()
        self.server = self.start_server().start(port=port)


def add_user(db: Path, name: str) -> None:
    result = run_cli("adduser", name, "--password-stdin", db=db, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def make_site(browser: Any, server_factory: Callable[..., Server], tmp_path: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def make(*users: str, env: dict | None = None) -> Site:
        db = tmp_path / "chatd.db"
        for name in users or ("alice", "bob"):
            add_user(db, name)
        # Quiet logs: nobody reads the server's stderr pipe while the test runs.
        start = lambda: server_factory("--log-level", "warning", db=db, env=env)  # noqa: E731
        site = Site(start().start(), db, browser, start)
        sites.append(site)
        return site

    yield make
    for site in sites:
        for context in site.contexts:
            context.close()


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()


def ids_on(page: Any) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all(MESSAGES, "els => els.map(e => e.dataset.id)")]


# -- 1. live chat ---------------------------------------------------------------------------


@pytest.mark.browser
def test_message_arrives_live_once_and_is_rendered_safely(site: Site) -> None:
    alice, bob = site.page("alice"), site.page("bob")
    box = alice.locator("#composer textarea")

    send(alice, "hello bob, this is alice")
    first = message_id(bob, "hello bob, this is alice", author="alice")
    expect(box).to_have_value("")
    expect(box).to_be_focused()
    # The sender sees the stored message in place of the pending copy.
    expect(alice.locator(f"#message-{first}")).to_have_attribute("data-author", "alice")
    expect(alice.locator("#messages .pending")).to_have_count(0)

    # Shift+Enter is a new line, kept in the message.
    send(alice, "line one\nline two")
    multi = message_id(bob, "line two", author="alice")
    expect(bob.locator(f"#message-{multi} .body")).to_have_text("line one\nline two", use_inner_text=True)
    assert bob.locator(f"#message-{multi} .body").inner_text() == "line one\nline two"

    # URLs become links that neither leak the opener nor pass on reputation.
    url = "https://example.com/docs/page?a=1&b=2"
    send(alice, f"read {url} please")
    link = bob.locator(f"#message-{message_id(bob, 'please', author='alice')} .body a")
    expect(link).to_have_attribute("href", url)
    rel = (link.get_attribute("rel") or "").split()
    assert "noopener" in rel and "nofollow" in rel, rel

    # HTML in a message is text, never markup.
    evil = '<b>bold</b> <img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> end'
    send(alice, evil)
    evil_id = message_id(bob, "end", author="alice")
    for page in (alice, bob):
        body = page.locator(f"#message-{evil_id} .body")
        expect(body).to_have_text(evil)
        assert body.locator("b, img, script").count() == 0
        assert page.evaluate("window.__xss") is None

    # Exactly once, for reader and sender, now that later messages have arrived in order.
    for page in (alice, bob):
        for mid in (first, multi, evil_id):
            expect(page.locator(f"#message-{mid}")).to_have_count(1)
        assert ids_on(page) == sorted(ids_on(page))
        assert len(set(ids_on(page))) == len(ids_on(page))
    assert bob.evaluate("performance.getEntriesByType('navigation').length") == 1


# -- 2. a server restart ------------------------------------------------------------------------


@pytest.mark.browser
def test_pages_reconnect_and_catch_up_after_sigterm_restart(site: Site) -> None:
    alice, bob = site.page("alice"), site.page("bob")
    api = site.api("alice")
    send(alice, "before the restart")
    before = message_id(bob, "before the restart")
    bob.evaluate("window.__sameDocument = true")

    # Bob's tab stays unable to reconnect until we say so, so that what is posted in the
    # meantime can only reach it through the `since` replay.
    bob.context.set_offline(True)
    site.restart()  # asserts that SIGTERM exits 0
    for page in (alice, bob):
        expect(page.locator("#conn-state")).to_have_attribute("data-state", re.compile(NOT_ONLINE))

    missed = api.post_message("general", "posted while bob was reconnecting")
    send(bob, "written while offline")  # shown as pending, sent once the tab is back
    expect(bob.locator("#messages .pending")).to_have_count(1)
    wait_online(alice)  # alice's tab reconnects by itself
    expect(alice.locator(f"#message-{missed['id']}")).to_have_count(1)
    expect(bob.locator("#conn-state")).not_to_have_attribute("data-state", "online")

    bob.context.set_offline(False)
    wait_online(bob)  # bob's tab keeps retrying and gets back in by itself
    expect(bob.locator(f"#message-{missed['id']}")).to_have_count(1)
    offline = message_id(alice, "written while offline", author="bob")
    expect(bob.locator(f"#message-{offline}")).to_have_count(1)
    expect(bob.locator("#conn-state")).to_have_text("live")
    assert bob.evaluate("window.__sameDocument") is True  # no reload

    send(alice, "after the restart")
    after = message_id(bob, "after the restart", author="alice")
    expect(alice.locator("#composer textarea")).to_have_value("")
    for page in (alice, bob):
        for mid in (before, missed["id"], offline, after):
            expect(page.locator(f"#message-{mid}")).to_have_count(1)
        expect(page.locator("#messages .pending")).to_have_count(0)
        ids = ids_on(page)
        assert ids == sorted(set(ids)), ids


@pytest.mark.browser
def test_message_posted_right_after_restart_shows_once(site: Site) -> None:
    """The plain restart: whether the API post lands before or after the tabs reconnect, once."""
    alice, bob = site.page("alice"), site.page("bob")
    api = site.api("alice")
    site.restart()
    missed = api.post_message("general", "first words after the restart")
    for page in (alice, bob):
        wait_online(page)
        expect(page.locator(f"#message-{missed['id']}")).to_have_count(1)
    send(bob, "bob is back")
    back = message_id(alice, "bob is back", author="bob")
    for page in (alice, bob):
        expect(page.locator(f"#message-{back}")).to_have_count(1)
        expect(page.locator(f"#message-{missed['id']}")).to_have_count(1)


# -- 3. unread counts ---------------------------------------------------------------------------


@pytest.mark.browser
def test_dm_and_room_unread_badges_rise_live_and_clear(site: Site) -> None:
    bob = site.page("bob")
    bob_other_tab = site.page("bob")
    alice = site.page("alice", "/dm/bob")
    dm_badge = '[data-unread="alice+bob"]'
    for page in (bob, bob_other_tab):
        expect(page.locator(dm_badge)).to_have_count(0)  # an empty DM is not listed

    send(alice, "psst, bob")
    for page in (bob, bob_other_tab):
        expect(page.locator(f"#dm-list {dm_badge}")).to_have_text("1")
        expect(page.locator("#dm-list a[href='/dm/alice']")).to_be_visible()
    assert bob.evaluate("performance.getEntriesByType('navigation').length") == 1

    bob.click("#dm-list a[href='/dm/alice']")
    bob.wait_for_url("**/dm/alice")
    wait_online(bob)
    expect(message_by_text(bob, "psst, bob", author="alice")).to_have_count(1)
    expect(bob.locator(dm_badge)).to_have_text("")
    # Reading it in one tab clears it in the others...
    expect(bob_other_tab.locator(dm_badge)).to_have_text("")
    # ...because the read mark is stored: the API and a fresh page agree.
    bob_api = site.api("bob")
    wait_until(lambda: bob_api.unread().get("alice+bob") == 0, "the DM to be marked read")
    bob_other_tab.reload()
    wait_online(bob_other_tab)
    expect(bob_other_tab.locator(dm_badge)).to_have_text("")
    expect(bob_other_tab.locator("#dm-list a[href='/dm/alice']")).not_to_have_class(re.compile("has-unread"))

    # A room created after bob's page loaded: its count rises live too.
    alice_api = site.api("alice")
    alice_api.create_room("design", "Design")
    alice_api.post_message("design", "new mockups are up")
    room_badge = bob_other_tab.locator('#room-list [data-unread="design"]')
    expect(room_badge).to_have_text("1")
    alice_api.post_message("design", "feedback by friday please")
    expect(room_badge).to_have_text("2")
    wait_until(lambda: bob_api.unread().get("design") == 2, "the API to agree with the sidebar")
    expect(bob_other_tab.locator("#room-list a[href='/r/design']")).to_be_visible()


# -- 4. typing ------------------------------------------------------------------------------------

# Every text #typing shows, with the id of the newest message on the page at that moment.
TYPING_RECORDER = """() => {
  window.__typingLog = [];
  const box = document.getElementById("typing");
  new MutationObserver(() => {
    const all = document.querySelectorAll("#messages article[id^='message-']");
    window.__typingLog.push({text: box.textContent, newest: all.length ? Number(all[all.length - 1].dataset.id) : 0});
  }).observe(box, {childList: true, characterData: true, subtree: true});
}"""


@pytest.mark.browser
def test_typing_indicator_shows_and_clears_on_send(make_site: Callable[..., Site]) -> None:
    # The server forwards every typing event (no server-side throttle), so what the page
    # sends is what alice sees.
    site = make_site(env={"CHATD_TYPING_INTERVAL_SECONDS": "0"})
    alice, bob = site.page("alice"), site.page("bob")
    # Bob's page runs on Playwright's clock (time still flows), so that the test can make any
    # timer it has pending fire at once instead of waiting for it.
    bob.clock.install()
    bob.reload()
    wait_online(bob)
    alice.evaluate(TYPING_RECORDER)
    typing = alice.locator("#typing")
    expect(typing).to_have_text("")

    box = bob.locator("#composer textarea")
    box.click()
    box.press_sequentially("hang on, I am writ")
    expect(typing).to_have_text("bob is typing…")
    expect(bob.locator("#typing")).to_have_text("")  # never about yourself
    box.press_sequentially("ing a long answer")
    box.press("Enter")
    sent = message_id(alice, "I am writing a long answer", author="bob")
    expect(typing).to_have_text("")

    # Whatever bob's page still had scheduled (a throttled typing event) goes out now; then a
    # message sent without typing (no input event) is a barrier: the server relays bob's frames
    # in order, so anything sent before it reached alice before it.
    bob.clock.run_for(5000)
    bob.evaluate("""() => {
      document.querySelector("#composer textarea").value = "(sent without typing)";
      document.getElementById("composer").requestSubmit();
    }""")
    barrier = message_id(alice, "(sent without typing)", author="bob")
    log = alice.evaluate("window.__typingLog")
    after_send = [entry["text"] for entry in log if entry["newest"] == sent and entry["text"]]
    assert after_send == [], (
        f"'bob is typing…' came back after bob's message {sent} was sent (before {barrier}): {log}"
    )
    expect(typing).to_have_text("")


# -- 5. presence ----------------------------------------------------------------------------------


@pytest.mark.browser
def test_online_list_follows_bob(site: Site) -> None:
    alice = site.page("alice")
    online_bob = alice.locator("#online a[href='/dm/bob']")
    expect(alice.locator("#online")).to_contain_text("alice")
    expect(online_bob).to_have_count(0)
    bob = site.page("bob")
    expect(online_bob).to_have_count(1)
    expect(bob.locator("#online a[href='/dm/alice']")).to_have_count(1)
    bob.context.close()
    site.contexts.remove(bob.context)
    expect(online_bob).to_have_count(0)
    expect(alice.locator("#online")).to_contain_text("alice")


# -- 6. older history -----------------------------------------------------------------------------


@pytest.mark.browser
def test_older_history_loads_on_scroll_without_reload(make_site: Callable[..., Site]) -> None:
    site = make_site(env={"CHATD_MESSAGES_PER_SECOND": "1000", "CHATD_MESSAGE_BURST": "1000"})
    api = site.api("alice")
    posted = [api.post_message("general", f"history number {n}")["id"] for n in range(1, 121)]
    # bob has read them (unread ones would open the page at the first of them, further up).
    assert site.api("bob").call("POST", "/api/v1/rooms/general/read", {"message_id": posted[-1]})[0] == 204
    bob = site.page("bob")
    expect(bob.locator(MESSAGES)).to_have_count(50)
    assert ids_on(bob) == posted[-50:]
    bob.evaluate("window.__sameDocument = true")

    def loaded() -> bool:
        count = bob.locator(MESSAGES).count()
        if count >= 120:
            return True
        # Scroll the conversation to its top; the "older" sentinel fetches the page above.
        bob.eval_on_selector("#scroller", "el => { el.scrollTop = 0; }")
        return False

    wait_until(loaded, "all 120 messages to be loaded by scrolling up", timeout=30, every=0.2)
    expect(bob.locator(MESSAGES)).to_have_count(120)
    assert ids_on(bob) == posted
    expect(bob.locator(f"#message-{posted[0]}")).to_contain_text("history number 1")
    expect(bob.locator("#messages .older.start")).to_have_count(1)
    assert bob.evaluate("window.__sameDocument") is True
    assert bob.evaluate("performance.getEntriesByType('navigation').length") == 1
    # Live messages still arrive at the bottom, after the prepended history.
    last = api.post_message("general", "and one more, live")
    expect(bob.locator(f"#message-{last['id']}")).to_have_count(1)
    assert ids_on(bob) == posted + [last["id"]]


# -- 7. a clean console ------------------------------------------------------------------------------


@pytest.mark.browser
def test_console_stays_clean_on_every_page(site: Site) -> None:
    watch = site.watch
    context = site.browser.new_context(base_url=site.url)
    context.set_default_timeout(WAIT_MS)
    site.contexts.append(context)
    watch.attach_context(context)
    alice = context.new_page()

    sign_in(alice, "alice", PASSWORD)  # the login page, then general
    wait_online(alice)
    bob = site.page("bob")  # receives everything live below
    send(alice, "hello in general with https://example.com and @bob")
    message_id(bob, "hello in general", author="alice")

    alice.goto("/dm/bob")
    wait_online(alice)
    send(alice, "a direct message")
    expect(bob.locator('[data-unread="alice+bob"]')).to_have_text("1")
    bob.click("#dm-list a[href='/dm/alice']")
    bob.wait_for_url("**/dm/alice")
    wait_online(bob)
    send(bob, "typing and sending back")
    message_id(alice, "typing and sending back", author="bob")

    alice.goto("/rooms/new")
    alice.fill("input[name=slug]", "design")
    alice.fill("input[name=name]", "Design")
    with alice.expect_navigation():
        alice.click("form[action='/rooms/new'] button[type=submit]")
    assert alice.url.endswith("/r/design"), alice.url
    wait_online(alice)
    send(alice, "the first message in design")
    message_id(alice, "the first message in design", author="alice")
    expect(bob.locator('[data-unread="design"]')).to_have_text("1")

    alice.goto("/rooms/new")
    alice.fill("input[name=slug]", "secret")
    alice.check("input[name=private]")
    with alice.expect_navigation():
        alice.click("form[action='/rooms/new'] button[type=submit]")
    wait_online(alice)
    alice.locator("#room-menu summary").click()
    alice.click("a[href='/r/secret/members']")
    alice.wait_for_url("**/r/secret/members")

    response = alice.goto("/favicon.ico")
    assert response is not None and response.status == 200, response and response.status
    assert alice.url.endswith("/static/favicon.svg"), alice.url

    assert watch.problems == []


# -- 8. a phone ------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_phone_shows_conversation_and_hides_sidebar_until_menu(site: Site) -> None:
    phone = site.page("alice", viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    for selector in ("#scroller", "#composer textarea", "#composer button[type=submit]", "#menu"):
        expect(phone.locator(selector)).to_be_in_viewport()
    sidebar = phone.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()
    width = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"

    phone.click("#menu")
    expect(sidebar).to_be_in_viewport(ratio=0.95)
    expect(phone.locator("#sidebar a[href='/r/general']")).to_be_in_viewport()
    # Tapping beside the open sidebar closes it again.
    phone.mouse.click(375, 400)
    expect(sidebar).not_to_be_in_viewport()

    send(phone, "typed on a phone")
    expect(message_by_text(phone, "typed on a phone", author="alice")).to_be_in_viewport()


# -- 9. dark mode -------------------------------------------------------------------------------------------

LUMINANCE = """(el) => {
  const lum = (css) => {
    const [r, g, b] = css.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => {
      v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  let node = el, bg = "rgba(0, 0, 0, 0)";
  while (node && node.nodeType === 1) {
    const c = getComputedStyle(node).backgroundColor;
    if (!/rgba\\(.*,\\s*0\\)$/.test(c) && c !== "transparent") { bg = c; break; }
    node = node.parentElement;
  }
  return {bg: lum(bg), fg: lum(getComputedStyle(el).color), css: bg};
}"""


@pytest.mark.browser
def test_dark_mode_is_dark(site: Site) -> None:
    page = site.page("alice", color_scheme="dark")
    send(page, "how does this look at night?")
    mid = message_id(page, "at night", author="alice")
    for selector in ("body", "#scroller", f"#message-{mid} .body", "#composer textarea", "#sidebar"):
        colors = page.eval_on_selector(selector, LUMINANCE)
        assert colors["bg"] < 0.05, f"{selector} background is light in dark mode: {colors}"
        if selector != "#scroller":
            assert colors["fg"] > 0.3, f"{selector} text is dark on a dark background: {colors}"
    other = site.browser.new_context(base_url=site.url, color_scheme="dark")
    site.contexts.append(other)
    login = other.new_page()
    login.goto("/login")
    assert login.eval_on_selector("body", LUMINANCE)["bg"] < 0.05
    assert login.eval_on_selector("input[name=username]", LUMINANCE)["fg"] > 0.3


# -- 11. notifications ------------------------------------------------------------------------------

# The browser's Notification API and tab visibility, replaced by recorders the test controls
# (chatd's own code is untouched; only what the browser would show is observed).
NOTIFICATION_RECORDER = """
  window.__notes = [];
  window.__hidden = false;
  window.Notification = class {
    constructor(title, options) { window.__notes.push({title, body: (options || {}).body || ""}); }
    close() {}
    static get permission() { return "granted"; }
    static requestPermission() { return Promise.resolve("granted"); }
  };
  Object.defineProperty(Document.prototype, "hidden", {configurable: true, get() { return window.__hidden; }});
  Object.defineProperty(Document.prototype, "visibilityState",
    {configurable: true, get() { return window.__hidden ? "hidden" : "visible"; }});
"""


def set_hidden(page: Any, hidden: bool) -> None:
    page.evaluate("h => { window.__hidden = h; document.dispatchEvent(new Event('visibilitychange')); }", hidden)


@pytest.mark.browser
def test_notifications_ask_with_a_button_never_on_load(site: Site) -> None:
    bob = site.page("bob")
    # The permission is still the browser's default after the page loaded: nothing asked.
    assert bob.evaluate("Notification.permission") == "default"
    expect(bob.locator("#notify")).to_be_hidden()  # in the room menu, until it is opened
    bob.locator("#room-menu summary").click()
    expect(bob.locator("#notify")).to_be_visible()


@pytest.mark.browser
def test_mentions_and_dms_notify_while_hidden_and_title_counts(site: Site) -> None:
    alice = site.page("alice")
    context = site.browser.new_context(base_url=site.url)
    site.contexts.append(context)
    context.add_init_script(NOTIFICATION_RECORDER)
    bob = context.new_page()
    sign_in(bob, "bob", PASSWORD)
    wait_online(bob)
    expect(bob.locator("#notify")).to_be_hidden()  # permission already granted
    base_title = bob.title()
    set_hidden(bob, True)

    send(alice, "just chatting, no mention")
    expect(message_by_text(bob, "just chatting, no mention")).to_have_count(1)
    send(alice, "@bob can you look at this?")
    expect(message_by_text(bob, "can you look at this?")).to_have_count(1)
    wait_until(lambda: len(bob.evaluate("window.__notes")) == 1, "a notification for the mention")
    note = bob.evaluate("window.__notes")[0]
    assert note["title"] == "alice" and "can you look at this?" in note["body"]
    # The title counts what arrived while the tab was hidden.
    wait_until(lambda: bob.title() == f"(2) {base_title}", "the hidden tab's title to count 2")

    alice_api = site.api("alice")
    status, dm = alice_api.call("POST", "/api/v1/dms", {"username": "bob"})
    assert status == 200
    alice_api.post_message(dm["room"]["slug"], "a private word")
    wait_until(lambda: len(bob.evaluate("window.__notes")) == 2, "a notification for the DM")
    note = bob.evaluate("window.__notes")[1]
    assert note["title"] == "alice" and note["body"] == "a private word"
    wait_until(lambda: bob.title() == f"(3) {base_title}", "the title to count the DM too")

    set_hidden(bob, False)
    wait_until(lambda: bob.title() == base_title, "the title to reset when the tab is visible")
    assert len(bob.evaluate("window.__notes")) == 2  # nothing for the plain message
