"""axe-core on every page, in the light and the dark scheme, at desktop and phone size: no
serious or critical violation of WCAG 2.x A/AA or Deque's best practices.

One real `chatd serve` for the module, filled once: alice (an administrator) and bob talk in
#general, bob mentions alice, writes in #design and in a DM (unread for alice), and alice has
a private room. Each case opens a fresh browser context with alice's saved sign-in, so the
sign-in limits never come into it. axe is evaluated in the page, not added as a <script>:
the pages' CSP stays as strict as users get it, and the console must stay clean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_browser import Site, add_user, browser  # noqa: F401  (fixture)

from browser_helpers import WAIT_MS, Watch, axe_violations, message_id, sign_in, wait_online
from conftest import PASSWORD, Server, run_cli

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect
pytestmark = pytest.mark.browser

SCHEMES = ("light", "dark")
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def site(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:  # noqa: F811
    db = tmp_path_factory.mktemp("a11y") / "chatd.db"
    result = run_cli("adduser", "alice", "--admin", "--password-stdin", db=db, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    add_user(db, "bob")
    start = lambda: Server(db, "--log-level", "warning")  # noqa: E731
    site = Site(start().start(), db, browser, start)
    alice, bob = site.api("alice"), site.api("bob")
    alice.post_message("general", "Morning! The release notes are in the usual place.")
    bob.post_message("general", "thanks @alice, I'll read them after https://example.com/standup")
    alice.create_room("secret", "Secret plans", private=True)
    alice.add_member("secret", "bob")
    alice.create_room("design", "Design")
    bob.post_message("design", "new mock-ups are up")
    status, data = bob.call("POST", "/api/v1/dms", {"username": "alice"})
    assert status == 200, (status, data)
    bob.post_message(data["room"]["slug"], "got a minute?")
    yield site
    site.server.kill()


@pytest.fixture(autouse=True)
def close_contexts(site: Site) -> Iterator[None]:
    """Each case's browser contexts (and the sockets of their room pages) end with it."""
    yield
    while site.contexts:
        site.contexts.pop().close()


@pytest.fixture(scope="module")
def signed_in(site: Site) -> dict[str, Any]:
    """alice's cookies after one real sign-in, for every context of the module."""
    context = site.browser.new_context(base_url=site.url)
    page = context.new_page()
    sign_in(page, "alice", PASSWORD)
    state = context.storage_state()
    context.close()
    return state


def open_page(site: Site, path: str, scheme: str, size: str, state: dict[str, Any] | None,
              base_url: str | None = None) -> tuple[Any, Watch]:
    watch = Watch()
    context = site.browser.new_context(base_url=base_url or site.url, color_scheme=scheme, viewport=SIZES[size],
                                       storage_state=state)
    context.set_default_timeout(WAIT_MS)
    site.contexts.append(context)
    watch.attach_context(context)
    page = context.new_page()
    response = page.goto(path)
    assert response is not None and response.status == 200, (path, response and response.status)
    return page, watch


def assert_accessible(page: Any, watch: Watch) -> None:
    found = axe_violations(page)
    assert found == [], f"axe on {page.url}:\n" + "\n".join(found)
    assert watch.problems == []  # and running axe broke no CSP rule and logged no error


def cases(*sizes: str) -> list[Any]:
    return [pytest.param(scheme, size, id=f"{scheme}-{size}") for scheme in SCHEMES for size in sizes]


@pytest.mark.parametrize(("scheme", "size"), cases("desktop", "phone"))
def test_login_page_has_no_serious_axe_violations(site: Site, scheme: str, size: str) -> None:
    page, watch = open_page(site, "/login", scheme, size, None)
    assert_accessible(page, watch)


@pytest.mark.parametrize(("scheme", "size"), cases("desktop", "phone"))
def test_login_page_with_an_error_has_no_serious_axe_violations(site: Site, scheme: str, size: str) -> None:
    page, watch = open_page(site, "/login", scheme, size, None)
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "not the password")
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    expect(page.get_by_role("alert")).to_be_visible()
    watch.problems.clear()  # the 401 the wrong password was meant to get
    assert_accessible(page, watch)


