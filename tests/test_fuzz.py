"""Property-based tests (hypothesis): hostile input at the API, the stream, the browser socket
and the forms, stored XSS, and the Unicode round trip.

Each test builds one app (real SQLite file) and runs every example against it;
pytest-asyncio runs `@given` on `async def` tests in the test's own event loop.
Known regressions are pinned with `@example`, which hypothesis runs first.
Set CHATD_FUZZ_SCALE (default 1) to multiply the number of examples.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import markupsafe
import pytest
from aiohttp import ClientSession, CookieJar, FormData, WSMsgType, WSServerHandshakeError
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from chatd import rules
from chatd.state import SETUP_TOKEN
from conftest import PASSWORD, Chat, csrf_of, login

SCALE = float(os.environ.get("CHATD_FUZZ_SCALE", "1"))
# Limits that fuzzing would otherwise trip over (they have tests of their own).
LOOSE = {
    "messages_per_second": 1e9, "message_burst": 1_000_000_000,
    "login_attempts_per_account": 1_000_000_000, "login_attempts_per_ip": 1_000_000_000,
}
# 405: a path the client normalises onto another route ("./" segments) gets HTTP's own answer.
CONTRACT_ERRORS = {400, 401, 404, 405, 409, 413, 429}
WAIT = 5  # seconds to wait for an answer that must come (a wait, not a timing check)


def fuzz(examples: int, shrink: bool = True) -> settings:
    """Settings for one property. Socket properties do not shrink: a missing answer is only
    seen after a wait, and shrinking would repeat that wait for every candidate."""
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(
        max_examples=max(1, int(examples * SCALE)), deadline=None, print_blob=True, phases=phases,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.large_base_example,
                               HealthCheck.filter_too_much],
    )


pytestmark = pytest.mark.usefixtures("no_server_tracebacks")


# -- strategies --------------------------------------------------------------------------------


class Blob(bytes):
    """Bytes with a short repr, so a failing example with a 200 KB body stays readable."""

    def __repr__(self) -> str:
        text = bytes.__repr__(self)
        return text if len(text) <= 200 else f"{text[:100]}...{text[-40:]} ({len(self)} bytes)"


class Text(str):
    """A str with a short repr (long frames, deep JSON)."""

    def __repr__(self) -> str:
        text = str.__repr__(self)
        return text if len(text) <= 200 else f"{text[:100]}...{text[-40:]} ({len(self)} characters)"


SPECIALS = [
    "\u200f", "\u200e", "\u202e", "\u202d", "\u2066", "\u2069", "\u200d", "\u200b", "\u2060", "\ufeff",
    "👩‍👩‍👧‍👦", "🏳️‍🌈", "😀", "𝕏", "𠜎", "é", "e\u0301", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\x00", "\x01", "\x1b[31m", "\x7f", "\x85", "\xa0", "\u2028", "\u2029", "\u3000",
    "\r\n", "\r", "\n", "\t", "\x0b", "\x0c", " ",
    "<", ">", "&", '"', "'", "`", "\\", "/", "%00", "&amp;", "&#x3c;",
    "@alice", "@bob", "@Bob.", "@nobody", "http://", "https://x.example/", "javascript:", "data:",
]
LONE_SURROGATES = ["\ud800", "\udfff", "\udbff", "\udc00x"]
MAX_BODY = 10_000

text_piece = st.one_of(st.sampled_from(SPECIALS), st.text(max_size=8))
nasty_text = st.lists(text_piece, max_size=12).map("".join)
nasty_text_with_surrogates = st.lists(
    st.one_of(text_piece, st.sampled_from(LONE_SURROGATES)), max_size=12).map("".join)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), nasty_text_with_surrogates,
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["body", "client_id", "slug", "name", "private", "username", "message_id", "room", "type"]
field_values = st.one_of(
    json_values,
    st.sampled_from(["general", "alice", "bob", "nope", "", " ", "a" * 65, "x" * (MAX_BODY + 1), "0", "-1",
                     "9" * 30, "1e3", "٣", "true", True, 2**62, -1, 0.5]),
)
objects = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), field_values, max_size=6)


def _deep(n: int, kind: str) -> str:
    return Text("[" * n + "]" * n if kind == "list" else '{"a":' * n + "1" + "}" * n)


deep_json = st.builds(_deep, st.integers(min_value=1, max_value=60_000), st.sampled_from(["list", "dict"]))
MALFORMED = [
    b"", b"{", b"}", b"[", b'{"body":', b'{"body": "x"', b'{"body": "x"} trailing', b"{'body': 'x'}",
    b"NaN", b"Infinity", b"-Infinity", b'{"body": NaN}', b'{"message_id": 1e999}', b'{"message_id": -0}',
    b"9" * 5000, b'{"message_id": ' + b"9" * 5000 + b"}", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00",
    b'{"body": "\\ud800"}', b'{"body": "\\udfff\\ud800"}', b'{"body": "\\u0000"}', b'"\\ud800"',
    b'{"body": "\xed\xa0\x80"}', b'{"body": "\xc0\xaf"}', b'{"body": "x", "body": 1}', b"null", b"[]", b"1",
    b'{"slug": "general"}', b'{"username": "\\ud800"}', b'{"private": "true", "slug": "a"}',
]
raw_bodies = st.one_of(
    objects.map(lambda o: json.dumps(o).encode()),
    objects.map(lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.sampled_from(MALFORMED),
    deep_json.map(str.encode),
    st.integers(min_value=0, max_value=300_000).map(lambda n: b'{"body": "' + b"x" * n + b'"}'),
).map(Blob)
printable_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)


# -- shared checks -------------------------------------------------------------------------------


async def check_api_answer(resp: Any, what: str) -> None:
    """No 5xx; every 4xx is the contract's JSON error; no traceback anywhere."""
    text = await resp.text(errors="replace")
    assert resp.status < 500, f"{what}: {resp.status} {text[:300]}"
    assert "Traceback" not in text and 'File "' not in text, f"{what}: {text[:300]}"
    if resp.status >= 400:
        assert resp.status in CONTRACT_ERRORS, f"{what}: {resp.status} {text[:300]}"
        assert resp.content_type == "application/json", f"{what}: {resp.content_type}"
        body = json.loads(text)
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def assert_local(location: str, base: str) -> None:
    assert location.startswith("/") and not location.startswith("//") and "\\" not in location, location
    resolved = urlsplit(urljoin(base + "/", location))
    assert resolved.netloc == urlsplit(base).netloc, location


