#!/usr/bin/env python3
"""Take the README's screenshots: a real chatd, three people, a conversation over two days;
alice's view at desktop size in light mode, and bob's on a phone in dark mode.

    python docs/screenshot.py            # writes docs/screenshot.png and docs/screenshot-phone-dark.png
    python docs/screenshot.py out.png    # or out.png and out-phone-dark.png somewhere else

Take them on a machine with a colour-emoji font (Debian: fonts-noto-color-emoji).
Needs what the browser tests need: chatd importable (or the `chatd` command), Playwright for
Python, and Debian's Chromium at /usr/bin/chromium (or CHATD_CHROMIUM). Everything runs on a
throw-away database in a temporary directory; nothing here touches the network.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the browser tests' helpers

from playwright.sync_api import sync_playwright  # noqa: E402

from browser_helpers import WAIT_MS, Api, launch, sign_in, wait_online  # noqa: E402

PASSWORD = "correct horse battery"


def chatd_command() -> list[str]:
    exe = shutil.which("chatd", path=str(Path(sys.executable).parent)) or shutil.which("chatd")
    return [exe] if exe else [sys.executable, "-m", "chatd"]


def cli(db: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*chatd_command(), *args, "--db", str(db)], input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode:
        raise SystemExit(f"chatd {args[0]} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="chatd-screenshot-") as tmp:
        db = Path(tmp) / "chatd.db"
        for name in ("alice", "bob", "carol"):
            cli(db, "adduser", name, "--password-stdin", *(["--admin"] if name == "alice" else []),
                stdin=PASSWORD + "\n")
        tokens = {name: cli(db, "token", name, "--label", "screenshot") for name in ("alice", "bob", "carol")}
        server, url = start(db, tmp)
        try:
            api = {name: Api(url, token) for name, token in tokens.items()}
            first = converse(api, YESTERDAY)
            # The API has no past: with the server stopped, yesterday's messages get yesterday's times.
            server.terminate()
            server.wait(15)
            backdate(db, first)
            server, url = start(db, tmp, port=url.rsplit(":", 1)[1])
            api = {name: Api(url, token) for name, token in tokens.items()}
            converse(api, TODAY)
            shoot(url, out)
        finally:
            server.terminate()
            server.wait(15)


def start(db: Path, tmp: str, port: str = "0") -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([*chatd_command(), "serve", "--db", str(db), "--port", port, "--log-level", "warning"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp)
    line = server.stdout.readline() if server.stdout else ""
    if "listening on" not in line:
        raise SystemExit(f"chatd did not start: {line!r}")
    return server, line.strip().rsplit(" ", 1)[-1]


def backdate(db: Path, ids: list[int]) -> None:
    """Yesterday afternoon, a few minutes apart."""
    start = time.time() - 86400 - 3 * 3600
    with sqlite3.connect(db) as conn:
        conn.executemany("UPDATE messages SET created_at = ? WHERE id = ?",
                         [(start + n * 150, mid) for n, mid in enumerate(ids)])


YESTERDAY = "yesterday"
TODAY = "today"


def converse(api: dict[str, Api], day: str) -> list[int]:
    """Post one day's messages; returns their ids."""
    alice, bob, carol = api["alice"], api["bob"], api["carol"]
    if day == YESTERDAY:
        bob.create_room("design", "design")
        alice.create_room("ops", "ops", private=True)
        alice.add_member("ops", "bob")
        say = [
            (bob, "general", "Is anyone else seeing the deploy job hang on the test step?"),
            (alice, "general", "Yes, the runner ran out of disk. I cleaned it up, retry now"),
            (bob, "general", "Passed, thanks!"),
            (carol, "design", "New empty states for the sidebar are in Figma, feedback welcome"),
        ]
    else:
        say = [
            (carol, "general", "Morning all! Staging is green again after last night's migration 🎉"),
            (bob, "general", "Nice. I wrote the rollout plan down here: https://wiki.example.com/rollout/chatd-0.2"),
            (bob, "general", "It's short, five steps"),
            (alice, "general", "@bob looks good to me. Two small things:\n"
                               "1. take a backup right before the deploy (chatd backup works while it runs)\n"
                               "2. keep the old unit file around for a day, just in case"),
            (bob, "general", "Yes to both. I'll ping @carol when the backup is done."),
            (carol, "general", "I'll keep an eye on /metrics while it rolls out. Deliveries looked flat all week."),
            (carol, "general", "And the p99 stayed under 20 ms 👌"),
            (alice, "general", "Great, then we ship at 14:00 🚀"),
            (bob, "design", "The dark mode contrast is so much better now"),
            (bob, "ops", "Backup is on the box: /var/lib/chatd/backup-2026-11-24.db (212 MB)"),
            (alice, "design", "Agreed, let's ship the new empty states with it"),
        ]
    ids = [who.post_message(room, text)["id"] for who, room, text in say]
    if day == TODAY:
        status, data = carol.call("POST", "/api/v1/dms", {"username": "alice"})
        assert status == 200, (status, data)
        carol.post_message(data["room"]["slug"], "Do you have five minutes after standup?")
    return ids


def shoot(url: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            pages = {}
            for name in ("bob", "alice"):
                context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 800},
                                              device_scale_factor=1, color_scheme="light", locale="en-GB")
                context.set_default_timeout(WAIT_MS)
                page = context.new_page()
                sign_in(page, name, PASSWORD)
                wait_online(page)
                pages[name] = page
            alice, bob = pages["alice"], pages["bob"]
            alice.wait_for_selector("#online a[href='/dm/bob']")
            alice.wait_for_selector("#online a[href='/dm/alice']")
            # bob starts an answer: the typing line shows under the conversation.
            bob.locator("#composer textarea").press_sequentially("Backup's do")
            alice.wait_for_selector("#typing:has-text('bob is typing')")
            alice.locator("#composer textarea").fill("Perfect, thanks @bob!")
            alice.mouse.move(900, 60)  # not over a message
            out.parent.mkdir(parents=True, exist_ok=True)
            alice.screenshot(path=str(out))
            phone = browser.new_context(base_url=url, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                        is_mobile=True, has_touch=True, color_scheme="dark", locale="en-GB")
            phone.set_default_timeout(WAIT_MS)
            page = phone.new_page()
            sign_in(page, "bob", PASSWORD)
            wait_online(page)
            page.wait_for_selector("#unread-total:not(:empty)")
            page.screenshot(path=str(out.with_name(out.stem + "-phone-dark.png")))
        finally:
            browser.close()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "screenshot.png"
    main(target)
    print(f"wrote {target}")
