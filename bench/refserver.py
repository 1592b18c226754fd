"""Reference servers: what aiohttp alone, and aiohttp plus SQLite, do on the same machine.

Every chatd figure in the benchmark is divided by the same figure measured on one of these,
minutes apart, with the same load generator, so a noisy or slow machine moves both.

  --mode bare    WebSocket broadcaster: no auth, no storage. A "send" frame gets the next id
                 and is sent, the usual aiohttp way (`await ws.send_str` per socket), to every
                 open socket, the sender included (that is its acknowledgement).
  --mode sqlite  The same, plus one SQLite commit per message before the broadcast (WAL,
                 synchronous=NORMAL like chatd's default), plus HTTP POST of a message, plus,
                 with --pages-db, the history API and a plain room page read from a chatd
                 database (the same query chatd runs, no sidebar or unread counts), and
                 search: chatd's FTS5 query on that database's index (no access rules beyond
                 the list of every room, no query parser beyond quoting each word).

Routes mirror chatd's: /api/v1/stream (JSON events), /ws (HTML fragments),
POST /api/v1/rooms/{slug}/messages, GET /api/v1/rooms/{slug}/messages, GET /r/{slug},
GET /api/v1/search, /healthz, and /count (open sockets, for the connection workload's cross-check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import signal
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import raise_nofile  # noqa: E402

WS_OPTIONS: dict[str, Any] = {"heartbeat": 30, "compress": False, "max_msg_size": 65_536}  # as chatd's
HISTORY_SQL = (
    "SELECT m.id, r.slug, u.username, m.body, m.html, m.created_at, m.client_id FROM messages m"
    " JOIN rooms r ON r.id = m.room_id JOIN users u ON u.id = m.user_id"
    " WHERE m.room_id = ? AND m.id < ? ORDER BY m.id DESC LIMIT ?"
)

# chatd's search (chatd/store/search.py), word for word: the unicode61 index, newest first off
# the index, narrowed to the caller's rooms, a snippet per hit; then the hits' messages.
SNIPPET_OPEN, SNIPPET_CLOSE = "\x02", "\x03"
SEARCH_SQL = (
    f"SELECT search_words.rowid, snippet(search_words, 0, '{SNIPPET_OPEN}', '{SNIPPET_CLOSE}', '…', 16)"
    " FROM search_words JOIN messages m ON m.id = search_words.rowid"
    " WHERE search_words MATCH ? AND search_words.rowid < ?"
    " AND m.room_id IN (SELECT value FROM json_each(?))"
    " ORDER BY search_words.rowid DESC LIMIT ?"
)
MESSAGE_SQL = (
    "SELECT m.id, r.slug, u.username, m.body, m.html, m.created_at, m.client_id, m.edited_at FROM messages m"
    " JOIN rooms r ON r.id = m.room_id JOIN users u ON u.id = m.user_id WHERE m.id IN ({marks})"
)


def rfc3339(ts: float) -> str:
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def dumps(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


class Reference:
    def __init__(self, db: sqlite3.Connection | None, pages: sqlite3.Connection | None) -> None:
        self.db = db
        self.pages = pages
        self.streams: set[web.WebSocketResponse] = set()
        self.tabs: set[web.WebSocketResponse] = set()
        self.next_id = 1
        # Every room, as chatd's search is given the rooms its caller may read (JSON for json_each).
        self.room_ids = json.dumps([r[0] for r in pages.execute("SELECT id FROM rooms ORDER BY id")]) if pages else "[]"

    def store(self, room: str, body: str, client_id: str | None) -> dict[str, Any]:
        """Give the message an id; with SQLite, commit it first (autocommit: one commit each)."""
        now = time.time()
        escaped = html.escape(body, quote=False)
        if self.db is None:
            mid, self.next_id = self.next_id, self.next_id + 1
        else:
            cur = self.db.execute(
                "INSERT INTO messages (room, author, body, html, created_at, client_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (room, "bench", body, escaped, now, client_id),
            )
            mid = cur.lastrowid
        return {"id": mid, "room": room, "author": "bench", "body": body, "html": escaped,
                "created_at": rfc3339(now), "client_id": client_id}

    async def publish(self, message: dict[str, Any]) -> None:
        event = dumps({"type": "message", "message": message})
        for ws in list(self.streams):
            await _send(ws, event)
        if self.tabs:
            fragment = _fragment(message)
            for ws in list(self.tabs):
                await _send(ws, fragment)


async def _send(ws: web.WebSocketResponse, text: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):  # closed meanwhile
        await ws.send_str(text)


def _fragment(m: dict[str, Any]) -> str:
    """Roughly the markup of chatd's message fragment, client_id included for the sender."""
    cid = f' data-client-id="{html.escape(m["client_id"])}"' if m["client_id"] else ""
    return (
        f'<article class="msg other" id="message-{m["id"]}" data-author="{m["author"]}"'
        f' data-id="{m["id"]}"{cid}>'
        f'<header><a class="author" href="/dm/{m["author"]}">{m["author"]}</a> '
        f'<time datetime="{m["created_at"]}">{m["created_at"][11:16]}</time></header>'
        f'<div class="body">{m["html"]}</div></article>'
    )


REF = web.AppKey("reference", Reference)


async def stream(request: web.Request) -> web.WebSocketResponse:
    return await _socket(request, request.app[REF].streams, "general")


async def tab(request: web.Request) -> web.WebSocketResponse:
    return await _socket(request, request.app[REF].tabs, request.query.get("room", "general"))


