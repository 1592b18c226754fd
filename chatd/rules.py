"""Pure validation and rendering: no I/O, safe to call from anywhere."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

from chatd.errors import BadInput, TooLarge

MAX_BODY = 10_000
USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
SLUG_RE = re.compile(r"[a-z0-9-]{1,64}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_ROOM_NAME = 80
CLIENT_ID_RE = re.compile(r"[\x21-\x7e]{1,64}")

# A URL runs to the next space or '<'; trailing punctuation is trimmed below.
_URL_RE = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_MENTION_RE = re.compile(r"(?<![\w@/.])@([A-Za-z0-9][A-Za-z0-9_.-]{0,31})")
_TRAILING = ".,;:!?'\")]}"
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_username(name: object) -> str:
    """Return the canonical (lower-case) username or raise BadInput."""
    if not isinstance(name, str) or not USERNAME_RE.fullmatch(name.lower()):
        raise BadInput(
            "usernames are 1 to 32 characters of a-z, 0-9, '_', '.', '-', "
            "starting with a letter or a digit"
        )
    return name.lower()


def check_password(password: object) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise BadInput(f"passwords must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise BadInput(f"passwords must be at most {MAX_PASSWORD} characters")
    if has_surrogates(password):
        raise BadInput("the password is not valid Unicode")
    return password


def check_slug(slug: object) -> str:
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise BadInput("room slugs are 1 to 64 characters of a-z, 0-9 and '-'")
    return slug


def check_room_name(name: object, slug: str) -> str:
    if name is None or name == "":
        return slug
    if not isinstance(name, str) or has_surrogates(name):
        raise BadInput("the room name must be text")
    name = " ".join(_CONTROL_RE.sub("", name).split())
    if not name:
        return slug
    if len(name) > MAX_ROOM_NAME:
        raise BadInput(f"room names are at most {MAX_ROOM_NAME} characters")
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


def check_body(body: object) -> str:
    """Normalise a message body; 400 for empty or malformed, 413 when too long."""
    if not isinstance(body, str):
        raise BadInput("body must be a string")
    if has_surrogates(body):
        raise BadInput("body is not valid Unicode")
    body = _CONTROL_RE.sub("", body.replace("\r\n", "\n").replace("\r", "\n"))
    if len(body) > MAX_BODY:
        raise TooLarge(f"body is longer than {MAX_BODY} characters")
    if not body.strip():
        raise BadInput("body must not be empty")
    return body


@dataclass(frozen=True, slots=True)
class Rendered:
    html: str
    mentions: frozenset[str]


def render_body(body: str, is_user: Callable[[str], bool]) -> Rendered:
    """Escape a body, link URLs and @mentions of real users, keep line breaks."""
    if "://" not in body and "@" not in body:  # most messages: nothing to link, 10x quicker
        return Rendered(html.escape(body, quote=False).replace("\n", "<br>"), frozenset())
    parts: list[str] = []
    mentions: set[str] = set()
    pos = 0
    for match in _URL_RE.finditer(body):
        url = _trim_url(match.group(0))
        if not url:
            continue
        start = match.start()
        parts.append(_render_text(body[pos:start], is_user, mentions))
        href = html.escape(url, quote=True)
        parts.append(f'<a href="{href}" rel="noopener nofollow" target="_blank">{href}</a>')
        pos = start + len(url)
    parts.append(_render_text(body[pos:], is_user, mentions))
    return Rendered("".join(parts).replace("\n", "<br>"), frozenset(mentions))


def _trim_url(url: str) -> str:
    while url and url[-1] in _TRAILING:
        # Keep a closing parenthesis that balances one inside the URL.
        if url[-1] == ")" and url.count("(") >= url.count(")"):
            break
        url = url[:-1]
    return url if url.partition("://")[2] else ""


def _render_text(text: str, is_user: Callable[[str], bool], mentions: set[str]) -> str:
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
        out.append(html.escape(text[pos:start], quote=False))
        mentions.add(name)
        out.append(
            f'<a class="mention" href="/dm/{name}" data-mention="{name}">@{html.escape(name)}</a>'
        )
        pos = end
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


def dm_slug(a: str, b: str) -> str:
    """The slug of the DM between two users: '+' never appears in a room slug."""
    first, second = sorted((a, b))
    return f"{first}+{second}"


def dm_peer(slug: str, username: str) -> str:
    """The other person of a DM (yourself, in a DM with yourself)."""
    first, _, second = slug.partition("+")
    return second if first == username else first
