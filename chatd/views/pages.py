"""Browser pages, partials and the HTMX socket: sign-in, setup, the room page, members, admin."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web
from markupsafe import Markup

from chatd import fragments, rules
from chatd.auth import (
    FORM_COOKIE,
    check_form_token,
    check_session_csrf,
    clear_session_cookie,
    client_ip,
    form_token,
    identify,
    is_loopback,
    origin_ok,
    read_form,
    session_cookie,
    set_form_cookie,
)
from chatd.errors import BadInput, ChatdError, Forbidden, RateLimited, Unauthorized
from chatd.metrics import render_metrics
from chatd.models import Message, Room, RoomState, User, rfc3339
from chatd.services import Services, parse_int
from chatd.sockets import handle_frame, open_socket, run_socket
from chatd.state import CONFIG, RENDERER, SERVICES, STORE

SEARCH_PAGE = 20
log = logging.getLogger("chatd.views")
routes = web.RouteTableDef()
SIDEBAR_CACHE = 10_000


def _svc(request: web.Request) -> Services:
    return request.app[SERVICES]


def safe_next(target: str | None) -> str:
    """Only a local path may follow a sign-in; anything else goes home."""
    if not target or not isinstance(target, str) or len(target) > 2000:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(ch) < 32 for ch in target):
        return "/"
    return target


async def page_user(request: web.Request) -> tuple[User, Any]:
    """The signed-in user of a page, or a 303 to the sign-in form."""
    found = await identify(request)
    if found is None:
        raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='/')}")
    return found


def _page(request: web.Request, name: str, ctx: dict[str, Any], status: int = 200) -> web.Response:
    return request.app[RENDERER].page(name, ctx, status)


def refusal(exc: ChatdError, fields: tuple[str, ...]) -> dict[str, str]:
    """A refused form's `errors`: the sentence next to the field it concerns, or above the form."""
    return {exc.field if exc.field in fields else "form": exc.message}


# -- sign-in, sign-out, first-run setup ----------------------------------------------------------


def _form_page(request: web.Request, template: str, ctx: dict[str, Any], status: int = 200) -> web.Response:
    cookies: dict[str, str] = {}
    ctx["csrf"] = form_token(request, cookies)
    response = _page(request, template, ctx, status)
    if FORM_COOKIE in cookies:
        set_form_cookie(response, request, cookies[FORM_COOKIE])
    return response


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    if await identify(request):
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return _form_page(request, "login.html", {"next": safe_next(request.query.get("next")), "title": "Sign in"})


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    form = await read_form(request)
    check_form_token(request, form)
    target = safe_next(form.get("next"))
    ctx = {"next": target, "username": str(form.get("username", ""))[:64], "title": "Sign in"}
    try:
        user = await _svc(request).accounts.authenticate(
            form.get("username"), form.get("password"), client_ip(request)
        )
    except (Unauthorized, RateLimited) as exc:
        # Either field may be the wrong one, so the sentence stands above both and describes both.
        limited = isinstance(exc, RateLimited)
        ctx.update(error=exc.message, wrong=not limited)
        response = _form_page(request, "login.html", ctx, status=429 if limited else 401)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response
    return await _signed_in(request, user, target)


async def _signed_in(request: web.Request, user: User, target: str) -> web.Response:
    token, _ = await _svc(request).accounts.start_session(user)
    response = web.HTTPSeeOther(target)
    session_cookie(response, request, token, request.app[CONFIG].session_days)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    found = await identify(request)
    response = web.HTTPSeeOther("/login")
    if found is not None:
        user, credential = found
        form = await read_form(request)
        # Our form carries the session's CSRF token; a bare POST from a script is
        # accepted when it is not cross-site (SameSite=Lax keeps other sites' posts cookieless).
        if form.get("csrf") is not None or not origin_ok(request, required=False):
            check_session_csrf(request, credential, form)
        await _svc(request).accounts.end_session(credential)
        _svc(request).live.close_credential(credential.token_hash)
        log.info("event=logout user=%s", user.username)
    clear_session_cookie(response)
    raise response


