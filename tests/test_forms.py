"""Forms that say what they accept and why they refused, in words next to the field.

Every field with a rule carries a hint tied to it with aria-describedby; a refused form comes
back with the status of the refusal, the sentence next to the field it concerns
(aria-invalid, aria-describedby naming the sentence) and what was typed still there, never a
password.
"""

from __future__ import annotations

from html.parser import HTMLParser

from aiohttp import ClientSession, CookieJar

from chatd import rules
from chatd.state import SETUP_TOKEN
from conftest import PASSWORD, Chat, csrf_of, login


class Page(HTMLParser):
    """The inputs of a page by name, and the text of each element with an id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str | None]] = {}
        self.texts: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("name"):
            self.inputs[found["name"]] = found
        elif tag not in ("br", "img", "meta", "link", "input"):
            self._open.append((tag, found.get("id")))
            if found.get("id"):
                self.texts[found["id"]] = ""

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.texts[ident] += data

    def described(self, name: str) -> str:
        """The words a screen reader reads after the field's label."""
        ids = (self.inputs[name].get("aria-describedby") or "").split()
        return " ".join(" ".join(self.texts[i].split()) for i in ids)


def anonymous(chat: Chat) -> ClientSession:
    return ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True))


def refused_beside(page: Page, name: str, words: str) -> None:
    field = page.inputs[name]
    assert field.get("aria-invalid") == "true", field
    error_id = next(i for i in field["aria-describedby"].split() if i.endswith("-error"))
    assert words in page.texts[error_id], page.texts[error_id]


async def test_the_new_room_form_says_what_a_short_name_may_be(chat: Chat) -> None:
    await chat.user("alice")
    async with await chat.browser("alice") as alice:
        page = Page(await (await alice.get("/rooms/new")).text())
    slug = page.inputs["slug"]
    assert "pattern" not in slug and "aria-invalid" not in slug  # the server answers, in words
    assert rules.SLUG_RULE in page.described("slug")
    assert rules.ROOM_NAME_RULE in page.described("name")


async def test_an_invalid_slug_is_refused_beside_the_field_with_what_was_typed(chat: Chat) -> None:
    await chat.user("alice")
    async with await chat.browser("alice") as alice:
        csrf = csrf_of(await (await alice.get("/rooms/new")).text())
        resp = await alice.post("/rooms/new", data={"csrf": csrf, "slug": "Book club!", "name": "Book club",
                                                    "private": "on"})
        assert resp.status == 400
        page = Page(await resp.text())
    refused_beside(page, "slug", f"room slugs are {rules.SLUG_RULE}; not a space, '!'")
    assert rules.SLUG_RULE in page.described("slug")  # the hint stays
    assert "autofocus" in page.inputs["slug"]
    assert page.inputs["slug"]["value"] == "Book club!"
    assert page.inputs["name"]["value"] == "Book club"
    assert "checked" in page.inputs["private"]
    assert "aria-invalid" not in page.inputs["name"]


async def test_a_taken_slug_is_refused_beside_the_field(chat: Chat) -> None:
    await chat.user("alice")
    async with await chat.browser("alice") as alice:
        csrf = csrf_of(await (await alice.get("/rooms/new")).text())
        resp = await alice.post("/rooms/new", data={"csrf": csrf, "slug": "general", "name": "Mine"})
        assert resp.status == 409
        page = Page(await resp.text())
    refused_beside(page, "slug", "already taken")
    assert page.inputs["name"]["value"] == "Mine"


async def test_setup_refusals_stand_beside_their_field_and_passwords_are_never_sent_back(chat: Chat) -> None:
    token = chat.app[SETUP_TOKEN][0]
    async with anonymous(chat) as session:
        form = await session.get(f"/setup?token={token}")
        assert rules.USERNAME_RULE in Page(await form.text()).described("username")
        base = {"csrf": csrf_of(await form.text()), "token": token, "username": "Root"}
        cases = [("password2", {"password": PASSWORD, "password2": PASSWORD + "!"}, "the two passwords differ"),
                 ("password", {"password": "short", "password2": "short"}, f"passwords must be {rules.PASSWORD_RULE}"),
                 ("username", {"username": "no spaces", "password": PASSWORD, "password2": PASSWORD},
                  "not a space")]
        for name, data, words in cases:
            resp = await session.post("/setup", data={**base, **data})
            assert resp.status == 400, name
            html = await resp.text()
            page = Page(html)
            refused_beside(page, name, words)
            assert page.inputs["username"]["value"] == data.get("username", "Root")
            assert PASSWORD not in html and 'value="short"' not in html
            assert all("value" not in page.inputs[p] for p in ("password", "password2"))


async def test_a_wrong_sign_in_describes_both_fields_and_keeps_the_username(chat: Chat) -> None:
    await chat.user("alice")
    async with anonymous(chat) as session:
        resp = await login(session, "alice", "not it at all")
        assert resp.status == 401
        html = await resp.text()
    page = Page(html)
    for name in ("username", "password"):
        assert page.inputs[name].get("aria-invalid") == "true"
        assert "wrong username or password" in page.described(name)
    assert page.inputs["username"]["value"] == "alice"
    assert "not it at all" not in html


async def test_adding_an_unknown_member_is_refused_beside_the_field(chat: Chat) -> None:
    await chat.user("alice")
    await chat.client.post("/api/v1/rooms", json={"slug": "team", "private": True},
                           headers=await chat.bearer("alice"))
    async with await chat.browser("alice") as alice:
        csrf = csrf_of(await (await alice.get("/r/team/members")).text())
        resp = await alice.post("/r/team/members", data={"csrf": csrf, "action": "add", "username": "ghost"})
        assert resp.status == 404
        page = Page(await resp.text())
    refused_beside(page, "username", "no user named ghost")
    assert page.inputs["username"]["value"] == "ghost"


async def test_a_wrong_delete_confirmation_is_refused_beside_the_field(chat: Chat) -> None:
    await chat.user("root", admin=True)
    await chat.client.post("/api/v1/rooms", json={"slug": "spam"}, headers=await chat.bearer("root"))
    async with await chat.browser("root") as root:
        csrf = csrf_of(await (await root.get("/admin/rooms/spam/delete")).text())
        resp = await root.post("/admin/rooms/spam/delete", data={"csrf": csrf, "confirm": "spa"})
        assert resp.status == 400
        page = Page(await resp.text())
    refused_beside(page, "confirm", "type spam to delete the room (you typed spa)")
    assert page.inputs["confirm"]["value"] == "spa"
    assert chat.services.store.room_named("spam") is not None
