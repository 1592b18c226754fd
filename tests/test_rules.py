"""Pure rules: validation and message rendering (escaping, links, mentions, line breaks)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    assert render(body) == (rules.Rendered('&lt;b&gt;x&lt;/b&gt; &amp; "q"<br>next \'line\'', ()))
    assert render(body + " @nobody").html == render(body).html + " @nobody"


def test_mentions_only_for_real_users() -> None:
    out = render("hi @bob, @nobody and @Carol.B. and email me@bob.com")
    assert out.mentions == ("bob", "carol.b")  # in the order they appear
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


# -- invisible and reordering characters ---------------------------------------------------

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u2066", "\u200f",
             "\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u180e", "\ufe0f"]


@pytest.mark.parametrize("char", INVISIBLE)
def test_a_body_of_only_invisible_characters_is_blank(char: str) -> None:
    assert rules.is_blank(char * 3) and rules.is_blank(f" {char}\n{char}\t")
    with pytest.raises(BadInput, match="body must not be empty"):
        rules.check_body(f"{char} {char}")


def test_text_with_anything_visible_is_not_blank() -> None:
    assert rules.is_blank("") and rules.is_blank(" \n\u3000")
    for text in ("\u200bx", "\u202e\u05d0", "😀\u200d", ".", "\u0301"):
        assert not rules.is_blank(text), repr(text)
    assert rules.check_body("\u200bhi") == "\u200bhi"  # kept verbatim


def test_room_names_lose_bidi_controls_and_keep_right_to_left_marks() -> None:
    assert rules.check_room_name("cat \u202egnp.exe\u202c", "pics") == "cat gnp.exe"
    assert rules.check_room_name("\u2067שלום\u2069 \u200fחדר", "hi") == "שלום \u200fחדר"
    assert rules.check_room_name("\u200b\u2066 \u202a", "fallback") == "fallback"


SHOWN = '<span class="bidi" title="U+202E">U+202E</span>'


def test_bidi_controls_in_a_link_are_shown_and_kept_out_of_the_href() -> None:
    out = render("https://evil.example/\u202egnp.exe")
    assert out.html == (f'<a href="https://evil.example/" rel="noopener nofollow" target="_blank">'
                        f'https://evil.example/</a>{SHOWN}gnp.exe')


@pytest.mark.parametrize("body", ["plain \u202etext", "mail @bob \u202etext", "see http://x.y \u202etext"])
def test_bidi_controls_in_plain_text_are_shown_on_every_path(body: str) -> None:
    html = render(body).html
    assert "\u202e" not in html and html.endswith(f"{SHOWN}text")


def test_every_bidi_control_is_shown_by_its_code_point() -> None:
    controls = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]
    html = render("".join(controls)).html
    assert [m for m in controls if m in html] == []
    assert html.count('<span class="bidi"') == 9 and 'title="U+2069">U+2069</span>' in html


def test_right_to_left_marks_are_kept_in_html() -> None:
    assert render("\u200fשלום\u200e ok \u061c").html == "\u200fשלום\u200e ok \u061c"


@given(st.text(st.characters(max_codepoint=127)))
def test_ascii_text_is_blank_exactly_when_it_is_all_spaces(text: str) -> None:
    # is_blank's quick path for ASCII must agree with the rule for any text.
    assert rules.is_blank(text) == all(ch.isspace() for ch in text)
