"""Real-browser tests of rooms that come and go: access that ends while the page is open,
the rooms page and joining, and an administrator archiving and deleting a room.

The same setup as test_browser.py: the real `chatd serve`, Debian's Chromium through
Playwright, waiting expectations only, and a clean console throughout.
"""

from __future__ import annotations

import pytest
from test_browser import Site, browser, make_site  # noqa: F401  (fixtures)

from browser_helpers import Api, message_id, send
from conftest import PASSWORD, run_cli

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
expect = sync_api.expect
pytestmark = pytest.mark.browser


def admin_site(make_site) -> Site:  # noqa: F811
    site = make_site("alice", "bob")
    result = run_cli("adduser", "root", "--admin", "--password-stdin", db=site.db, stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    return site


def sidebar_rooms(page) -> list[str]:
    return page.eval_on_selector_all("#room-list a", "els => els.map(a => a.getAttribute('href'))")


def test_a_member_removed_while_looking_at_the_room_is_told_and_cannot_write(make_site) -> None:  # noqa: F811
    site = admin_site(make_site)
    root: Api = site.api("root")
    root.create_room("secret", "Secret", private=True)
    root.add_member("secret", "bob")
    bob = site.page("bob", "/r/secret")
    general = site.page("bob")  # another tab of bob's, on another room
    assert "/r/secret" in sidebar_rooms(general)
    status, _ = root.call("DELETE", "/api/v1/rooms/secret/members/bob")
    assert status == 204
    expect(bob.get_by_role("alert")).to_have_text("You no longer have access to this room.")
    expect(bob.locator("#composer")).to_be_hidden()
    expect(bob.locator("#conn-state")).to_have_text("no access")
    expect(bob.locator("#room-list a[href='/r/secret']")).to_have_count(0)
    expect(general.locator("#room-list a[href='/r/secret']")).to_have_count(0)
    expect(general.locator("#conn-state")).to_have_attribute("data-state", "online")
    assert site.watch.problems == []


def test_the_rooms_page_finds_and_joins_rooms_and_a_room_can_be_left(make_site) -> None:  # noqa: F811
    site = admin_site(make_site)
    root: Api = site.api("root")
    for slug in ("design", "deploys", "random"):
        root.create_room(slug, slug.title())
    bob = site.page("bob")
    assert sidebar_rooms(bob) == ["/r/general"]
    bob.click("#sidebar a.browse")
    bob.wait_for_url("**/rooms")
    bob.fill("input[name=q]", "de")
    with bob.expect_navigation():
        bob.press("input[name=q]", "Enter")
    expect(bob.locator(".directory li")).to_have_count(2)  # design and deploys
    with bob.expect_navigation():
        bob.get_by_role("button", name="Join #Design").click()
    expect(bob.get_by_role("button", name="Leave #Design")).to_be_visible()
    bob.goto("/r/general")
    assert sidebar_rooms(bob) == ["/r/design", "/r/general"]
    bob.click("#room-list a[href='/r/design']")
    bob.wait_for_url("**/r/design")
    bob.locator("#room-menu summary").click()
    with bob.expect_navigation():
        bob.locator(".room-header").get_by_role("button", name="Leave #Design").click()
    assert "/r/design" in bob.url  # still reading it, out of the sidebar from the next page on
    bob.goto("/r/general")
    assert sidebar_rooms(bob) == ["/r/general"]
    assert site.watch.problems == []


def test_an_admin_archives_then_deletes_a_room_while_someone_reads_it(make_site) -> None:  # noqa: F811
    site = admin_site(make_site)
    root: Api = site.api("root")
    root.create_room("old", "Old project")
    root.post_message("old", "what we decided")
    bob = site.page("bob", "/r/old")
    message_id(bob, "what we decided")
    admin = site.page("root")
    admin.goto("/admin")
    admin.get_by_role("button", name="Archive Old project").click()
    admin.wait_for_url("**/admin")
    # bob's open tab loads the room again: readable, with no composer.
    expect(bob.locator(".archived-note")).to_contain_text("archived")
    expect(bob.locator("#composer")).to_be_hidden()
    message_id(bob, "what we decided")
    admin.get_by_role("link", name="Delete Old project").click()
    admin.wait_for_url("**/admin/rooms/old/delete")
    expect(admin.locator("main")).to_contain_text("1 message")
    admin.fill("input[name=confirm]", "old")
    with admin.expect_navigation():
        admin.get_by_role("button", name="Delete the room and its messages").click()
    expect(admin.get_by_role("status")).to_have_text("#old was deleted, with its messages.")
    expect(bob.get_by_role("alert")).to_have_text("You no longer have access to this room.")
    response = bob.goto("/r/old")
    assert response is not None and response.status == 404
    # The 404 just asked for is the only thing on the console.
    assert [p for p in site.watch.problems if "/r/old" not in p or "404" not in p] == []


def test_composing_still_works_after_joining_a_room_from_its_page(make_site) -> None:  # noqa: F811
    site = admin_site(make_site)
    site.api("root").create_room("lobby", "Lobby")
    bob = site.page("bob", "/r/lobby")  # opening a room joins it
    send(bob, "hello lobby")
    message_id(bob, "hello lobby", author="bob")
    bob.goto("/r/general")
    assert "/r/lobby" in sidebar_rooms(bob)
    assert site.watch.problems == []