@pytest.mark.parametrize(("scheme", "size"), cases("desktop", "phone"))
def test_setup_page_has_no_serious_axe_violations(site: Site, server_factory: Callable[..., Server], scheme: str,
                                                   size: str) -> None:
    first_run = server_factory("--log-level", "warning").start()  # a database with no account yet
    link = re.search(r"(/setup\?token=\S+)", first_run.read_line())
    assert link, first_run.banner
    page, watch = open_page(site, link.group(1), scheme, size, None, base_url=first_run.url)
    assert_accessible(page, watch)


@pytest.mark.parametrize(("scheme", "size"), cases("desktop", "phone"))
def test_room_page_has_no_serious_axe_violations(site: Site, signed_in: dict, scheme: str, size: str) -> None:
    page, watch = open_page(site, "/r/general", scheme, size, signed_in)
    wait_online(page)
    message_id(page, "thanks @alice", author="bob")
    expect(page.locator("[data-unread='design']")).to_have_text("1")
    expect(page.locator("[data-unread='alice+bob']")).to_have_text("1")
    expect(page.locator("#room-list a[href='/r/secret']")).to_be_attached()
    assert_accessible(page, watch)


@pytest.mark.parametrize(("scheme", "size"), cases("phone"))
def test_room_page_with_the_phone_sidebar_open_has_no_serious_axe_violations(
        site: Site, signed_in: dict, scheme: str, size: str) -> None:
    page, watch = open_page(site, "/r/general", scheme, size, signed_in)
    wait_online(page)
    page.click("#menu")
    # axe reads colours as painted: wait for the slide-in to end, not only to be on screen. (A
    # function, not a bare expression: Playwright would eval that in the page, which the CSP forbids.)
    page.wait_for_function("() => getComputedStyle(document.getElementById('sidebar')).transform === 'none'")
    assert_accessible(page, watch)


@pytest.mark.parametrize(("scheme", "size"), cases("desktop"))
@pytest.mark.parametrize("path", ["/dm/bob", "/r/secret"])
def test_dm_and_private_room_pages_have_no_serious_axe_violations(site: Site, signed_in: dict, path: str,
                                                                   scheme: str, size: str) -> None:
    page, watch = open_page(site, path, scheme, size, signed_in)
    wait_online(page)
    assert_accessible(page, watch)


PAGES = {
    "members": "/r/secret/members",
    "admin": "/admin",
    "rooms": "/rooms",
    "new-room": "/rooms/new",
    "delete-room": "/admin/rooms/design/delete",
}


@pytest.mark.parametrize(("scheme", "size"), cases("desktop", "phone"))
@pytest.mark.parametrize("name", PAGES)
def test_page_has_no_serious_axe_violations(site: Site, signed_in: dict, name: str, scheme: str,
                                            size: str) -> None:
    page, watch = open_page(site, PAGES[name], scheme, size, signed_in)
    assert_accessible(page, watch)


@pytest.mark.parametrize(("scheme", "size"), cases("desktop"))
def test_error_page_has_no_serious_axe_violations(site: Site, signed_in: dict, scheme: str, size: str) -> None:
    page, watch = open_page(site, "/admin", scheme, size, signed_in)
    response = page.goto("/r/no-such-room")
    assert response is not None and response.status == 404
    watch.problems.clear()  # the 404 just asked for
    assert_accessible(page, watch)


@pytest.mark.parametrize(("scheme", "size"), cases("desktop", "phone"))
def test_an_invalid_short_name_is_refused_in_words_beside_the_field(site: Site, signed_in: dict, scheme: str,
                                                                    size: str) -> None:
    page, watch = open_page(site, "/rooms/new", scheme, size, signed_in)
    slug = page.get_by_label("Short name (in its address)")
    expect(slug).to_have_accessible_description(re.compile("Use 1 to 64 characters of a-z, 0-9 and '-'"))
    slug.fill("Book club!")
    with page.expect_navigation():
        page.get_by_role("button", name="Create room").click()
    sentence = "room slugs are 1 to 64 characters of a-z, 0-9 and '-'; not a space, '!'"
    expect(page.locator("#slug-error")).to_have_text(sentence)  # shown with a capital first letter
    expect(page.locator("#slug-error")).to_be_in_viewport()
    expect(slug).to_be_focused()
    expect(slug).to_have_value("Book club!")
    expect(slug).to_have_attribute("aria-invalid", "true")
    expect(slug).to_have_accessible_description(re.compile(re.escape(sentence)))
    watch.problems.clear()  # the 400 the refusal comes with
    assert_accessible(page, watch)