@dataclass
class World:
    chat: Chat
    alice: dict[str, str]
    bob: dict[str, str]


@pytest.fixture
async def world(make_chat: Any) -> World:
    chat = await make_chat(**LOOSE)
    return World(chat, await chat.bearer("alice"), await chat.bearer("bob"))


# -- 1. the JSON API -----------------------------------------------------------------------------

AUTH = st.sampled_from(["alice"] * 12 + ["none", "bad", "empty", "basic", "weird"])
CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data", "multipart/form-data; boundary=zz", "application/json; charset=latin-1", None,
])
slugs_in_paths = st.one_of(
    st.just("general"), st.just("general"), st.just("general"),
    st.sampled_from(["general", "general", "nope", "alice+bob", "%ED%A0%80", "%FF", "%00", "..", "%2e%2e",
                     "%2F", "a" * 101, "GENERAL", "general%20"]),
    st.text(max_size=12).map(lambda s: quote(s, safe="")),
)
ENDPOINTS = ["/api/v1/rooms/{slug}/messages", "/api/v1/rooms", "/api/v1/dms",
             "/api/v1/rooms/{slug}/read", "/api/v1/rooms/{slug}/members"]


def auth_headers(world: World, kind: str) -> dict[str, str]:
    return {
        "alice": world.alice, "none": {}, "bad": {"Authorization": "Bearer chatd_nope"},
        "empty": {"Authorization": "Bearer "}, "basic": {"Authorization": "Basic YWxpY2U6eA=="},
        "weird": {"Authorization": "Bearer <script>\"'%00 x"},
    }[kind]


# Bodies shaped like the real ones, with hostile values, so that many get past the parser.
SHAPED_BODY = st.one_of(st.text(min_size=1), nasty_text, nasty_text_with_surrogates, json_values)
shaped_bodies = st.fixed_dictionaries({}, optional={
    "body": SHAPED_BODY,
    "client_id": st.one_of(st.none(), printable_ascii, json_values),
    "slug": st.one_of(st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True), nasty_text_with_surrogates, json_values),
    "name": st.one_of(nasty_text_with_surrogates, json_values),
    "private": st.one_of(st.booleans(), json_values),
    "username": st.one_of(st.sampled_from(["alice", "bob", "ALICE", " bob ", "nobody", "bob\x00"]),
                          nasty_text_with_surrogates, json_values),
    "message_id": st.one_of(st.integers(), st.sampled_from(["1", "", "x", 2**62, 1.0, True]), json_values),
})
shaped_bodies = st.one_of(
    shaped_bodies, st.builds(lambda body, rest: {**rest, "body": body}, SHAPED_BODY, shaped_bodies),
).map(lambda o: Blob(json.dumps(o).encode()))


@fuzz(150)
@given(endpoint=st.sampled_from(ENDPOINTS), slug=slugs_in_paths, body=st.one_of(shaped_bodies, raw_bodies),
       auth=AUTH,
       content_type=CONTENT_TYPES)
@example(endpoint=ENDPOINTS[0], slug="general", body=Blob(b"[" * 5000 + b"]" * 5000), auth="alice",
         content_type="application/json")  # RecursionError in json.loads
@example(endpoint=ENDPOINTS[1], slug="general", body=Blob(b'{"slug":' * 3000), auth="alice",
         content_type="application/json")
async def test_api_posts_survive_hostile_bodies(
    world: World, endpoint: str, slug: str, body: bytes, auth: str, content_type: str | None
) -> None:
    path = endpoint.format(slug=slug)
    headers = dict(auth_headers(world, auth))
    if content_type:
        headers["Content-Type"] = content_type
    resp = await world.chat.client.post(path, data=body, headers=headers)
    event(f"{endpoint.split('/')[-1]} -> {resp.status}")
    await check_api_answer(resp, f"POST {path} {body[:80]!r}")
    if auth != "alice" and resp.status != 404:  # 404: a path no route matches (an empty slug)
        assert resp.status == 401


