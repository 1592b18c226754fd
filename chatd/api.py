"""`/api/v1`: JSON handlers and the event stream. Thin: parse, call a service, answer."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from chatd.auth import api_user, identify, origin_ok, read_json
from chatd.errors import BadInput, Forbidden, Unauthorized
from chatd.models import Message, User
from chatd.services import Services, parse_int
from chatd.sockets import handle_frame, open_socket, run_socket
from chatd.state import SERVICES

routes = web.RouteTableDef()


def _svc(request: web.Request) -> Services:
    return request.app[SERVICES]


@routes.get("/api/v1/me")
async def me(request: web.Request) -> web.Response:
    return web.json_response((await api_user(request)).to_json())


@routes.get("/api/v1/rooms")
async def list_rooms(request: web.Request) -> web.Response:
    user = await api_user(request)
    states = await _svc(request).chat.rooms_for(user)
    return web.json_response({"rooms": [s.room.to_json(s.unread) for s in states]})


@routes.post("/api/v1/rooms")
async def create_room(request: web.Request) -> web.Response:
    user = await api_user(request)
    data = await read_json(request)
    room = await _svc(request).chat.create_room(
        user, data.get("slug"), data.get("name"), data.get("private", False)
    )
    return web.json_response({"room": room.to_json(0)}, status=201)


def _message_response(services: Services, message: Message, status: int = 200) -> web.Response:
    """{"message": ...} in the encoding the event stream sends: built once per version of a message."""
    return web.Response(text=f'{{"message":{services.live.message_json(message)}}}',
                        content_type="application/json", status=status)


# The two busiest routes first: aiohttp tries the resources under /api/v1/rooms in the
# order they were added, and each miss costs a regular expression match per request.
@routes.get("/api/v1/rooms/{slug}/messages")
async def get_messages(request: web.Request) -> web.Response:
    user = await api_user(request)
    q = request.query
    services = _svc(request)
    _, messages = await services.chat.history(
        user, request.match_info["slug"], q.get("before"), q.get("after"), q.get("limit"), q.get("around")
    )
    return web.Response(text=f'{{"messages":{services.live.messages_json(messages)}}}',
                        content_type="application/json")


@routes.post("/api/v1/rooms/{slug}/messages")
async def post_message(request: web.Request) -> web.Response:
    user = await api_user(request)
    data = await read_json(request)
    services = _svc(request)
    message, created = await services.chat.post_message(
        user, request.match_info["slug"], data.get("body"), data.get("client_id")
    )
    return _message_response(services, message, 201 if created else 200)


async def _room_json(services: Services, user: User, slug: str) -> dict[str, Any]:
    room = await services.chat.room_for(user, slug)
    return room.to_json(await services.store.unread(user, room))


@routes.get("/api/v1/rooms/{slug}")
async def get_room(request: web.Request) -> web.Response:
    user = await api_user(request)
    return web.json_response({"room": await _room_json(_svc(request), user, request.match_info["slug"])})


@routes.get("/api/v1/rooms/{slug}/members")
async def list_members(request: web.Request) -> web.Response:
    user = await api_user(request)
    room, names = await _svc(request).chat.members(user, request.match_info["slug"])
    return web.json_response({"room": room.slug, "members": names})


@routes.post("/api/v1/rooms/{slug}/members")
async def add_member(request: web.Request) -> web.Response:
    user = await api_user(request)
    data = await read_json(request)
    services = _svc(request)
    room = await services.chat.add_member(user, request.match_info["slug"], data.get("username"))
    unread = await services.store.unread(user, room)
    return web.json_response({"room": room.to_json(unread)})


@routes.delete("/api/v1/rooms/{slug}/members/{username}")
async def remove_member(request: web.Request) -> web.Response:
    user = await api_user(request)
    await _svc(request).chat.remove_member(
        user, request.match_info["slug"], request.match_info["username"]
    )
    return web.Response(status=204)


@routes.post("/api/v1/dms")
async def open_dm(request: web.Request) -> web.Response:
    user = await api_user(request)
    data = await read_json(request)
    services = _svc(request)
    room = await services.chat.open_dm(user, data.get("username"))
    return web.json_response({"room": room.to_json(await services.store.unread(user, room))})


@routes.post("/api/v1/rooms/{slug}/read")
async def mark_read(request: web.Request) -> web.Response:
    user = await api_user(request)
    data = await read_json(request)
    await _svc(request).chat.mark_read(user, request.match_info["slug"], data.get("message_id"))
    return web.Response(status=204)


# -- one message: read, edit, delete, react ---------------------------------------------


@routes.get("/api/v1/messages/{id}")
async def get_message(request: web.Request) -> web.Response:
    user = await api_user(request)
    services = _svc(request)
    _, message = services.chat.message_for(user, request.match_info["id"])
    return _message_response(services, message)


@routes.patch("/api/v1/messages/{id}")
async def edit_message(request: web.Request) -> web.Response:
    user = await api_user(request)
    data = await read_json(request)
    services = _svc(request)
    if "body" not in data:
        raise BadInput("body is required", field="body")
    message = await services.chat.edit_message(user, request.match_info["id"], data["body"])
    return _message_response(services, message)


@routes.delete("/api/v1/messages/{id}")
async def delete_message(request: web.Request) -> web.Response:
    user = await api_user(request)
    await _svc(request).chat.delete_message(user, request.match_info["id"])
    return web.Response(status=204)


@routes.post("/api/v1/messages/{id}/reactions")
async def add_reaction(request: web.Request) -> web.Response:
    user = await api_user(request)
    data = await read_json(request)
    services = _svc(request)
    message = await services.chat.react(user, request.match_info["id"], data.get("emoji"), add=True)
    return _message_response(services, message)


@routes.delete("/api/v1/messages/{id}/reactions/{emoji}")
async def remove_reaction(request: web.Request) -> web.Response:
    user = await api_user(request)
    services = _svc(request)
    message = await services.chat.react(user, request.match_info["id"], request.match_info["emoji"], add=False)
    return _message_response(services, message)


@routes.get("/api/v1/search")
async def search(request: web.Request) -> web.Response:
    user = await api_user(request)
    q = request.query
    services = _svc(request)
    found = await services.chat.search(user, q.get("q"), q.get("room"), q.get("before"), q.get("limit"))
    results = ",".join(
        f'{{"message":{services.live.message_json(m)},"snippet":{json.dumps(snippet, ensure_ascii=False)}}}'
        for m, snippet in found)
    return web.Response(text=f'{{"results":[{results}]}}', content_type="application/json")


# -- the event stream -------------------------------------------------------------------


@routes.get("/api/v1/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """JSON events for every room the user may read; `since` replays without gap or duplicate."""
    services = _svc(request)
    found = await identify(request)
    if found is None:
        raise Unauthorized("missing or invalid credentials")
    user, credential = found
    if not origin_ok(request, required=False):
        raise Forbidden("cross-site WebSocket refused")
    since = parse_int(request.query.get("since"), "since", default=None, low=0)
    conn = await open_socket(request, user, credential, "stream")
    return await run_socket(services, conn, since, None, lambda frame: handle_frame(services, conn, frame), _error)


def _error(code: str, message: str, client_id: str | None) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "client_id": client_id}
