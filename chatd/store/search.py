"""Full-text search over message bodies: two FTS5 indexes kept by triggers (migration 6).

`search_words` (unicode61, accents and case folded) holds every message; `search_grams`
(trigram) holds the messages with text in scripts written without spaces, which it finds by
any 3 characters of. A query is built by rules.parse_query from words only (never FTS syntax),
runs on the reader thread, and is narrowed to the rooms the caller may read; results are newest
first, read off the index in descending rowid order, so a common word stops at the first page.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import sqlite3

from chatd.models import Message
from chatd.rules import SearchQuery
from chatd.store.base import StoreBase
from chatd.store.db import transaction
from chatd.store.rows import _MESSAGE, _messages
from chatd.store.schema import UNSPACED_GLOB

SNIPPET_TOKENS = 16
_OPEN, _CLOSE = "\x02", "\x03"  # bodies never hold control characters (rules.check_body)


class SearchStore(StoreBase):
    async def search(self, query: SearchQuery, rooms: list[int], before: int | None,
                     limit: int) -> list[tuple[Message, str]]:
        """Up to `limit` messages of these rooms matching the query, newest first, with snippets."""
        if not rooms or (query.words is None and query.grams is None):
            return []

        def op(conn: sqlite3.Connection) -> list[tuple[Message, str]]:
            table = "search_words" if query.words is not None else "search_grams"
            match = query.words if query.words is not None else query.grams
            sql = (
                f"SELECT {table}.rowid, snippet({table}, 0, '{_OPEN}', '{_CLOSE}', '…', {SNIPPET_TOKENS})"
                f" FROM {table} JOIN messages m ON m.id = {table}.rowid"
                f" WHERE {table} MATCH ? AND {table}.rowid < ?"
                " AND m.room_id IN (SELECT value FROM json_each(?))"
            )
            args: list[object] = [match, before if before is not None else 1 << 62, json.dumps(rooms)]
            if query.words is not None and query.grams is not None:
                sql += " AND m.id IN (SELECT rowid FROM search_grams WHERE search_grams MATCH ?)"
                args.append(query.grams)
            sql += f" ORDER BY {table}.rowid DESC LIMIT ?"
            args.append(limit)
            hits = conn.execute(sql, args).fetchall()
            if not hits:
                return []
            ids = [h[0] for h in hits]
            rows = {m.id: m for m in _messages(conn.execute(
                f"{_MESSAGE} WHERE m.id IN ({','.join('?' * len(ids))})", ids).fetchall())}
            # A snippet of the words index marks only the words: mark the substrings found too.
            runs = query.runs if query.words is not None and query.grams is not None else ()
            return [(rows[i], _snippet_html(_mark_runs(s, runs) if runs else s)) for i, s in hits if i in rows]

        return await self._reader.run(op)


    async def reindex(self) -> int:
        """Build both search indexes again from the messages, in one transaction (the triggers
        keep them in step; this is for a file changed by hand). Returns the messages indexed."""

        def op(conn: sqlite3.Connection) -> int:
            with transaction(conn):
                conn.execute("INSERT INTO search_words (search_words) VALUES ('rebuild')")
                conn.execute("INSERT INTO search_grams (search_grams) VALUES ('delete-all')")
                conn.execute("INSERT INTO search_grams (rowid, body) SELECT id, body FROM messages"
                             " WHERE body GLOB ?", (UNSPACED_GLOB,))
                return conn.execute("SELECT count(*) FROM messages").fetchone()[0]

        return await self._writer.run(op)


def _snippet_html(snippet: str) -> str:
    """FTS5's snippet, escaped, with its hit markers as <mark>."""
    return html.escape(snippet, quote=False).replace(_OPEN, "<mark>").replace(_CLOSE, "</mark>")


def _mark_runs(snippet: str, runs: tuple[str, ...]) -> str:
    """Hit markers around every occurrence of these runs (the trigram index matches them in any
    case, overlapping ones too), outside the markers the snippet already has."""
    finders = [re.compile(f"(?=({re.escape(run)}))", re.IGNORECASE) for run in runs]
    parts = []
    for part in re.split(f"({_OPEN}[^{_CLOSE}]*{_CLOSE})", snippet):
        hit = [False] * len(part)
        if not part.startswith(_OPEN):
            for finder in finders:
                for match in finder.finditer(part):
                    hit[match.start():match.end(1)] = [True] * len(match.group(1))
        for marked, chars in itertools.groupby(zip(part, hit, strict=True), key=lambda pair: pair[1]):
            text = "".join(ch for ch, _ in chars)
            parts.append(f"{_OPEN}{text}{_CLOSE}" if marked else text)
    return "".join(parts)