query_values = st.one_of(
    st.text(max_size=20), st.integers().map(str),
    st.sampled_from(["", "-1", "0", "1", "200", "201", "9" * 19, "9" * 300, "1e3", "0x10", " 5", "5 ", "٣",
                     "١٠", "²", "NaN", "None", "null", "[]", "true", "1.5", "+1", "4611686018427387904"]),
)
query_params = st.lists(
    st.tuples(st.one_of(st.sampled_from(["before", "after", "limit", "since"]), st.text(max_size=6)), query_values),
    max_size=5,
)
raw_queries = st.sampled_from(["", "limit=%FF", "before=%00", "after=%ED%A0%80", "limit=1&limit=x", "limit",
                               "&&&", "before=1&after=2", "limit=%2B1", "after=%EF%BC%91"])


@fuzz(100)
@given(slug=slugs_in_paths, params=query_params, raw=raw_queries, auth=AUTH)
async def test_history_survives_hostile_query_params(
    world: World, slug: str, params: list, raw: str, auth: str
) -> None:
    path = f"/api/v1/rooms/{slug}/messages" + (f"?{raw}" if raw else "")
    resp = await world.chat.client.get(path, params=params or None, headers=auth_headers(world, auth))
    event(f"history -> {resp.status}")
    await check_api_answer(resp, f"GET {path} {params!r}")
    if resp.status == 200:
        messages = (await resp.json())["messages"]
        ids = [m["id"] for m in messages]
        assert ids == sorted(set(ids)) and len(ids) <= 200


# -- 2. the event stream --------------------------------------------------------------------------

CLIENT_ID_RE = re.compile(r"[\x21-\x7e]{1,64}")


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    except RecursionError:  # pragma: no cover - deep nesting is drawn separately
        return False
    return False


# Deep nesting that still fits in one frame of the default 64 KiB limit.
deep_frames = st.builds(lambda n, kind: _deep(n if kind == "list" else n // 3, kind),
                        st.integers(min_value=1, max_value=30_000), st.sampled_from(["list", "dict"]))
not_json_text = st.one_of(
    st.sampled_from(["{", "}", "[1,", "nul", "{'type': 'send'}", '{"type":"send"', "NaN]", "\x00", " ", ""]),
    st.text(max_size=200).filter(_not_json),
)
non_object_json = json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps)
whitespace_bodies = st.text(st.sampled_from(" \t\n\r\x0b\x0c\u3000\xa0\x85\u2028\u2029\x00\x01\x1f\x7f"), max_size=30)
too_long_bodies = st.integers(min_value=MAX_BODY + 1, max_value=MAX_BODY + 2000).map(lambda n: Text("x" * n))
bad_bodies = st.one_of(
    json_values.filter(lambda v: not isinstance(v, str)), whitespace_bodies, too_long_bodies,
    st.tuples(nasty_text, st.sampled_from(LONE_SURROGATES), nasty_text).map("".join),
)
bad_client_ids = st.one_of(
    json_values.filter(lambda v: v is not None and v != "" and not isinstance(v, str)),
    st.text(max_size=80).filter(lambda s: s != "" and not CLIENT_ID_RE.fullmatch(s)),
    st.sampled_from(["has space", "x" * 65, "é", "\ud800", "a\ud800", "\x00", "\t"]),
)
unknown_rooms = st.one_of(json_values.filter(lambda v: not isinstance(v, str)),
                          st.text(max_size=120).filter(lambda s: s != "general"),
                          st.sampled_from(["\ud800", "General", " general", "general\x00", "x" * 101]))


@st.composite
def bad_send(draw: Any, base: dict) -> dict:
    """A send frame with at least one defect, so it must be answered with an error."""
    frame = dict(base)
    if draw(st.booleans()):
        frame["client_id"] = draw(printable_ascii)
    defect = draw(st.sampled_from(["room", "no room", "body", "no body", "client_id"]))
    if defect == "room":
        frame["room"] = draw(unknown_rooms)
    elif defect == "no room":
        frame.pop("room", None)
    elif defect == "body":
        frame["body"] = draw(bad_bodies)
    elif defect == "no body":
        frame.pop("body")
    else:
        frame["client_id"] = draw(bad_client_ids)
    extra = draw(st.dictionaries(st.text(max_size=5).filter(lambda k: k not in ("type", "room", "body", "client_id")),
                                 json_values, max_size=2))
    return {**extra, **frame}


# Frames that are wrong before their type matters, the same for both sockets: (kind, data).
malformed_frames = st.one_of(
    not_json_text.map(lambda t: ("text", t)),
    deep_frames.map(lambda t: ("text", t)),
    non_object_json.map(lambda t: ("text", t)),
    st.binary(max_size=500).map(lambda b: ("binary", b)),
)