@routes.get("/setup")
async def setup_form(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    if not await _svc(request).accounts.setup_open(token):
        raise ChatdError("This setup link has been used or has expired. Sign in instead.", code="not_found", status=404)
    return _form_page(request, "setup.html", {"token": token, "title": "Set up chatd"})


@routes.post("/setup")
async def setup(request: web.Request) -> web.Response:
    form = await read_form(request)
    check_form_token(request, form)
    token = str(form.get("token", ""))
    accounts = _svc(request).accounts
    if not await accounts.setup_open(token):
        raise ChatdError("This setup link has been used or has expired. Sign in instead.", code="not_found", status=404)
    try:
        if form.get("password") != form.get("password2"):
            raise BadInput("the two passwords differ", field="password2")
        user = await accounts.complete_setup(token, form.get("username"), form.get("password"))
    except BadInput as exc:  # the passwords are never sent back
        ctx = {"token": token, "username": str(form.get("username", ""))[:64], "title": "Set up chatd",
               "errors": refusal(exc, ("username", "password", "password2"))}
        return _form_page(request, "setup.html", ctx, status=400)
    await _svc(request).live.refresh_users()
    return await _signed_in(request, user, "/")


# -- pages ----------------------------------------------------------------------------------------


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    await page_user(request)
    raise web.HTTPSeeOther("/r/general")


async def _room_page(request: web.Request, user: User, credential: Any, room: Room) -> web.Response:
    services = _svc(request)
    await services.chat.visit(user, room)
    page = request.app[CONFIG].history_page
    around = request.query.get("around")
    later = False  # the page stops short of the newest messages (a permalink's, far back)
    if around:
        _, messages = await services.chat.history(user, room.slug, around=around, limit=page)
        current = int(around)
        newer = await services.store.messages(room, after=messages[-1].id, limit=1) if messages else []
        later = bool(newer)
        more = bool(messages) and bool(await services.store.messages(room, before=messages[0].id, limit=1))
    else:
        messages = await services.store.messages(room, limit=page)
        current, more = None, len(messages) == page
    rooms_html, dms_html = await _sidebar(request, user, room)
    ctx = {
        "me": user, "room": room, "messages": messages, "csrf": credential.csrf, "current": current,
        # A page far back in history opens its socket at the newest change (nothing replayed:
        # the page loads the newer messages as the reader scrolls down, from later_html).
        "later": later, "since": services.live.published if later else (messages[-1].id if messages else 0),
        "more": more, "title": _title(room, user),
        "rooms_html": rooms_html, "dms_html": dms_html,
        # The viewer's own socket is about to open: list them already.
        "online": sorted(set(services.live.online_in(room.id)) | {user.username}), "peer": _peer(room, user),
        "last_id": messages[-1].id if messages else 0,
        "unread": await services.store.unread(user, room),
        "joined": room.kind == "public" and services.store.joined(user, room),
        "left": services.store.left_slugs(user),
    }
    return _page(request, "room.html", ctx)


async def _sidebar(request: web.Request, user: User, room: Room) -> tuple[Markup, Markup]:
    """The sidebar's room and DM lists, reused while nothing they show has changed."""
    renderer, store = request.app[RENDERER], request.app[STORE]
    key, epoch = (user.id, room.id), store.epoch
    cached = renderer.sidebars.get(key)
    if cached is not None and cached[0] == epoch:
        return cached[1], cached[2]
    states = await store.sidebar_for(user)
    if all(s.room.id != room.id for s in states):  # the room on screen is always listed
        states.append(RoomState(room, 0, _peer(room, user)))
    # In the order of each entry's data-sort, where a tab puts the entries it gets live.
    place = fragments.sort_key
    rooms = sorted((s for s in states if s.peer is None), key=lambda s: place(s.room.kind, s.room.name, None))
    dms = sorted((s for s in states if s.peer is not None), key=lambda s: place(s.room.kind, s.room.name, s.peer))
    rooms_html = fragments.room_items_html(rooms, room.id)
    dms_html = fragments.room_items_html(dms, room.id)
    if len(renderer.sidebars) >= SIDEBAR_CACHE:
        renderer.sidebars.clear()
    renderer.sidebars[key] = (epoch, rooms_html, dms_html)
    return rooms_html, dms_html


def _peer(room: Room, user: User) -> str | None:
    return rules.dm_peer(room.slug, user.username) if room.kind == "dm" else None


def _title(room: Room, user: User) -> str:
    peer = _peer(room, user)
    return f"@{peer}" if peer else f"#{room.name}"


@routes.get("/r/{slug}")
async def room_page(request: web.Request) -> web.Response:
    user, credential = await page_user(request)
    room = await _svc(request).chat.room_for(user, request.match_info["slug"])
    if room.kind == "dm":
        raise web.HTTPSeeOther(f"/dm/{_peer(room, user)}")
    return await _room_page(request, user, credential, room)


@routes.get("/dm/{username}")
async def dm_page(request: web.Request) -> web.Response:
    user, credential = await page_user(request)
    room = await _svc(request).chat.open_dm(user, request.match_info["username"])
    return await _room_page(request, user, credential, room)


@routes.get("/r/{slug}/history")
async def history(request: web.Request) -> web.Response:
    """A page of history for infinite scroll, with the next sentinel: older messages
    (`before`), or newer ones (`after`, below a permalink's page far back)."""
    user, _ = await page_user(request)
    page = request.app[CONFIG].history_page
    after = request.query.get("after")
    room, messages = await _svc(request).chat.history(
        user, request.match_info["slug"], before=None if after else request.query.get("before"),
        after=after, limit=page)
    ctx = {"me": user, "room": room, "messages": messages, "more": len(messages) == page, "peer": _peer(room, user),
           "newer": bool(after)}
    return _page(request, "_history.html", ctx)


@routes.get("/m/{id}")
async def permalink(request: web.Request) -> web.Response:
    """A message's permanent address: its room's page around it."""
    user, _ = await page_user(request)
    room, message = _svc(request).chat.message_for(user, request.match_info["id"])
    path = f"/dm/{_peer(room, user)}" if room.kind == "dm" else f"/r/{room.slug}"
    raise web.HTTPSeeOther(f"{path}?around={message.id}#message-{message.id}")


@routes.get("/search")
async def search_page(request: web.Request) -> web.Response:
    """Search every room the user may read (or one, `room`): results newest first, each a
    permalink; `before` pages to older results."""
    user, credential = await page_user(request)
    services = _svc(request)
    q, slug = request.query.get("q", ""), request.query.get("room", "")
    ctx: dict[str, Any] = {"me": user, "csrf": credential.csrf, "q": q, "room": slug, "results": [],
                           "title": f"Search: {q}" if q.strip() else "Search", "error": None, "older": None}
    status = 200
    if q.strip():
        try:
            found = await services.chat.search(user, q, slug or None, request.query.get("before"), SEARCH_PAGE)
        except ChatdError as exc:
            ctx["error"], status = exc.message, exc.status
        else:
            ctx["results"] = [_result(services, user, m, snippet) for m, snippet in found]
            if len(found) == SEARCH_PAGE:
                ctx["older"] = "/search?" + urlencode(
                    {k: v for k, v in (("q", q), ("room", slug), ("before", str(found[-1][0].id))) if v})
    return _page(request, "search.html", ctx, status)


def _result(services: Services, user: User, message: Message, snippet: str) -> dict[str, Any]:
    room = services.store.rooms.get(message.room_id)
    peer = _peer(room, user) if room is not None else None
    where = f"@{peer}" if peer else f"#{room.name if room else message.room}"
    return {"message": message, "snippet": Markup(snippet), "where": where, "href": f"/m/{message.id}",
            "stamp": rfc3339(message.created_at)}


@routes.get("/rooms/new")
async def new_room_form(request: web.Request) -> web.Response:
    user, credential = await page_user(request)
    return _page(request, "new_room.html", {"me": user, "csrf": credential.csrf, "title": "New room"})


@routes.post("/rooms/new")
async def new_room(request: web.Request) -> web.Response:
    user, credential = await page_user(request)
    form = await read_form(request)
    check_session_csrf(request, credential, form)
    try:
        room = await _svc(request).chat.create_room(
            user, str(form.get("slug", "")).strip().lower(), form.get("name"), form.get("private") == "on"
        )
    except ChatdError as exc:
        if exc.status not in (400, 409):
            raise
        ctx = {"me": user, "csrf": credential.csrf, "errors": refusal(exc, ("slug", "name")), "title": "New room",
               "slug": str(form.get("slug", ""))[:200], "name": str(form.get("name", ""))[:200],
               "private": form.get("private") == "on"}
        return _page(request, "new_room.html", ctx, exc.status)
    raise web.HTTPSeeOther(f"/r/{room.slug}")


@routes.get("/r/{slug}/members")
async def members_page(request: web.Request) -> web.Response:
    user, credential = await page_user(request)
    return await _members(request, user, credential.csrf)


async def _members(request: web.Request, user: User, csrf: str, ctx: dict[str, Any] | None = None,
                   status: int = 200) -> web.Response:
    room, names = await _svc(request).chat.members(user, request.match_info["slug"])
    ctx = {"me": user, "room": room, "members": names, "csrf": csrf, "title": f"Members of #{room.name}",
           **(ctx or {})}
    return _page(request, "members.html", ctx, status)


@routes.post("/r/{slug}/members")
async def members_change(request: web.Request) -> web.Response:
    """Add a member, remove one (admins), or leave the room."""
    user, credential = await page_user(request)
    form = await read_form(request)
    check_session_csrf(request, credential, form)
    chat, slug = _svc(request).chat, request.match_info["slug"]
    action, name = form.get("action"), str(form.get("username", "")).strip()
    try:
        if action == "add":
            await chat.add_member(user, slug, name)
        elif action == "remove":
            await chat.remove_member(user, slug, name)
        elif action == "leave":
            await chat.remove_member(user, slug, user.username)
            raise web.HTTPSeeOther("/r/general")
        else:
            raise BadInput("unknown action")
    except ChatdError as exc:
        if exc.status not in (400, 404, 409) or action == "leave":
            raise
        # A refused addition keeps the name typed, beside the field; a refused removal is told above.
        fields = ("username",) if action == "add" else ()
        ctx = {"errors": refusal(exc, fields), "username": name[:64] if action == "add" else ""}
        return await _members(request, user, credential.csrf, ctx, exc.status)
    back = "/admin" if form.get("back") == "admin" and user.admin else f"/r/{slug}/members"
    raise web.HTTPSeeOther(back)


@routes.get("/admin")
async def admin_page(request: web.Request) -> web.Response:
    user, credential = await page_user(request)
    if not user.admin:
        raise Forbidden("only administrators can see this page")
    rooms = await request.app[STORE].all_rooms()
    ctx = {"me": user, "rooms": rooms, "csrf": credential.csrf, "title": "Administration",
           "error": request.query.get("error", "")[:200], "deleted": request.query.get("deleted", "")[:64]}
    return _page(request, "admin.html", ctx)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """{"status", "database", "broker"}: 503 while the database or the broker cannot be used."""
    broker = request.app[SERVICES].broker
    try:
        await request.app[STORE].check()
        database = "ok"
    except Exception:
        database = "unavailable"
    state = broker.status() if broker.shared else "none"
    ok = database == "ok" and state in ("ok", "none")
    return web.json_response({"status": "ok" if ok else "unavailable", "database": database, "broker": state},
                             status=200 if ok else 503)


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/static/favicon.svg")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; from loopback (not through a proxy) or with an admin's token."""
    if not is_loopback(request) or "X-Forwarded-For" in request.headers:
        found = await identify(request)
        if found is None or not found[0].admin or found[1].kind != "token":
            raise ChatdError("metrics are available from loopback or with an admin token",
                             code="forbidden", status=403)
    return web.Response(text=render_metrics(request.app), content_type="text/plain", charset="utf-8")


# -- the browser's socket ---------------------------------------------------------------------------


@routes.get("/ws")
async def browser_socket(request: web.Request) -> web.StreamResponse:
    """One per tab: HTML fragments out, htmx form values in."""
    services = _svc(request)
    found = await identify(request)
    if found is None or found[1].kind != "session":
        raise Unauthorized("sign in first")
    user, credential = found
    if not origin_ok(request, required=True):
        raise Forbidden("cross-site WebSocket refused")
    room = await services.chat.room_for(user, request.query.get("room"))
    since = parse_int(request.query.get("since"), "since", default=None, low=0)
    conn = await open_socket(request, user, credential, "browser", room)

    async def greet() -> None:  # unread counts may have moved while the tab was away
        states = await services.store.sidebar_for(user)
        services.live.send(conn, {"unread_all": {s.room.slug: s.unread for s in states}})

    return await run_socket(services, conn, since, room, lambda frame: handle_frame(services, conn, frame),
                            _tab_error, greet)


def _tab_error(code: str, message: str, client_id: str | None) -> dict[str, Any]:
    return {"error": message, "code": code, "client_id": client_id}
