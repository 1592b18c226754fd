"""Search (contract "Search"): what a query finds over the JSON API, who may find what, hostile
queries, the indexes after a kill -9, the browser page and permalinks, and migration 6 over
messages stored before it. The real app on a real SQLite file; nothing of chatd is mocked.
"""

from __future__ import annotations

import asyncio
import html
import re
import sqlite3
import time
import unicodedata
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import ClientSession
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_durability import FLOOD_ENV, make_user
from yarl import URL

from chatd.state import CONFIG
from chatd.store.postgres import SPLIT_WORDS
from chatd.store.schema import SCHEMA_VERSION, UNSPACED_GLOB, migrate
from conftest import Chat, Server, csrf_of, query_db, run_cli, sqlite_only

pytestmark = pytest.mark.usefixtures("no_server_tracebacks")

CJK = "我们明天部署新版本"


# -- helpers ------------------------------------------------------------------------------------


async def post(chat: Chat, headers: dict[str, str], body: str, room: str = "general") -> dict[str, Any]:
    resp = await chat.client.post(f"/api/v1/rooms/{room}/messages", json={"body": body}, headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]


async def results(chat: Chat, headers: dict[str, str], q: str, **params: Any) -> list[dict[str, Any]]:
    """The results of a search that must succeed."""
    resp = await chat.client.get("/api/v1/search", params={"q": q, **params}, headers=headers)
    assert resp.status == 200, (q, params, resp.status, await resp.text())
    return (await resp.json())["results"]


async def ids(chat: Chat, headers: dict[str, str], q: str, **params: Any) -> list[int]:
    return [r["message"]["id"] for r in await results(chat, headers, q, **params)]


async def refused(chat: Chat, headers: dict[str, str], params: dict[str, str], status: int) -> dict[str, Any]:
    """A search that must fail with this status and the contract's error shape."""
    resp = await chat.client.get("/api/v1/search", params=params, headers=headers)
    assert resp.status == status, (params, resp.status, await resp.text())
    return error_of(await resp.json())


def error_of(body: Any) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    return error


async def create_room(chat: Chat, headers: dict[str, str], slug: str, private: bool = False) -> None:
    resp = await chat.client.post("/api/v1/rooms", json={"slug": slug, "private": private}, headers=headers)
    assert resp.status == 201, await resp.text()


async def add_member(chat: Chat, headers: dict[str, str], slug: str, username: str) -> None:
    resp = await chat.client.post(f"/api/v1/rooms/{slug}/members", json={"username": username}, headers=headers)
    assert resp.status == 200, await resp.text()


def unmarked(snippet: str) -> str:
    return snippet.replace("<mark>", "").replace("</mark>", "")


def marked(snippet: str) -> list[str]:
    return re.findall(r"<mark>(.*?)</mark>", snippet)