@st.composite
def _bad_stream_objects(draw: Any) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["unknown type", "send", "typing"]))
    if kind == "unknown type":
        frame = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
        if draw(st.booleans()):
            frame["type"] = draw(json_values.filter(lambda v: v not in ("send", "typing")))
        else:
            frame.pop("type", None)
        return "text", json.dumps(frame)
    if kind == "send":
        return "text", Text(json.dumps(draw(bad_send({"type": "send", "room": "general", "body": "hello"}))))
    frame = {"type": "typing"}
    if draw(st.booleans()):
        frame["room"] = draw(unknown_rooms)
    return "text", json.dumps(frame)


bad_stream_frames = st.one_of(malformed_frames, _bad_stream_objects())


_ids = itertools.count()


async def _next_frame(ws: Any) -> Any:
    msg = await asyncio.wait_for(ws.receive(), WAIT)
    assert msg.type == WSMsgType.TEXT, f"the socket ended: {msg.type.name} {msg.data!r} {msg.extra!r}"
    return msg.data


@fuzz(100, shrink=False)
@given(frames=st.lists(bad_stream_frames, min_size=1, max_size=4))
@example(frames=[("text", _deep(5000, "list"))])  # RecursionError kills the stream
@example(frames=[("text", json.dumps({"type": "send", "room": "\ud800", "body": "x"}))])
@example(frames=[("text", json.dumps({"type": "typing", "room": "\ud800"}))])
@example(frames=[("text", json.dumps({"type": "send", "room": "general", "body": "x", "client_id": "\ud800"}))])
@example(frames=[("text", json.dumps({"type": "nope", "client_id": "\ud800"}))])
async def test_stream_answers_every_bad_frame_and_stays_open(world: World, frames: list) -> None:
    ws = await world.chat.stream(world.alice)
    try:
        for kind, payload in frames:
            if kind == "binary":
                await ws.send_bytes(payload)
            else:
                await ws.send_str(payload)
            while True:  # skip presence and typing; the first error event answers this frame
                event = json.loads(await _next_frame(ws))
                if event.get("type") != "presence":
                    break
            assert event.get("type") == "error", (payload, event)
            assert set(event) == {"type", "code", "message", "client_id"}, event
            assert isinstance(event["code"], str) and event["code"], event
            assert isinstance(event["message"], str) and event["message"], event
            assert event["client_id"] is None or isinstance(event["client_id"], str), event
            if kind == "text" and '"type": "send"' in payload:
                sent = json.loads(payload).get("client_id")
                if isinstance(sent, str) and CLIENT_ID_RE.fullmatch(sent):
                    assert event["client_id"] == sent, (payload, event)
        # Still open and working: a good send is acknowledged with its client_id.
        cid = f"ok-{next(_ids)}"
        await ws.send_json({"type": "send", "room": "general", "body": "still here", "client_id": cid})
        while True:
            event = json.loads(await _next_frame(ws))
            if event.get("type") == "message":
                break
            assert event.get("type") == "presence", event
        assert event["message"]["client_id"] == cid and event["message"]["body"] == "still here"
    finally:
        await ws.close()


upgrade_values = st.one_of(query_values, st.sampled_from(["general", "nope", "alice+bob", "GENERAL", ""]))


@fuzz(40)
@given(since=st.one_of(st.none(), query_values), room=st.one_of(st.none(), st.just("general"), upgrade_values),
       tab=st.booleans())
async def test_socket_upgrades_survive_hostile_query_params(
    browsers: Browsers, since: str | None, room: str | None, tab: bool
) -> None:
    params = [(k, v) for k, v in (("since", since), ("room", room)) if v is not None]
    path = "/ws" if tab else "/api/v1/stream"
    try:
        ws = await browsers.alice.ws_connect(path, params=params, headers={"Origin": browsers.origin})
    except WSServerHandshakeError as exc:
        event(f"{path} -> {exc.status}")
        assert exc.status in (400, 404), (path, params, exc.status)
        return
    event(f"{path} -> 101")
    await ws.close()


# -- 3. the browser socket ---------------------------------------------------------------------------


@dataclass
class Browsers:
    chat: Chat
    alice: ClientSession
    bob: ClientSession
    origin: str


@pytest.fixture
async def browsers(make_chat: Any) -> AsyncIterator[Browsers]:
    chat = await make_chat(**LOOSE)
    await chat.user("alice")
    await chat.user("bob")
    alice, bob = await chat.browser("alice"), await chat.browser("bob")
    try:
        yield Browsers(chat, alice, bob, chat.url("/").rstrip("/"))
    finally:
        await alice.close()
        await bob.close()


bad_message_ids = st.one_of(
    st.none(), st.just(""), st.booleans(), st.floats(), st.integers(max_value=-1),
    st.integers(min_value=2**62), st.lists(st.integers(), max_size=2),
    st.text(max_size=25).filter(lambda s: s != "" and not (s.isascii() and s.isdigit() and len(s) < 19)),
)


