"""HTML for pages and browser tabs: templates rendered into responses, and the cached message
fragments every page and socket shares (each message rendered once per variant)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

from chatd import fragments, rules
from chatd.models import Message, Room, User

ONLINE_SHOWN = 100
HTML_CACHE = 40_000


class HtmlRenderer:
    """Renders the templates in `path` (autoescaped) and keeps each message's HTML per variant."""

    def __init__(self, path: str) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(path), autoescape=jinja2.select_autoescape(default=True),
            trim_blocks=True, lstrip_blocks=True,
            auto_reload=False,  # templates ship in the package; no stat() per include per request
        )
        self.env.globals["online_html"] = fragments.online_html
        self.env.globals["older_html"] = self.older_html
        self.env.globals["later_html"] = lambda room, messages: Markup(
            fragments.later_html(room, messages[-1].id if messages else 0))
        self.env.globals["avatar_html"] = lambda name: Markup(fragments.avatar_html(name))
        self.env.globals["messages_html"] = self.messages_html
        # What the forms accept, in the words and limits the server checks them with.
        self.env.globals.update({name: getattr(rules, name) for name in (
            "USERNAME_RULE", "SLUG_RULE", "PASSWORD_RULE", "ROOM_NAME_RULE",
            "MAX_USERNAME", "MAX_SLUG", "MAX_ROOM_NAME", "MIN_PASSWORD")})
        self._templates: dict[str, jinja2.Template] = {}
        # (id, rev, variant): a changed message has a new rev, so an old entry is never hit again.
        self._cache: OrderedDict[tuple[int, int, str], str] = OrderedDict()
        # (user id, room id) -> (store epoch, room list HTML, DM list HTML)
        self.sidebars: dict[tuple[int, int], tuple[int, Markup, Markup]] = {}

    def page(self, name: str, ctx: dict[str, Any], status: int = 200) -> web.Response:
        """A template as a text/html response. Each template is looked up once, and the response
        built in one call: aiohttp_jinja2's render_template, which did both per request (and
        set the content type twice), was 7% of a room page (docs/performance.md)."""
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self.env.get_template(name)
        return web.Response(text=template.render(ctx), content_type="text/html", status=status)

    def message_fragment(self, message: Message, variant: str) -> str:
        key = (message.id, message.rev, variant)
        html = self._cache.get(key)
        if html is None:
            html = self._cache[key] = fragments.message_html(message, variant)
            if len(self._cache) > HTML_CACHE:
                self._cache.popitem(last=False)
        return html

    def older_html(self, room: Room, messages: list[Message], more: bool, peer: str | None) -> Markup:
        """What goes above a page of messages: where the page before it loads from, or the start."""
        return Markup(fragments.older_html(room, more, messages[0].id if messages else None, peer))

    def messages_html(self, messages: list[Message], viewer: User, current: int | None = None) -> Markup:
        """A page of messages as this viewer sees them: the room page's and the history
        partial's. One join, and the cache read inline: a call per message, or a copy of the
        page's HTML, was a measurable share of a room page (docs/performance.md). `current`:
        the message a permalink points at, marked aria-current."""
        cache, shown = self._cache, zip(messages, fragments.variants(messages, viewer), strict=True)
        parts = [cache.get((m.id, m.rev, v)) or self.message_fragment(m, v) for m, v in shown]
        if current is not None:
            for i, m in enumerate(messages):
                if m.id == current:
                    parts[i] = fragments.mark_current(parts[i])
        return Markup("\n".join(parts))

    def online_fragment(self, names: list[str]) -> str:
        return fragments.online_html(names, oob=True, shown=ONLINE_SHOWN)

    def sidebar_entry(self, room: Room, peer: str | None) -> tuple[str, str, str]:
        return fragments.sidebar_entry(room, peer)