async def _socket(
    request: web.Request, group: set[web.WebSocketResponse], room: str
) -> web.WebSocketResponse:
    ref = request.app[REF]
    ws = web.WebSocketResponse(**WS_OPTIONS)
    await ws.prepare(request)
    group.add(ws)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("type", "send") == "send":
                message = ref.store(frame.get("room", room), frame["body"], frame.get("client_id"))
                await ref.publish(message)
    finally:
        group.discard(ws)
    return ws


async def post_message(request: web.Request) -> web.Response:
    ref = request.app[REF]
    data = await request.json()
    message = ref.store(request.match_info["slug"], data["body"], data.get("client_id"))
    await ref.publish(message)
    return web.json_response({"message": message}, status=201)


def _history(pages: sqlite3.Connection, slug: str, limit: int) -> list[dict[str, Any]]:
    row = pages.execute("SELECT id FROM rooms WHERE slug = ?", (slug,)).fetchone()
    if row is None:
        raise web.HTTPNotFound()
    rows = pages.execute(HISTORY_SQL, (row[0], 1 << 62, limit)).fetchall()
    return [
        {"id": r[0], "room": r[1], "author": r[2], "body": r[3], "html": r[4],
         "created_at": rfc3339(r[5]), "client_id": r[6]}
        for r in reversed(rows)
    ]


async def get_messages(request: web.Request) -> web.Response:
    pages = request.app[REF].pages
    if pages is None:
        raise web.HTTPNotFound()
    limit = min(int(request.query.get("limit", "50")), 200)
    return web.json_response({"messages": _history(pages, request.match_info["slug"], limit)})


async def room_page(request: web.Request) -> web.Response:
    pages = request.app[REF].pages
    if pages is None:
        raise web.HTTPNotFound()
    messages = _history(pages, request.match_info["slug"], 50)
    rooms = [r[0] for r in pages.execute("SELECT slug FROM rooms ORDER BY name")]
    nav = "".join(f'<li><a href="/r/{s}">#{s}</a></li>' for s in rooms)
    body = "".join(
        f'<article id="message-{m["id"]}" data-author="{m["author"]}"><header>{m["author"]} '
        f'<time>{m["created_at"]}</time></header><div>{m["html"]}</div></article>'
        for m in messages
    )
    page = f"<!doctype html><html><body><nav><ul>{nav}</ul></nav><main>{body}</main></body></html>"
    return web.Response(text=page, content_type="text/html")


def _fts_query(q: str) -> str:
    """Every word quoted (never FTS syntax), all of them required, the last also as a prefix."""
    words = ['"' + w.replace('"', '""') + '"' for w in q.split()]
    if not words:
        raise web.HTTPBadRequest()
    words[-1] += "*"
    return " AND ".join(words)


async def search(request: web.Request) -> web.Response:
    ref = request.app[REF]
    pages = ref.pages
    if pages is None:
        raise web.HTTPNotFound()
    limit = min(int(request.query.get("limit", "20")), 100)
    hits = pages.execute(SEARCH_SQL, (_fts_query(request.query.get("q", "")), 1 << 62, ref.room_ids,
                                      limit)).fetchall()
    rows = {}
    if hits:
        marks = ",".join("?" * len(hits))
        rows = {r[0]: r for r in pages.execute(MESSAGE_SQL.format(marks=marks), [h[0] for h in hits])}
    results = []
    for mid, snippet in hits:
        r = rows[mid]
        message = {"id": r[0], "room": r[1], "author": r[2], "author_name": r[2], "body": r[3], "html": r[4],
                   "created_at": rfc3339(r[5]), "client_id": r[6],
                   "edited_at": None if r[7] is None else rfc3339(r[7]), "mentions": [], "reactions": [],
                   "attachments": []}
        mark = html.escape(snippet, quote=False).replace(SNIPPET_OPEN, "<mark>").replace(SNIPPET_CLOSE, "</mark>")
        results.append({"message": message, "snippet": mark})
    return web.Response(text=dumps({"results": results}), content_type="application/json")


async def count(request: web.Request) -> web.Response:
    ref = request.app[REF]
    return web.json_response({"streams": len(ref.streams), "tabs": len(ref.tabs)})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def open_store(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # autocommit: every INSERT is one transaction
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, room TEXT NOT NULL,"
        " author TEXT NOT NULL, body TEXT NOT NULL, html TEXT NOT NULL, created_at REAL NOT NULL,"
        " client_id TEXT)"
    )
    return db


def make_app(db: sqlite3.Connection | None, pages: sqlite3.Connection | None) -> web.Application:
    app = web.Application()
    app[REF] = Reference(db, pages)
    app.router.add_get("/api/v1/stream", stream)
    app.router.add_get("/ws", tab)
    app.router.add_post("/api/v1/rooms/{slug}/messages", post_message)
    app.router.add_get("/api/v1/rooms/{slug}/messages", get_messages)
    app.router.add_get("/r/{slug}", room_page)
    app.router.add_get("/api/v1/search", search)
    app.router.add_get("/count", count)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(args: argparse.Namespace) -> None:
    db = open_store(args.db) if args.mode == "sqlite" else None
    pages = sqlite3.connect(f"file:{args.pages_db}?mode=ro", uri=True) if args.pages_db else None
    runner = web.AppRunner(make_app(db, pages), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=2048)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"reference {args.mode} listening on http://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    if db is not None:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("bare", "sqlite"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", type=Path, help="SQLite file for --mode sqlite")
    parser.add_argument("--pages-db", type=Path, help="a chatd database to serve history and room pages from")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop; the benchmark uses the one chatd itself runs on")
    args = parser.parse_args()
    if args.mode == "sqlite" and args.db is None:
        parser.error("--mode sqlite needs --db")
    raise_nofile()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