class Tags(HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def links(self) -> list[str]:
        return [a["href"] for tag, a in self.tags if tag == "a" and a.get("href")]

    def by_id(self, element_id: str) -> dict[str, str | None]:
        [attrs] = [a for _, a in self.tags if a.get("id") == element_id]
        return attrs


@pytest.fixture
async def browsers(chat: Chat) -> AsyncIterator[dict[str, ClientSession]]:
    """alice (admin) and bob, each signed in through the login form."""
    await chat.user("alice", admin=True)
    await chat.user("bob")
    sessions = {name: await chat.browser(name) for name in ("alice", "bob")}
    try:
        yield sessions
    finally:
        for session in sessions.values():
            await session.close()


def check_indexes_match_messages(db: Path | str) -> None:
    """Both FTS5 indexes hold exactly what the messages table says; raises or fails on drift.
    On PostgreSQL the words index is a generated column: every row's must be what its body
    gives now (the trigram index is an ordinary GIN index over the body)."""
    if isinstance(db, str):
        drifted = query_db(db, "SELECT count(*) FROM messages WHERE words IS DISTINCT FROM"
                               f" to_tsvector('chatd_words', {SPLIT_WORDS})")
        assert drifted == [(0,)], drifted
        return
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        # search_words indexes every message: FTS5 itself compares it with the table (rank 1).
        conn.execute("INSERT INTO search_words (search_words, rank) VALUES ('integrity-check', 1)")
        # search_grams holds only the messages with unspaced text, which FTS5's comparison with
        # the whole table cannot know: check it inside, then compare it with one built afresh.
        conn.execute("INSERT INTO search_grams (search_grams) VALUES ('integrity-check')")
        conn.execute("CREATE VIRTUAL TABLE temp.fresh USING fts5(body, tokenize='trigram')")
        conn.execute("INSERT INTO temp.fresh (rowid, body) SELECT id, body FROM messages WHERE body GLOB ?",
                     (UNSPACED_GLOB,))
        conn.execute("CREATE VIRTUAL TABLE temp.fresh_terms USING fts5vocab(temp, fresh, instance)")
        conn.execute("CREATE VIRTUAL TABLE temp.gram_terms USING fts5vocab(main, search_grams, instance)")
        terms = "SELECT term, doc, col, offset FROM temp.{}"
        indexed = set(conn.execute(terms.format("gram_terms")))
        expected = set(conn.execute(terms.format("fresh_terms")))
        assert indexed == expected, (f"search_grams drifted: {len(indexed - expected)} entries too many,"
                                     f" {len(expected - indexed)} missing")
    finally:
        conn.close()


# -- what a query finds ---------------------------------------------------------------------------


async def test_every_word_matches_in_any_order(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    both = await post(chat, alice, "the deploy of the new server went fine")
    server_only = await post(chat, alice, "server restart tonight")
    await post(chat, alice, "deploy notes")
    assert await ids(chat, alice, "server deploy") == [both["id"]]
    assert await ids(chat, alice, "fine   deploy\tserver") == [both["id"]]
    assert await ids(chat, alice, "server") == [server_only["id"], both["id"]]
    assert await ids(chat, alice, "server deploy missing") == []


async def test_case_and_accents_are_ignored(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    cafe = await post(chat, alice, "Meet at the café at noon")
    unit = await post(chat, alice, "lengths in Ångström units")
    for q in ("cafe", "CAFE", "Café", "CAFÉ", "cafè"):
        assert await ids(chat, alice, q) == [cafe["id"]], q
    for q in ("angstrom", "ANGSTROM", "Ångström", "ångström units"):
        assert await ids(chat, alice, q) == [unit["id"]], q
    assert await ids(chat, alice, "MEET noon") == [cafe["id"]]


async def test_decomposed_accents_match_composed_ones(chat: Chat) -> None:
    """Text typed or pasted in NFD (a letter, then a combining accent) is the same word."""
    alice = await chat.bearer("alice")
    composed = await post(chat, alice, "the résumé is attached")
    decomposed = await post(chat, alice, unicodedata.normalize("NFD", "naïve question here"))
    assert await ids(chat, alice, unicodedata.normalize("NFD", "résumé attached")) == [composed["id"]]
    assert await ids(chat, alice, unicodedata.normalize("NFD", "RÉSUMÉ")) == [composed["id"]]
    assert await ids(chat, alice, "naïve question") == [decomposed["id"]]
    assert await ids(chat, alice, "naive") == [decomposed["id"]]


async def test_the_last_word_is_also_a_prefix(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    deploy = await post(chat, alice, "we deploy on friday")
    assert await ids(chat, alice, "deplo") == [deploy["id"]]
    assert await ids(chat, alice, "dep") == [deploy["id"]]
    assert await ids(chat, alice, "de") == [deploy["id"]]
    # From 2 characters (README): a one-letter last word is a whole word.
    assert await ids(chat, alice, "d") == []
    assert await ids(chat, alice, "on") == [deploy["id"]]
    assert await ids(chat, alice, "friday deplo") == [deploy["id"]]
    assert await ids(chat, alice, "deploy fri") == [deploy["id"]]
    # Only the last word: a prefix before it must be a whole word.
    assert await ids(chat, alice, "deplo friday") == []
    # A word in quotes is a word, not a prefix.
    assert await ids(chat, alice, '"deplo"') == []
    assert await ids(chat, alice, '"deploy"') == [deploy["id"]]


async def test_quoted_words_match_as_a_phrase(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    forward = await post(chat, alice, "the new version is out")
    backward = await post(chat, alice, "version new, or so they say")
    apart = await post(chat, alice, "a new and better version")
    assert await ids(chat, alice, '"new version"') == [forward["id"]]
    assert await ids(chat, alice, '"version new"') == [backward["id"]]
    assert await ids(chat, alice, '"NEW Version"') == [forward["id"]]
    assert await ids(chat, alice, "new version") == [apart["id"], backward["id"], forward["id"]]
    # A phrase and words together; the word after the phrase is a prefix.
    assert await ids(chat, alice, '"new version" o') == []  # one letter: a whole word only
    assert await ids(chat, alice, '"new version" ou') == [forward["id"]]
    assert await ids(chat, alice, '"new version" out') == [forward["id"]]
    assert await ids(chat, alice, 'better "new version"') == []


async def test_chinese_is_found_by_any_run_of_three_characters(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    message = await post(chat, alice, CJK)
    other = await post(chat, alice, "我们明年再说")
    for q in ("明天部署", "部署新", "新版本", "们明天", CJK):
        assert await ids(chat, alice, q) == [message["id"]], q
    assert await ids(chat, alice, "部署旧") == []
    assert await ids(chat, alice, "版本新") == []
    assert await ids(chat, alice, "我们明") == [other["id"], message["id"]]


async def test_japanese_kana_is_found_by_any_run_of_three_characters(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    kana = await post(chat, alice, "あしたはデプロイします")
    mixed = await post(chat, alice, "新しいバージョンを公開しました")
    for q in ("デプロイ", "はデプ", "します", "あした"):
        assert await ids(chat, alice, q) == [kana["id"]], q
    for q in ("バージョン", "公開しま", "ョンを"):
        assert await ids(chat, alice, q) == [mixed["id"]], q
    assert await ids(chat, alice, "しました") == [mixed["id"]]
    assert await ids(chat, alice, "ました") == [mixed["id"]]


async def test_thai_is_found_by_any_run_of_three_characters(chat: Chat) -> None:
    """Thai is written without spaces and uses combining vowel marks inside its words."""
    alice = await chat.bearer("alice")
    message = await post(chat, alice, "สวัสดีครับทุกคน")
    for q in ("สวัสดี", "วัสดี", "ครับ", "ดีคร", "ทุกคน"):
        assert await ids(chat, alice, q) == [message["id"]], q


async def test_unspaced_and_spaced_words_together(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    both = await post(chat, alice, f"release: {CJK} (v2)")
    await post(chat, alice, "release notes only")
    await post(chat, alice, CJK)
    assert await ids(chat, alice, "部署新 release") == [both["id"]]
    assert await ids(chat, alice, "release 部署新") == [both["id"]]
    assert await ids(chat, alice, "RELEASE 明天部署 v2") == [both["id"]]
    assert await ids(chat, alice, "明天部署 releases") == []
    snippet = (await results(chat, alice, "release 部署新"))[0]["snippet"]
    assert unmarked(snippet) == f"release: {CJK} (v2)"
    assert marked(snippet) == ["release", "部署新"], snippet
    # Overlapping runs are one hit; runs match in any case, as the index does.
    snippet = (await results(chat, alice, "明天部 天部署 release"))[0]["snippet"]
    assert marked(snippet) == ["release", "明天部署"], snippet
    code = await post(chat, alice, "用Python写代码 release")
    [result] = await results(chat, alice, "用python写 RELEASE")
    assert result["message"]["id"] == code["id"]
    assert marked(result["snippet"]) == ["用Python写", "release"], result["snippet"]
    # A run inside a word already marked is not marked twice.
    await post(chat, alice, "明天部署新版本")
    [result] = await results(chat, alice, "明天 部署新")
    assert result["snippet"] == "<mark>明天部署新版本</mark>"


async def test_scripts_mixed_inside_one_word_are_found_as_written(chat: Chat) -> None:
    """Chinese writers put Latin words inside their unspaced text: "用Python写" is one run."""
    alice = await chat.bearer("alice")
    code = await post(chat, alice, "我喜欢用Python写代码")
    version = await post(chat, alice, "明天部署v2版本")
    for q in ("用Python写", "python写代码", "我喜欢用Python"):
        assert await ids(chat, alice, q) == [code["id"]], q
    for q in ("部署v2版本", "v2版本", "明天部署v2"):
        assert await ids(chat, alice, q) == [version["id"]], q


async def test_punctuation_only_words_are_ignored(chat: Chat) -> None:
    """A "word" the index has no letters for ("_", "-", "…") neither matches nor blocks a match."""
    alice = await chat.bearer("alice")
    message = await post(chat, alice, "deploy the server")
    for q in ("deploy _ server", "deploy __ server", "deploy - server", "deploy … server", "deploy server _"):
        assert await ids(chat, alice, q) == [message["id"]], q
    snake = await post(chat, alice, "call snake_case_name now")
    assert await ids(chat, alice, "snake_case") == [snake["id"]]
    assert await ids(chat, alice, "_") == []


async def test_query_syntax_is_only_text(chat: Chat) -> None:
    """FTS5's operators are words like any other: OR, NOT and NEAR must be in the message."""
    alice = await chat.bearer("alice")
    plain = await post(chat, alice, "deploy server")
    with_or = await post(chat, alice, "deploy or server")
    with_near = await post(chat, alice, "near deploy server")
    assert await ids(chat, alice, "deploy OR server") == [with_or["id"]]
    assert await ids(chat, alice, "deploy NOT server") == []
    assert await ids(chat, alice, "NEAR(deploy server)") == [with_near["id"]]
    assert await ids(chat, alice, "deploy -server") == [with_near["id"], with_or["id"], plain["id"]]
    assert await ids(chat, alice, "body:deploy") == []
    assert await ids(chat, alice, "^deploy server*") == [with_near["id"], with_or["id"], plain["id"]]


async def test_newest_first_limit_and_paging(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    posted = [(await post(chat, alice, f"pagingword number {i}"))["id"] for i in range(120)]
    await post(chat, alice, "something else entirely")
    newest_first = sorted(posted, reverse=True)
    assert await ids(chat, alice, "pagingword") == newest_first[:20]
    assert await ids(chat, alice, "pagingword", limit="7") == newest_first[:7]
    assert await ids(chat, alice, "pagingword", limit="100") == newest_first[:100]
    assert await ids(chat, alice, "pagingword", limit="500") == newest_first[:100]
    # before: the next older page, strictly below it, so pages never overlap.
    seen: list[int] = []
    before: int | None = None
    while True:
        params = {"limit": "25"} if before is None else {"limit": "25", "before": str(before)}
        page = await ids(chat, alice, "pagingword", **params)
        if not page:
            break
        assert len(page) <= 25
        seen.extend(page)
        before = page[-1]
    assert seen == newest_first
    assert await ids(chat, alice, "pagingword", before=str(newest_first[0])) == newest_first[1:21]
    assert await ids(chat, alice, "pagingword", before=str(min(posted))) == []
    for bad in ({"limit": "abc"}, {"limit": "0"}, {"limit": "-1"}, {"before": "x"}, {"before": "-5"}):
        await refused(chat, alice, {"q": "pagingword", **bad}, 400)


async def test_room_narrows_and_unreadable_room_is_404(chat: Chat) -> None:
    alice, bob = await chat.bearer("alice"), await chat.bearer("bob")
    await create_room(chat, alice, "ops")
    await create_room(chat, alice, "secret", private=True)
    in_general = await post(chat, alice, "narrowword in general")
    in_ops = await post(chat, alice, "narrowword in ops", room="ops")
    in_secret = await post(chat, alice, "narrowword in secret", room="secret")
    assert await ids(chat, alice, "narrowword") == [in_secret["id"], in_ops["id"], in_general["id"]]
    assert await ids(chat, alice, "narrowword", room="ops") == [in_ops["id"]]
    assert await ids(chat, alice, "narrowword", room="general") == [in_general["id"]]
    assert await ids(chat, alice, "narrowword", room="secret") == [in_secret["id"]]
    assert await ids(chat, bob, "narrowword", room="ops") == [in_ops["id"]]
    # A private room bob is not in is the same 404 as a room that does not exist.
    hidden = await refused(chat, bob, {"q": "narrowword", "room": "secret"}, 404)
    missing = await refused(chat, bob, {"q": "narrowword", "room": "nosuchroom"}, 404)
    assert hidden["code"] == missing["code"]
    assert "secret" not in hidden["message"]


@pytest.mark.parametrize("q", ["", " ", "   \t\n", "\u200b", "\u3000", None])
async def test_empty_or_blank_query_is_400(chat: Chat, q: str | None) -> None:
    alice = await chat.bearer("alice")
    await post(chat, alice, "anything at all")
    await refused(chat, alice, {} if q is None else {"q": q}, 400)


async def test_search_needs_credentials(chat: Chat) -> None:
    resp = await chat.client.get("/api/v1/search", params={"q": "hello"})
    assert resp.status == 401
    assert error_of(await resp.json())["code"] == "unauthorized"


async def test_snippets_are_escaped_text_with_hits_marked(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    body = "<script>alert(1)</script> Tom & Jerry <b>deploy</b> tonight"
    await post(chat, alice, body)
    for q in ("deploy", "DEPLOY", "depl", "jerry deploy"):
        [result] = await results(chat, alice, q)
        snippet = result["snippet"]
        assert result["message"]["body"] == body
        assert "<script>" not in snippet and "<b>" not in snippet
        assert "&lt;script&gt;" in snippet and "&amp;" in snippet and "&lt;b&gt;" in snippet
        # The only markup is <mark>, each around a hit, as written in the message.
        assert "<" not in unmarked(snippet), snippet
        assert "deploy" in marked(snippet), (q, snippet)
        assert unmarked(snippet) == html.escape(body, quote=False)
    # A long message: a few words around the hit, still escaped text.
    long_body = "filler " * 300 + "<needle> & more " + "filler " * 300
    await post(chat, alice, long_body)
    [result] = await results(chat, alice, "needle")
    assert "…" in result["snippet"] and len(result["snippet"]) < 300
    assert "<mark>needle</mark>&gt; &amp;" in result["snippet"], result["snippet"]
    await post(chat, alice, "un Café crème")
    [result] = await results(chat, alice, "cafe")
    assert marked(result["snippet"]) == ["Café"]
    await post(chat, alice, f"see {CJK}")
    [result] = await results(chat, alice, "明天部署")
    assert unmarked(result["snippet"]) == f"see {CJK}"
    assert "".join(marked(result["snippet"])) == "明天部署", result["snippet"]


# -- who finds what -------------------------------------------------------------------------------


async def test_private_rooms_and_dms_of_others_are_never_found(chat: Chat) -> None:
    alice, bob, carol = await chat.bearer("alice"), await chat.bearer("bob"), await chat.bearer("carol")
    admin = await chat.bearer("root", admin=True)
    await create_room(chat, alice, "secret", private=True)
    hidden = await post(chat, alice, "launchcode in the private room", room="secret")
    public = await post(chat, alice, "launchcode in general")
    resp = await chat.client.post("/api/v1/dms", json={"username": "bob"}, headers=alice)
    dm = (await resp.json())["room"]["slug"]
    direct = await post(chat, alice, "launchcode between alice and bob", room=dm)
    assert await ids(chat, alice, "launchcode") == [direct["id"], public["id"], hidden["id"]]
    assert await ids(chat, bob, "launchcode") == [direct["id"], public["id"]]
    assert await ids(chat, carol, "launchcode") == [public["id"]]
    assert await ids(chat, admin, "launchcode") == [public["id"]]
    # Whatever the query: nothing of those rooms leaks, not even by a prefix or a phrase.
    for q in ("l", '"private room"', "private", "alice bob"):
        assert {r["message"]["room"] for r in await results(chat, carol, q)} <= {"general"}, q
    await refused(chat, carol, {"q": "launchcode", "room": dm}, 404)


async def test_removed_or_leaving_members_no_longer_find_the_room(chat: Chat) -> None:
    alice, bob, carol = await chat.bearer("alice"), await chat.bearer("bob"), await chat.bearer("carol")
    admin = await chat.bearer("root", admin=True)
    await create_room(chat, alice, "ops", private=True)
    await add_member(chat, alice, "ops", "bob")
    await add_member(chat, alice, "ops", "carol")
    message = await post(chat, alice, "rotation schedule 明天部署新版本", room="ops")
    for user in (bob, carol):
        assert await ids(chat, user, "rotation") == [message["id"]]
        assert await ids(chat, user, "部署新", room="ops") == [message["id"]]
    # An admin removes bob; carol leaves by herself.
    assert (await chat.client.delete("/api/v1/rooms/ops/members/bob", headers=admin)).status == 204
    assert (await chat.client.delete("/api/v1/rooms/ops/members/carol", headers=carol)).status == 204
    for user in (bob, carol):
        assert await ids(chat, user, "rotation") == []
        assert await ids(chat, user, "部署新") == []
        await refused(chat, user, {"q": "rotation", "room": "ops"}, 404)
    assert await ids(chat, alice, "rotation") == [message["id"]]
    # Added back, bob finds it again: access is decided now, not when the message was indexed.
    await add_member(chat, alice, "ops", "bob")
    assert await ids(chat, bob, "rotation") == [message["id"]]


async def test_archived_rooms_stay_searchable_and_deleted_rooms_leave_the_index(
    chat: Chat, browsers: dict[str, ClientSession],
) -> None:
    alice = await chat.bearer("alice")
    await create_room(chat, alice, "old-project")
    await create_room(chat, alice, "doomed")
    archived = await post(chat, alice, f"roomword kept {CJK}", room="old-project")
    await post(chat, alice, f"roomword doomed {CJK}", room="doomed")
    admin = browsers["alice"]
    csrf = csrf_of(await (await admin.get("/admin")).text())
    resp = await admin.post("/admin/rooms/old-project", data={"csrf": csrf, "action": "archive"},
                            allow_redirects=False)
    assert resp.status == 303
    resp = await admin.post("/admin/rooms/doomed/delete", data={"csrf": csrf, "confirm": "doomed"},
                            allow_redirects=False)
    assert resp.status == 303
    for q in ("roomword", "明天部署", "roomword 部署新"):
        assert await ids(chat, alice, q) == [archived["id"]], q
    await refused(chat, alice, {"q": "roomword", "room": "doomed"}, 404)
    check_indexes_match_messages(chat.app[CONFIG].db)


async def test_deleted_messages_are_not_found(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    kept = await post(chat, alice, "ephemeral but kept")
    gone = await post(chat, alice, "ephemeral secretword")
    gone_cjk = await post(chat, alice, f"ephemeral {CJK}")
    assert await ids(chat, alice, "ephemeral") == [gone_cjk["id"], gone["id"], kept["id"]]
    for message in (gone, gone_cjk):
        assert (await chat.client.delete(f"/api/v1/messages/{message['id']}", headers=alice)).status == 204
    assert await ids(chat, alice, "ephemeral") == [kept["id"]]
    assert await ids(chat, alice, "secretword") == []
    assert await ids(chat, alice, "明天部署") == []
    assert await ids(chat, alice, "ephemeral 部署新") == []


async def test_admin_deletion_of_someone_elses_message_leaves_the_index(chat: Chat) -> None:
    alice, admin = await chat.bearer("alice"), await chat.bearer("root", admin=True)
    message = await post(chat, alice, "moderated remark")
    assert (await chat.client.delete(f"/api/v1/messages/{message['id']}", headers=admin)).status == 204
    assert await ids(chat, alice, "moderated") == []


async def test_edited_messages_are_found_by_their_new_words_only(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    message = await post(chat, alice, "old wording here")
    cjk = await post(chat, alice, CJK)
    latin = await post(chat, alice, "plain latin text")

    async def edit(mid: int, body: str) -> None:
        resp = await chat.client.patch(f"/api/v1/messages/{mid}", json={"body": body}, headers=alice)
        assert resp.status == 200, await resp.text()

    await edit(message["id"], "fresh phrasing now")
    await edit(cjk["id"], "no unspaced text anymore")
    await edit(latin["id"], "今日はいい天気ですね")
    assert await ids(chat, alice, "wording") == []
    assert await ids(chat, alice, "old") == []
    [found] = await results(chat, alice, "phrasing")
    assert found["message"]["id"] == message["id"] and found["message"]["body"] == "fresh phrasing now"
    assert found["message"]["edited_at"] is not None
    assert await ids(chat, alice, "明天部署") == []
    assert await ids(chat, alice, "unspaced anymore") == [cjk["id"]]
    assert await ids(chat, alice, "latin") == []
    assert await ids(chat, alice, "いい天気") == [latin["id"]]
    # Edited twice: only the last words count.
    await edit(message["id"], "third time lucky")
    assert await ids(chat, alice, "phrasing") == []
    assert await ids(chat, alice, "lucky") == [message["id"]]


# -- hostile queries ------------------------------------------------------------------------------


FTS_SYNTAX = ["NEAR(", "NEAR/2", ")", "(", '"', '""', "*", "^", "-", "+", ":", "body:", "{body}", "AND", "OR",
              "NOT", " ", "\t", "\n", "'", "\\", "%", "&", ";", "--", "/*", "\x00", "\x02", "\x03", "\x1f", "\x7f",
              "\u200b", "\u202e", "\ufeff", "\u0301", "_", "😀", "é", "明天部署", "あ", "ดี", "\uff02", "deploy",
              "rank", "MATCH", "'); DROP TABLE messages; --"]
hostile_text = st.lists(st.one_of(st.sampled_from(FTS_SYNTAX), st.text(max_size=12)), max_size=40).map("".join)


def fit_in_a_request_line(q: str) -> str:
    """aiohttp's test server refuses a request line over 8190 bytes before chatd sees it (the real
    server answers that 400 itself, test_edges.py): keep long queries under that, encoded."""
    while len(quote(q, safe="")) > 7000:
        q = q[: len(q) * 2 // 3]
    return q


long_text = st.builds(lambda part, n: fit_in_a_request_line(part * n),
                      st.sampled_from(FTS_SYNTAX + ["word ", "a*", '"x" ']), st.integers(min_value=1, max_value=3000))
# Raw query strings, sent as they are: invalid UTF-8, encoded surrogates and NULs included.
raw_query = st.one_of(
    st.binary(max_size=60).map(lambda b: quote(b, safe="")),
    st.lists(st.sampled_from(["%ED%A0%80", "%ED%BF%BF", "%FF", "%C0%80", "%00", "%22", "%2A", "%28", "+", "%",
                              "%%", "%E6%98%8E", "q=", "&q=", "&", "deploy"]), max_size=20).map("".join),
)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
async def seeded(chat: Chat) -> AsyncIterator[tuple[Chat, dict[str, str], ClientSession]]:
    """An app with messages full of FTS5 syntax, a token and a signed-in browser for alice."""
    alice = await chat.bearer("alice")
    for body in ('NEAR(deploy server) "quoted" a*b ^start -minus col:on AND OR NOT', f"{CJK} deploy café",
                 "\"unbalanced (paren", "plain words here"):
        await post(chat, alice, body)
    browser = await chat.browser("alice")
    try:
        yield chat, alice, browser
    finally:
        await browser.close()


async def check_answers(chat: Chat, alice: dict[str, str], browser: ClientSession, raw: str) -> None:
    """The API and the page for one raw (already encoded) query string: 200 or 400, never more."""
    resp = await chat.client.get(URL(f"/api/v1/search?q={raw}", encoded=True), headers=alice)
    assert resp.status in (200, 400), (raw, resp.status, await resp.text())
    body = await resp.json()
    if resp.status == 200:
        assert set(body) == {"results"} and isinstance(body["results"], list)
        for result in body["results"]:
            assert "<" not in unmarked(result["snippet"]), result["snippet"]
    else:
        error_of(body)
    page = await browser.get(URL(chat.url("/search")).with_query(None).join(URL(f"?q={raw}", encoded=True)),
                             allow_redirects=False)
    assert page.status in (200, 400), (raw, page.status)
    assert page.content_type == "text/html"
    await page.read()


@given(q=st.one_of(hostile_text, long_text))
@example(q="NEAR(")
@example(q='"')
@example(q="*")
@example(q='a" OR "b')
@example(q="AND OR NOT")
@example(q="deploy _")
@example(q="x" * 6000)
@example(q="deploy " * 900)
@FUZZ
async def test_any_query_text_is_200_or_400(seeded: tuple[Chat, dict[str, str], ClientSession], q: str) -> None:
    chat, alice, browser = seeded
    await check_answers(chat, alice, browser, quote(q, safe=""))


@given(raw=raw_query)
@example(raw="%ED%A0%80")
@example(raw="%00%00")
@example(raw="%")
@FUZZ
async def test_any_raw_query_string_is_200_or_400(seeded: tuple[Chat, dict[str, str], ClientSession],
                                                 raw: str) -> None:
    chat, alice, browser = seeded
    await check_answers(chat, alice, browser, raw)


async def test_hostile_room_before_and_limit_are_400_or_404(chat: Chat) -> None:
    alice = await chat.bearer("alice")
    await post(chat, alice, "deploy now")
    for params in ({"room": "../general"}, {"room": "GENERAL"}, {"room": "a" * 500}, {"room": "x+y"},
                   {"before": "1e9"}, {"before": "9" * 40}, {"limit": "1.5"}, {"limit": "９"}, {"limit": " 5"},
                   {"before": "0x10"}):
        resp = await chat.client.get("/api/v1/search", params={"q": "deploy", **params}, headers=alice)
        assert resp.status in (400, 404), (params, resp.status)
        error_of(await resp.json())


# -- the indexes after a crash --------------------------------------------------------------------


async def test_acknowledged_messages_are_found_after_kill_9(tmp_path: Path, server_factory) -> None:
    db = tmp_path / "chatd.db"
    token = make_user(db, "alice")
    server: Server = server_factory(env=FLOOD_ENV).start()
    headers = {"Authorization": f"Bearer {token}"}
    acked: dict[int, int] = {}  # message id -> n of its word burst{n}word
    killed = asyncio.Event()

    async def send(session: ClientSession, n: int) -> None:
        body = f"burst{n}word" + (f" {CJK} {n}" if n % 2 else "")  # half of them in both indexes
        try:
            resp = await session.post(f"{server.url}/api/v1/rooms/general/messages", json={"body": body},
                                      headers=headers)
            if resp.status == 201:
                acked[(await resp.json())["message"]["id"]] = n
        except (TimeoutError, aiohttp.ClientError):
            pass  # in flight when the process died: not acknowledged, may or may not be stored
        if len(acked) >= 300 and not killed.is_set():
            killed.set()
            server.kill()

    async with ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        await asyncio.gather(*(send(session, n) for n in range(2000)))
    assert killed.is_set(), "the server was never killed"
    restarted: Server = server_factory(env=FLOOD_ENV).start()
    async with ClientSession() as session:

        async def found(q: str, before: int | None = None) -> list[int]:
            params = {"q": q, "limit": "100", **({"before": str(before)} if before else {})}
            resp = await session.get(f"{restarted.url}/api/v1/search", params=params, headers=headers)
            assert resp.status == 200, await resp.text()
            return [r["message"]["id"] for r in (await resp.json())["results"]]

        missing = [(mid, n) for mid, n in sorted(acked.items()) if await found(f"burst{n}word") != [mid]]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages not found: {missing[:5]}"
        with_cjk: list[int] = []
        page = await found("明天部署")
        while page:
            with_cjk.extend(page)
            page = await found("明天部署", before=page[-1])
    assert restarted.terminate() == 0
    assert "Traceback" not in restarted.stderr()
    with sqlite3.connect(db) as conn:
        stored_cjk = [row[0] for row in conn.execute("SELECT id FROM messages WHERE body GLOB ? ORDER BY id DESC",
                                                     (UNSPACED_GLOB,))]
    assert with_cjk == stored_cjk
    assert {mid for mid, n in acked.items() if n % 2} <= set(stored_cjk)
    check_indexes_match_messages(db)


def test_the_index_check_sees_drift(tmp_path: Path) -> None:
    """The check above fails when an index and the messages table disagree, either index."""
    db = tmp_path / "drift.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn)
    conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('u', 'x', 0)")
    for body in ("latin words only", f"{CJK} too", "more latin words"):
        conn.execute("INSERT INTO messages (room_id, user_id, body, html, created_at) VALUES (1, 1, ?, ?, 0)",
                     (body, body))
    conn.close()
    check_indexes_match_messages(db)
    with sqlite3.connect(db) as conn:  # the trigram index loses a message the table still has
        conn.execute("INSERT INTO search_grams (search_grams, rowid, body) VALUES ('delete', 2, ?)", (f"{CJK} too",))
    with pytest.raises(AssertionError, match="search_grams drifted"):
        check_indexes_match_messages(db)
    with sqlite3.connect(db) as conn:  # the words index keeps a message the table lost
        conn.execute("DROP TRIGGER search_delete")
        conn.execute("DELETE FROM messages WHERE id = 3")
    with pytest.raises(sqlite3.DatabaseError):
        check_indexes_match_messages(db)


# -- the browser page and permalinks --------------------------------------------------------------


async def test_search_page_lists_results_linking_to_permalinks(chat: Chat, browsers: dict[str, ClientSession]) -> None:
    alice = await chat.bearer("alice")
    older = await post(chat, alice, "pageword in the older message")
    newer = await post(chat, alice, "pageword <b>bold</b> & friends")
    page = await browsers["bob"].get("/search", params={"q": "PAGEWORD"})
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    links = [href for href in Tags(html).links() if href.startswith("/m/")]
    assert links == [f"/m/{newer['id']}", f"/m/{older['id']}"]
    assert "<mark>pageword</mark>" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; friends" in html and "<b>bold" not in html
    # The query stays in the form, as text.
    hostile = await browsers["bob"].get("/search", params={"q": '"><script>alert(1)</script> pageword'})
    assert hostile.status == 200
    assert "<script>alert(1)" not in await hostile.text()
    nothing = await browsers["bob"].get("/search", params={"q": "nowhereword"})
    assert nothing.status == 200 and not [h for h in Tags(await nothing.text()).links() if h.startswith("/m/")]
    blank = await browsers["bob"].get("/search", params={"q": "   "})
    assert blank.status in (200, 400) and blank.content_type == "text/html"


async def test_search_page_pages_to_older_results(chat: Chat, browsers: dict[str, ClientSession]) -> None:
    alice = await chat.bearer("alice")
    posted = [(await post(chat, alice, f"olderword {i}"))["id"] for i in range(25)]
    seen: list[str] = []
    path: str | None = "/search?q=olderword"
    while path:
        page = await browsers["bob"].get(path)
        assert page.status == 200
        tags = Tags(await page.text())
        seen.extend(href for href in tags.links() if href.startswith("/m/"))
        path = next((href for href in tags.links() if href.startswith("/search?") and "before=" in href), None)
    assert seen == [f"/m/{mid}" for mid in reversed(posted)]


async def test_search_page_needs_a_session(chat: Chat) -> None:
    resp = await chat.client.get("/search?q=x", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=")


async def test_search_is_reachable_from_every_page(chat: Chat, browsers: dict[str, ClientSession]) -> None:
    alice = await chat.bearer("alice")
    await create_room(chat, alice, "team", private=True)
    for path in ("/r/general", "/r/team", "/dm/bob", "/rooms", "/rooms/new", "/r/team/members"):
        page = await browsers["alice"].get(path)
        assert page.status == 200, path
        tags = Tags(await page.text())
        assert any(t == "form" and a.get("action") == "/search" for t, a in tags.tags) or any(
            href.startswith("/search") for href in tags.links()), f"{path} has no way to /search"


async def test_permalink_opens_the_room_page_at_the_message(chat: Chat, browsers: dict[str, ClientSession]) -> None:
    alice = await chat.bearer("alice")
    posted = [await post(chat, alice, f"context line {i}") for i in range(5)]
    target = posted[2]
    resp = await browsers["bob"].get(f"/m/{target['id']}", allow_redirects=False)
    assert resp.status == 303
    location = URL(resp.headers["Location"])
    assert location.path == "/r/general" and location.query.get("around") == str(target["id"])
    page = await browsers["bob"].get(location.with_fragment(None))
    assert page.status == 200
    tags = Tags(await page.text())
    assert tags.by_id(f"message-{target['id']}").get("aria-current") == "true"
    for other in posted[:2] + posted[3:]:  # the messages on both sides are there, not current
        assert tags.by_id(f"message-{other['id']}").get("aria-current") is None
    assert sum(1 for _, a in tags.tags if a.get("aria-current") == "true") == 1


async def test_permalink_into_a_dm_opens_the_conversation(chat: Chat, browsers: dict[str, ClientSession]) -> None:
    alice = await chat.bearer("alice")
    resp = await chat.client.post("/api/v1/dms", json={"username": "bob"}, headers=alice)
    message = await post(chat, alice, "a direct word", room=(await resp.json())["room"]["slug"])
    resp = await browsers["bob"].get(f"/m/{message['id']}", allow_redirects=False)
    assert resp.status == 303
    location = URL(resp.headers["Location"])
    assert location.path == "/dm/alice" and location.query.get("around") == str(message["id"])
    page = await browsers["bob"].get(location.with_fragment(None))
    assert Tags(await page.text()).by_id(f"message-{message['id']}").get("aria-current") == "true"


async def test_permalinks_the_user_may_not_read_are_404(chat: Chat, browsers: dict[str, ClientSession]) -> None:
    alice = await chat.bearer("alice")
    await create_room(chat, alice, "hidden", private=True)
    private = await post(chat, alice, "private matter", room="hidden")
    deleted = await post(chat, alice, "soon gone")
    assert (await chat.client.delete(f"/api/v1/messages/{deleted['id']}", headers=alice)).status == 204
    for path in (f"/m/{private['id']}", f"/m/{deleted['id']}", "/m/999999", f"/m/{10**12}"):
        resp = await browsers["bob"].get(path, allow_redirects=False)
        assert resp.status == 404, (path, resp.status)
    for path in ("/m/abc", "/m/-1", "/m/1.5", "/m/%EF%BC%91", f"/m/{1 << 62}"):  # not an id at all: 400 is fine too
        resp = await browsers["bob"].get(URL(chat.url(path), encoded=True), allow_redirects=False)
        assert resp.status in (400, 404), (path, resp.status)
    # The member still gets there; the deleted message is gone for its author too.
    assert (await browsers["alice"].get(f"/m/{private['id']}", allow_redirects=False)).status == 303
    assert (await browsers["alice"].get(f"/m/{deleted['id']}", allow_redirects=False)).status == 404


# -- migration 6 over older messages --------------------------------------------------------------


@sqlite_only
async def test_migration_6_indexes_messages_stored_before_it(tmp_path: Path, make_chat) -> None:
    db = tmp_path / "chatd.db"  # the file make_chat opens
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, upto=5)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    now = time.time()
    user_id = conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('olduser', 'x', ?)",
                           (now,)).lastrowid
    room_id = conn.execute("SELECT id FROM rooms WHERE slug = 'general'").fetchone()[0]
    bodies = ["ancient deploy notes", f"old {CJK}", "Ångström café"]
    for seq, body in enumerate(bodies, start=1):
        conn.execute("INSERT INTO messages (room_id, user_id, body, html, created_at, seq) VALUES (?, ?, ?, ?, ?, ?)",
                     (room_id, user_id, body, body, now, seq))
    conn.execute("UPDATE rooms SET last_message_id = 3, message_count = 3 WHERE id = ?", (room_id,))
    conn.execute("INSERT INTO memberships (room_id, user_id, last_read_id, last_read_seq) VALUES (?, ?, 3, 3)",
                 (room_id, user_id))
    conn.close()
    chat = await make_chat()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 6
    headers = await chat.bearer("olduser")
    [found] = await results(chat, headers, "ancient deplo")
    assert found["message"]["id"] == 1 and found["message"]["body"] == "ancient deploy notes"
    assert found["message"]["author"] == "olduser" and found["message"]["room"] == "general"
    assert await ids(chat, headers, "部署新") == [2]
    assert await ids(chat, headers, "angstrom CAFE") == [3]
    new = await post(chat, headers, "a new deploy")
    assert await ids(chat, headers, "deploy") == [new["id"], 1]
    check_indexes_match_messages(db)


@sqlite_only
def test_migration_7_keeps_what_migration_6_indexed(tmp_path: Path) -> None:
    """Migration 7's triggers test for text outside ASCII before the unspaced scripts: messages
    indexed by migration 6's triggers are edited and deleted out of both indexes exactly."""
    db = tmp_path / "chatd.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, upto=6)
    user_id = conn.execute("INSERT INTO users (username, password_hash, created_at) VALUES ('u', 'x', 0)").lastrowid
    room_id = conn.execute("SELECT id FROM rooms WHERE slug = 'general'").fetchone()[0]
    bodies = ["plain words", f"old {CJK}", "Ångström café", f"{CJK} again", "more plain words"]
    for seq, body in enumerate(bodies, start=1):
        conn.execute("INSERT INTO messages (room_id, user_id, body, html, created_at, seq) VALUES (?, ?, ?, ?, 0, ?)",
                     (room_id, user_id, body, body, seq))
    assert migrate(conn) == 6
    conn.execute("UPDATE messages SET body = 'now plain' WHERE id = 2")  # was in the trigram index
    conn.execute("UPDATE messages SET body = ? WHERE id = 1", (f"now {CJK}",))  # goes into it
    conn.execute("UPDATE messages SET body = 'Ölfeld' WHERE id = 3")  # outside ASCII, not unspaced
    conn.execute("DELETE FROM messages WHERE id = 4")
    conn.execute("INSERT INTO messages (room_id, user_id, body, html, created_at, seq) VALUES (?, ?, ?, ?, 0, 6)",
                 (room_id, user_id, f"new {CJK}", "x"))
    grams = [r for (r,) in conn.execute("SELECT rowid FROM search_grams WHERE search_grams MATCH '\"部署新\"'"
                                        " ORDER BY rowid")]
    assert grams == [1, 6]
    conn.close()
    check_indexes_match_messages(db)


def segments(db: Path, index: str) -> int:
    """Leaf rows in an FTS5 index's data table: one per small segment while automerge is off
    (rows 1 and 10 are the index's averages and structure)."""
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {index}_data WHERE id > 10").fetchone()[0]


@sqlite_only
async def test_a_batch_of_posts_writes_each_index_once(chat: Chat) -> None:
    """A batch of posts is one INSERT: FTS5 writes its pending terms as a new segment at every
    statement's savepoint, so a statement per message would write a segment per message."""
    services = chat.services
    db = Path(services.store.path)
    with sqlite3.connect(db) as conn:
        for index in ("search_words", "search_grams"):  # so that each segment written stays visible
            conn.execute(f"INSERT INTO {index} ({index}, rank) VALUES ('automerge', 0)")
    alice = await chat.user("alice")
    general = await services.chat.room_for(alice, "general")
    words, grams = segments(db, "search_words"), segments(db, "search_grams")
    before = sum(services.hub.metrics.write_counts)
    bodies = [f"batch word{i} café" if i % 3 else f"batch {CJK} {i}" for i in range(12)]
    # No await between these submissions: they are one batch (checked below).
    posted = await asyncio.gather(*(services.chat.post_in(alice, general, body, None) for body in bodies))
    assert sum(services.hub.metrics.write_counts) == before + 1
    assert segments(db, "search_words") == words + 1
    assert segments(db, "search_grams") == grams + 1
    headers = await chat.bearer("alice")
    assert await ids(chat, headers, "batch", limit=50) == [message.id for message, _ in reversed(posted)]
    assert await ids(chat, headers, "部署新") == [message.id for message, _ in reversed(posted[::3])]
    assert await ids(chat, headers, "word7") == [posted[7][0].id]
    check_indexes_match_messages(db)


def test_reindex_rebuilds_a_damaged_index(tmp_path: Path) -> None:
    """`chatd reindex` puts back what a hand-made change took out of either index."""
    db = tmp_path / "chatd.db"
    assert run_cli("users", db=db).returncode == 0  # creates and migrates the file
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO users (id, username, password_hash, created_at) VALUES (7, 'ann', 'x', 0)")
        conn.execute("DROP TRIGGER search_insert")  # rows written as a hand-made change would
        conn.execute("INSERT INTO messages (id, room_id, user_id, body, html, created_at, seq)"
                     " VALUES (1, 1, 7, 'hand made 手工制作', 'x', 0, 1)")
    with sqlite3.connect(db) as conn:
        assert not conn.execute("SELECT rowid FROM search_words WHERE search_words MATCH 'hand'").fetchall()
    done = run_cli("reindex", db=db)
    assert done.returncode == 0 and "1 messages" in done.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT rowid FROM search_words WHERE search_words MATCH 'hand'").fetchall() == [(1,)]
        assert conn.execute("SELECT rowid FROM search_grams WHERE search_grams MATCH '手工制'").fetchall() == [(1,)]
        conn.execute("INSERT INTO search_words (search_words, rank) VALUES ('integrity-check', 1)")
