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
import unicodedata

from chatd.models import Message
from chatd.rules import UNSPACED_CLASS, SearchQuery
from chatd.store.base import StoreBase
from chatd.store.db import transaction
from chatd.store.postgres import PUNCTUATION, UNSPACED_RE
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
        if self.postgres:
            return await self._reader.run(_search_postgres, query, rooms, before, limit)

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
            if self.postgres:  # its index is a generated column and GIN indexes: never out of step
                return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            with transaction(conn):
                conn.execute("INSERT INTO search_words (search_words) VALUES ('rebuild')")
                conn.execute("INSERT INTO search_grams (search_grams) VALUES ('delete-all')")
                conn.execute("INSERT INTO search_grams (rowid, body) SELECT id, body FROM messages"
                             " WHERE body GLOB ?", (UNSPACED_GLOB,))
                return conn.execute("SELECT count(*) FROM messages").fetchone()[0]

        return await self._writer.run(op)


def _search_postgres(conn: sqlite3.Connection, query: SearchQuery, rooms: list[int], before: int | None,
                     limit: int) -> list[tuple[Message, str]]:
    """The same search on PostgreSQL (store/postgres.py): the words as a tsquery over the
    generated `words` column, the runs without spaces by substring (ILIKE, which the pg_trgm
    index answers), newest first; snippets made here as FTS5 makes them (_snippet)."""
    where = ["m.room_id = ANY(?)", "m.id < ?"]
    args: list[object] = [rooms, before if before is not None else 1 << 62]
    if query.phrases:
        parts = []
        for words, prefix in query.phrases:
            # Split as the index splits (store/postgres.py SPLIT_WORDS): "foo_bar" is two words.
            split = [p for w in words for p in _PUNCTUATION_RE.split(w) if p]
            if prefix and split:
                *before, last = split
                if before:
                    parts.append("phraseto_tsquery('chatd_words', ?)")
                    args.append(" ".join(before))
                parts.append("to_tsquery('chatd_words', ?)")
                args.append("'" + last.replace("\\", "\\\\").replace("'", "''") + "':*")
            elif split:
                parts.append("phraseto_tsquery('chatd_words', ?)")
                args.append(" ".join(split))
        if not parts:
            return []  # nothing left to look for (as FTS5 finds nothing for an empty phrase)
        where.append(f"m.words @@ ({' && '.join(parts)})")
    for run in query.runs:
        where.append(f"m.body ~ '{UNSPACED_RE}' AND m.body ILIKE ?")
        args.append("%" + run.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    ids = [r[0] for r in conn.execute(
        f"SELECT m.id FROM messages m WHERE {' AND '.join(where)} ORDER BY m.id DESC LIMIT ?",
        (*args, limit)).fetchall()]
    if not ids:
        return []
    rows = {m.id: m for m in _messages(conn.execute(
        f"{_MESSAGE} WHERE m.id IN ({','.join('?' * len(ids))})", ids).fetchall())}
    return [(rows[i], _snippet_html(_snippet(rows[i].body, query))) for i in ids if i in rows]


def _fold(text: str) -> str:
    """Accents and case folded, as the words index folds them (unaccent, lower)."""
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch)).casefold()


def _snippet(body: str, query: SearchQuery) -> str:
    """The snippet FTS5 would give, for PostgreSQL (ts_headline reads HTML tags out of text):
    at most SNIPPET_TOKENS words around the first hit, hits marked; a hit is a word of the
    query (folded, the prefix ones as prefixes) or a run found by substring, in any case."""
    exact = {_fold(w) for words, prefix in query.phrases if not prefix for w in words}
    prefixes = tuple(_fold(words[0]) for words, prefix in query.phrases if prefix)
    tokens = list(_BODY_WORD.finditer(body))
    spans = [(t.start(), t.end()) for t in tokens
             if (folded := _fold(t.group())) in exact or (prefixes and folded.startswith(prefixes))]
    folded_body = body.casefold()
    # Casefolding that changes lengths (ß -> ss) would shift every position: runs stay unmarked.
    for run in query.runs if len(folded_body) == len(body) else ():
        needle = run.casefold()
        at = folded_body.find(needle)
        while at >= 0:
            spans.append((at, at + len(needle)))
            at = folded_body.find(needle, at + 1)
    spans.sort()
    start, end, lead, tail = 0, len(body), "", ""
    if len(tokens) > SNIPPET_TOKENS:
        first = next((i for i, t in enumerate(tokens) if spans and t.end() > spans[0][0]), 0)
        begin = max(0, min(first - 2, len(tokens) - SNIPPET_TOKENS))
        last = begin + SNIPPET_TOKENS - 1
        start = 0 if begin == 0 else tokens[begin].start()
        end = len(body) if last >= len(tokens) - 1 else tokens[last].end()
        lead, tail = ("…" if start else ""), ("…" if end < len(body) else "")
    out, pos = [], start
    for a, b in _merged(spans):
        a, b = max(a, start), min(b, end)
        if a >= b or a < pos:
            continue
        out += [body[pos:a], _OPEN, body[a:b], _CLOSE]
        pos = b
    out.append(body[pos:end])
    return lead + "".join(out) + tail


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


_PUNCTUATION_RE = re.compile(f"[{re.escape(PUNCTUATION)}]+")  # what SPLIT_WORDS makes spaces
_BODY_WORD = re.compile(f"[\\w\u0300-\u036f{UNSPACED_CLASS}]+")


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