@st.composite
def _bad_tab_objects(draw: Any) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["unknown type", "send", "read"]))
    if kind == "unknown type":
        frame = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        frame["type"] = draw(json_values.filter(lambda v: v not in ("send", "typing", "read")))
        return "text", json.dumps(frame)
    if kind == "send":
        base = {"type": "send", "body": "hello"} if draw(st.booleans()) else {"body": "hello"}
        frame = draw(bad_send({**base, "room": "general"}).filter(lambda f: "room" in f))
        frame.pop("room")  # the tab's room comes from its URL; room defects become body/client_id ones
        if "body" in frame and isinstance(frame["body"], str) and frame["body"] == "hello" and (
            "client_id" not in frame or (isinstance(frame["client_id"], str)
                                         and CLIENT_ID_RE.fullmatch(frame["client_id"]))):
            frame["body"] = draw(bad_bodies)
        return "text", Text(json.dumps(frame))
    frame = {"type": "read"}
    mid = draw(bad_message_ids)
    if mid is not None:
        frame["message_id"] = mid
    return "text", json.dumps(frame)


bad_tab_frames = st.one_of(malformed_frames, _bad_tab_objects())


def _tab_json(data: str) -> dict | None:
    if data.startswith("{"):
        return json.loads(data)
    return None


@fuzz(80, shrink=False)
@given(frames=st.lists(bad_tab_frames, min_size=1, max_size=4))
@example(frames=[("text", _deep(5000, "list"))])  # RecursionError: no answer
@example(frames=[("text", json.dumps({"type": "send", "body": "x", "client_id": "\ud800"}))])
async def test_browser_socket_answers_bad_frames_and_stays_open(browsers: Browsers, frames: list) -> None:
    ws = await browsers.alice.ws_connect("/ws?room=general", headers={"Origin": browsers.origin})
    try:
        for kind, payload in frames:
            if kind == "binary":
                # Binary frames are not htmx's: answered with an error like any bad frame.
                await ws.send_bytes(payload)
            else:
                await ws.send_str(payload)
            while True:  # skip online lists, unread counts, typing; the next error answers this frame
                data = _tab_json(await _next_frame(ws))
                if data is not None and "error" in data:
                    break
            assert isinstance(data["error"], str) and data["error"], data
            assert data.get("client_id") is None or isinstance(data["client_id"], str), data
            assert "Traceback" not in data["error"]
        cid = f"c{next(_ids)}"
        await ws.send_json({"type": "send", "body": "x", "client_id": cid})
        while True:
            data = await _next_frame(ws)
            assert not (data.startswith("{") and "error" in json.loads(data)), data
            if 'id="message-' in data and f'data-client-id="{cid}"' in data:
                break
    finally:
        await ws.close()


# -- 4. forms -------------------------------------------------------------------------------------------

FORM_FIELDS = ["csrf", "username", "password", "password2", "next", "token", "slug", "name", "private",
               "action", "back"]
REAL = "<<real>>"  # replaced by the right value for the field at run time
form_values = st.one_of(
    nasty_text, st.text(max_size=30), st.just(REAL), st.just(REAL),
    st.sampled_from(["", "alice", "bob", "ALICE ", PASSWORD, "on", "add", "remove", "leave", "admin",
                     "https://evil.example", "//evil.example", "/\\evil.example", "javascript:alert(1)",
                     "/r/general", "new-room", "x" * 3000]),
)
# ASCII names: aiohttp's client cannot encode a multipart form mixing files and non-ASCII names.
field_names = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6)
form_fields = st.dictionaries(st.one_of(st.sampled_from(FORM_FIELDS), field_names), form_values,
                              max_size=7)
FORM_PATHS = ["/login", "/login", "/setup", "/rooms/new", "/logout", "/r/general/members", "/r/secret/members",
              "/r/nope/members"]
raw_form_bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"csrf=%FF%FE", b"a=%ED%A0%80", b"%%%", b"=&=&", b"username=\xff", b"--zz\r\n",
                     b'--zz\r\nContent-Disposition: form-data; name="csrf"\r\n\r\nx\r\n--zz--\r\n',
                     b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n",
                     b"--zz\r\n\r\n\r\n", b"username=" + b"a" * 300_000]),
)


@dataclass
class FormWorld:
    chat: Chat
    session: ClientSession
    form_token: str
    setup_token: str
    origin: str


@pytest.fixture
async def form_world(make_chat: Any) -> AsyncIterator[FormWorld]:
    chat = await make_chat(**LOOSE)
    setup_token = chat.app[SETUP_TOKEN][0] or ""
    await chat.user("alice")
    await chat.user("bob")
    alice_api = await chat.bearer("alice")
    await chat.client.post("/api/v1/rooms", json={"slug": "secret", "private": True}, headers=alice_api)
    session = ClientSession(base_url=chat.url("/"), cookie_jar=CookieJar(unsafe=True))
    form_token = csrf_of(await (await session.get("/login")).text())
    try:
        yield FormWorld(chat, session, form_token, setup_token, chat.url("/").rstrip("/"))
    finally:
        await session.close()


