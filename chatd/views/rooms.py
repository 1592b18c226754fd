"""The rooms page (every room, to find and join), joining and leaving public rooms, and
administrators' archive, unarchive and delete (after a confirmation)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from chatd.auth import check_session_csrf, read_form
from chatd.errors import BadInput
from chatd.models import Room, User
from chatd.state import SERVICES, STORE
from chatd.views.pages import _page, page_user, safe_next

routes = web.RouteTableDef()
SHOWN = 200  # rooms listed at once on the rooms page; the filter finds the others


@routes.get("/rooms")
async def rooms_page(request: web.Request) -> web.Response:
    """Every room the viewer may read but DMs: joined, not joined, archived; filtered by `q`."""
    user, credential = await page_user(request)
    query = request.query.get("q", "").strip().lower()[:80]
    entries = await request.app[STORE].directory(user)
    if query:
        entries = [e for e in entries if query in e[0].room.slug or query in e[0].room.name.lower()]
    active = [e for e in entries if not e[0].room.archived]
    archived = [e for e in entries if e[0].room.archived]
    ctx = {"me": user, "csrf": credential.csrf, "title": "Rooms", "q": query,
           "active": active[:SHOWN], "more": max(0, len(active) - SHOWN), "archived": archived[:SHOWN],
           "total": len(entries)}
    return _page(request, "rooms.html", ctx)


@routes.post("/r/{slug}/join")
async def join_or_leave(request: web.Request) -> web.Response:
    """Join a public room (into the sidebar) or leave it (out of the sidebar); back to `next`."""
    user, credential = await page_user(request)
    form = await read_form(request)
    check_session_csrf(request, credential, form)
    action = form.get("action")
    if action not in ("join", "leave"):
        raise BadInput("unknown action")
    room = await request.app[SERVICES].chat.set_joined(user, request.match_info["slug"], action == "join")
    raise web.HTTPSeeOther(safe_next(str(form.get("next") or f"/r/{room.slug}")))


@routes.post("/admin/rooms/{slug}")
async def archive(request: web.Request) -> web.Response:
    """Administrators: archive a room or bring it back."""
    user, credential = await page_user(request)
    form = await read_form(request)
    check_session_csrf(request, credential, form)
    action = form.get("action")
    if action not in ("archive", "unarchive"):
        raise BadInput("unknown action")
    slug = request.match_info["slug"]
    try:
        await request.app[SERVICES].chat.archive_room(user, slug, action == "archive")
    except BadInput as exc:
        raise web.HTTPSeeOther(f"/admin?error={quote(exc.message)}") from None
    raise web.HTTPSeeOther("/admin")


@routes.get("/admin/rooms/{slug}/delete")
async def delete_form(request: web.Request) -> web.Response:
    """The confirmation: what will go, and the slug to type."""
    user, credential = await page_user(request)
    room = _administered(request, user, request.match_info["slug"])
    ctx = {"me": user, "csrf": credential.csrf, "room": room, "title": f"Delete #{room.name}"}
    return _page(request, "delete_room.html", ctx)


@routes.post("/admin/rooms/{slug}/delete")
async def delete(request: web.Request) -> web.Response:
    user, credential = await page_user(request)
    form = await read_form(request)
    check_session_csrf(request, credential, form)
    room = _administered(request, user, request.match_info["slug"])
    typed = str(form.get("confirm", "")).strip()
    if typed != room.slug:
        error = f"type {room.slug} to delete the room" + (f" (you typed {typed})" if typed else "")
        ctx = {"me": user, "csrf": credential.csrf, "room": room, "title": f"Delete #{room.name}",
               "confirm": typed[:200], "errors": {"confirm": error}}
        return _page(request, "delete_room.html", ctx, 400)
    await request.app[SERVICES].chat.delete_room(user, room.slug)
    raise web.HTTPSeeOther(f"/admin?deleted={quote(room.slug)}")


def _administered(request: web.Request, user: User, slug: str) -> Room:
    return request.app[SERVICES].chat.administered(user, slug)
