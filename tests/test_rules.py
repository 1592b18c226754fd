"""Pure rules: validation and message rendering (escaping, links, mentions, line breaks)."""

from __future__ import annotations

import pytest

from chatd import rules
from chatd.errors import BadInput, TooLarge
from chatd.hub import text_frame

USERS = {"bob", "carol.b", "dan-1"}


def render(text: str) -> rules.Rendered:
    return rules.render_body(text, USERS.__contains__)


def test_escapes_html() -> None:
    out = render('<script>alert("x")</script> & <img src=x onerror=y>')
    assert "<script" not in out.html and "<img" not in out.html
    assert "&lt;script&gt;" in out.html and "&amp;" in out.html


def test_links_are_http_only_and_safe() -> None:
    out = render("see https://example.com/a?b=1&c=2, and javascript:alert(1) or http://x.y/(z)")
    assert '<a href="https://example.com/a?b=1&amp;c=2" rel="noopener nofollow" target="_blank">' in out.html
    assert "javascript:" in out.html and 'href="javascript' not in out.html
    assert 'href="http://x.y/(z)"' in out.html
    assert out.html.endswith("</a>")


def test_url_with_quotes_cannot_break_out() -> None:
    from html.parser import HTMLParser

    attrs: list[tuple[str, str | None]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, found: list[tuple[str, str | None]]) -> None:
            attrs.extend(found)

    Collect().feed(render("https://e.com/\"onmouseover=\"x https://e.com/'x'>y").html)
    assert {name for name, _ in attrs} == {"href", "rel", "target"}


def test_line_breaks_kept() -> None:
    assert render("a\nb\n\nc").html == "a<br>b<br><br>c"


def test_plain_text_takes_the_short_path_to_the_same_html() -> None:
    """No '@' and no '://': nothing to link, the same escaping and line breaks."""
    body = '<b>x</b> & "q"\nnext \'line\''
    assert render(body) == (rules.Rendered('&lt;b&gt;x&lt;/b&gt; &amp; "q"<br>next \'line\'', frozenset()))
    assert render(body + " @nobody").html == render(body).html + " @nobody"


def test_mentions_only_for_real_users() -> None:
    out = render("hi @bob, @nobody and @Carol.B. and email me@bob.com")
    assert out.mentions == {"bob", "carol.b"}
    assert '<a class="mention" href="/dm/bob" data-mention="bob">@bob</a>,' in out.html
    assert "@nobody" in out.html and 'data-mention="nobody"' not in out.html
    assert 'data-mention="carol.b">@carol.b</a>.' in out.html
    assert "me@bob.com" in out.html


@pytest.mark.parametrize(("body", "error"), [
    ("", BadInput), ("  \n ", BadInput), (None, BadInput), (3, BadInput), ("\ud800", BadInput),
    ("x" * 10_001, TooLarge),
])
def test_check_body_rejects(body: object, error: type) -> None:
    with pytest.raises(error):
        rules.check_body(body)


def test_check_body_normalises() -> None:
    assert rules.check_body("a\r\nb\rc\x00d\te") == "a\nb\ncd\te"
    assert rules.check_body("😀" * 10_000) == "😀" * 10_000


@pytest.mark.parametrize("name", ["alice", "a", "a.b-c_d", "9lives", "x" * 32, "ALICE"])
def test_good_usernames(name: str) -> None:
    assert rules.check_username(name) == name.lower()


@pytest.mark.parametrize("name", ["", "_a", ".a", "-a", "a b", "x" * 33, "é", "a/b", None])
def test_bad_usernames(name: object) -> None:
    with pytest.raises(BadInput):
        rules.check_username(name)


def test_dm_slug_is_symmetric_and_outside_room_slugs() -> None:
    assert rules.dm_slug("bob", "alice") == rules.dm_slug("alice", "bob") == "alice+bob"
    assert not rules.SLUG_RE.fullmatch(rules.dm_slug("a", "b"))


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frame_lengths(size: int) -> None:
    frame = text_frame(b"x" * size)
    assert frame[0] == 0x81
    header = {True: 2, False: 4 if size < 65536 else 10}[size < 126]
    assert len(frame) == header + size
