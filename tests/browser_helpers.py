"""Helpers for the real-browser tests (and docs/screenshot.py): Chromium, sign-in, the JSON API.

Everything here is synchronous (Playwright's sync API, urllib): the browser tests are plain
`def test_...` functions, so no asyncio loop runs in their thread.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("CHATD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
# Generous: CI machines are slow, and every wait ends as soon as its condition holds.
WAIT_MS = 15_000
NOT_ONLINE = "connecting|offline"
# axe-core, vendored for the tests only (tests/vendor/README.md says where from and how to update).
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core-4.14.1.min.js"
# WCAG 2.0, 2.1 and 2.2 at levels A and AA, and Deque's best practices.
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice")


def launch(playwright: Any, *extra_args: str) -> Any:
    """Debian's Chromium, headless (Playwright's own browser download is not used)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=[*CHROMIUM_ARGS, *extra_args])


class Watch:
    """Collects what would show up red in the developer console of every page of a context."""

    # Installed before any page script: CSP violations are reported even if Chromium's own
    # console message about them were filtered out.
    INIT_SCRIPT = """
      document.addEventListener("securitypolicyviolation", (e) => {
        console.error("CSP violation: " + e.violatedDirective + " blocked " + e.blockedURI);
      });
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def attach_context(self, context: Any) -> None:
        context.add_init_script(self.INIT_SCRIPT)
        context.on("page", self.attach_page)
        for page in context.pages:
            self.attach_page(page)

    def attach_page(self, page: Any) -> None:
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda exc: self.problems.append(f"{page.url}: page error: {exc}"))
        page.on("response", lambda r: self._response(page, r))

    def _console(self, page: Any, msg: Any) -> None:
        if msg.type in ("error", "warning"):
            self.problems.append(f"{page.url}: console {msg.type}: {msg.text} at {msg.location}")

    def _response(self, page: Any, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"{page.url}: HTTP {response.status} for {response.url}")


def new_user_page(browser: Any, base_url: str, username: str, password: str, path: str = "/r/general",
                  watch: Watch | None = None, **context_options: Any) -> Any:
    """A fresh browser context (its own cookies), signed in through the real form, on `path`."""
    context = browser.new_context(base_url=base_url, **context_options)
    context.set_default_timeout(WAIT_MS)
    if watch is not None:
        watch.attach_context(context)
    page = context.new_page()
    sign_in(page, username, password)
    if path != "/r/general":
        page.goto(path)
    wait_online(page)
    return page


def sign_in(page: Any, username: str, password: str) -> None:
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    if "/login" in page.url:
        raise AssertionError(f"sign-in as {username} failed: {page.inner_text('body')[:300]}")


def wait_online(page: Any, timeout: int = WAIT_MS) -> None:
    page.wait_for_selector("#conn-state[data-state=online]", state="attached", timeout=timeout)


def send(page: Any, text: str) -> None:
    """Type into the composer like a person (keyboard events), then press Enter."""
    box = page.locator("#composer textarea")
    box.click()
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i:
            box.press("Shift+Enter")
        if line:
            box.press_sequentially(line)
    box.press("Enter")


def message_by_text(page: Any, text: str, author: str | None = None) -> Any:
    sel = "#messages article[id^='message-']" + (f"[data-author='{author}']" if author else "")
    return page.locator(sel).filter(has_text=text)


def message_id(page: Any, text: str, author: str | None = None, timeout: int = WAIT_MS) -> int:
    """Wait for the stored message (not the pending copy) with this text and return its id."""
    loc = message_by_text(page, text, author)
    loc.first.wait_for(timeout=timeout)
    return int(loc.first.get_attribute("id").removeprefix("message-"))


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT_MS / 1000,
               every: float = 0.1) -> Any:
    """Poll until `condition()` is truthy; fail with `what` if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last value {value!r})")
        time.sleep(every)


class Api:
    """The JSON API with a bearer token (from `chatd token`), over plain urllib."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url.rstrip("/"), token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
        })
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        return status, (json.loads(raw) if raw else None)

    def post_message(self, room: str, body: str) -> dict:
        status, data = self.call("POST", f"/api/v1/rooms/{room}/messages", {"body": body})
        assert status == 201, (status, data)
        return data["message"]

    def create_room(self, slug: str, name: str | None = None, private: bool = False) -> dict:
        status, data = self.call("POST", "/api/v1/rooms", {"slug": slug, "name": name or slug,
                                                           "private": private})
        assert status == 201, (status, data)
        return data["room"]

    def add_member(self, room: str, username: str) -> None:
        status, data = self.call("POST", f"/api/v1/rooms/{room}/members", {"username": username})
        assert status == 200, (status, data)

    def unread(self) -> dict[str, int]:
        status, data = self.call("GET", "/api/v1/rooms")
        assert status == 200, (status, data)
        return {room["slug"]: room["unread"] for room in data["rooms"]}


_AXE_RUN = """async (tags) => {
  const results = await axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
  return results.violations.map((v) => ({id: v.id, nodes: v.nodes.map((n) => ({
    impact: n.impact, target: n.target, summary: n.failureSummary || v.help}))}));
}"""


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical"),
                   tags: tuple[str, ...] = AXE_TAGS) -> list[str]:
    """axe-core's violations on the page as it is now, one line per element:
    "rule (impact) selector: what to fix"."""
    # page.evaluate goes through the DevTools protocol, which the page's CSP does not govern;
    # add_script_tag would insert an inline <script> that script-src 'self' blocks (and logs).
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    lines = []
    for violation in page.evaluate(_AXE_RUN, list(tags)):
        for node in violation["nodes"]:
            if node["impact"] in impacts:
                target = " >>> ".join(map(str, node["target"]))  # nested lists cross shadow roots and frames
                summary = " ".join(node["summary"].split())
                lines.append(f"{violation['id']} ({node['impact']}) {target}: {summary}")
    return lines
