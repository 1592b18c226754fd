"""Pure validation and rendering: no I/O, safe to call from anywhere."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from chatd.errors import BadInput, NotFound, TooLarge

MAX_BODY = 10_000
MAX_USERNAME = 32
MAX_SLUG = 64
USERNAME_RE = re.compile(rf"[a-z0-9][a-z0-9_.-]{{0,{MAX_USERNAME - 1}}}")
SLUG_RE = re.compile(rf"[a-z0-9-]{{1,{MAX_SLUG}}}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_ROOM_NAME = 80
# Each rule in words, for the errors below and the hints next to the form fields.
USERNAME_RULE = f"1 to {MAX_USERNAME} characters of a-z, 0-9, '_', '.', '-', starting with a letter or a digit"
SLUG_RULE = f"1 to {MAX_SLUG} characters of a-z, 0-9 and '-'"
PASSWORD_RULE = f"at least {MIN_PASSWORD} characters"
ROOM_NAME_RULE = f"at most {MAX_ROOM_NAME} characters"
CLIENT_ID_RE = re.compile(r"[\x21-\x7e]{1,64}")

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) reorder the
# text around them: "evil.example/\u202egnp.exe" shows as "evil.example/exe.png". The marks
# right-to-left writers use (LRM, RLM, ALM) reorder nothing and are kept.
_BIDI_RE = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Characters that show nothing but are not white space or format characters (category Cf):
# Hangul fillers, the braille blank, combining grapheme joiner, variation selectors.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u2800\u3164\uffa0"
                       + "".join(map(chr, range(0xFE00, 0xFE10))) + "".join(map(chr, range(0xE0100, 0xE01F0))))
# A URL runs to the next space, '<' or bidi control; trailing punctuation is trimmed below.
_URL_RE = re.compile(r"https?://[^\s<>\"'\u202a-\u202e\u2066-\u2069]+", re.IGNORECASE)
_MENTION_RE = re.compile(r"(?<![\w@/.])@([A-Za-z0-9][A-Za-z0-9_.-]{0,31})")
_TRAILING = ".,;:!?'\")]}"
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_username(name: object) -> str:
    """Return the canonical (lower-case) username or raise BadInput."""
    if not isinstance(name, str) or not USERNAME_RE.fullmatch(name.lower()):
        why = _what_breaks(name.lower() if isinstance(name, str) else name, "[a-z0-9_.-]", MAX_USERNAME)
        raise BadInput(f"usernames are {USERNAME_RULE}{why}", field="username")
    return name.lower()


def check_password(password: object) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise BadInput(f"passwords must be {PASSWORD_RULE}", field="password")
    if len(password) > MAX_PASSWORD:
        raise BadInput(f"passwords must be at most {MAX_PASSWORD} characters", field="password")
    if has_surrogates(password):
        raise BadInput("the password is not valid Unicode", field="password")
    return password


def check_slug(slug: object) -> str:
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise BadInput(f"room slugs are {SLUG_RULE}{_what_breaks(slug, '[a-z0-9-]', MAX_SLUG)}", field="slug")
    return slug


def _what_breaks(text: object, allowed: str, longest: int) -> str:
    """What in `text` breaks a rule, for the end of its error: the characters it may not
    have, its length, or nothing more to say."""
    if not isinstance(text, str) or not text:
        return ""
    refused = sorted(set(re.sub(allowed, "", text)))
    if refused:
        shown = ", ".join("a space" if ch == " " else f"'{ch}'" if ch.isprintable() else f"U+{ord(ch):04X}"
                          for ch in refused[:5])
        return f"; not {shown}"
    return f"; this one has {len(text)}" if len(text) > longest else ""


def check_room_name(name: object, slug: str) -> str:
    if name is None or name == "":
        return slug
    if not isinstance(name, str) or has_surrogates(name):
        raise BadInput("the room name must be text", field="name")
    name = " ".join(_BIDI_RE.sub("", _CONTROL_RE.sub("", name)).split())
    if is_blank(name):
        return slug
    if len(name) > MAX_ROOM_NAME:
        raise BadInput(f"room names are {ROOM_NAME_RULE}", field="name")
    return name


def check_client_id(client_id: object) -> str | None:
    if client_id is None or client_id == "":
        return None
    if not isinstance(client_id, str) or not CLIENT_ID_RE.fullmatch(client_id):
        raise BadInput("client_id must be 1 to 64 printable ASCII characters")
    return client_id


def has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def is_blank(text: str) -> bool:
    """True when the text shows nothing: only white space, format characters (category Cf:
    zero-width space and joiners, word joiner, BOM, soft hyphen, bidi controls...) and
    invisible fillers. The one rule for "blank" (bodies, room names; reactions too)."""
    if text.isascii():  # most text: ASCII has no format characters or fillers, only spaces
        return not text.strip()
    return all(ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) == "Cf" for ch in text)


def check_body(body: object) -> str:
    """Normalise a message body; 400 for empty or malformed, 413 when too long."""
    if not isinstance(body, str):
        raise BadInput("body must be a string")
    if has_surrogates(body):
        raise BadInput("body is not valid Unicode")
    body = _CONTROL_RE.sub("", body.replace("\r\n", "\n").replace("\r", "\n"))
    if len(body) > MAX_BODY:
        raise TooLarge(f"body is longer than {MAX_BODY} characters")
    if is_blank(body):
        raise BadInput("body must not be empty")
    return body


@dataclass(frozen=True, slots=True)
class Rendered:
    html: str
    mentions: tuple[str, ...]  # usernames @mentioned, in the order they first appear


def render_body(body: str, is_user: Callable[[str], bool]) -> Rendered:
    """Escape a body, link URLs and @mentions of real users, keep line breaks."""
    if "://" not in body and "@" not in body:  # most messages: nothing to link, 10x quicker
        return Rendered(_escape(body).replace("\n", "<br>"), ())
    parts: list[str] = []
    mentions: dict[str, None] = {}  # ordered, without repeats
    pos = 0
    for match in _URL_RE.finditer(body):
        url = _trim_url(match.group(0))
        if not url:
            continue
        start = match.start()
        parts.append(_render_text(body[pos:start], is_user, mentions))
        href = html.escape(url, quote=True)  # the URL stops at a bidi control: none in here
        parts.append(f'<a href="{href}" rel="noopener nofollow" target="_blank">{href}</a>')
        pos = start + len(url)
    parts.append(_render_text(body[pos:], is_user, mentions))
    return Rendered("".join(parts).replace("\n", "<br>"), tuple(mentions))


def _trim_url(url: str) -> str:
    while url and url[-1] in _TRAILING:
        # Keep a closing parenthesis that balances one inside the URL.
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return url if url.partition("://")[2] else ""


def _render_text(text: str, is_user: Callable[[str], bool], mentions: dict[str, None]) -> str:
    out: list[str] = []
    pos = 0
    for match in _MENTION_RE.finditer(text):
        name = match.group(1).lower()
        # "@bob." at the end of a sentence mentions bob.
        while name and not is_user(name) and name[-1] in ".-_":
            name = name[:-1]
        if not name or not is_user(name):
            continue
        start, end = match.start(), match.start() + 1 + len(name)
        out.append(_escape(text[pos:start]))
        mentions[name] = None
        out.append(
            f'<a class="mention" href="/dm/{name}" data-mention="{name}">@{html.escape(name)}</a>'
        )
        pos = end
    out.append(_escape(text[pos:]))
    return "".join(out)


def _escape(text: str) -> str:
    """Text as HTML: escaped, and each bidi control shown by name instead of acting."""
    escaped = html.escape(text, quote=False)
    if escaped.isascii():  # O(1) in CPython, and most text: no bidi control to look for
        return escaped
    return _BIDI_RE.sub(_show_control, escaped)


def _show_control(match: re.Match[str]) -> str:
    name = f"U+{ord(match.group(0)):04X}"
    return f'<span class="bidi" title="{name}">{name}</span>'


def dm_slug(a: str, b: str) -> str:
    """The slug of the DM between two users: '+' never appears in a room slug."""
    first, second = sorted((a, b))
    return f"{first}+{second}"


def dm_peer(slug: str, username: str) -> str:
    """The other person of a DM (yourself, in a DM with yourself)."""
    first, _, second = slug.partition("+")
    return second if first == username else first


def check_administrable(slug: str, kind: str) -> None:
    """Rooms an administrator may archive or delete: not a DM, not `general`."""
    if kind == "dm":
        raise NotFound("no such room")
    if slug == "general":
        raise BadInput("the room general is where everyone starts; it cannot be archived or deleted")


# -- reactions ------------------------------------------------------------------------------

MAX_EMOJI = 16  # code points


def check_emoji(emoji: object) -> str:
    """A reaction: 1 to 16 code points of any text, not blank (as Campfire's boosts)."""
    if not isinstance(emoji, str) or has_surrogates(emoji):
        raise BadInput("emoji must be text", field="emoji")
    emoji = _CONTROL_RE.sub("", emoji).strip()
    if not emoji or is_blank(emoji):
        raise BadInput("emoji must not be empty", field="emoji")
    if len(emoji) > MAX_EMOJI:
        raise BadInput(f"emoji is at most {MAX_EMOJI} characters", field="emoji")
    if emoji in (".", ".."):  # DELETE .../reactions/.. would resolve to the message itself
        raise BadInput("a reaction of only dots cannot be taken back; use other text", field="emoji")
    return emoji


# -- search -----------------------------------------------------------------------------------

# Scripts written without spaces between words: Thai, Lao, Myanmar, Khmer, kana, CJK
# ideographs (with extension A and the compatibility block) and fullwidth forms. Their text is
# searched by substrings of 3 or more characters (the trigram index, store migration 6).
UNSPACED_CLASS = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
)
UNSPACED = re.compile(f"[{UNSPACED_CLASS}]")
MAX_QUERY = 500
MIN_PREFIX = 2
_TERM = re.compile(r'"([^"]*)"?|(\S+)')
# A word: letters and digits with the accents NFC leaves apart, and the marks of unspaced
# scripts (Thai vowels are combining marks inside a run, where \w alone would cut it).
_WORD = re.compile(f"[\\w\u0300-\u036f{UNSPACED_CLASS}]+")


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A search as FTS5 expressions, built from text only (nothing the user typed is ever
    syntax: every word goes in double quotes). words: for the unicode61 index (None when the
    query has no such words); grams: for the trigram index (None when it has no unspaced text).
    A message matches when it matches both that are given; neither given (a query of only
    punctuation) matches nothing."""

    words: str | None
    grams: str | None
    terms: tuple[str, ...]  # what was searched for, for the results page
    runs: tuple[str, ...] = ()  # the text searched by substring (grams), to mark in snippets
    # `words` as data, for PostgreSQL's tsquery (store/search.py): each phrase's words, and
    # whether it is a prefix (then one word).
    phrases: tuple[tuple[tuple[str, ...], bool], ...] = ()


def parse_query(q: object) -> SearchQuery:
    """Every word must match, in any order; the last word as a prefix too; "quoted words" as a
    phrase; runs of unspaced script by substrings (3 characters at least)."""
    if not isinstance(q, str) or has_surrogates(q):
        raise BadInput("q must be text", field="q")
    q = _CONTROL_RE.sub(" ", q)
    if is_blank(q):
        raise BadInput("type something to search for", field="q")
    if len(q) > MAX_QUERY:
        raise BadInput(f"a search is at most {MAX_QUERY} characters", field="q")
    # Composed, as the words are split below: "e" + U+0301 would otherwise be the word "e" and a
    # separator, where the index (accents removed) has "e" inside the word.
    q = unicodedata.normalize("NFC", q)
    words: list[str] = []  # FTS5 phrases for the words index
    grams: list[str] = []
    runs: list[str] = []
    terms: list[str] = []
    phrases: list[tuple[tuple[str, ...], bool]] = []
    found = list(_TERM.finditer(q))
    for i, match in enumerate(found):
        quoted = match.group(1) is not None
        text = match.group(1) if quoted else match.group(2)
        last = i == len(found) - 1 and not quoted
        spaced: list[str] = []
        for token in _WORD.findall(text):
            if not UNSPACED.search(token):
                if any(ch.isalnum() for ch in token):  # "_" alone: no word to the index, it would match nothing
                    spaced.append(token)
            elif len(token) >= 3:
                # By substring, the whole run: Latin letters written inside it too ("用Python写"),
                # which the words index holds as part of one long word.
                grams.append(_quote(token))
                runs.append(token)
                terms.append(token)
            else:  # too short for trigrams: found as a word prefix instead
                words.append(_quote(token) + "*")
                phrases.append(((token,), True))
                terms.append(token)
        if not spaced:
            continue
        terms.extend(spaced)
        if quoted and len(spaced) > 1:
            words.append(" + ".join(_quote(t) for t in spaced))
            phrases.append((tuple(spaced), False))
        else:
            for j, t in enumerate(spaced):
                # The last word is also a prefix, from 2 characters: one letter would merge
                # the index entries of a large part of the vocabulary for every search.
                prefix = last and j == len(spaced) - 1 and len(t) >= MIN_PREFIX
                words.append(_quote(t) + ("*" if prefix else ""))
                phrases.append(((t,), prefix))
    return SearchQuery(" AND ".join(words) or None, " AND ".join(grams) or None, tuple(dict.fromkeys(terms)),
                       tuple(dict.fromkeys(runs)), tuple(phrases))


def _quote(token: str) -> str:
    return '"' + token.replace('"', '""') + '"'