@fuzz(120)
@given(path=st.sampled_from(FORM_PATHS), fields=form_fields,
       encoding=st.sampled_from(["urlencoded", "urlencoded", "multipart", "multipart-files", "raw"]),
       raw=raw_form_bodies, raw_type=st.sampled_from(["application/x-www-form-urlencoded",
                                                       "multipart/form-data; boundary=zz",
                                                       "multipart/form-data", "text/plain"]),
       cross_site=st.sampled_from([False, False, False, True]), with_csrf=st.sampled_from([True, True, True, False]))
async def test_form_posts_never_fail(
    form_world: FormWorld, path: str, fields: dict, encoding: str, raw: bytes, raw_type: str, cross_site: bool,
    with_csrf: bool,
) -> None:
    w = form_world
    # Signed in as alice for each example (an earlier example may have signed out).
    if (await w.session.get("/api/v1/me")).status != 200:
        resp = await login(w.session, "alice")
        assert resp.status == 303
    page = await w.session.get("/r/general")
    session_csrf = csrf_of(await page.text())
    real = {"csrf": w.form_token if path in ("/login", "/setup") else session_csrf, "token": w.setup_token,
            "username": "alice", "password": PASSWORD, "password2": PASSWORD, "next": "/r/general",
            "slug": f"room-{next(_ids)}", "name": "A room", "private": "on", "action": "add", "back": "admin"}
    if with_csrf:
        fields = {"csrf": REAL, **fields}
    values = {k: (real.get(k, "x") if v == REAL else v) for k, v in fields.items()}
    headers = {"Origin": "http://evil.example"} if cross_site else {}
    if encoding == "urlencoded":
        data: Any = values
    elif encoding.startswith("multipart"):
        data = FormData()
        for i, (k, v) in enumerate(values.items()):
            if encoding == "multipart-files" and i % 2 == 0:
                data.add_field(k, v.encode(), filename=f"f{i}.bin", content_type="application/octet-stream")
            else:
                data.add_field(k, v)
        if not values:
            data.add_field("x", b"", filename="empty")
    else:
        data = raw
        headers["Content-Type"] = raw_type
    resp = await w.session.post(path, data=data, headers=headers, allow_redirects=False)
    event(f"{path} -> {resp.status}")
    text = await resp.text(errors="replace")
    assert resp.status < 500, f"{path} {encoding} {values!r}: {resp.status} {text[:300]}"
    assert "Traceback" not in text
    if cross_site:  # refused: by the CSRF check, or earlier as an unreadable or oversize form
        assert resp.status in (400, 403, 413), (path, resp.status)
    if resp.status in (301, 302, 303, 307, 308):
        assert_local(resp.headers["Location"], w.origin)


# -- 5. stored XSS ------------------------------------------------------------------------------------------

XSS_CORPUS = [
    "<script>alert(1)</script>", "<SCRIPT SRC=//evil.example/x.js></SCRIPT>", "<scr<script>ipt>alert(1)</script>",
    "<img src=x onerror=alert(1)>", "<svg/onload=alert(1)>", '"><svg onload=alert(1)>',
    "'><img src=x onerror=alert(1)>",
    "javascript:alert(1)", "JaVaScRiPt:alert(1)", "<a href=\"javascript:alert(1)\">x</a>", "jav&#x09;ascript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "<iframe src=javascript:alert(1)>",
    "<math><mi xlink:href=javascript:alert(1)>x", "<body onload=alert(1)>", "<div hx-get=/logout hx-trigger=load>",
    "<a hx-post=/logout hx-trigger=load>", "{{7*7}}", "${alert(1)}", "<!--", "-->", "]]>", "<![CDATA[x]]>",
    'http://x.example/"onmouseover="alert(1)', "http://x.example/'onmouseover='alert(1)",
    "http://x.example/<script>alert(1)</script>", 'https://a.example/x?y="><img src=x onerror=alert(1)>',
    "http://a.example/path)onclick=alert(1)//", "http://a.example/&quot;onclick=alert(1)", "http://a.example/`onmouseover=x`",
    "http://javascript:alert(1)", "https://javascript:alert(1)@evil.example", "javascript://%0Aalert(1)",
    "JavaScript://x.example/%0a%0dalert(document.cookie)", "data://text/html,<script>", "hTtPs://x.example/", "HTTP://X.EXAMPLE/ONLOAD=1",
    "http://x.example/\u202e<script>", "http://x.example/a&b=<i>", "(http://x.example/a_(b))", "http://x.example/.,;:!?",
    "@bob http://x.example/?a=<b>", "@bob<script>alert(1)</script>", "http://x.example/@bob", "@bob.http://x.example",
    "http://x.example@bob", "https://@bob", "@alice@bob", "@bob\"onmouseover=alert(1)", "<@bob>", "&lt;@bob&gt;",
    "@bob's https://x.example/'><script>", "mailto:a@b.example", "vbscript:msgbox(1)", "\x00<script>", "<\x00script>",
    "http://x.example/\nonload=alert(1)", "https://x.example/\u2028<img src=x onerror=alert(1)>",
]
xss_bodies = st.one_of(
    st.sampled_from(XSS_CORPUS),
    st.lists(st.one_of(st.sampled_from(XSS_CORPUS), text_piece), min_size=1, max_size=6).map("".join),
    st.text(max_size=200),
)


def normalise(body: str) -> str:
    """What chatd stores for a body (rules.check_body): CR LF and lone CR become LF, and the
    control characters other than LF and TAB (C0, and DEL) are removed."""
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", body)


HANDLER_RE = re.compile(r"\son\w+\s*=", re.IGNORECASE)
SAFE_HREF = re.compile(r"(?:https?://[^\s\"'<>]+|/dm/[a-z0-9][a-z0-9_.-]{0,31})\Z", re.IGNORECASE)
MESSAGE_TAGS = {"a": {"href", "rel", "target", "class", "data-mention"}, "br": set(), "span": {"class", "title"}}
BIDI_RE = re.compile("[\u202a-\u202e\u2066-\u2069]")


class MessageHtml(HTMLParser):
    """Checks a message's rendered HTML: only links and line breaks, safe hrefs; collects its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raw = self.get_starttag_text() or ""
        if tag not in MESSAGE_TAGS:
            self.problems.append(f"element <{tag}>")
            return
        if HANDLER_RE.search(raw):
            self.problems.append(f"event handler in {raw!r}")
        names = [k for k, _ in attrs]
        if len(names) != len(set(names)) or not set(names) <= MESSAGE_TAGS[tag]:
            self.problems.append(f"attributes {names} on <{tag}>")
        if tag == "br":
            self.text.append("\n")
            return
        got = dict(attrs)
        if tag == "span":  # a bidi control, shown by its code point instead of acting
            if got.get("class") != "bidi" or not re.fullmatch(r"U\+[0-9A-F]{4}", got.get("title") or ""):
                self.problems.append(f"span {raw!r}")
            return
        href = got.get("href") or ""
        if not SAFE_HREF.match(href):
            self.problems.append(f"href {href!r}")
        if href.lower().startswith(("http://", "https://")):
            rel = (got.get("rel") or "").split()
            if not {"noopener", "nofollow"} <= set(rel):
                self.problems.append(f"external link without rel=noopener nofollow: {raw!r}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("a", "span"):
            self.problems.append(f"end tag </{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.problems.append(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.problems.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.problems.append(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.problems.append(f"declaration {data!r}")


def check_message_html(html: str, body: str) -> None:
    assert "<script" not in html.lower(), html
    parser = MessageHtml()
    parser.feed(html)
    parser.close()
    assert parser.problems == [], (parser.problems, html)
    # Nothing lost or invented: the visible text is the body (mentions may change case),
    # each bidi control shown as its code point.
    shown = BIDI_RE.sub(lambda m: f"U+{ord(m.group(0)):04X}", body)
    assert "".join(parser.text).lower() == shown.lower(), (html, body)


VOID = {"br", "img", "input", "hr", "wbr", "meta", "link", "source", "area", "base", "col", "embed", "track"}


class PageScan(HTMLParser):
    """A whole page: nothing executable but our own script files; each message's body HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.problems: list[str] = []
        self.articles: dict[str, dict[str, str | None]] = {}
        self.bodies: dict[str, str] = {}
        self._article: str | None = None
        self._depth = 0  # nesting inside the current message's body div
        self._body: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        got = dict(attrs)
        raw = self.get_starttag_text() or ""
        if tag == "script" and not (got.get("src") or "").startswith("/static/"):
            self.problems.append(f"script {raw!r}")
        if tag in ("iframe", "object", "embed", "base", "style", "svg", "math"):
            self.problems.append(f"element {raw!r}")
        for k, v in attrs:
            if k.startswith("on"):
                self.problems.append(f"handler {k} in {raw!r}")
            if k in ("href", "src", "action", "formaction", "xlink:href") and re.match(
                r"\s*(javascript|data|vbscript):", v or "", re.IGNORECASE
            ):
                self.problems.append(f"{k} {raw!r}")
        if re.fullmatch(r"message-\d+", got.get("id") or ""):  # the contract's anchor
            self._article = got["id"]
            self.articles[got["id"]] = got
        elif self._article and self._depth == 0 and "body" in (got.get("class") or "").split():
            self._depth, self._body = 1, []  # the message's body container
        elif self._depth:
            if tag not in VOID:
                self._depth += 1
            self._body.append(raw)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1
            if self._depth == 0:
                self.bodies[self._article or ""] = "".join(self._body)
                self._article = None
            else:
                self._body.append(f"</{tag}>")

    def handle_data(self, data: str) -> None:
        if self._depth:
            self._body.append(data)

    def handle_entityref(self, name: str) -> None:
        if self._depth:
            self._body.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        if self._depth:
            self._body.append(f"&#{name};")


@fuzz(100)
@given(body=xss_bodies, client_id=st.one_of(st.none(), printable_ascii,
                                            st.sampled_from(['"><script>alert(1)</script>', "'onmouseover=x",
                                                             "<img/src/onerror=alert(1)>"])))
@example(body="<img src=x onerror=alert(1)> @bob https://x.example/?q=\"'><script>", client_id='"><b/onclick=x>')
async def test_no_stored_xss_in_api_html_or_pages(browsers: Browsers, body: str, client_id: str | None) -> None:
    xss = browsers
    expected = normalise(body)
    if rules.is_blank(expected) or len(expected) > MAX_BODY:
        event("skipped: empty or too long")
        return
    cid = None if client_id is None else f"{client_id[:40]}{next(_ids)}"
    resp = await xss.alice.post("/api/v1/rooms/general/messages", json={"body": body, "client_id": cid},
                                headers={"Origin": xss.origin})
    assert resp.status == 201, await resp.text()
    message = (await resp.json())["message"]
    assert message["body"] == expected
    check_message_html(message["html"], expected)
    # The same message as the API lists it, and in the pages of another user and of its author.
    listed = await xss.bob.get(f"/api/v1/rooms/general/messages?after={message['id'] - 1}&limit=1")
    assert (await listed.json())["messages"][0]["html"] == message["html"]
    for who, session in (("bob", xss.bob), ("alice", xss.alice)):
        page = await session.get("/r/general")
        assert page.status == 200
        scan = PageScan()
        scan.feed(await page.text())
        scan.close()
        assert scan.problems == [], (who, scan.problems)
        key = f"message-{message['id']}"
        assert key in scan.articles, who
        article = scan.articles[key]
        assert article["data-author"] == "alice"
        assert not [k for k in article if k.startswith(("on", "hx-", "data-hx"))], article
        if who == "alice" and cid:
            assert article.get("data-client-id") == cid  # escaped into the attribute, read back whole
        assert key in scan.bodies, f"{who}: no element with class 'body' inside the message"
        check_message_html(scan.bodies[key], expected)


room_names = st.one_of(st.sampled_from(XSS_CORPUS), nasty_text, st.text(max_size=80))


@fuzz(50)
@given(name=room_names, private=st.booleans())
async def test_room_names_cannot_inject_markup(browsers: Browsers, name: str, private: bool) -> None:
    xss = browsers
    slug = f"r-{next(_ids)}"
    resp = await xss.alice.post("/api/v1/rooms", json={"slug": slug, "name": name, "private": private},
                                headers={"Origin": xss.origin})
    if resp.status != 201:
        await check_api_answer(resp, f"create room {name!r}")
        assert resp.status == 400
        return
    shown_name = (await resp.json())["room"]["name"]
    if private:  # bob can see it once added
        resp = await xss.alice.post(f"/api/v1/rooms/{slug}/members", json={"username": "bob"},
                                    headers={"Origin": xss.origin})
        assert resp.status == 200
    for path in (f"/r/{slug}", "/r/general"):
        page = await xss.bob.get(path)
        assert page.status == 200
        html = await page.text()
        scan = PageScan()
        scan.feed(html)
        scan.close()
        assert scan.problems == [], (path, scan.problems)
        if path != "/r/general":  # the room's own page shows its name as text, escaped
            assert str(markupsafe.escape(shown_name)) in html, (path, shown_name)


# -- 6. the Unicode round trip -------------------------------------------------------------------------------


unicode_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
long_bodies = st.builds(
    lambda piece, n: Text((piece * (n // len(piece) + 1))[:n]),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12).filter(lambda s: s.strip()),
    st.integers(min_value=MAX_BODY - 60, max_value=MAX_BODY + 60),
)
round_trip_bodies = st.one_of(
    unicode_text.filter(lambda s: len(s) >= 1),
    st.lists(st.one_of(st.sampled_from(SPECIALS), unicode_text), min_size=1, max_size=8).map("".join),
    long_bodies,
)


@fuzz(120)
@given(body=round_trip_bodies)
@example(body=Text("🙂" * MAX_BODY))
@example(body=Text("x" * MAX_BODY + "\r\n"))  # 10,002 characters sent, 10,001 after CR LF -> LF
@example(body=Text("x" * (MAX_BODY - 1) + "\r\n"))  # 10,001 sent, exactly 10,000 stored
@example(body="\u200f\u202eabc\u200d\u2066\x00\x7f\r\n\t" + "👩‍👩‍👧‍👦")
@example(body=" \x00\x01 ")
async def test_unicode_bodies_round_trip(world: World, body: str) -> None:
    expected = normalise(body)
    resp = await world.chat.client.post("/api/v1/rooms/general/messages", json={"body": body}, headers=world.alice)
    event(f"{resp.status}, {'long' if len(body) > 5000 else 'short'}")
    if len(expected) > MAX_BODY:
        assert resp.status == 413, (len(body), len(expected), resp.status)
        assert (await resp.json())["error"]["code"] == "too_large"
        return
    if rules.is_blank(expected):
        assert resp.status == 400
        return
    assert resp.status == 201, await resp.text()
    message = (await resp.json())["message"]
    assert message["body"] == expected
    back = await world.chat.client.get(
        f"/api/v1/rooms/general/messages?after={message['id'] - 1}&limit=1", headers=world.bob)
    assert back.status == 200
    (stored,) = (await back.json())["messages"]
    assert stored["id"] == message["id"] and stored["body"] == expected
